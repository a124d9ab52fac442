"""The local pipeline: read and preprocess in prefetch threads, the network in the calling thread,
post-processing and writing in a writer thread, with bounded queues between them.

::

    tasks -> [feeder] -> q(depth) -> [prepare x N threads] -> q(depth) -> [compute: caller's thread]
          -> q(depth) -> [finish + on_result: 1 writer thread]

Memory stays flat whatever the number of inputs: at most ``depth`` items wait in each queue and one
is in each stage (each prepared item is a working-scale image, not the full-size micrograph). The
task iterable is consumed lazily by a feeder thread, so it may block (watch mode waits for files).
A failing step fails only its task (its :class:`~cryopick.distribute.engine.Outcome` carries the
error); an exception from ``on_result`` (e.g. a full disk) or Ctrl-C stops the pipeline and is
raised in the caller's thread once the writer has finished the output in hand.

:func:`run_sequential` is the same job without any overlap (one input after the other), the
reference the pipeline is measured and tested against.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterable

from cryopick.distribute.engine import Job, Outcome, Task, describe_error
from cryopick.runtime import available_cores

_END = object()
_POLL = 0.1  # s: how often blocked threads look at the stop flag


def default_prefetch(cores: int | None = None) -> int:
    """Prefetch (read + preprocess) threads for a machine: one per core beyond the network's, at
    least 2 (on 2 cores the single-threaded network, two preparing threads and the writer share the
    cores fully; with one preparing thread the network's core idles while it waits), at most 4."""
    cores = available_cores() if cores is None else max(1, int(cores))
    return min(4, max(2, cores - 1))


def run_sequential(job: Job, tasks: Iterable[Task], on_result: Callable[[Outcome], Any], state: Any = None) -> None:
    """Every step of every task in this thread, one task after the other (no overlap)."""
    state = job.state() if state is None else state
    for task in tasks:
        t0 = time.perf_counter()
        try:
            result, error = job.run_one(state, task), None
        except Exception as exc:  # one bad input fails alone
            result, error = None, describe_error(exc)
        on_result(Outcome(task, result, error, time.perf_counter() - t0, "local"))


def run_local(job: Job, tasks: Iterable[Task], on_result: Callable[[Outcome], Any], state: Any = None,
              prefetch: int | None = None, depth: int | None = None) -> None:
    """Run ``job`` over ``tasks`` as a pipeline (see the module docstring); ``on_result`` gets every
    :class:`Outcome` in the writer thread, one at a time, in the order they finish.

    Parameters
    ----------
    state
        What :meth:`Job.setup` returns, when the caller already has it (default: call it).
    prefetch
        Preparing threads (default :func:`default_prefetch`).
    depth
        Capacity of each queue (default ``max(2, prefetch)``).
    """
    state = job.state() if state is None else state
    n_prep = max(1, int(prefetch or default_prefetch()))
    depth = max(1, int(depth or max(2, n_prep)))
    stop = threading.Event()
    fatal: list[BaseException] = []
    feed_q: queue.Queue = queue.Queue(depth)
    prep_q: queue.Queue = queue.Queue(depth)
    done_q: queue.Queue = queue.Queue(depth)

    def put(q: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def get(q: queue.Queue):
        while not stop.is_set():
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue
        return _END

    def fail(exc: BaseException) -> None:
        fatal.append(exc)
        stop.set()

    def feeder() -> None:
        try:
            for task in tasks:
                if not put(feed_q, task):
                    return
        except BaseException as exc:  # the task source itself broke (e.g. the watched folder vanished)
            fail(exc)
        finally:
            for _ in range(n_prep):
                put(feed_q, _END)

    def preparer() -> None:
        while (task := get(feed_q)) is not _END:
            t0 = time.perf_counter()
            try:
                item = (task, job.prepare(state, task), None, t0)
            except Exception as exc:
                item = (task, None, describe_error(exc), t0)
            if not put(prep_q, item):
                return
        put(prep_q, _END)

    def writer() -> None:
        try:
            while (item := get(done_q)) is not _END:
                task, prepared, computed, error, t0 = item
                result = None
                if error is None:
                    try:
                        result = job.finish(state, prepared, computed)
                    except Exception as exc:
                        error = describe_error(exc)
                del prepared, computed, item
                on_result(Outcome(task, result, error, time.perf_counter() - t0, "local"))
        except BaseException as exc:
            fail(exc)

    threads = [threading.Thread(target=feeder, name="cryopick-feed", daemon=True)]
    threads += [threading.Thread(target=preparer, name=f"cryopick-prepare-{i}", daemon=True) for i in range(n_prep)]
    write_thread = threading.Thread(target=writer, name="cryopick-write", daemon=True)
    for t in threads + [write_thread]:
        t.start()
    try:
        ended = 0
        while ended < n_prep and not stop.is_set():
            item = get(prep_q)
            if item is _END:
                ended += 1
                continue
            task, prepared, error, t0 = item
            computed = None
            if error is None:
                try:
                    computed = job.compute(state, prepared)
                except Exception as exc:
                    error = describe_error(exc)
            if not put(done_q, (task, prepared, computed, error, t0)):
                break
            del prepared, computed, item
        put(done_q, _END)
        while write_thread.is_alive():  # a loop, so Ctrl-C still reaches this thread
            write_thread.join(_POLL)
    except BaseException:
        stop.set()
        write_thread.join(10.0)  # let the output in hand be completed (it is written atomically anyway)
        raise
    finally:
        stop.set()
    if fatal:
        raise fatal[0]
