"""One batch runner for both wings: the resumable skeleton around a :class:`~cryopick.distribute.engine.Job`.

``pick`` (2D) and ``pick3d`` (3D) each supply a :class:`Batch` (their output files, their record, their
summary) and a way to run their job (:func:`cryopick.distribute.run`, or the wing's own local loop);
:class:`BatchRun` does the rest, the same for every wing:

1. **folder lock** — the output folder's lock is held for the whole run (:meth:`RunState.lock`); a second
   run into the folder is refused with a message naming the lock file and the process holding it;
2. **stale temporaries** — temporary files of atomic writes that a killed run left behind are removed;
3. **settings fingerprint** — a rerun with another model or other settings is refused unless ``redo``,
   which replaces the earlier outputs (:meth:`Batch.replaced`) (:meth:`RunState.check_fingerprint`);
4. **manifest with input stamps** — names must be unique; an input is skipped when its record and
   outputs exist and its file is unchanged (size and mtime: the stamp of :func:`input_stamp`), every
   other input is stamped and becomes a :class:`Task`;
5. **write callback** — each outcome is written in this process as it arrives, whichever engine
   computed it: the record is forgotten, the wing writes its files (:meth:`Batch.write`), then the
   record with the input stamp and the settings hash marks the input finished. A failed input (on the
   worker, or a :class:`CryopickError` while writing) has its partial files removed (:meth:`Batch.discard`)
   and is listed; an ``OSError`` while writing (a full disk) stops the run with one line;
6. **summary and exit codes** — the wing summarises over every finished input of the folder
   (:meth:`Batch.summarize`; also after an interruption when :attr:`Batch.summary_on_error`). When not
   one input could be processed and none was finished before, nothing is left behind (a folder this run
   created is removed) and one :class:`CryopickError` says why (exit code 2); when some failed, the
   summary's ``failed`` lists them and the CLI exits with :data:`~cryopick.distribute.summary.EXIT_FAILURES` (3).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from cryopick.distribute.engine import Outcome, Task
from cryopick.distribute.summary import RunTally, progress_bar
from cryopick.errors import CryopickError
from cryopick.io.jsonutil import to_jsonable
from cryopick.io.resume import LOCK_FILE, RunState, input_stamp

log = logging.getLogger(__name__)

#: ``execute(tasks, on_result)``: runs the job over ``tasks``, calling ``on_result`` for each outcome.
Execute = Callable[[Iterable[Task], Callable[[Outcome], None]], None]


def settings_hash(fingerprint: dict) -> str:
    """Short hash of a run's fingerprint (kept in every record)."""
    text = json.dumps(to_jsonable(fingerprint), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_unique(names: Iterable[str], noun: str = "input") -> None:
    """One :class:`CryopickError` when several inputs share a name (their outputs would collide)."""
    dupes = sorted(n for n, k in Counter(names).items() if k > 1)
    if dupes:
        raise CryopickError(f"several {noun}s share the name(s) {', '.join(dupes[:5])}; names must be unique")


class Batch:
    """What a wing supplies to :class:`BatchRun` besides its job: override what applies.

    ``noun`` names an input in messages (``micrograph``, ``tomogram``) and ``unit`` on the progress bar;
    ``summary_on_error``: also summarise when the run stops on an error or Ctrl-C (the summary then
    covers what finished).
    """

    noun = "input"
    unit = "input"
    summary_on_error = False

    def outputs(self, name: str) -> list[Path]:
        """Files a finished input ``name`` must have (else it is done again)."""
        return []

    def stamp(self, source: Any) -> dict | None:
        """The input stamp of ``source`` (path, size, mtime), ``None`` when it is not a file (then a
        finished input counts as finished whatever happened to its source)."""
        return input_stamp(source) if isinstance(source, (str, os.PathLike)) else None

    def extra(self, name: str, source: Any, number: int) -> dict:
        """What the task of input ``name`` carries besides its stamp (``number``: 1-based order)."""
        return {}

    def opened(self, state: RunState) -> None:
        """Called once the folder is locked, before the fingerprint is compared (e.g. old markers)."""

    def replaced(self, records: list[dict]) -> None:
        """The fingerprint changed and ``redo`` was given: the earlier run's ``records`` are gone."""

    def write(self, outcome: Outcome) -> dict:
        """Write the outputs of one finished input; return its record (without stamp and hash).
        A :class:`CryopickError` fails this input alone."""
        return {}

    def discard(self, task: Task) -> None:
        """Remove what a failed input may have left (no partial set of files)."""

    def failed(self, task: Task, error: str) -> None:
        """Say that ``task`` failed (it is listed in the summary either way)."""
        log.warning("%s: failed: %s", task.key, error)

    def interrupted(self) -> bool:
        """Ctrl-C stopped the run: ``True`` ends it normally (with its summary), ``False`` re-raises."""
        return False

    def summarize(self, run: BatchRun) -> dict:
        """The summary over every finished input of the folder (written to it); returned by :meth:`BatchRun.run`."""
        return {"output_dir": run.output_dir, **run.tally.to_dict()}


class BatchRun:
    """One run of a :class:`Batch` into ``output_dir`` (see the module docstring).

    ``fingerprint``: what makes earlier outputs valid (model, settings; JSON-able); ``redo``: redo
    finished inputs (and replace outputs made with another fingerprint); ``created``: the folder was
    made by this run (removed again when not one input could be processed).

    After :meth:`run`: ``tally`` (this run's counts and failures), ``given`` (``{name: path}`` of every
    input of this run), ``todo`` (the tasks of the listed inputs), ``elapsed`` (seconds), ``state``.
    """

    def __init__(self, batch: Batch, output_dir: str | os.PathLike, fingerprint: dict, *, redo: bool = False,
                 created: bool = False) -> None:
        self.batch = batch
        self.output_dir = Path(output_dir)
        self.fingerprint = fingerprint
        self.redo = bool(redo)
        self.created = created
        self.state = RunState(self.output_dir)
        self.tally = RunTally()
        self.given: dict[str, str] = {}
        self.todo: list[Task] = []
        self.n_listed = 0
        self.elapsed = 0.0
        self.settings_hash = settings_hash(fingerprint)
        self._had_state = True  # whether .cryopick/ was there before this run (see _leave_nothing)

    # -- the manifest -----------------------------------------------------------------------------
    def is_finished(self, name: str, source: Any) -> bool:
        """``name`` has its record and outputs, and (for a file) the file is the one that was picked."""
        file = source if isinstance(source, (str, os.PathLike)) else None
        return self.state.is_done(name, *self.batch.outputs(name), source=file)

    def tasks(self, inputs: Iterable[tuple[str, Any]]) -> Iterator[Task]:
        """Tasks of the ``(name, source)`` inputs still to do; the others are counted as skipped (or,
        a second input of one name or an unreadable file, as failed)."""
        for name, source in inputs:
            path = str(getattr(source, "path", source))
            if name in self.given and self.given[name] != path:
                self.tally.add(Outcome(Task(name, path), error=f"another {self.batch.noun} named {name} "
                                                               f"({self.given[name]}) was picked in this run; "
                                                               "names must be unique"))
                continue
            self.given[name] = path
            number = len(self.given)
            if not self.redo and self.is_finished(name, source):
                self.tally.skipped += 1
                continue
            try:
                stamp = self.batch.stamp(source)
            except OSError as exc:
                self.tally.add(Outcome(Task(name, path), error=f"{path}: cannot read ({exc.strerror or exc})"))
                continue
            yield Task(name, path, {**self.batch.extra(name, source, number), "stamp": stamp})

    # -- the write callback -----------------------------------------------------------------------
    def write(self, outcome: Outcome) -> None:
        """Write one outcome (in this process, one at a time): the wing's files, then the record."""
        task = outcome.task
        try:
            self.state.forget(task.key)  # its outputs are being replaced: not finished until the new record
            if outcome.ok:
                try:
                    record = self.batch.write(outcome)
                except CryopickError as exc:
                    outcome = Outcome(task, error=str(exc), seconds=outcome.seconds, worker=outcome.worker)
            if not outcome.ok:
                self.batch.discard(task)
                self.batch.failed(task, outcome.error)
                self.tally.add(outcome)
                return
            stamp = task.extra.get("stamp")
            self.state.mark_done(task.key, {**record, **({"input": stamp} if stamp else {}),
                                            "settings_hash": self.settings_hash})
        except OSError as exc:
            raise CryopickError(f"{self.output_dir}: cannot write the picks of {task.key} ({exc.strerror or exc}); "
                                f"free space or fix permissions and rerun: finished {self.batch.noun}s are "
                                "kept") from None
        self.tally.add(outcome)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, inputs: Iterable[tuple[str, Any]], execute: Execute, *,
            follow: Callable[[BatchRun], Iterable[Task]] | None = None, progress: bool = True,
            desc: str = "picking") -> dict:
        """Run the batch over ``inputs`` (``(name, source)`` pairs) with ``execute`` and return the
        wing's summary. ``follow(run)``: more tasks after the listed ones, as they come (watch mode;
        the bar then has no total)."""
        listed = list(inputs)
        self.n_listed = len(listed)
        with self._locked():
            self._open(listed)
            source: Iterable[Task] = self.todo if follow is None else _chain(self.todo, follow(self))
            self.tally.bar = progress_bar(None if follow is not None else len(self.todo), unit=self.batch.unit,
                                          desc=desc, enabled=progress and (follow is not None or bool(self.todo)))
            start = time.perf_counter()
            finished = False
            try:
                execute(source, self.write)
                finished = True
            except KeyboardInterrupt:
                if not self.batch.interrupted():
                    raise
                finished = True
            finally:
                self.tally.bar.close()
                self.elapsed = time.perf_counter() - start
                if not finished and self.batch.summary_on_error:
                    self._summarize_after_error()
            if not self._nothing_done():
                return self.batch.summarize(self)
        self._leave_nothing()
        failed = self.tally.to_dict()["failed"]
        first = _with_name(failed[0])
        if len(failed) == 1:
            raise CryopickError(first)
        raise CryopickError(f"none of the {len(failed)} {self.batch.noun}s could be picked; the first: {first}")

    def _open(self, listed: list) -> None:
        """Clean the locked folder, compare the fingerprint, make the tasks of the listed inputs."""
        from cryopick.io.atomic import remove_stale_temporaries

        if remove_stale_temporaries(self.output_dir):
            log.info("%s: removed temporary files an interrupted run left behind", self.output_dir)
        self.batch.opened(self.state)
        before = self.state.records()
        if not self.state.check_fingerprint(self.fingerprint, redo=self.redo):
            self.redo = True
            self.batch.replaced(before)
        self.todo = list(self.tasks(listed))
        if self.tally.skipped:
            log.info("%d of %d %ss already picked in %s; skipping them", self.tally.skipped, len(listed),
                     self.batch.noun, self.output_dir)

    def _nothing_done(self) -> bool:
        return not self.tally.done and bool(self.tally.failed) and not self.state.records()

    def _summarize_after_error(self) -> None:
        """The summary of a run stopped by an error or Ctrl-C, without hiding that error."""
        try:
            self.batch.summarize(self)
        except (OSError, CryopickError) as exc:
            log.warning("%s: could not write the summary (%s)", self.output_dir, exc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the folder's lock, saying who holds it (a refused run names the lock and its holder)."""
        had_state = self.state.dir.is_dir()
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(self.state.lock())
        except CryopickError:
            lock = self.state.dir / LOCK_FILE
            holder = _read_holder(lock)
            raise CryopickError(f"{self.output_dir}: another run is writing into this folder now (it holds the lock "
                                f"{lock}{', ' + holder if holder else ''}); wait for it to finish or choose another "
                                "output folder") from None
        self._had_state = had_state
        with stack:
            _claim(self.state.dir / LOCK_FILE)
            try:
                yield
            finally:
                _claim(self.state.dir / LOCK_FILE, "")  # released: nobody holds it

    def _leave_nothing(self) -> None:
        """Not one input could be processed: remove what this run made (the folder, or its state)."""
        if self.created:
            shutil.rmtree(self.output_dir, ignore_errors=True)
        elif not self._had_state:
            with contextlib.suppress(OSError):
                if [p.name for p in self.state.dir.iterdir()] == [LOCK_FILE]:
                    shutil.rmtree(self.state.dir)


def _claim(lock: Path, holder: str | None = None) -> None:
    """Write who holds the lock into the lock file (in place: the lock is on the file itself)."""
    if holder is None:
        holder = (f"process {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime())}\n")
    with contextlib.suppress(OSError), open(lock, "w") as fh:
        fh.write(holder)


def _read_holder(lock: Path) -> str:
    try:
        return lock.read_text().strip().splitlines()[0][:200]
    except (OSError, UnicodeDecodeError, IndexError):
        return ""


def _with_name(failure: dict) -> str:
    """A failure's error, with the input's path in front when the error does not name it."""
    error, path = str(failure["error"]), str(failure.get("path") or failure["input"])
    return error if path in error or Path(path).name in error else f"{path}: {error}"


def _chain(first: Iterable, then: Iterable) -> Iterator:
    yield from first
    yield from then
