"""How many CPU threads PyTorch may use: one policy for the 2D and the 3D commands.

PyTorch's default is one thread per core, whatever else runs. On a shared machine that is the worst
choice: measured on 2 cores with one other single-threaded process running, a 2D training epoch
took 200 s with 2 threads and 17 s on the idle machine, because the two threads of every parallel
operation wait for each other while one of them waits for the busy core. One thread per *free*
core costs a busy machine only its share.

:func:`choose_threads` counts the cores this process may run on (its CPU affinity, capped by a
cgroup CPU quota) and subtracts those kept busy by other processes, measured from ``/proc/stat``
over a short sample (busy time of those cores minus this process's own CPU time; ``os.getloadavg``
where ``/proc/stat`` does not exist). At least one thread is used. :func:`configure_threads`
applies the choice and says what it chose::

    >>> n = configure_threads()          # logs e.g. "using 1 CPU thread: 2 cores, 1.0 busy with other processes"

:func:`show_warnings` makes every warning one line (no file name and line number of the code that
issued it), says a warning only once per run (a category with ``once_per_run = True``, such as a
missing pixel size, only the first time at all), and prints it above any progress bar instead of
through it.

Long runs can re-check between epochs without sleeping: take :func:`cpu_sample` at the start of an
epoch, and pass :func:`busy_other_cores` of it and a sample at the end to ``choose_threads(busy=...)``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

_log = logging.getLogger(__name__)

# A core counts as taken by others when they used more than this fraction of it (so one
# single-threaded process that gets 2/3 of a core next to our 2 threads counts as one core).
BUSY_ROUNDING = 0.5


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU counters at one moment (see :func:`cpu_sample`)."""

    wall: float  # time.monotonic(), s
    own_cpu: float  # this process's CPU time (all threads), s
    busy: float  # busy time summed over the cores we may use, s
    total: float  # busy + idle time summed over those cores, s


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup (v2 ``cpu.max`` or v1 ``cfs_quota_us``), or ``None`` when unlimited."""
    try:
        text = open("/sys/fs/cgroup/cpu.max").read().split()
        if text and text[0] != "max":
            return float(text[0]) / float(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = float(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = float(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def parse_proc_stat(text: str, cpus: set[int] | None = None) -> tuple[float, float]:
    """``(busy, total)`` jiffies summed over the ``cpuN`` lines of ``/proc/stat`` text (only the
    cores in ``cpus`` when given). Busy = user + nice + system + irq + softirq + steal; total adds
    idle and iowait."""
    busy = total = 0.0
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        try:
            index = int(name[3:])
            values = [float(v) for v in fields[:8]] + [0.0] * (8 - len(fields[:8]))
        except ValueError:
            continue
        if cpus is not None and index not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = values
        b = user + nice + system + irq + softirq + steal
        busy += b
        total += b + idle + iowait
    return busy, total


def cpu_sample() -> CpuSample | None:
    """Current CPU counters of the cores this process may use, or ``None`` without ``/proc/stat``."""
    try:
        text = open("/proc/stat").read()
    except OSError:
        return None
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    busy, total = parse_proc_stat(text, cpus)
    return CpuSample(time.monotonic(), time.process_time(), busy / tick, total / tick)


def busy_other_cores(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """Cores kept busy by *other* processes between two samples (busy cores minus this process's
    own CPU use), or ``None`` when it cannot be told."""
    if before is None or after is None:
        return None
    wall = after.wall - before.wall
    total = after.total - before.total
    if wall <= 0 or total <= 0:
        return None
    cores = total / wall  # core-seconds per second over the sampled cores
    busy = (after.busy - before.busy) / wall
    own = (after.own_cpu - before.own_cpu) / wall
    return float(min(cores, max(0.0, busy - own)))


def measure_busy_cores(seconds: float = 0.25) -> float | None:
    """Cores used by other processes now: a ``seconds``-long ``/proc/stat`` sample, else the
    1-minute load average (which may include this process), else ``None``."""
    before = cpu_sample()
    if before is not None:
        time.sleep(seconds)
        busy = busy_other_cores(before, cpu_sample())
        if busy is not None:
            return busy
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def choose_threads(requested: int | None = None, *, cores: int | None = None, busy: float | None = None,
                   sample_seconds: float = 0.25) -> tuple[int, str]:
    """Number of PyTorch threads to use, and a one-line reason.

    Parameters
    ----------
    requested
        A thread count the user asked for (``--threads``): used as given.
    cores
        Cores available to this process (default :func:`available_cores`).
    busy
        Cores kept busy by other processes (default: measured over ``sample_seconds``, see
        :func:`measure_busy_cores`).

    Returns
    -------
    (threads, reason)
        ``threads = max(1, cores - round(busy))``; e.g. ``(1, "using 1 CPU thread: 2 cores, 1.0 busy
        with other processes")``.
    """
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"thread count must be >= 1, got {requested}")
        n = int(requested)
        return n, f"using {n} CPU thread{'s' * (n != 1)} (as requested)"
    cores = available_cores() if cores is None else max(1, int(cores))
    if busy is None:
        busy = measure_busy_cores(sample_seconds)
    if busy is None:
        return cores, f"using {cores} CPU thread{'s' * (cores != 1)}: {cores} cores (load unknown)"
    taken = int(math.floor(max(0.0, busy) + (1 - BUSY_ROUNDING)))
    n = max(1, cores - taken)
    note = "; all busy, so this run gets a share of one (--threads N to override)" if taken >= cores else ""
    return n, (f"using {n} CPU thread{'s' * (n != 1)}: {cores} core{'s' * (cores != 1)}, "
               f"{busy:.1f} busy with other processes{note}")


def configure_threads(requested: int | None = None, log: Callable[[str], object] | None = None,
                      reason: str | None = None, **choose_kwargs) -> int:
    """Choose the thread count (:func:`choose_threads`), apply it with ``torch.set_num_threads``
    and report the reason through ``log`` (default: this module's logger at INFO). Returns it.
    ``reason`` replaces the reported line when the caller chose ``requested`` itself (so it is not
    called "as requested" when the user asked for nothing)."""
    import torch

    n, why = choose_threads(requested, **choose_kwargs)
    torch.set_num_threads(n)
    (log or _log.info)(reason or why)
    return n


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast
    roughly halves network time; elsewhere emulated bf16 is slower than float32. Read once."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def show_warnings(write: Callable[[str], object] | None = None) -> Callable[..., None]:
    """Show warnings as one line each, once per run, above the progress bars; returns the function
    installed as :func:`warnings.showwarning`.

    ``write(text)`` receives the warning's message (default: ``cryopick: warning: <message>`` on
    stderr through ``tqdm.write``, which clears and redraws any progress bar around it). A message is
    shown once; of a category whose ``once_per_run`` attribute is true (e.g.
    :class:`cryopick.io.images.MissingPixelSizeWarning`, raised for every file that lacks a pixel
    size) only the first is shown, saying that it is not repeated.
    """
    seen: set = set()

    def default_write(text: str) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(f"cryopick: warning: {text}", file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            print(f"cryopick: warning: {text}", file=sys.stderr)

    out = write or default_write

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:
        keep = getattr(warnings, "_showwarnmsg_impl", None)
        if keep is not None and getattr(keep, "__name__", "") != "_showwarnmsg_impl":
            # catch_warnings(record=True) is collecting warnings (pytest.warns, a caller's own record):
            # it gets every one of them, as it would without this display.
            keep(warnings.WarningMessage(message, category, filename, lineno, file, line))
        once = bool(getattr(category, "once_per_run", False))
        key = category if once else (category, str(message))
        if key in seen:
            return
        seen.add(key)
        text = str(message)
        out(f"{text} (said once; other files without it are not named)" if once else text)

    warnings.showwarning = showwarning
    return showwarning
