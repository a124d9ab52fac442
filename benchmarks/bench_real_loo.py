"""Real leave-one-out: cryopick's defaults vs Topaz on three real proteins, same micrographs, same CPU minutes.

The three real data sets of ``--data`` (default ``/work/shared/data``), each with its fixed split (its
``split.json``: 5 train micrographs, the rest test; EMPIAR-10017 has none and uses the split of
``bench_fewshot_empiar.py``: the first 5 by name train, the other 15 test). The particle diameter is the
``Diameter`` column of each data set's coordinates (the value its README gives: 108, 36, 61 px).

- ``cryopick``: the library path of ``cryopick train`` with its defaults (``train_from_files``, a default
  :class:`TrainConfig` with only ``seed``, ``num_threads`` and the progress bar set) and of ``cryopick pick``
  (a :class:`Picker` of the trained model with its defaults). Scored at the model's own calibrated
  threshold (what ``pick`` writes) and best-case (all candidates, the best score threshold on the test
  micrographs: the calibration taken out).
- ``topaz`` (``--topaz-bin``, a ``topaz`` executable of a separate venv; never a cryopick dependency):
  ``topaz preprocess`` (downsampled so the particle is ~30 px, the README's default normalisation),
  ``topaz train`` from the pretrained ResNet8 on the same 5 micrographs, a checkpoint every 8 updates with the
  CPU seconds at which it appeared; the model is the last checkpoint within the CPU time cryopick's training
  took for the same protein and seed (``--topaz-cpu-seconds`` lets Topaz train to a cap while cryopick
  trains, the checkpoint is chosen once cryopick's time exists), ``topaz extract`` on the test micrographs.
  Scored at Topaz's own threshold (score 0: the log-likelihood ratio where the classifier says particle,
  ``--topaz-threshold``) and best-case. See ``_topaz.py``.

``--quick`` (run_all's size): EMPIAR-10059 only, cryopick capped at 2 epochs.

Every score uses ``cryopick.evaluate`` (one-to-one matching, a pick is correct within one particle radius),
pooled over the test micrographs. CPU seconds are those of the process (and its children), so load on the
machine stretches wall time but not the budget.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_real_loo.py --proteins empiar-10059 --seeds 0 \\
        --tools cryopick,topaz --topaz-bin /work/venvs/topaz/bin/topaz
    # on a loaded machine: the same comparison with cryopick capped at 1 epoch (real_loo.md)
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_real_loo.py --epochs 1 --proteins empiar-10059 \\
        --tools cryopick,topaz --topaz-bin /work/venvs/topaz/bin/topaz

Cached per protein and seed under ``--cache`` (default ``benchmarks/results/real_loo``):
``<protein>/seed<k>/{model/,train.json,cryopick.json,topaz/,topaz.json}``; rerunning resumes (a cryopick
training run resumes from its checkpoint; ``--redo`` scores again, keeping trained models).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import add_common_args, print_table, write_result  # noqa: E402

DEFAULT_ROOT = "/work/shared/data"
PROTEINS = ("empiar-10017", "empiar-10059", "empiar-10146")
TOOLS = ("cryopick", "topaz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".mrc")


def load_real(root: str | Path, name: str):
    """(train paths, test paths, truth Picks, diameter px) of one real data set with its fixed split."""
    from cryopick.evaluate.metrics import resolve_diameter
    from cryopick.io.coords import read_picks

    folder = Path(root) / name
    mics = sorted(p for p in (folder / "micrographs").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(mics) < 6:
        raise SystemExit(f"--data: {folder}/micrographs holds {len(mics)} micrographs; expected the real data "
                         f"sets ({', '.join(PROTEINS)}) under --data")
    truth = read_picks(folder / "coordinates", format="cryoppp")
    by_stem = {p.stem: p for p in mics}
    split = folder / "split.json"
    if split.is_file():
        s = json.loads(split.read_text())
        missing = [n for n in s["train"] + s["test"] if n not in by_stem]
        if missing:
            raise SystemExit(f"{split}: {len(missing)} micrographs not in {folder}/micrographs, e.g. {missing[0]}")
        train, test = [by_stem[n] for n in s["train"]], [by_stem[n] for n in s["test"]]
    else:  # EMPIAR-10017: the split of bench_fewshot_empiar.py
        train, test = mics[:5], mics[5:]
    return train, test, truth, resolve_diameter(truth, None)


def subset(truth, paths):
    """The truth of these micrographs only."""
    from cryopick.picks import concat

    return concat([truth.for_micrograph(p.stem) for p in paths])


def score(calibrated, candidates, truth, diameter: float, names: list[str]) -> dict:
    """Pooled F1 of ``calibrated`` picks and the best-case F1 of ``candidates`` (all scores), one radius."""
    from cryopick.evaluate.curves import pr_curve
    from cryopick.evaluate.metrics import evaluate_picks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = evaluate_picks(calibrated, truth, diameter, micrographs=names)
        curve = pr_curve(candidates, truth, diameter, micrographs=names)
    best = int(np.argmax(curve.f1)) if len(curve.f1) else None
    pooled = ev.pooled
    return {"f1": round(pooled["f1"], 4), "precision": round(pooled["precision"], 4),
            "recall": round(pooled["recall"], 4), "n_pred": pooled["n_pred"], "n_truth": pooled["n_truth"],
            "f1_best": round(float(curve.f1[best]), 4) if best is not None else 0.0,
            "best_threshold": round(float(curve.thresholds[best]), 4) if best is not None else None,
            "per_micrograph_f1": {r["micrograph"]: round(r["f1"], 4) for r in ev.per_micrograph.to_dict("records")}}


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def parse_overrides(items: list[str]) -> dict:
    """``--set key=value`` pairs as TrainConfig fields of the right type (a candidate change to measure)."""
    from dataclasses import fields

    from cryopick.picker2d.train import TrainConfig

    kinds = {f.name: type(getattr(TrainConfig(), f.name)) for f in fields(TrainConfig)}
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if key not in kinds or not value:
            raise SystemExit(f"--set {item}: expected FIELD=VALUE with a TrainConfig field")
        kind = kinds[key]
        if kind is type(None):  # an optional number (min_distance, ...)
            kind = float
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else (value if kind is str else kind(value))
    return out


def train_cryopick(train, truth, diameter: float, out: Path, seed: int, threads: int, epochs: int | None,
                   overrides: dict | None = None) -> dict:
    """``cryopick train`` with its defaults (``epochs``: a cap, when given; cached in ``out/train.json``);
    returns the training record."""
    from cryopick.picker2d.card import load_card
    from cryopick.picker2d.train import TrainConfig, train_from_files

    record = out / "train.json"
    if record.is_file():
        return json.loads(record.read_text())
    model = out / "model"
    before = json.loads((out / "train_partial.json").read_text()) if (out / "train_partial.json").is_file() else {}
    c0, w0 = cpu_seconds(), time.perf_counter()
    config = TrainConfig(seed=seed, num_threads=threads, progress=False)
    if epochs:
        config.epochs = min(epochs, config.epochs)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (model / "card.json").is_file():
            from cryopick.io.atomic import write_text

            out.mkdir(parents=True, exist_ok=True)
            write_text(out / "train_partial.json", json.dumps({"note": "interrupted run; CPU of earlier sessions "
                                                               "is not counted", **before}) + "\n")
            train_from_files(train, subset(truth, train), diameter, model, config=config)
    card = load_card(model)
    rec = {"cpu_seconds": round(cpu_seconds() - c0, 1), "wall_seconds": round(time.perf_counter() - w0, 1),
           "resumed": bool(before), "threads": threads,
           **{k: card.training.get(k) for k in ("epochs_run", "best_epoch", "stopped", "best_val_f1", "wall_seconds",
                                                "cpu_seconds_this_session", "init", "budget")},
           "score_threshold": card.score_threshold, "load_average": [round(x, 2) for x in os.getloadavg()]}
    from cryopick.io.atomic import write_text

    write_text(record, json.dumps(rec, indent=1, default=str) + "\n")
    return rec


def run_cryopick(name: str, train, test, truth, diameter: float, out: Path, seed: int, args) -> dict:
    """Train (or reuse) the model, pick the test micrographs with the defaults, score."""
    from cryopick.picker2d.pick import Picker
    from cryopick.picks import concat

    done = out / "cryopick.json"
    if done.is_file() and not args.redo:
        return json.loads(done.read_text())
    threads = args.threads
    tr = train_cryopick(train, truth, diameter, out, seed, threads, args.epochs, args.overrides)
    c0, w0 = cpu_seconds(), time.perf_counter()
    picker = Picker(out / "model", num_threads=threads)
    calibrated, candidates = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in test:
            picker.set_image(picker.prepare(path))
            calibrated.append(picker.predict())  # what `cryopick pick` writes
            candidates.append(picker.predict(threshold=0.0))  # every candidate, for the best case
    res = {"tool": "cryopick", "protein": name, "seed": seed, "training": tr,
           "threshold": picker.card.score_threshold,
           "pick_cpu_seconds": round(cpu_seconds() - c0, 1), "pick_wall_seconds": round(time.perf_counter() - w0, 1),
           **score(concat(calibrated), concat(candidates), subset(truth, test), diameter, [p.stem for p in test]),
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    from cryopick.io.atomic import write_text

    write_text(done, json.dumps(res, indent=1) + "\n")
    return res


def run_topaz(name: str, train, test, truth, diameter: float, out: Path, seed: int, args) -> dict:
    """Topaz on the same split with cryopick's training CPU seconds of this protein and seed (see _topaz.py)."""
    from _topaz import TopazRun
    from cryopick.picks import filter_score

    done = out / "topaz.json"
    record = out / "train.json"
    cryopick_cpu = json.loads(record.read_text())["cpu_seconds"] if record.is_file() else None
    if cryopick_cpu is None and args.topaz_cpu_seconds is None:
        raise SystemExit(f"{name} seed {seed}: Topaz's budget is cryopick's training CPU time; run --tools "
                         "cryopick first (or give --topaz-cpu-seconds)")
    budget = cryopick_cpu if cryopick_cpu is not None else args.topaz_cpu_seconds
    if done.is_file() and not args.redo:
        cached = json.loads(done.read_text())
        if cached["budget_cpu_seconds"] == round(budget, 1):
            return cached
    run = TopazRun(args.topaz_bin, Path(args.data_cache) / name / "topaz_preprocessed", out / "topaz", diameter,
                   threads=args.threads, seed=seed)
    info = run.train_and_extract(train, test, subset(truth, train), budget, cap_s=args.topaz_cpu_seconds)
    info["budget_source"] = "cryopick training CPU seconds" if cryopick_cpu is not None else "--topaz-cpu-seconds"
    candidates = info.pop("picks")
    calibrated = filter_score(candidates, args.topaz_threshold)
    res = {"tool": "topaz", "protein": name, "seed": seed, "threshold": args.topaz_threshold, **info,
           **score(calibrated, candidates, subset(truth, test), diameter, [p.stem for p in test]),
           "load_average": [round(x, 2) for x in os.getloadavg()]}
    from cryopick.io.atomic import write_text

    write_text(done, json.dumps(res, indent=1) + "\n")
    return res


def table(results: dict) -> tuple[list[dict], dict]:
    """Rows per protein (mean over the seeds run by both tools) and the flat summary."""
    rows, summary = [], {}
    for name in PROTEINS:
        by_tool = results.get(name) or {}
        cp, tz = by_tool.get("cryopick") or {}, by_tool.get("topaz") or {}
        if not cp and not tz:
            continue

        def mean(runs, key):
            vals = [r[key] for r in runs.values() if r.get(key) is not None]
            return round(float(np.mean(vals)), 4) if vals else None

        row = {"protein": name, "seeds": ",".join(str(s) for s in sorted(set(cp) | set(tz))),
               "cryopick F1": mean(cp, "f1"), "cryopick best": mean(cp, "f1_best"),
               "cryopick seeds": "/".join(f"{r['f1']:.3f}" for r in cp.values()),
               "topaz F1": mean(tz, "f1"), "topaz best": mean(tz, "f1_best"),
               "topaz seeds": "/".join(f"{r['f1']:.3f}" for r in tz.values()),
               "cryopick train CPU s": mean({k: v["training"] for k, v in cp.items()}, "cpu_seconds"),
               "topaz train CPU s": mean(tz, "train_cpu_seconds"), "topaz updates": mean(tz, "updates")}
        if row["cryopick F1"] is not None and row["topaz F1"] is not None:
            row["delta"] = round(row["cryopick F1"] - row["topaz F1"], 4)
        rows.append(row)
        for key in ("cryopick F1", "cryopick best", "topaz F1", "topaz best", "delta"):
            if row.get(key) is not None:
                summary[f"{name} {key}"] = row[key]
    for key in ("cryopick F1", "cryopick best", "topaz F1"):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if len(vals) == len(PROTEINS):
            summary[f"mean {key}"] = round(float(np.mean(vals)), 4)
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, "benchmarks/results/real_loo.json")
    ap.add_argument("--data", default=DEFAULT_ROOT, help=f"folder holding {', '.join(PROTEINS)} (default %(default)s)")
    ap.add_argument("--cache", default="benchmarks/results/real_loo", help="models, picks and scores (resumable)")
    ap.add_argument("--proteins", default=",".join(PROTEINS), help="comma list (default all three)")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds (default 0)")
    ap.add_argument("--tools", default="cryopick", help=f"comma list of {', '.join(TOOLS)} (default cryopick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each tool (default 1)")
    ap.add_argument("--topaz-bin", default=None, help="the topaz executable of a separate venv (needed for topaz)")
    ap.add_argument("--topaz-threshold", type=float, default=0.0,
                    help="Topaz's own threshold on its extract scores (default 0: log-likelihood ratio 0)")
    ap.add_argument("--topaz-cpu-seconds", type=float, default=None,
                    help="Topaz's training CPU cap; its budget is cryopick's training CPU seconds (same protein and "
                         "seed) once they exist, else this. With it Topaz can train while cryopick does")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a TrainConfig field changed for cryopick (a candidate change to measure; cached apart)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="cap cryopick's epochs (TrainConfig.epochs; a reduced budget for loaded machines; cached "
                         "apart: <cache>/epochs<N>, and Topaz gets the CPU time that run took)")
    ap.add_argument("--redo", action="store_true", help="score again (trained models are kept)")
    args = ap.parse_args(argv)
    args.overrides = parse_overrides(args.set)
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit("--epochs: an integer >= 1")
    if args.quick:  # run_all's size: the smallest protein, 2 epochs
        args.proteins = "empiar-10059" if args.proteins == ",".join(PROTEINS) else args.proteins
        args.epochs = args.epochs or 2
    args.data_cache = args.cache  # Topaz's preprocessed micrographs do not depend on the budget
    if args.epochs:
        args.cache = str(Path(args.cache) / f"epochs{args.epochs}")
    if args.overrides:  # a candidate change: its own cache
        args.cache = str(Path(args.cache) / ("set_" + "_".join(f"{k}-{v}" for k, v in sorted(args.overrides.items()))))
    proteins = [p for p in args.proteins.split(",") if p]
    tools = [t for t in args.tools.split(",") if t]
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise SystemExit(f"--seeds: a comma list of integers, not {args.seeds!r}") from None
    for p in proteins:
        if p not in PROTEINS:
            raise SystemExit(f"--proteins: unknown {p!r}; choose from {', '.join(PROTEINS)}")
    for t in tools:
        if t not in TOOLS:
            raise SystemExit(f"--tools: unknown {t!r}; choose from {', '.join(TOOLS)}")
    if args.threads < 1:
        raise SystemExit("--threads: an integer >= 1")
    if "topaz" in tools and not (args.topaz_bin and Path(args.topaz_bin).is_file()):
        raise SystemExit(f"--topaz-bin: give the topaz executable of a benchmark venv (got {args.topaz_bin!r}); "
                         "see /work/shared/tools/torchvision_shim/README.md")
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    import signal

    import torch

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a stopped run stops its topaz subprocess too
    torch.set_num_threads(args.threads)
    results: dict = {}
    for name in proteins:
        train, test, truth, diameter = load_real(args.data, name)
        for seed in seeds:
            out = Path(args.cache) / name / f"seed{seed}"
            for tool in tools:
                fn = run_cryopick if tool == "cryopick" else run_topaz
                res = fn(name, train, test, truth, diameter, out, seed, args)
                results.setdefault(name, {}).setdefault(tool, {})[seed] = res
                print(f"{name} seed {seed} {tool}: F1 {res['f1']:.3f} at threshold {res['threshold']:.3g}, "
                      f"best case {res['f1_best']:.3f}", flush=True)
    rows, summary = table(results)
    print_table(rows)
    write_result(args.out, "real_loo", args.quick, summary, rows=rows, results=results,
                 settings={"data": args.data, "seeds": seeds, "tools": tools, "threads": args.threads,
                           "epochs_cap": args.epochs, "cache": args.cache,
                           "topaz_threshold": args.topaz_threshold, "topaz_bin": args.topaz_bin,
                           "load_average": [round(x, 2) for x in os.getloadavg()]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
