"""Pick whole data sets with a 2D picker: the local pipeline, Dask or SLURM, watch mode, a resumable
manifest and a summary (what ``cryopick pick`` does).

>>> from cryopick.picker2d.batch import pick_folder
>>> summary = pick_folder("model/", "mics/", "picks/")                    # pipelined on this machine
>>> summary = pick_folder("model/", "mics/", "picks/", dask="local:4")    # or tcp://HOST:8786, or
>>> summary = pick_folder("model/", "mics/", "picks/", cluster="slurm", cluster_config="site.yaml")
>>> summary = pick_folder("model/", None, "picks/", watch="incoming/", watch_timeout=600)

One micrograph is one :class:`~cryopick.distribute.engine.Task` of :class:`Pick2dJob`: read +
Fourier-crop + normalise + padding check (``prepare``, prefetch threads), the network (``compute``),
post-processing into picks (``finish``). The client (this process) writes each micrograph's outputs
as its result arrives: the coordinate file, an overlay for some, then the record
``.cryopick/<name>.json`` (input path, size, mtime, model digest, settings hash, counts, scores) that
marks it finished, all atomically; so after a crash, Ctrl-C or a killed worker a rerun skips finished
micrographs, redoes the others and those whose file changed, and never leaves a duplicated or
truncated output. A micrograph that cannot be read or picked fails alone: it is listed with its error
in ``summary.json`` and the run goes on (exit code 3 from the CLI). The skeleton (lock, manifest,
stale temporaries, write callback, summary, exit codes) is :class:`~cryopick.distribute.runner.BatchRun`,
shared with ``pick3d``; this module supplies the job and :class:`Pick2dBatch`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cryopick.config import check, configure, field_names, split_options
from cryopick.config import check_number as check_field_number
from cryopick.distribute import Execution
from cryopick.distribute.engine import Job, Outcome, Task
from cryopick.distribute.runner import Batch, BatchRun, check_unique
from cryopick.errors import CryopickError
from cryopick.io.jsonutil import to_jsonable
from cryopick.picker2d.card import model_digest
from cryopick.picker2d.pick import Picker, Region, check_number
from cryopick.picks import Picks, filter_score

log = logging.getLogger(__name__)


def picking_area(region: Region, border: float) -> Region:
    """The part of ``region`` (``x0, y0, x1, y1``) at least ``border`` pixels from its edges."""
    x0, y0, x1, y1 = region
    return (x0 + border, y0 + border, x1 - border, y1 - border)


@dataclass
class Picked:
    """The result of one micrograph, small and picklable: its picks above the threshold, the
    record (without the input stamp) and, when an overlay was asked for, what to draw it on."""

    picks: Picks
    record: dict
    overlay: tuple | None = None  # (display image, display frame, diameter px, picking area)


class Pick2dJob(Job):
    """Picking one micrograph with a 2D picker, as a job of :mod:`cryopick.distribute`.

    Locally the job carries the loaded :class:`Picker`; pickled for Dask it carries only the model
    path and options, and each worker builds its picker once (cached under :meth:`cache_key`, which
    includes the model digest, so a worker never mixes models).
    """

    def __init__(self, model_dir: str | os.PathLike, picker_options: dict, threshold: float,
                 min_distance: float | None, digest: str, picker: Picker | None = None,
                 fft_threads: int | None = None) -> None:
        self.model_dir = os.path.abspath(model_dir)
        self.picker_options = dict(picker_options)
        self.threshold = threshold
        self.min_distance = min_distance
        self.digest = digest
        self.fft_threads = fft_threads
        self.preloaded = picker

    def cache_key(self) -> str:
        options = json.dumps(to_jsonable(self.picker_options), sort_keys=True, default=str)
        return f"picker2d:{self.model_dir}:{self.digest}:{options}"

    def setup(self) -> Picker:
        digest = model_digest(self.model_dir)
        if digest != self.digest:
            raise CryopickError(f"{self.model_dir}: the model seen by this worker differs from the client's "
                                f"({digest} != {self.digest}); give a model path all workers share")
        options = dict(self.picker_options)
        if options.get("num_threads") is None:
            from cryopick.distribute.dask_engine import worker_threads

            options["num_threads"] = worker_threads()
        return Picker(self.model_dir, **options)

    def prepare(self, picker: Picker, task: Task):
        if self.fft_threads is None:
            return picker.prepare(task.path, task.key, display=bool(task.extra.get("overlay")))
        from cryopick.preprocess import fft_workers

        with fft_workers(self.fft_threads):
            return picker.prepare(task.path, task.key, display=bool(task.extra.get("overlay")))

    def compute(self, picker: Picker, prepared) -> np.ndarray:
        return picker.probability_map(prepared)

    def finish(self, picker: Picker, prepared, probability: np.ndarray) -> Picked:
        thr = self.threshold
        # All candidates (for the score histogram), then the ones above the threshold.
        peaks = picker.peaks_of(prepared, probability, threshold=0.0, min_distance=self.min_distance)
        candidates = picker.to_picks(peaks, prepared)
        picks = filter_score(candidates, thr)
        diameter = picker.diameter(prepared)
        area = picking_area(prepared.region, picker.border_px(prepared))
        record = {"micrograph": prepared.name, "n_picks": len(picks), "n_edge": int(np.sum(peaks.edge_scores >= thr)),
                  "threshold": thr, "diameter_px": round(diameter, 3), "pixel_size": prepared.pixel_size,
                  "region": list(prepared.region), "candidate_scores": np.round(candidates.scores, 3)}
        overlay = None
        if prepared.display is not None:
            overlay = (prepared.display, prepared.display_frame, diameter, area)
        return Picked(picks, record, overlay)


@dataclass
class Pick2dBatch(Batch):
    """The 2D outputs of a run, for :class:`~cryopick.distribute.runner.BatchRun`: per micrograph the
    coordinate file in ``module``'s format, an overlay PNG for some, and its record; at the end the
    summary over the folder (:func:`cryopick.picker2d.outputs.write_summary`)."""

    picker: Picker
    output_dir: Path
    module: Any
    threshold: float
    settings: dict
    digest: str
    n_overlays: int = 3
    overlay_names: frozenset = frozenset()
    project_dir: str | os.PathLike | None = None
    watch: str | os.PathLike | None = None

    noun = "micrograph"
    unit = "mic"

    def coordinates(self, name: str) -> Path:
        return self.output_dir / f"{name}{self.module.DEFAULT_SUFFIX}"

    def overlay(self, name: str) -> Path:
        return self.output_dir / "overlays" / f"{name}.png"

    def outputs(self, name: str) -> list[Path]:
        return [self.coordinates(name)]

    def extra(self, name: str, source, number: int) -> dict:
        return {"overlay": name in self.overlay_names if self.overlay_names else number <= self.n_overlays}

    def write(self, outcome: Outcome) -> dict:
        from cryopick.picker2d.outputs import write_overlay

        task, picked = outcome.task, outcome.result
        picks = picked.picks
        self.module.write(picks if len(picks) else Picks.empty(pixel_size=picks.pixel_size),
                          self.coordinates(task.key))
        if picked.overlay is not None:
            display, frame, diameter, area = picked.overlay
            write_overlay(display, frame, picks, self.overlay(task.key), diameter, threshold=self.threshold,
                          area=area, title=f"{task.key}: {len(picks)} picks")
        return {**picked.record, "path": task.path, "abspath": os.path.abspath(task.path), "model": self.digest,
                "seconds": round(outcome.seconds, 3), "worker": outcome.worker}

    def discard(self, task: Task) -> None:
        for path in (self.coordinates(task.key), self.overlay(task.key)):
            path.unlink(missing_ok=True)

    def failed(self, task: Task, error: str) -> None:
        # listed in the summary; said at once only while watching (a long run)
        (log.warning if self.watch is not None else log.debug)("%s: failed: %s", task.key, error)

    def interrupted(self) -> bool:
        if self.watch is None:
            return False
        log.info("stopped watching %s (Ctrl-C); the summary covers what was picked", self.watch)  # the usual end
        return True

    def summarize(self, run: BatchRun) -> dict:
        """Log the edge drops of this run and write the summary over the folder (see :func:`pick_micrographs`)."""
        from cryopick.picker2d.outputs import write_summary

        total_edge = sum(int(r.get("n_edge", 0) or 0) for r in run.state.records([t.key for t in run.todo]))
        if total_edge:
            border = self.picker.border
            log.info("dropped %d picks in padding bands or within %s of the micrograph edges (border)",
                     total_edge, "one particle radius" if border is None else f"{border:g} px")
        return write_summary(self.output_dir, run.given, self.module, self.threshold, self.picker.model_dir,
                             run.elapsed, run.tally.done, settings=self.settings, project_dir=self.project_dir,
                             run=run.tally.to_dict())


@dataclass(frozen=True)
class Watch:
    """Picking micrographs as they land in a folder (``cryopick pick --watch``): ``watch`` the folder
    (``None``: no watching), ``watch_timeout`` seconds without a new micrograph before stopping (``None``:
    until Ctrl-C), ``settle`` seconds a file must stay unchanged before it is read (or a ``<file>.done``
    marker; ``None``: 5)."""

    watch: str | os.PathLike | None = None
    watch_timeout: float | None = None
    settle: float | None = None

    def __post_init__(self) -> None:
        check(self, "watch", self.watch is None or isinstance(self.watch, (str, os.PathLike)), "None or a folder")
        check_field_number(self, "watch_timeout", 0, strict_lo=True, optional=True)
        check_field_number(self, "settle", 0, optional=True)


def pick_micrographs(picker: Picker, micrographs, output_dir: str | os.PathLike, format: str = "relion", *,
                     execution: Execution | None = None, watching: Watch | None = None, overlays: int = 3,
                     overlay_names: Iterable[str] | None = None, redo: bool = False, resume: bool = True,
                     project_dir: str | os.PathLike | None = None, progress: bool = True,
                     threshold: float | None = None, min_distance: float | None = None,
                     picker_options: dict | None = None, **options) -> dict:
    """Pick ``micrographs`` (a list, folder or glob; or ``None`` with ``watch``) into ``output_dir``.

    Per micrograph: the coordinate file in ``format`` (RELION: ``<name>_autopick.star``), an overlay PNG
    for the first ``overlays`` micrographs or those in ``overlay_names``, then the record that marks it
    finished (see the module docstring). A rerun with another model or other settings into a folder
    with finished picks is refused unless ``redo`` (``resume=False`` is the same). At the end, over
    every finished micrograph of the folder: the RELION ``autopick.star`` index, ``summary.json``
    (with this run's picked / skipped / failed counts and failures), ``summary.csv``,
    ``score_histogram.png`` (:func:`cryopick.picker2d.outputs.write_summary`). Lock, manifest, stale
    temporaries and exit codes: :class:`cryopick.distribute.runner.BatchRun`.

    ``execution``: :class:`~cryopick.distribute.Execution` (``engine``, ``prefetch``: preparing threads,
    ``dask`` / ``cluster`` + ``cluster_config``: run on Dask instead, the workers then need
    ``picker_options``, the :class:`Picker` keyword arguments); ``watching``: :class:`Watch` (also pick
    micrographs as they land in a folder). Their fields may also be given as keywords (``dask="local:4"``,
    ``watch="incoming/"``), which replace those of the objects given.
    """
    execution, watching = _run_settings(execution, watching, options, "pick_micrographs")
    paths, names = _listed(micrographs, watching)
    module = _format_2d(format)
    threshold = check_number("threshold", threshold, 0.0, 1.0)
    min_distance = check_number("min_distance", min_distance, 0.0)
    n_overlays = int(check_number("overlays", overlays, 0.0) or 0)
    unknown = sorted(set(overlay_names or ()) - set(names)) if watching.watch is None else []
    if unknown:
        raise CryopickError(f"--overlay {', '.join(unknown[:5])}: no such micrograph among the {len(names)} given "
                            f"(names are file names without extension, e.g. {names[0]})")
    from cryopick.picker2d.outputs import check_output_dir

    created = not Path(output_dir).exists()
    output_dir = check_output_dir(output_dir)
    thr = picker.threshold if threshold is None else threshold
    md = picker.min_distance if min_distance is None else min_distance
    settings = {**picker.settings(), "threshold": thr, "min_distance": md}
    digest = model_digest(picker.model_dir)
    batch = Pick2dBatch(picker, output_dir, module, thr, settings, digest, n_overlays, frozenset(overlay_names or ()),
                        project_dir, watching.watch)
    run = BatchRun(batch, output_dir, {"model": digest, **settings}, redo=redo or not resume, created=created)
    local_pipeline = execution.engine == "pipeline" and not execution.distributed
    job = Pick2dJob(picker.model_dir, picker_options or {}, thr, md, digest, picker=picker,
                    fft_threads=1 if local_pipeline else None)

    def execute(tasks: Iterable[Task], write) -> None:
        from cryopick import distribute

        distribute.run(job, tasks, write, state=picker, **execution.run_options())

    follow = None
    if watching.watch is not None:
        from cryopick.io.images import image_name

        settle = 5.0 if watching.settle is None else watching.settle

        def follow(run: BatchRun) -> Iterator[Task]:
            return run.tasks((image_name(p), p) for p in _watched(run, watching.watch, {str(p) for p in paths},
                                                                  settle, watching.watch_timeout))
    return run.run(list(zip(names, paths)), execute, follow=follow, progress=progress)


#: keywords of :func:`pick_micrographs` that are fields of :class:`Execution` or :class:`Watch`
RUN_KEYWORDS = field_names(Execution) + field_names(Watch)


def _run_settings(execution: Execution | None, watching: Watch | None, options: dict,
                  caller: str) -> tuple[Execution, Watch]:
    """The :class:`Execution` and :class:`Watch` of a call, with the keywords of their fields applied."""
    run_keys, watch_keys = split_options(options, (Execution, Watch), caller)
    return (configure(Execution, execution, run_keys, caller), configure(Watch, watching, watch_keys, caller))


def _listed(micrographs, watching: Watch) -> tuple[list, list[str]]:
    """The micrograph paths given and their names (unique); none at all only when watching a folder."""
    from cryopick.io.images import image_name, list_images

    paths = [] if micrographs is None else list_images(
        list(micrographs) if isinstance(micrographs, (list, tuple)) else micrographs)
    if micrographs is None and watching.watch is None:
        raise CryopickError("give the micrographs to pick (--micrographs) or a folder to watch (--watch)")
    names = [image_name(p) for p in paths]
    check_unique(names, "micrograph")
    return paths, names


def _format_2d(format: str):
    """The coordinate format module, refused when it holds 3D picks only."""
    from cryopick.io.coords import format_module

    module = format_module(format)
    if 2 not in getattr(module, "NDIM", (2,)):
        raise CryopickError(f"format {module.NAME!r} holds 3D picks only; choose relion, cryolo, eman2, topaz, cryoppp or imod")
    return module


def _watched(run: BatchRun, watch, listed: set[str], settle: float, timeout: float | None) -> Iterator[Path]:
    """Micrographs landing in ``watch`` that are not listed and not finished by an earlier run."""
    from cryopick.distribute.watch import watch_folder
    from cryopick.io.images import IMAGE_SUFFIXES, image_name

    def accept(p: Path) -> bool:
        if p.suffix.lower() not in IMAGE_SUFFIXES or str(p) in listed:
            return False
        name = image_name(p)
        if name not in run.given and not run.redo and run.is_finished(name, p):
            run.given[name] = str(p)  # finished by an earlier run: no need to wait for it to settle
            run.tally.skipped += 1
            return False
        return True

    return watch_folder(watch, accept, settle=settle, timeout=timeout)


def pick_folder(model_dir: str | os.PathLike, micrographs, output_dir: str | os.PathLike, *,
                threshold: float | None = None, min_distance: float | None = None,
                pixel_size: float | None = None, border: float | None = None, detect_padding: bool = True,
                bf16: bool | None = None, num_threads: int | None = None, tta: str | None = None,
                peak_method: str | None = None, **options: Any) -> dict:
    """What ``cryopick pick`` does: load the model, pick ``micrographs`` into ``output_dir``, summarise.

    Picking settings go to :class:`Picker`; ``options`` (``format``, ``overlays``, ``overlay_names``,
    ``redo``, ``project_dir``, ``progress``, ``execution`` or its fields ``engine``, ``prefetch``, ``dask``,
    ``cluster``, ``cluster_config``, ``watching`` or its fields ``watch``, ``watch_timeout``, ``settle``) to
    :func:`pick_micrographs`. The output
    folder and the format are checked before the model is loaded, so a bad ``-o`` fails at once and
    leaves nothing. In the local pipeline the network gets one thread less than the free cores (that
    core reads, preprocesses and writes), unless ``num_threads`` is given.
    """
    from cryopick.io.coords import format_module
    from cryopick.picker2d.outputs import check_output_dir
    from cryopick.runtime import choose_threads

    check_output_dir(output_dir, create=False)
    format_module(options.get("format", "relion"))
    execution, watching = _run_settings(options.pop("execution", None), options.pop("watching", None),
                                        {k: options.pop(k) for k in list(options) if k in RUN_KEYWORDS}, "pick_folder")
    execution.check()
    picker_options = dict(threshold=threshold, min_distance=min_distance, pixel_size=pixel_size, border=border,
                          detect_padding=detect_padding, bf16=bf16, tta=tta, peak_method=peak_method)
    local_threads, threads_reason = num_threads, None
    if num_threads is None and execution.engine == "pipeline":
        free, reason = choose_threads()
        local_threads = max(1, free - 1)
        threads_reason = f"{reason}; the network uses {local_threads}, the rest read, preprocess and write"
    picker = Picker(model_dir, num_threads=local_threads, threads_reason=threads_reason, **picker_options)
    return pick_micrographs(picker, micrographs, output_dir, execution=execution, watching=watching,
                            picker_options={**picker_options, "num_threads": num_threads}, **options)
