"""Run a :class:`~cryopick.distribute.engine.Job` on Dask: an existing cluster, a ``LocalCluster`` or
a SLURM cluster (:mod:`cryopick.distribute.cluster`).

- ``connect("tcp://HOST:8786")`` joins a running scheduler; ``connect("local")`` / ``"local:N"``
  starts a ``LocalCluster`` of N single-threaded worker processes (default: one per core).
- Each worker loads the job's state once (:func:`worker_state`, cached in the worker process under
  ``job.cache_key()``); tasks carry only the small job object and the task.
- Results stream back with ``as_completed`` and the client calls ``on_result`` for each as it
  arrives, so all outputs are written by the client, atomically. At most ``max_in_flight`` tasks
  are submitted at a time (memory stays flat on the scheduler and the client for 50,000 inputs).
- A worker that dies mid-task: the scheduler runs the task again on another worker (Dask's
  ``allowed-failures``); a task that kills its workers every time comes back as a failed input.
  ``retries`` re-runs a task whose *setup* failed on a worker (e.g. a file system not mounted yet).
  A bad input does not raise on the worker: it comes back as an :class:`Outcome` with its error.

Dask is optional (``pip install cryopick[dask]``); without it these functions raise a
:class:`CryopickError` saying so.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from cryopick.distribute.engine import Job, Outcome, Task, describe_error
from cryopick.errors import CryopickError

INSTALL_HINT = "pip install 'cryopick[dask]'"
_STATES: dict[str, Any] = {}
_STATE_LOCK = threading.Lock()


def require_dask(option: str = "--dask"):
    """Import ``distributed`` or raise a :class:`CryopickError` naming the extra to install."""
    try:
        import distributed
    except ImportError:
        raise CryopickError(f"{option} needs Dask, which is not installed: {INSTALL_HINT}") from None
    return distributed


def parse_address(spec: str) -> tuple[str, int | None]:
    """``"local"``/``"local:N"`` -> ``("local", N or None)``; a scheduler URL -> ``(url, None)``."""
    spec = str(spec).strip()
    if spec == "local" or spec.startswith("local:"):
        n = spec.partition(":")[2]
        if n and (not n.isdigit() or int(n) < 1):
            raise CryopickError(f"--dask {spec}: the worker count after 'local:' must be a whole number >= 1")
        return "local", int(n) if n else None
    if "://" in spec and spec.split("://", 1)[1]:
        return spec, None
    raise CryopickError(f"--dask {spec!r}: give a scheduler address (tcp://HOST:8786) or local[:N] for a "
                        "cluster on this machine")


def connect(spec: str, timeout: float = 20.0):
    """A ``(client, close)`` pair for ``spec`` (see :func:`parse_address`); ``close()`` shuts down
    what this call started (a LocalCluster), or only the client for an existing scheduler."""
    distributed = require_dask()
    address, n = parse_address(spec)
    if address == "local":
        from cryopick.runtime import available_cores

        cluster = distributed.LocalCluster(n_workers=n or available_cores(), threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        client = distributed.Client(cluster)

        def close() -> None:
            client.close()
            cluster.close()

        return client, close
    try:
        client = distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise CryopickError(f"--dask {address}: cannot reach the Dask scheduler ({exc}); is it running "
                            "(`dask scheduler`) and is the address right?") from None
    return client, client.close


def worker_threads() -> int | None:
    """Threads of the Dask worker this runs in (so a job's torch threads match them), else ``None``."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def worker_state(job: Job) -> Any:
    """The job's state in this process, loaded once per ``job.cache_key()`` (on a Dask worker: once
    per worker process, however many tasks it runs)."""
    key = job.cache_key()
    with _STATE_LOCK:
        if key not in _STATES:
            _STATES[key] = job.state()
        return _STATES[key]


def run_task(job: Job, task: Task) -> Outcome:
    """What a Dask worker runs for one task: every step of the job; a bad input becomes the
    outcome's error (a failing setup raises, so Dask retries the task elsewhere)."""
    t0 = time.perf_counter()
    state = worker_state(job)
    try:
        result, error = job.run_one(state, task), None
    except Exception as exc:
        result, error = None, describe_error(exc)
    return Outcome(task, result, error, time.perf_counter() - t0, f"{socket.gethostname()}:{os.getpid()}")


def run_dask(job: Job, tasks: Iterable[Task], on_result: Callable[[Outcome], Any], client,
             retries: int = 2, max_in_flight: int | None = None) -> None:
    """Submit ``tasks`` to ``client`` and call ``on_result`` in this thread as results arrive.

    ``tasks`` may be a lazy iterable that blocks (watch mode): it is read by a feeder thread.
    """
    distributed = require_dask()
    from distributed.scheduler import KilledWorker

    run_id = uuid.uuid4().hex[:8]
    window = int(max_in_flight or max(64, 4 * max(1, len(client.scheduler_info().get("workers", {})))))
    incoming: queue.Queue = queue.Queue(window)
    stop = threading.Event()
    fed_all = threading.Event()
    feed_error: list[BaseException] = []

    def feeder() -> None:
        try:
            for task in tasks:
                while not stop.is_set():
                    try:
                        incoming.put(task, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:
            feed_error.append(exc)
        finally:
            fed_all.set()

    threading.Thread(target=feeder, name="cryopick-dask-feed", daemon=True).start()
    pending = distributed.as_completed()
    in_flight: dict[str, tuple[Task, Any]] = {}
    try:
        while True:
            while len(in_flight) < window:
                try:
                    task = incoming.get_nowait()
                except queue.Empty:
                    break
                key = f"cryopick-{run_id}-{task.key}"
                future = client.submit(run_task, job, task, key=key, retries=retries, pure=False)
                in_flight[key] = (task, future)
                pending.add(future)
            done = pending.next_batch(block=False) if in_flight else []
            for future in done:
                task = in_flight.pop(future.key)[0]
                try:
                    outcome = future.result()
                except KilledWorker:
                    outcome = Outcome(task, error="the Dask workers running this input died every time (out of "
                                                  "memory? a crash in a library?); see the worker logs")
                except Exception as exc:
                    raise CryopickError(f"a Dask worker could not run {task.key} ({describe_error(exc)}); "
                                        "check that the model and the inputs are readable from the workers") from None
                future.release()
                on_result(outcome)
            if feed_error:
                raise feed_error[0]
            if fed_all.is_set() and incoming.empty() and not in_flight:
                break
            if not done:
                time.sleep(0.05)
    finally:
        stop.set()
        if in_flight:  # interrupted: do not leave the cluster working for nobody
            client.cancel([f for _, f in in_flight.values()])
