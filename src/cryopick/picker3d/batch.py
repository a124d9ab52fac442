"""Pick many tomograms (what ``cryopick pick3d`` does): locally with the next tomogram read ahead, or on
Dask / SLURM through :mod:`cryopick.distribute`, resumable either way.

>>> summary = pick_tomograms("tomos/", ["ribosome.prompt"], output_dir="picks/")             # this machine
>>> summary = pick_tomograms("tomos/", ["ribosome.prompt"], output_dir="picks/", dask="local:2")
>>> summary = pick_tomograms("tomos/", ["ribosome.prompt"], output_dir="picks/",       # the same, as objects
...                          segmentation=Segmentation(window=64), execution=Execution(dask="local:2"))
>>> summary = pick_tomograms("/shared/tomos/", [...], output_dir="picks/", cluster="slurm",
...                          cluster_config="site.yaml")

One tomogram with the whole prompt set is one :class:`~cryopick.distribute.engine.Task` of
:class:`Pick3dJob`: read, check and rescale it (``prepare``), segment and post-process every prompt
(``compute``), draw the slice montages (``finish``; they need the tomogram, which stays where it was
read). On Dask each worker loads the model once (``setup``, cached under :meth:`Pick3dJob.cache_key`,
which holds the model's fingerprint) and sends back only the picks, the tomogram's shape and voxel size
and the montage PNGs (:class:`Picked3d`). This process writes every output as results arrive, exactly
as a local run: the coordinate files, montages, copick picks (``on_picked``), then the record that
marks the tomogram finished, and at the end the RELION indexes and ``summary.json``; so local and Dask
runs resume each other. What every batch shares (folder lock, stale temporaries, settings fingerprint,
input stamps, the write callback, summary and exit codes) is :class:`~cryopick.distribute.runner.BatchRun`;
this module supplies the job and :class:`Pick3dBatch` (the files, the record, the summary).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from cryopick import distribute
from cryopick.config import configure, split_options
from cryopick.distribute import Execution
from cryopick.distribute.engine import Job, Outcome, Task
from cryopick.distribute.runner import Batch, BatchRun, check_unique
from cryopick.errors import CryopickError
from cryopick.io.images import Image, image_name, list_images
from cryopick.models.promptable3d import ProPicker
from cryopick.picker3d.card import load_model, model_fingerprint
from cryopick.picker3d.pick import TomogramPicker, check_prompts
from cryopick.picker3d.predict import Segmentation
from cryopick.picker3d.prefetch import prefetched, prepare_tomogram
from cryopick.picker3d.prompt import Prompt, describe_diameters, load_prompt, prompt_fingerprint
from cryopick.picker3d.settings import PickSettings, resolve_settings
from cryopick.picks import Picks

log = logging.getLogger(__name__)


@dataclass
class Picked3d:
    """The result of one tomogram, small and picklable: its picks (voxels as stored), the tomogram's
    ``shape`` (D, H, W) and ``voxel_size``, and a montage PNG per label when montages were asked for."""

    picks: Picks
    shape: tuple
    voxel_size: float | None
    montages: dict = field(default_factory=dict)


class Pick3dJob(Job):
    """Picking one tomogram with a prompt set, as a job of :mod:`cryopick.distribute`.

    Locally the job carries the loaded model; pickled for Dask it carries only the model's path
    (``None``: the shipped weights), its fingerprint, the prompts and settings, and each worker loads
    the model once and checks it is the client's.
    """

    def __init__(self, model_path: str | None, fingerprint: str, prompts: Sequence[Prompt],
                 settings: Sequence[PickSettings], formats: Sequence[str], *,
                 segmentation: Segmentation | None = None, montage: bool = True, adapted: dict | None = None,
                 save_maps: str | os.PathLike | None = None, progress: bool = False,
                 model: ProPicker | None = None, known=None) -> None:
        self.model_path = None if model_path is None else os.path.abspath(model_path)
        self.fingerprint = fingerprint
        self.prompts, self.settings, self.formats = list(prompts), list(settings), list(formats)
        segmentation = segmentation or Segmentation()
        self.options = segmentation.picker_options()
        self.device, self.montage, self.adapted = segmentation.device, montage, adapted
        self.save_maps, self.progress = save_maps, progress
        self.preloaded = model
        self.known = known  # answers as truth: picks corrected where the user said (fallback.correct_with_answers)

    def cache_key(self) -> str:
        return f"picker3d:{self.model_path}:{self.fingerprint}:{self.device}"

    def setup(self) -> ProPicker:
        from cryopick.distribute.dask_engine import worker_threads

        threads = worker_threads()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        model = load_model(self.model_path, self.device)
        if model_fingerprint(model) != self.fingerprint:
            raise CryopickError(f"{self.model_path or 'the shipped weights'}: the model seen by this worker differs "
                                "from the client's; give a model path all workers share")
        return model

    def prepare(self, model: ProPicker, task: Task) -> tuple[Image, Any]:
        return prepare_tomogram(task.extra.get("source", task.path), self.prompts[0], self.formats)

    def compute(self, model: ProPicker, ready: tuple) -> Picks:
        # A picker per task over the shared model: Dask threads of one worker never share its state.
        picker = TomogramPicker(model, progress=self.progress, **self.options)
        picker.set_working(*ready, self.prompts[0])
        picks = picker.predict(self.prompts, self.settings, save_maps=self.save_maps, adapted=self.adapted)
        if self.known is not None and len(self.known):
            from cryopick.picker3d.fallback import correct_with_answers

            picks = correct_with_answers(picks, self.known, ready[0].name,
                                         {p.label: p.diameter * p.binning for p in self.prompts if p.diameter})
        return picks

    def finish(self, model: ProPicker, ready: tuple, picks: Picks) -> Picked3d:
        image = ready[0]
        montages = {}
        if self.montage:
            from cryopick.picker3d.montage import montage_png

            for p in self.prompts:
                montages[p.label] = montage_png(image, picks._with(picks.table[picks.table["label"] == p.label]),
                                                label=p.label)
        return Picked3d(picks, tuple(int(s) for s in image.shape), image.pixel_size, montages)


@dataclass
class Pick3dBatch(Batch):
    """The 3D outputs of a run, for :class:`~cryopick.distribute.runner.BatchRun`: per tomogram one file
    per format and class (:mod:`cryopick.picker3d.outputs`), a montage per class, ``on_picked``'s
    writes, then its record; at the end the RELION indexes and ``summary.json`` over the folder."""

    out: Path
    formats: list
    labels: list
    montage: bool = True
    distributed: bool = False
    on_picked: Callable[[str, Picks, Picked3d], dict] | None = None
    project_dir: str | os.PathLike | None = None
    info: dict = field(default_factory=dict)  # settings, diameters, engine, ...: copied into the summary

    noun = "tomogram"
    unit = "tomo"
    summary_on_error = True  # the index and summary also cover what finished before Ctrl-C or an error

    def outputs(self, name: str) -> list[Path]:
        from cryopick.picker3d.outputs import output_path

        return [output_path(self.out, f, label, name) for f in self.formats for label in self.labels]

    def montages(self, name: str) -> list[Path]:
        from cryopick.picker3d.outputs import label_folder

        return [self.out / "montage" / f"{name}_{label_folder(label)}.png" for label in self.labels] \
            if self.montage else []

    def extra(self, name: str, source, number: int) -> dict:
        if not isinstance(source, (str, os.PathLike)):  # e.g. a copick run: the task reads it
            return {"number": number, "source": source}
        # Dask workers have their own working folder.
        return {"number": number, **({"source": os.path.abspath(source)} if self.distributed else {})}

    def opened(self, state) -> None:
        from cryopick.picker3d.outputs import migrate_legacy_markers

        migrate_legacy_markers(self.out, state)

    def replaced(self, records: list[dict]) -> None:
        from cryopick.picker3d.outputs import remove_outputs

        log.info("%s: removed %d file(s) made with the earlier settings", self.out, remove_outputs(records, self.out))

    def write(self, outcome: Outcome) -> dict:
        from cryopick.io.atomic import write_bytes
        from cryopick.picker3d.outputs import picks_counts, write_tomogram_picks

        task, picked = outcome.task, outcome.result
        name, picks = task.key, picked.picks
        geometry = getattr(task.extra.get("source"), "geometry", None)  # from a RELION tomograms.star
        written = write_tomogram_picks(picks, self.out, self.formats, name, self.labels, picked.shape, geometry) \
            if self.formats else []
        for label, png in zip(self.labels, self.montages(name)):
            write_bytes(png, picked.montages[label])
            written.append(png)
        extra = self.on_picked(name, picks, picked) if self.on_picked else {}  # e.g. back into a copick project
        counts = picks_counts(picks, self.labels)
        log.info("[%s/%d] %s: %s (%.1f s)", task.extra.get("number", "?"), self.info["n_tomograms"], name,
                 ", ".join(f"{counts[label]} {label or 'particle'}" for label in self.labels), outcome.seconds)
        return {"tomogram": name, "path": task.path, "shape": list(picked.shape), "voxel_size": picked.voxel_size,
                "picks": counts, "files": written, "seconds": round(outcome.seconds, 2),
                **({"worker": outcome.worker} if self.distributed else {}),
                **({"relion": geometry.as_record()} if geometry is not None else {}), **extra}

    def discard(self, task: Task) -> None:
        from cryopick.picker3d.outputs import remove_outputs

        remove_outputs([{"files": self.outputs(task.key) + self.montages(task.key)}])  # no partial set of files

    def failed(self, task: Task, error: str) -> None:
        # Said at once in a run of several; a run of one ends with this error as its message.
        (log.warning if self.info["n_tomograms"] > 1 else log.debug)("[%s/%d] %s: not picked: %s", task.extra.get("number", "?"), self.info["n_tomograms"], task.key,
                    error)

    def summarize(self, run: BatchRun) -> dict:
        from cryopick.io.atomic import write_text
        from cryopick.io.jsonutil import dumps
        from cryopick.picker3d.outputs import rebuild_indexes

        records = run.state.records()
        index = rebuild_indexes(self.out, records, self.labels, self.formats, project_dir=self.project_dir)
        totals = {label: int(sum(r.get("picks", {}).get(label, 0) for r in records)) for label in self.labels}
        failed = [{"tomogram": f["input"], "path": f["path"], "error": f["error"]} for f in run.tally.to_dict()["failed"]]
        summary = {"n_tomograms": run.n_listed, "n_finished": len(records), "n_picked_this_run": run.tally.done,
                   "n_skipped": run.tally.skipped, "n_failed": len(failed), "failed": failed, "picks": totals,
                   "picks_per_tomogram": {r["tomogram"]: r.get("picks", {}) for r in records},
                   "formats": self.formats, "index_files": index, **self.info,
                   "seconds_this_run": round(run.elapsed, 2), "output_dir": self.out}
        write_text(self.out / "summary.json", dumps(summary, indent=1) + "\n")
        return summary


def pick_tomograms(tomograms: str | os.PathLike | Sequence[str | os.PathLike] | None,
                   prompts: Sequence[Prompt | str | os.PathLike], model: ProPicker | str | os.PathLike | None = None,
                   settings: PickSettings | str | os.PathLike | Sequence | None = None,
                   output_dir: str | os.PathLike = "picks", formats: Iterable[str] = ("relion5",), *,
                   segmentation: Segmentation | None = None, execution: Execution | None = None, redo: bool = False,
                   overrides: dict | None = None, save_maps: bool = False, montage: bool = True, progress: bool = True,
                   project_dir: str | os.PathLike | None = None, adapted: dict | None = None, known=None,
                   sources: Sequence | None = None, on_picked: Callable[[str, Picks, Picked3d], dict] | None = None,
                   source_info: dict | None = None, **options) -> dict:
    """Pick tomograms into ``output_dir`` (the batch behind ``cryopick pick3d``); resumable.

    ``tomograms``: files, a folder or a glob; ``prompts``: :class:`Prompt` objects or prompt files;
    ``settings``: ``None`` (the model's recommended settings), one settings object/file, or one per
    prompt; ``overrides``: settings keys replaced in each (e.g. ``{"threshold": 0.6}``); ``adapted``:
    ``{label: AdaptedModel}`` from answers (:func:`cryopick.picker3d.questions.pick_with_answers`); ``known``:
    the answers as truth (:func:`~cryopick.picker3d.fallback.answers_as_truth`) where they were given. Layout of the
    folder: :mod:`cryopick.picker3d.outputs`. ``sources`` (instead of ``tomograms``): objects with ``name``,
    ``path`` (a description) and ``read() -> Image``, e.g. copick runs (:mod:`cryopick.picker3d.copick_runs`);
    ``on_picked(name, picks, picked)`` (``picked``: the :class:`Picked3d`) runs in this process after a
    tomogram's files are written and before it is marked finished, its dict is kept in the record;
    ``source_info`` joins the fingerprint and the summary. ``formats`` may be empty when ``on_picked``
    writes the picks.

    ``segmentation``: the :class:`~cryopick.picker3d.predict.Segmentation` (``stride``, ``window``,
    ``batch_size``, ``bf16``, ``device``); ``execution``: the :class:`~cryopick.distribute.Execution`:
    ``prefetch`` tomograms read, checked and rescaled ahead in a background thread while one is picked
    (:mod:`cryopick.picker3d.prefetch`; ``None``: 1, 0 or ``engine="sequential"``: none), or ``dask``
    (``tcp://HOST:8786`` or ``local[:N]``) / ``cluster="slurm"`` + ``cluster_config``: one Dask task per
    tomogram (see the module docstring; the model must then be a file, or the shipped weights, the workers
    can read, and ``sources`` must pickle, as copick runs do). Their fields may also be given as keywords
    (``window=32``, ``dask="local:2"``), which replace those of the objects given.

    The run is a :class:`~cryopick.distribute.runner.BatchRun`: per tomogram one file per format and class (an
    empty valid file for a class without picks), a slice montage per class (``montage``), then its record
    ``.cryopick/<name>.json``; a rerun skips finished tomograms whose file is unchanged and refuses other model,
    prompts, settings, stride or window unless ``redo``; a tomogram that cannot be picked is listed under
    ``failed`` and the others go on (none picked at all: a :class:`CryopickError` says why). Returns the
    summary written to ``summary.json`` (counts of tomograms listed, finished, picked now, skipped, failed;
    ``failed``; picks per class; index files; seconds), also after an interruption.
    """
    from cryopick.io.atomic import make_output_dir
    from cryopick.picker3d import outputs as O

    seg_keys, run_keys = split_options(options, (Segmentation, Execution), "pick_tomograms")
    segmentation = configure(Segmentation, segmentation, seg_keys, "pick_tomograms")
    execution = configure(Execution, execution, run_keys, "pick_tomograms")
    _check_execution(execution, model, save_maps)
    formats = [] if on_picked and not formats else O.check_formats([formats] if isinstance(formats, str) else formats)
    prompts = _load_prompts(prompts)
    picker = TomogramPicker(model, progress=progress, **segmentation.picker_options(), device=segmentation.device)
    diameters = describe_diameters(prompts, picker.model)  # refuses a particle the network cannot see
    settings_list = resolve_settings(picker.model, settings, len(prompts), overrides, prompt=prompts[0])
    inputs = _inputs(tomograms, sources)
    created = not Path(output_dir).exists()
    out = make_output_dir(output_dir)
    model_id = model_fingerprint(picker.model)
    fingerprint = _fingerprint(model_id, prompts, settings_list, segmentation, source_info, adapted, known)
    info = {"n_tomograms": len(inputs), "settings": settings_list, "diameters": diameters,
            **({"engine": f"dask {execution.dask}" if execution.dask else f"cluster {execution.cluster}"}
               if execution.distributed else {}),
            **({"adapted": {label: a.info for label, a in adapted.items()}} if adapted else {}),
            **({"source": source_info} if source_info else {})}
    batch = Pick3dBatch(out, formats, [p.label for p in prompts], montage, execution.distributed, on_picked,
                        project_dir, info)
    job = Pick3dJob(None if model is None else str(model), model_id, prompts, settings_list, formats,
                    segmentation=segmentation, montage=montage, adapted=adapted,
                    save_maps=out / "maps" if save_maps else None, progress=progress and not execution.distributed,
                    model=picker.model, known=known)

    def execute(tasks: list[Task], write: Callable[[Outcome], None]) -> None:
        if execution.distributed:
            distribute.run(job, tasks, write, **execution.run_options())
        else:
            ahead = 0 if execution.engine == "sequential" else (1 if execution.prefetch is None else execution.prefetch)
            _run_local(job, picker.model, tasks, write, ahead)

    # One overall bar on Dask (locally each tomogram's segmentation has its own).
    return BatchRun(batch, out, fingerprint, redo=redo, created=created).run(
        inputs, execute, progress=progress and execution.distributed)


def _check_execution(execution: Execution, model, save_maps: bool) -> None:
    """Refuse what a Dask / cluster run cannot do, before anything is loaded."""
    execution.check()
    if execution.distributed and isinstance(model, ProPicker):
        raise CryopickError("--dask / --cluster need the model as a file the workers can load (--model PATH, or "
                            "leave it out for the shipped weights)")
    if execution.distributed and save_maps:
        raise CryopickError("--save-maps writes the probability maps where they are computed; pick without "
                            "--dask / --cluster to save them")


def _fingerprint(model_id: str, prompts: list[Prompt], settings_list: list[PickSettings], segmentation: Segmentation,
                 source_info: dict | None, adapted: dict | None, known=None) -> dict:
    """What a rerun into the same folder must match (model, prompts, settings, stride, window, source, answers,
    the answers taken as truth)."""
    fingerprint = {"model": model_id, "prompts": [prompt_fingerprint(p) for p in prompts],
                   "settings": [asdict(s) for s in settings_list], "stride": segmentation.stride,
                   "window": segmentation.window}
    if source_info:
        fingerprint["source"] = source_info
    if adapted:
        fingerprint["adapted"] = {label: a.fingerprint() for label, a in sorted(adapted.items())}
    if known is not None and len(known):
        fingerprint["known"] = known.round(2).to_csv(index=False)
    return fingerprint


def _load_prompts(prompts) -> list[Prompt]:
    """Prompt objects from objects or files, checked (labels unique, one working scale)."""
    if isinstance(prompts, (str, os.PathLike, Prompt)):
        prompts = [prompts]
    prompts = [p if isinstance(p, Prompt) else load_prompt(p) for p in prompts]
    check_prompts(prompts)
    return prompts


def _inputs(tomograms, sources: Sequence | None) -> list[tuple[str, Any]]:
    """``(name, path or source)`` of every tomogram to pick; names must be unique."""
    if sources is None:
        paths = list_images(tomograms if isinstance(tomograms, (str, os.PathLike)) else list(tomograms))
        inputs = [(image_name(p), p) for p in paths]
    else:
        inputs = [(s.name, s) for s in sources]
    check_unique([n for n, _ in inputs], "tomogram")
    return inputs


def _run_local(job: Pick3dJob, model: ProPicker, todo: list[Task], write: Callable[[Outcome], None],
               prefetch: int) -> None:
    """The local loop: the next ``prefetch`` tomograms are read ahead in a background thread while
    one is picked here; a :class:`CryopickError` fails its tomogram alone, any other error stops the run."""
    for task, ready, error in prefetched(todo, lambda t: job.prepare(model, t), ahead=prefetch):
        t0 = time.perf_counter()
        result = None
        if error is None:
            try:
                result = job.finish(model, ready, job.compute(model, ready))
            except CryopickError as exc:
                error = exc
        del ready
        write(Outcome(task, result, None if error is None else str(error), time.perf_counter() - t0, "local"))
