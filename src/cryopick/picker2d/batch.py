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
in ``summary.json`` and the run goes on (exit code 3 from the CLI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cryopick.distribute.engine import Job, Outcome, Task
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


def _settings_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(fingerprint), sort_keys=True, default=str).encode()).hexdigest()[:16]


def pick_micrographs(picker: Picker, micrographs, output_dir: str | os.PathLike, format: str = "relion",
                     overlays: int = 3, overlay_names: Iterable[str] | None = None, redo: bool = False,
                     resume: bool = True, project_dir: str | os.PathLike | None = None, progress: bool = True,
                     threshold: float | None = None, min_distance: float | None = None,
                     engine: str = "pipeline", prefetch: int | None = None, dask: str | None = None,
                     cluster: str | None = None, cluster_config: str | os.PathLike | None = None,
                     watch: str | os.PathLike | None = None, watch_timeout: float | None = None,
                     settle: float | None = None, picker_options: dict | None = None) -> dict:
    """Pick ``micrographs`` (a list, folder or glob; or ``None`` with ``watch``) into ``output_dir``.

    Per micrograph: the coordinate file in ``format`` (RELION: ``<name>_autopick.star``), an overlay PNG
    for the first ``overlays`` micrographs or those in ``overlay_names``, then the record that marks it
    finished (see the module docstring). A rerun with another model or other settings into a folder
    with finished picks is refused unless ``redo`` (``resume=False`` is the same). At the end, over
    every finished micrograph of the folder: the RELION ``autopick.star`` index, ``summary.json``
    (with this run's picked / skipped / failed counts and failures), ``summary.csv``,
    ``score_histogram.png`` (:func:`cryopick.picker2d.outputs.write_summary`).

    ``engine``: ``"pipeline"`` (overlapped; default) or ``"sequential"``; ``prefetch``: preparing
    threads. ``dask`` / ``cluster`` + ``cluster_config``: run on Dask instead (the workers need
    ``picker_options``, the :class:`Picker` keyword arguments). ``watch``: also pick micrographs as
    they land in that folder, once complete (``settle`` seconds unchanged, default 5, or a
    ``<file>.done`` marker), until ``watch_timeout`` seconds pass without a new one.
    """
    from cryopick import distribute
    from cryopick.distribute.summary import RunTally, progress_bar
    from cryopick.io.atomic import remove_stale_temporaries
    from cryopick.io.coords import format_module
    from cryopick.io.images import IMAGE_SUFFIXES, image_name, list_images
    from cryopick.io.resume import RunState, input_stamp
    from cryopick.picker2d.outputs import check_output_dir, write_overlay

    paths = [] if micrographs is None else list_images(
        list(micrographs) if isinstance(micrographs, (list, tuple)) else micrographs)
    if micrographs is None and watch is None:
        raise CryopickError("give the micrographs to pick (--micrographs) or a folder to watch (--watch)")
    names = [image_name(p) for p in paths]
    dupes = {n for n, k in Counter(names).items() if k > 1}
    if dupes:
        raise CryopickError(f"several micrographs share the name(s) {', '.join(sorted(dupes)[:5])}; names must be unique")
    module = format_module(format)
    if 2 not in getattr(module, "NDIM", (2,)):
        raise CryopickError(f"format {module.NAME!r} holds 3D picks only; choose relion, cryolo, eman2, topaz, cryoppp or imod")
    threshold = check_number("threshold", threshold, 0.0, 1.0)
    min_distance = check_number("min_distance", min_distance, 0.0)
    watch_timeout = check_number("watch_timeout", watch_timeout, 0.0, low_open=True)
    settle = 5.0 if settle is None else check_number("settle", settle, 0.0)
    n_overlays = int(check_number("overlays", overlays, 0.0) or 0)
    unknown = sorted(set(overlay_names or ()) - set(names)) if watch is None else []
    if unknown:
        raise CryopickError(f"--overlay {', '.join(unknown[:5])}: no such micrograph among the {len(names)} given "
                            f"(names are file names without extension, e.g. {names[0]})")
    created = not Path(output_dir).exists()
    output_dir = check_output_dir(output_dir)
    state = RunState(output_dir)
    thr = picker.threshold if threshold is None else threshold
    md = picker.min_distance if min_distance is None else min_distance
    settings = {**picker.settings(), "threshold": thr, "min_distance": md}
    digest = model_digest(picker.model_dir)
    fingerprint = {"model": digest, **settings}
    settings_hash = _settings_hash(fingerprint)
    tally = RunTally()

    def out_file(name: str) -> Path:
        return output_dir / f"{name}{module.DEFAULT_SUFFIX}"

    wanted = set(overlay_names or ())
    given: dict[str, str] = {}

    def tasks(candidates: Iterable[Path]) -> Iterator[Task]:
        for path in candidates:
            name = image_name(path)
            if name in given and given[name] != str(path):
                tally.add(Outcome(Task(name, str(path)), error=f"another micrograph named {name} ({given[name]}) "
                                                               "was picked in this run; names must be unique"))
                continue
            given[name] = str(path)
            if not redo and state.is_done(name, out_file(name), source=path):
                tally.skipped += 1
                continue
            try:
                stamp = input_stamp(path)
            except OSError as exc:
                tally.add(Outcome(Task(name, str(path)), error=f"{path}: cannot read ({exc.strerror or exc})"))
                continue
            overlay = name in wanted if overlay_names else len(given) <= n_overlays
            yield Task(name, str(path), {"overlay": overlay, "stamp": stamp})

    def write(outcome: Outcome) -> None:
        task = outcome.task
        if not outcome.ok:  # listed in the summary; said at once only while watching (a long run)
            (log.warning if watch is not None else log.debug)("%s: failed: %s", task.key, outcome.error)
            tally.add(outcome)
            return
        picked: Picked = outcome.result
        try:
            picks = picked.picks
            module.write(picks if len(picks) else Picks.empty(pixel_size=picks.pixel_size), out_file(task.key))
            if picked.overlay is not None:
                display, frame, diameter, area = picked.overlay
                write_overlay(display, frame, picks, output_dir / "overlays" / f"{task.key}.png", diameter,
                              threshold=thr, area=area, title=f"{task.key}: {len(picks)} picks")
            state.mark_done(task.key, {**picked.record, "path": task.path, "abspath": os.path.abspath(task.path),
                                       "input": task.extra["stamp"], "model": digest, "settings_hash": settings_hash,
                                       "seconds": round(outcome.seconds, 3), "worker": outcome.worker})
        except OSError as exc:
            raise CryopickError(f"{output_dir}: cannot write the picks of {task.key} ({exc.strerror or exc}); free "
                                "space or fix permissions and rerun: finished micrographs are kept") from None
        tally.add(outcome)

    redo = redo or not resume
    with state.lock():
        if remove_stale_temporaries(output_dir):
            log.info("%s: removed temporary files an interrupted run left behind", output_dir)
        if not state.check_fingerprint(fingerprint, redo=redo):
            redo = True
        todo = list(tasks(paths))
        if tally.skipped:
            log.info("%d of %d micrographs already picked in %s; skipping them", tally.skipped, len(paths),
                     output_dir)
        source: Iterable[Task] = todo
        if watch is not None:
            from cryopick.distribute.watch import watch_folder

            suffixes, listed = IMAGE_SUFFIXES, {str(p) for p in paths}

            def accept(p: Path) -> bool:
                if p.suffix.lower() not in suffixes or str(p) in listed:
                    return False
                name = image_name(p)
                if name not in given and not redo and state.is_done(name, out_file(name), source=p):
                    given[name] = str(p)  # finished by an earlier run: no need to wait for it to settle
                    tally.skipped += 1
                    return False
                return True

            source = _chain(todo, tasks(watch_folder(watch, accept, settle=settle, timeout=watch_timeout)))
        start = time.perf_counter()
        tally.bar = progress_bar(None if watch is not None else len(todo), enabled=progress)
        job = Pick2dJob(picker.model_dir, picker_options or {}, thr, md, digest, picker=picker,
                        fft_threads=1 if engine == "pipeline" and not (dask or cluster) else None)
        try:
            distribute.run(job, source, write, state=picker, dask=dask, cluster=cluster,
                           cluster_config=None if cluster_config is None else str(cluster_config),
                           engine=engine, prefetch=prefetch)
        except KeyboardInterrupt:
            if watch is None:
                raise
            log.info("stopped watching %s (Ctrl-C); the summary covers what was picked", watch)  # the usual end
        finally:
            tally.bar.close()
        elapsed = time.perf_counter() - start
        nothing = not tally.done and tally.failed and not state.records()
        if not nothing:
            return _finish(state, picker, todo, output_dir, given, module, thr, elapsed, tally, settings, project_dir)
    # Every micrograph failed and nothing was picked before: a user error, and no output folder left.
    if created:
        shutil.rmtree(output_dir, ignore_errors=True)
    first = tally.to_dict()["failed"][0]["error"]
    if len(tally.failed) == 1:
        raise CryopickError(first)
    raise CryopickError(f"none of the {len(tally.failed)} micrographs could be picked; the first: {first}")


def _finish(state, picker: Picker, todo: list, output_dir: Path, given: dict, module, thr: float, elapsed: float,
            tally, settings: dict, project_dir) -> dict:
    """Log the edge drops of this run and write the summary over the folder (see :func:`pick_micrographs`)."""
    from cryopick.picker2d.outputs import write_summary

    total_edge = sum(int(r.get("n_edge", 0) or 0) for r in state.records([t.key for t in todo]))
    if total_edge:
        log.info("dropped %d picks in padding bands or within %s of the micrograph edges (border)",
                 total_edge, "one particle radius" if picker.border is None else f"{picker.border:g} px")
    return write_summary(output_dir, given, module, thr, picker.model_dir, elapsed, tally.done,
                         settings=settings, project_dir=project_dir, run=tally.to_dict())


def _chain(first: list, then: Iterator) -> Iterator:
    yield from first
    yield from then


def pick_folder(model_dir: str | os.PathLike, micrographs, output_dir: str | os.PathLike, *,
                threshold: float | None = None, min_distance: float | None = None,
                pixel_size: float | None = None, border: float | None = None, detect_padding: bool = True,
                bf16: bool | None = None, num_threads: int | None = None, tta: str | None = None,
                peak_method: str | None = None, **options: Any) -> dict:
    """What ``cryopick pick`` does: load the model, pick ``micrographs`` into ``output_dir``, summarise.

    Picking settings go to :class:`Picker`; ``options`` (``format``, ``overlays``, ``overlay_names``,
    ``redo``, ``project_dir``, ``progress``, ``engine``, ``prefetch``, ``dask``, ``cluster``,
    ``cluster_config``, ``watch``, ``watch_timeout``, ``settle``) to :func:`pick_micrographs`. The output
    folder and the format are checked before the model is loaded, so a bad ``-o`` fails at once and
    leaves nothing. In the local pipeline the network gets one thread less than the free cores (that
    core reads, preprocesses and writes), unless ``num_threads`` is given.
    """
    from cryopick.io.coords import format_module
    from cryopick.picker2d.outputs import check_output_dir
    from cryopick.runtime import choose_threads

    check_output_dir(output_dir, create=False)
    format_module(options.get("format", "relion"))
    from cryopick.distribute import check_options

    check_options(options.get("dask"), options.get("cluster"), options.get("cluster_config"))
    picker_options = dict(threshold=threshold, min_distance=min_distance, pixel_size=pixel_size, border=border,
                          detect_padding=detect_padding, bf16=bf16, tta=tta, peak_method=peak_method)
    local_threads, threads_reason = num_threads, None
    if num_threads is None and options.get("engine", "pipeline") == "pipeline":
        free, reason = choose_threads()
        local_threads = max(1, free - 1)
        threads_reason = f"{reason}; the network uses {local_threads}, the rest read, preprocess and write"
    picker = Picker(model_dir, num_threads=local_threads, threads_reason=threads_reason, **picker_options)
    return pick_micrographs(picker, micrographs, output_dir, picker_options={**picker_options,
                                                                             "num_threads": num_threads}, **options)
