"""The job interface of the distribution engine: tasks, outcomes and the four steps of a job.

A *job* is what a batch command does to one input, split into steps so the engine can overlap them
(:mod:`cryopick.distribute.local`) or ship them to Dask workers (:mod:`cryopick.distribute.dask`):

``setup()``
    Load what every input needs (the model). Called once per process: once in the local pipeline,
    once per Dask worker (cached there under :meth:`Job.cache_key`, never shipped with a task).
``prepare(state, task)``
    Read and preprocess one input (I/O and CPU-bound numpy; runs in prefetch threads, so it must not
    touch shared mutable state).
``compute(state, prepared)``
    The network (runs in one thread per process: the main thread locally).
``finish(state, prepared, computed)``
    Post-processing into a small, picklable result (runs in a writer thread locally, on the worker
    with Dask). The *client* then writes the result (``on_result``), so outputs are written by one
    process, atomically, as results arrive.

A job object must be picklable for Dask (keep the model out of its pickled state, see
:meth:`Job.__getstate__`).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from cryopick.errors import CryopickError


@dataclass(frozen=True)
class Task:
    """One input of a batch run: a unique ``key`` (micrograph name; for 3D e.g. ``tomogram/prompt set``),
    the input ``path`` and anything else the job needs (``extra``, picklable)."""

    key: str
    path: str
    extra: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What came back for one task: its ``result`` or, when it failed, an ``error`` (one line)."""

    task: Task
    result: Any = None
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


class Job:
    """Base class of a batch job (see the module docstring). Subclasses override the four steps.

    ``preloaded``: what :meth:`setup` would load, when the caller already holds it (a model in memory).
    :meth:`state` uses it in this process; it is never pickled with a task, so a worker calls :meth:`setup`.
    """

    preloaded: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("preloaded", None)  # the model is loaded on the worker, never shipped with a task
        return state

    def state(self) -> Any:
        """The job's state in this process: ``preloaded`` if set, else :meth:`setup`."""
        return self.setup() if self.preloaded is None else self.preloaded

    def cache_key(self) -> str:
        """Identity of what :meth:`setup` loads (e.g. model path + digest): workers reuse it across tasks."""
        return f"{type(self).__module__}.{type(self).__qualname__}"

    def setup(self) -> Any:
        return None

    def prepare(self, state: Any, task: Task) -> Any:
        return task

    def compute(self, state: Any, prepared: Any) -> Any:
        return None

    def finish(self, state: Any, prepared: Any, computed: Any) -> Any:
        return computed

    def run_one(self, state: Any, task: Task) -> Any:
        """All steps for one task in this thread (what a Dask worker does)."""
        prepared = self.prepare(state, task)
        return self.finish(state, prepared, self.compute(state, prepared))


def describe_error(exc: BaseException) -> str:
    """One line for the summary: a user error's message as it is, otherwise the exception type and
    its first line (and where it was raised), so a bug is told apart from a bad input."""
    if isinstance(exc, CryopickError):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    where = ""
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        frame = tb[-1]
        where = f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
    return f"{type(exc).__name__}: {first}{where}"
