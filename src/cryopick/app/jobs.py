"""Background jobs of ``cryopick app``: training and picking through the library, in a worker process.

One job at a time per project; it can be cancelled (the process is stopped; training and picking
outputs are written atomically, so what was finished stays valid). Each job has a folder
``.cryopick-app/jobs/<id>/`` with ``job.json`` (kind, settings, start), ``log.txt`` (the library's log),
``progress.json`` (training: the loop's per-epoch history) and ``result.json`` (done or failed, with
the one-line message of a :class:`~cryopick.errors.CryopickError`).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
import traceback
import uuid
from pathlib import Path

import numpy as np

from cryopick.app.project import Busy
from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.jsonutil import dumps

REVIEW_THRESHOLD = 0.05  # picks are written down to this score, so the review slider can go below the calibrated one
KINDS = ("train", "pick", "pick3d")


class JobBusy(Busy):
    """Another job of this project is running."""


class JobManager:
    """Start, watch and cancel the project's one background job."""

    def __init__(self, project) -> None:
        self.project = project
        self.jobs_dir = project.app_dir / "jobs"
        self.lock = threading.Lock()
        self.process = None
        self.job: dict | None = None
        self.cancelled = False
        last = self._last_job()
        if last is not None:
            self.job = last

    def _last_job(self) -> dict | None:
        if not self.jobs_dir.is_dir():
            return None
        jobs = []
        for d in self.jobs_dir.iterdir():
            data = _read(d / "job.json")
            if data:
                jobs.append(data)
        return max(jobs, key=lambda j: j.get("started", 0)) if jobs else None

    def start(self, kind: str, params: dict) -> dict:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(KINDS)}")
        with self.lock:
            if self.process is not None and self.process.is_alive():
                raise JobBusy(f"a {self.job['kind']} job is running; wait for it or cancel it")
            other = self._last_job()
            if other and other.get("pid") and not (self.jobs_dir / other["id"] / "result.json").exists() \
                    and _alive(other["pid"]) and other["pid"] != getattr(self.process, "pid", None):
                raise JobBusy(f"another cryopick app on this project runs a {other.get('kind')} job (process "
                              f"{other['pid']}); wait for it")
            job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            job_dir = self.jobs_dir / job_id
            job_dir.mkdir(parents=True)
            job = {"id": job_id, "kind": kind, "params": params, "started": time.time()}
            write_text(job_dir / "job.json", dumps(job) + "\n")
            ctx = multiprocessing.get_context("spawn")
            proc = ctx.Process(target=run_job, args=(kind, str(self.project.root), str(job_dir), params), daemon=True)
            proc.start()
            job["pid"] = proc.pid
            write_text(job_dir / "job.json", dumps(job) + "\n")
            self.process, self.job, self.cancelled = proc, job, False
        return self.status()

    def cancel(self) -> dict:
        with self.lock:
            proc = self.process
            if proc is None or not proc.is_alive():
                raise LookupError("no job is running")
            self.cancelled = True
            proc.terminate()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            write_text(self.jobs_dir / self.job["id"] / "result.json",
                       dumps({"state": "cancelled", "message": "cancelled by the user"}) + "\n")
        return self.status()

    def status(self) -> dict:
        job = self.job
        if job is None:
            return {"state": "none"}
        job_dir = self.jobs_dir / job["id"]
        running = self.process is not None and self.process.is_alive() and self.job is job
        result = _read(job_dir / "result.json")
        if running:
            state, message = "running", ""
        elif result:
            state, message = result.get("state", "failed"), result.get("message", "")
        else:
            state, message = "failed", "the job stopped without a result (server restarted or worker killed)"
        out = {"id": job["id"], "kind": job["kind"], "state": state, "message": message,
               "started": job["started"], "elapsed": round(time.time() - job["started"], 1)}
        if state == "done":
            out["result"] = {k: v for k, v in result.items() if k not in ("state", "message")}
        if job["kind"] == "train":
            out["history"] = _read(job_dir / "progress.json").get("history", [])
            out["card"] = self.project.model_card() if state == "done" else None
            out["notes"] = (out["card"] or {}).get("notes", [])  # the card's notes: the page shows them
        else:
            out["done"], out["total"] = self._pick_progress(job, result)
        out["log"] = _tail(job_dir / "log.txt")
        return out

    def _pick_progress(self, job: dict, result: dict) -> tuple[int, int]:
        if result.get("total") is not None:
            return result.get("done", 0), result["total"]
        if job["kind"] == "pick3d":
            from cryopick.app.tomo import tomograms

            total, records = len(tomograms(self.project)), self.project.root / "picks3d" / ".cryopick"
        else:
            total = len(job["params"].get("names") or []) or len(self.project.micrographs())
            records = self.project.picks_dir / ".cryopick"
        done = 0
        if records.is_dir():
            done = sum(1 for p in records.glob("*.json") if p.name != "run.json" and p.stat().st_mtime >= job["started"])
        return min(done, total), total


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _tail(path: Path, lines: int = 8) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line[:300] for line in text.splitlines()[-lines:]]


# -- in the worker process ------------------------------------------------------------------------
def run_job(kind: str, root: str, job_dir: str, params: dict) -> None:
    """Entry point of the worker process: run the job, write ``result.json``."""
    import warnings

    out = Path(job_dir)
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    from cryopick.runtime import show_warnings

    warning_log = logging.getLogger("cryopick")
    show_warnings(lambda text: warning_log.warning("warning: %s", text))  # one line, once per job
    warnings.simplefilter("ignore", ResourceWarning)
    try:
        result = {"train": _train, "pick": _pick, "pick3d": _pick3d}[kind](root, out, params)
        result["state"] = "done"
    except CryopickError as exc:
        logging.getLogger(__name__).error("error: %s", exc)
        result = {"state": "failed", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported to the page, traceback only in the job's log
        logging.getLogger(__name__).error("%s", traceback.format_exc())
        result = {"state": "failed", "message": f"internal error ({type(exc).__name__}: {exc}); see {out / 'log.txt'}"}
    write_text(out / "result.json", dumps(result) + "\n")


def _train(root: str, out: Path, params: dict) -> dict:
    from cryopick.app.project import Project
    from cryopick.picker2d.train import TrainConfig, train_from_files

    project = Project(root)
    paths, picks, negatives, ppm = training_inputs(project, params)
    epochs = int(params.get("epochs", 30))
    config = TrainConfig(epochs=epochs, steps_per_epoch=int(params.get("steps_per_epoch", 40)),
                         max_minutes=float(params.get("max_minutes", 9.0)), min_epochs=min(epochs, 5),
                         patience=int(params.get("patience", 10)), progress=False)
    for key in ("patch_size", "batch_size"):
        if params.get(key):
            setattr(config, key, int(params[key]))
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_history, args=(project.model_dir, out / "progress.json", stop),
                               daemon=True)
    watcher.start()
    try:
        flags = project.flags()  # micrographs all marked complete: the user said so, no sparse detection
        complete = all(flags.get(n) == "complete" for n in picks.micrographs)
        card = train_from_files(paths, picks, project.settings()["diameter"], project.model_dir,
                                negatives=negatives or None, config=config, redo=True, particles_per_micrograph=ppm,
                                detect_sparse=not complete)
    finally:
        stop.set()
        watcher.join(5)
    _copy_history(project.model_dir, out / "progress.json")
    from cryopick.app.review import reviewed

    names = sorted(picks.micrographs)
    accepted = reviewed(project)
    return {"threshold": card.score_threshold, "micrographs": names, "particles": len(picks),
            "negatives": len(negatives), "accepted": sum(accepted.get(n, {}).get("accepted", 0) for n in names),
            "notes": list(card.notes)}  # also in the job's log (library log lines) and card.json


def training_inputs(project, params: dict) -> tuple[list, object, list, float | None]:
    """Micrographs, annotations, negatives and expected particles per micrograph for a training run.

    Micrographs marked "empty" are negatives. When some annotated micrographs are marked "partial",
    the expected number of particles per micrograph is the one given, else the mean count of those
    marked "complete" (the positive-unlabelled loss then spares unlabelled particles); with neither
    the run is refused, since partial labels taught as complete would teach particles as background.
    """
    log = logging.getLogger(__name__)
    picks = project.all_annotations()
    mics = project.micrographs()
    if not picks.micrographs:
        raise CryopickError("no annotated micrograph yet: click particles on a few micrographs, then train")
    flags = project.flags()
    names = list(picks.micrographs)
    negatives = [mics[n] for n, f in flags.items() if f == "empty" and n in mics and n not in names]
    ppm = params.get("particles_per_micrograph")
    partial = [n for n in names if flags.get(n) == "partial"]
    if partial and ppm is None:
        complete = [n for n in names if flags.get(n) == "complete"]
        if not complete:
            raise CryopickError(
                f"{len(partial)} annotated micrograph(s) are marked partial ({', '.join(partial[:3])}): give the "
                "expected particles per micrograph, or mark a fully annotated micrograph complete")
        counts = picks.table["micrograph"].value_counts()
        ppm = float(np.mean([counts[n] for n in complete]))
        log.info("%d partial micrograph(s): %.1f particles per micrograph expected (mean of the %d complete)",
                 len(partial), ppm, len(complete))
    return [mics[n] for n in names], picks, negatives, ppm


def _watch_history(model_dir: Path, progress: Path, stop: threading.Event) -> None:
    seen = None
    while not stop.wait(0.5):
        ckpt = model_dir / "checkpoint.pt"
        try:
            mtime = ckpt.stat().st_mtime_ns
        except OSError:
            continue
        if mtime != seen:
            seen = mtime
            _copy_history(model_dir, progress)


def _copy_history(model_dir: Path, progress: Path) -> None:
    import torch

    try:
        state = torch.load(model_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - being replaced right now, or already removed: try again later
        return
    history = [{k: h.get(k) for k in ("epoch", "loss", "f1", "precision", "recall")} for h in state.get("history", [])]
    write_text(progress, dumps({"stage": state.get("stage"), "history": history}) + "\n")


def _pick(root: str, out: Path, params: dict) -> dict:
    from cryopick.app.project import Project
    from cryopick.picker2d.batch import pick_folder

    project = Project(root)
    mics = project.micrographs()
    names = params.get("names") or list(mics)
    paths = [mics[n] for n in names if n in mics]
    if not paths:
        raise CryopickError("no micrographs to pick")
    if not (project.model_dir / "card.json").is_file():
        raise CryopickError("no model yet: train one first")
    summary = pick_folder(project.model_dir, paths, project.picks_dir, threshold=REVIEW_THRESHOLD, overlays=0,
                          redo=True, progress=False)
    return {"done": len(paths), "total": len(paths), "summary": {k: summary.get(k) for k in ("n_picks", "n_micrographs")
                                                                 if isinstance(summary, dict)}}


def _pick3d(root: str, out: Path, params: dict) -> dict:
    """Prompts from the clicked centres (one per class), then ``pick3d`` over every tomogram of the project."""
    from cryopick.app.project import Project
    from cryopick.app.tomo import FORMATS_3D, prompts, tomograms
    from cryopick.picker3d.batch import pick_tomograms
    from cryopick.picker3d.prompt import make_prompt, save_prompt

    project = Project(root)
    tomos = tomograms(project)
    classes = prompts(project)
    if not tomos:
        raise CryopickError(f"no tomograms: put MRC tomograms in {project.root / 'tomograms'}")
    if not classes:
        raise CryopickError("no prompt yet: click a particle in a tomogram (one class per name), then pick")
    made = []
    for label, entry in classes.items():
        if entry.get("tomogram") not in tomos:
            raise CryopickError(f"class {label!r}: its tomogram {entry.get('tomogram')!r} is no longer in the project")
        prompt = make_prompt(tomos[entry["tomogram"]], entry["positions"], label=label,
                             diameter_px=entry.get("diameter"))  # the page's diameter; None: estimated
        save_prompt(prompt, project.root / "prompts" / f"{label}.prompt")
        made.append(prompt)
    options = dict(output_dir=project.root / "picks3d", formats=FORMATS_3D, redo=True, montage=False, progress=False)
    started = time.time()
    if params.get("answers"):  # second round: the prompts adapted to the reviewed picks
        from cryopick.app.review3d import answers_path, has_answers
        from cryopick.picker3d.questions import pick_with_answers

        if not has_answers(project):
            raise CryopickError("no reviewed tomogram picks yet: accept the picks of a class first")
        summary = pick_with_answers(list(tomos.values()), made, answers=[answers_path(project)], **options)
    else:
        summary = pick_tomograms(list(tomos.values()), made, **options)
    return {"done": len(tomos), "total": len(tomos), "picks": summary.get("picks"),
            **({"expected": summary["expected"]} if summary.get("expected") else {}),  # adapted or kept, and why
            "adapted": [label for label in classes  # the classes this run adapted (not an earlier run's files)
                        if _newer(project.root / "picks3d" / "adapted" / f"{label}.adapted.npz", started)]}


def _newer(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since - 1
    except OSError:
        return False
