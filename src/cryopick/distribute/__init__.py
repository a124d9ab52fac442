"""The distribution engine: run one job over many inputs locally (pipelined), on Dask or on SLURM.

A batch command describes what it does to one input as a :class:`~cryopick.distribute.engine.Job`
(``setup`` once per process, ``prepare`` / ``compute`` / ``finish`` per input) and hands the engine
its tasks and an ``on_result`` callback that writes one input's outputs. :func:`run` picks the
executor:

- local (default): :func:`cryopick.distribute.local.run_local`, prefetch threads + the network in
  this thread + a writer thread, bounded queues;
- ``dask="tcp://HOST:8786"`` or ``"local[:N]"``: :func:`cryopick.distribute.dask_engine.run_dask`;
- ``cluster="slurm", cluster_config="site.yaml"``: a dask-jobqueue SLURM cluster with adaptive
  scaling (:mod:`cryopick.distribute.cluster`).

``on_result`` always runs in the client process, one outcome at a time, so writing needs no locks;
it should write atomically and record the input as finished last (:class:`cryopick.io.resume.RunState`).
:mod:`cryopick.distribute.watch` yields inputs as they land; :mod:`cryopick.distribute.summary`
counts outcomes and draws the progress bar; :mod:`cryopick.distribute.runner` is the batch skeleton
around all of it that ``pick`` and ``pick3d`` share (folder lock, stale temporaries, settings
fingerprint, input stamps, the ``on_result`` writer, summary, exit codes).

How ``pick3d`` uses it (one task per tomogram x prompt set)::

    class Pick3dJob(Job):                       # in picker3d/, picklable: paths and settings only
        def cache_key(self): return f"pick3d:{self.weights}:{self.digest}"
        def setup(self): return TomogramPicker(self.weights, ...)          # once per worker
        def prepare(self, picker, task): return read_tomogram(task.path)    # I/O in prefetch threads
        def compute(self, picker, tomo): return picker.probability(tomo, task.extra["prompts"])
        def finish(self, picker, tomo, prob): return picks_per_class(...)  # small, picklable

    tasks = [Task(f"{name}/{prompt_set}", path, {"prompts": ...}) for ...]
    run(job, tasks, write_outputs_and_mark_done, dask=args.dask)   # write_outputs on the client

(For 3D, ``prepare`` should stay light: a tomogram is large, and ``depth`` of them wait in a queue.)
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from cryopick.config import check, check_number, set_field
from cryopick.distribute.engine import Job, Outcome, Task
from cryopick.errors import CryopickError

__all__ = ["Execution", "Job", "Outcome", "Task", "run", "check_options", "ENGINES"]

ENGINES = ("pipeline", "sequential")


@dataclass(frozen=True)
class Execution:
    """Where and how a batch runs (``pick``, ``pick3d``): the settings :func:`run` takes.

    ``engine``: ``"pipeline"`` (overlapped; default) or ``"sequential"`` (no overlap, the reference) on this
    machine; ``prefetch``: how far reading runs ahead locally (``None``: the batch's default); ``dask``
    (``tcp://HOST:8786`` or ``local[:N]``) or ``cluster`` (``"slurm"``) + ``cluster_config`` (site file):
    run on Dask instead (:func:`check_options` checks them before anything heavy is loaded).
    """

    engine: str = "pipeline"
    prefetch: int | None = None
    dask: str | None = None
    cluster: str | None = None
    cluster_config: str | None = None

    def __post_init__(self) -> None:
        check(self, "engine", self.engine in ENGINES, " or ".join(map(repr, ENGINES)))
        check_number(self, "prefetch", 0, integer=True, optional=True)
        for name in ("dask", "cluster"):
            check(self, name, getattr(self, name) is None or isinstance(getattr(self, name), str), "None or a string")
        path = self.cluster_config
        check(self, "cluster_config", path is None or isinstance(path, (str, os.PathLike)), "None or a path")
        set_field(self, "cluster_config", None if path is None else str(path))

    @property
    def distributed(self) -> bool:
        return bool(self.dask or self.cluster)

    def check(self) -> None:
        """:func:`check_options` of the Dask / cluster settings."""
        check_options(self.dask, self.cluster, self.cluster_config)

    def run_options(self) -> dict:
        """The keyword arguments of :func:`run`."""
        return asdict(self)


def check_options(dask: str | None = None, cluster: str | None = None,
                  cluster_config: str | None = None) -> None:
    """Check ``--dask`` / ``--cluster`` / ``--cluster-config`` before anything heavy is loaded (Dask
    installed, the address well formed, the site file valid); one :class:`CryopickError` names the
    option and the fix. Nothing to check for a local run."""
    if dask and cluster:
        raise CryopickError("--dask and --cluster exclude each other: --dask joins or starts a cluster, "
                            "--cluster starts one through the batch system")
    if not (dask or cluster):
        return
    from cryopick.distribute.dask_engine import parse_address, require_dask

    require_dask("--cluster" if cluster else "--dask")
    if dask:
        parse_address(dask)
        return
    if not cluster_config:
        raise CryopickError(f"--cluster {cluster} needs --cluster-config FILE (see `cryopick pick --help`)")
    from cryopick.distribute.cluster import load_cluster_config

    load_cluster_config(cluster_config, cluster)


def run(job: Job, tasks: Iterable[Task], on_result: Callable[[Outcome], Any], *, state: Any = None,
        dask: str | None = None, cluster: str | None = None, cluster_config: str | None = None,
        engine: str = "pipeline", prefetch: int | None = None, retries: int = 2) -> None:
    """Run ``job`` over ``tasks``; ``on_result`` gets each outcome in this process as it finishes.

    ``state``: the job's state when the caller already built it (used by the local engines only).
    ``engine``: ``"pipeline"`` (default) or ``"sequential"`` (no overlap; the reference).
    """
    if dask and cluster:
        raise CryopickError("--dask and --cluster exclude each other: --dask joins or starts a cluster, "
                            "--cluster starts one through the batch system")
    if cluster or dask:
        from cryopick.distribute.dask_engine import connect, run_dask

        if cluster:
            if not cluster_config:
                raise CryopickError(f"--cluster {cluster} needs --cluster-config FILE (see `cryopick pick --help`)")
            from cryopick.distribute.cluster import start_cluster

            client, close = start_cluster(cluster, cluster_config)
        else:
            client, close = connect(dask)
        try:
            run_dask(job, tasks, on_result, client, retries=retries)
        finally:
            close()
        return
    if engine not in ENGINES:
        raise CryopickError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    from cryopick.distribute.local import run_local, run_sequential

    if engine == "sequential":
        run_sequential(job, tasks, on_result, state=state)
    else:
        run_local(job, tasks, on_result, state=state, prefetch=prefetch)
