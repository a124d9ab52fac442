"""Drive Topaz (a separate venv's ``topaz`` executable) through its CLI for ``bench_real_loo.py``.

Topaz is never imported: it runs as subprocesses of its own venv (``--topaz-bin``), as a user would.

1. The micrographs are written as float32 MRC (``cryopick.io.images``; Topaz 0.3.20's ``preprocess`` reads
   only MRC: on PNG/JPEG it fails with ``'PngImageFile' object has no attribute 'astype'``), then
   ``topaz preprocess -s S`` (its default GMM normalisation; ``S`` = the integer downsampling that brings the
   particle diameter nearest to ~30 px, within ResNet8's 71 px receptive field, as Topaz's tutorial does with
   ``-s 8`` for EMPIAR-10025) of the train and test micrographs, cached per protein.
2. ``topaz train`` from the pretrained ResNet8 (``-m resnet8``, 32 units: its pretrained default), GE-binomial
   (the default), ``-n`` = the mean number of annotated particles per training micrograph, ``-r 3`` (the
   default positive radius), 8 updates per epoch with a checkpoint after each. Its CPU time (the process and
   its children, polled every second) is noted when each checkpoint appears, and training is stopped at a cap;
   the model is the last checkpoint that appeared within the budget (cryopick's training CPU seconds). So the
   budget is counted in CPU seconds like cryopick's, load on the machine does not change how many updates
   fit, and Topaz can train (to a cap) while cryopick does, the budget chosen afterwards.
3. ``topaz extract -r <radius at that scale> -x S -t -10`` on the test micrographs (every candidate with a
   log-likelihood ratio above -10, so the best case can be scored; the caller applies Topaz's own threshold).

Topaz's ``train`` has no seed option: ``seed`` only names the run (each seed is an independent repeat).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np

TARGET_DIAMETER = 30.0  # px after Topaz's downsampling
EPOCH_SIZE = 8  # parameter updates per epoch (one checkpoint each: ~30 CPU s of ResNet8 on one thread)
MAX_EPOCHS = 999  # never reached: the CPU budget stops training
EXTRACT_THRESHOLD = -10.0


def scale_for(diameter: float) -> int:
    """Integer downsampling factor bringing ``diameter`` nearest to :data:`TARGET_DIAMETER`."""
    return max(1, int(round(diameter / TARGET_DIAMETER)))


def tree_cpu_seconds(proc) -> float:
    """CPU seconds of a psutil process and its live children (finished children are in its own counters)."""
    import psutil

    total = 0.0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def topaz_names(got: list[str], stems: list[str]) -> dict[str, str]:
    """Names of the picks read back (``read_picks`` treats a trailing ``.bin`` of Topaz's ``image_name``
    ``May08_04.33.57.bin`` as an extension: ``May08_04.33.57``) -> the micrograph stem each one begins
    (unique match only; others are left as they are)."""
    mapping = {}
    for name in got:
        match = [s for s in stems if s == name or s.startswith(name + ".")]
        if len(match) == 1:
            mapping[name] = match[0]
    return mapping


def stop(proc) -> None:
    """Kill a topaz subprocess (its own process group) if it still runs: also when the benchmark is stopped."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class TopazRun:
    """One protein and seed: ``preprocessed`` is shared by the seeds, ``work`` is this run's folder."""

    def __init__(self, topaz_bin: str | Path, preprocessed: Path, work: Path, diameter: float, threads: int = 1,
                 seed: int = 0) -> None:
        self.bin = str(topaz_bin)
        self.pre, self.work = Path(preprocessed), Path(work)
        self.diameter, self.threads, self.seed = float(diameter), int(threads), int(seed)
        self.scale = scale_for(diameter)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.env.pop("PYTHONPATH", None)  # cryopick's source must not shadow anything of the venv

    def _run(self, args: list[str], log: Path) -> float:
        """Run a topaz command to completion; returns its CPU seconds."""
        import psutil

        with open(log, "w") as fh:
            proc = subprocess.Popen([self.bin, *args], stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
            ps = psutil.Process(proc.pid)
            cpu = 0.0
            try:
                while proc.poll() is None:
                    cpu = max(cpu, tree_cpu_seconds(ps))
                    time.sleep(1.0)
            finally:
                stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"topaz {args[0]} failed (exit {proc.returncode}); see {log}")
        return cpu

    def preprocess(self, paths: list[Path], part: str) -> tuple[Path, float]:
        """``topaz preprocess`` of ``paths`` into ``preprocessed/<part>`` (cached); returns (folder, CPU s)."""
        out = self.pre / part
        done = self.pre / f"{part}.json"
        if done.is_file():
            return out, json.loads(done.read_text())["cpu_seconds"]
        from cryopick.io.images import read_micrograph, write_mrc

        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        raw = self.pre / f"{part}_mrc"
        raw.mkdir(exist_ok=True)
        mrcs = []
        for path in paths:  # same array order as cryopick reads it: x = column, y = row from the top
            mrcs.append(raw / f"{path.stem}.mrc")
            if not mrcs[-1].is_file():
                write_mrc(mrcs[-1], read_micrograph(path).load().astype(np.float32))
        cpu = self._run(["preprocess", "-s", str(self.scale), "-d", "-1", "-t", "0", "-j", str(self.threads),
                         "-o", str(out), *map(str, mrcs)], self.pre / f"{part}.log")
        shutil.rmtree(raw)
        done.write_text(json.dumps({"cpu_seconds": round(cpu, 1), "scale": self.scale}) + "\n")
        return out, cpu

    def write_targets(self, truth, path: Path) -> int:
        """Training coordinates at the downsampled scale (Topaz format); returns ``-n`` (particles per image)."""
        from cryopick.io.coords import write_picks

        write_picks(truth, path, format="topaz", per_micrograph=False, scale=1.0 / self.scale)
        counts = truth.table.groupby("micrograph").size()
        return int(round(float(counts.mean())))

    def train(self, images: Path, targets: Path, n: int, cap_s: float) -> dict:
        """``topaz train`` until its CPU time reaches ``cap_s``, noting the CPU seconds at which each
        checkpoint appeared (cached in ``train.json``); returns that record."""
        import psutil

        done = self.work / "train.json"
        if done.is_file():
            rec = json.loads(done.read_text())
            if rec["cap_cpu_seconds"] >= cap_s - 1e-6:
                return rec
        ckpt = self.work / "checkpoints"
        shutil.rmtree(ckpt, ignore_errors=True)
        ckpt.mkdir(parents=True)
        args = ["train", "-d", "-1", "-j", str(self.threads), "--num-workers", "0", "--train-images", str(images),
                "--train-targets", str(targets), "-n", str(n), "-m", "resnet8", "--pretrained",
                "--epoch-size", str(EPOCH_SIZE), "--num-epochs", str(MAX_EPOCHS),
                "--save-prefix", str(ckpt / "model"), "-o", str(self.work / "train_metrics.txt")]
        w0 = time.perf_counter()
        seen: dict[str, tuple[float, float]] = {}  # checkpoint -> (CPU s of topaz train, wall s) when first seen
        with open(self.work / "train.log", "w") as fh:
            proc = subprocess.Popen([self.bin, *args], stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
            ps = psutil.Process(proc.pid)
            cpu, stopped = 0.0, False
            try:
                while proc.poll() is None:
                    cpu = max(cpu, tree_cpu_seconds(ps))
                    for path in ckpt.glob("model_epoch*.sav"):
                        seen.setdefault(path.name, (round(cpu, 1), time.perf_counter()))
                    if cpu >= cap_s:
                        stopped = True
                        break
                    time.sleep(1.0)
            finally:
                stop(proc)
        if not stopped and proc.returncode != 0:
            raise RuntimeError(f"topaz train failed (exit {proc.returncode}); see {self.work / 'train.log'}")
        # a checkpoint that appeared in the last seconds before the stop may be cut off mid-write: not used
        names = sorted(seen, key=lambda name: int(name.split("epoch")[-1].split(".")[0]))
        if stopped and names and time.perf_counter() - seen[names[-1]][1] < 5.0:
            names = names[:-1]
        if not names:
            raise RuntimeError(f"topaz train finished no epoch of {EPOCH_SIZE} updates within {cap_s:.0f} CPU s; "
                               f"see {self.work / 'train.log'}")
        rec = {"checkpoints": [{"model": str(ckpt / name), "updates": int(name.split("epoch")[-1].split(".")[0])
                                * EPOCH_SIZE, "cpu_seconds": seen[name][0]} for name in names],
               "epoch_size": EPOCH_SIZE, "cap_cpu_seconds": round(cap_s, 1), "train_cpu_seconds": round(cpu, 1),
               "train_wall_seconds": round(time.perf_counter() - w0, 1), "num_particles": n}
        done.write_text(json.dumps(rec, indent=1) + "\n")
        return rec

    @staticmethod
    def checkpoint_for(record: dict, budget_s: float) -> dict:
        """The last checkpoint written within ``budget_s`` CPU seconds of training (else the first one)."""
        within = [c for c in record["checkpoints"] if c["cpu_seconds"] <= budget_s]
        return within[-1] if within else record["checkpoints"][0]

    def extract(self, checkpoint: dict, images: Path) -> tuple[object, float]:
        """``topaz extract`` of every test image (scores >= -10) with ``checkpoint``; returns (Picks in
        original px, CPU s). Cached per checkpoint."""
        from cryopick.io.coords import read_picks

        tag = Path(checkpoint["model"]).stem
        out = self.work / f"extract_{tag}.txt"
        done = self.work / f"extract_{tag}.json"
        if not done.is_file():
            radius = max(1, int(round(self.diameter / 2 / self.scale)))
            files = sorted(str(p) for p in images.glob("*.mrc"))
            cpu = self._run(["extract", "-m", checkpoint["model"], "-r", str(radius), "-x", str(self.scale),
                             "-t", str(EXTRACT_THRESHOLD), "-d", "-1", "-j", str(self.threads), "--num-workers", "0",
                             "-o", str(out), *files], self.work / "extract.log")
            done.write_text(json.dumps({"cpu_seconds": round(cpu, 1), "radius": radius}) + "\n")
        picks = read_picks(out, format="topaz")
        return picks, json.loads(done.read_text())["cpu_seconds"]

    def train_and_extract(self, train_paths: list[Path], test_paths: list[Path], train_truth, budget_s: float,
                          cap_s: float | None = None) -> dict:
        """The whole run: train up to ``cap_s`` CPU seconds (default ``budget_s``), extract with the checkpoint
        of ``budget_s``; returns settings, CPU seconds and the test picks (``picks``)."""
        from cryopick.picks import rename_micrographs

        self.work.mkdir(parents=True, exist_ok=True)
        train_dir, pre_train = self.preprocess(train_paths, "train")
        test_dir, pre_test = self.preprocess(test_paths, "test")
        n = self.write_targets(train_truth, self.work / "targets.txt")
        tr = self.train(train_dir, self.work / "targets.txt", n, max(budget_s, cap_s or 0.0))
        chosen = self.checkpoint_for(tr, budget_s)
        picks, cpu_extract = self.extract(chosen, test_dir)
        picks = rename_micrographs(picks, topaz_names(picks.micrographs, [p.stem for p in test_paths]))
        names = {p.stem for p in test_paths}
        got = set(picks.micrographs)
        if not got <= names:
            raise RuntimeError(f"topaz extract named micrographs {sorted(got - names)[:3]} not among the test ones")
        return {"scale": self.scale, "preprocess_cpu_seconds": round(pre_train + pre_test, 1),
                "extract_cpu_seconds": cpu_extract, "budget_cpu_seconds": round(budget_s, 1),
                "model": chosen["model"], "updates": chosen["updates"], "train_cpu_seconds": chosen["cpu_seconds"],
                "trained_cpu_seconds": tr["train_cpu_seconds"], "num_particles": n, "epoch_size": EPOCH_SIZE,
                "picks": picks,
                "score_range": [round(float(np.min(picks.scores)), 2), round(float(np.max(picks.scores)), 2)]
                if len(picks) else None}
