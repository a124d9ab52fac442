"""Watch a folder for inputs as they land (on-the-fly picking during data collection).

:func:`watch_folder` yields each new file once it is complete: either a completion marker
``<file>.done`` exists next to it (written by the acquisition software after the file), or its size
and modification time have not changed for ``settle`` seconds (watched, or by its mtime when first
seen). Files present at the start are
yielded too (a restarted watch resumes; the caller skips what is already finished). It stops when no
new file has appeared for ``timeout`` seconds (``None``: never; Ctrl-C stops it anyway) or when
``stop`` is set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from cryopick.errors import CryopickError

log = logging.getLogger(__name__)
MARKER_SUFFIX = ".done"


def watch_folder(folder: str | os.PathLike, accept: Callable[[Path], bool], settle: float = 5.0,
                 timeout: float | None = None, poll: float | None = None,
                 stop: threading.Event | None = None, clock: Callable[[], float] = time.monotonic) -> Iterator[Path]:
    """Complete files of ``folder`` accepted by ``accept``, each once, as they land.

    Parameters
    ----------
    accept
        Asked once per new file name: ``False`` ignores the file for good (another type, or an input
        finished by an earlier run, which then need not wait for its settle time).
    settle
        Seconds a file's size and mtime must stay unchanged before it is read (when no marker).
    timeout
        Stop after this many seconds without a new complete file (``None``: run until stopped).
    poll
        Seconds between scans (default: a quarter of ``settle``, between 0.05 and 2).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CryopickError(f"--watch {folder}: not a folder; give the folder the micrographs are written to")
    poll = float(poll if poll is not None else min(2.0, max(0.05, settle / 4)))
    seen: set[str] = set()
    pending: dict[str, tuple[tuple[int, int], float]] = {}  # name -> (size, mtime_ns), since when
    last_new = clock()
    log.info("watching %s for new micrographs (complete after %gs unchanged or a %s marker)%s", folder, settle,
             MARKER_SUFFIX, f"; stopping after {timeout:g}s without one" if timeout else "; Ctrl-C to stop")
    while stop is None or not stop.is_set():
        now = clock()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise CryopickError(f"--watch {folder}: cannot list it ({exc.strerror or exc})") from None
        names = {e.name for e in entries}
        for entry in entries:
            if entry.name in seen or entry.name.startswith(".") or entry.name.endswith(MARKER_SUFFIX):
                continue
            path = Path(entry.path)
            if not accept(path):  # asked once per file (e.g. not a micrograph, or already finished)
                seen.add(entry.name)
                continue
            try:
                st = entry.stat()
            except OSError:  # vanished between listing and stat
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            ready = entry.name + MARKER_SUFFIX in names
            if not ready and entry.name not in pending and st.st_size > 0 and time.time() - st.st_mtime >= settle:
                ready = True  # untouched for the settle time already (e.g. there before the watch started)
            if not ready:
                previous = pending.get(entry.name)
                if previous is None or previous[0] != stamp:
                    pending[entry.name] = (stamp, now)
                    continue
                ready = st.st_size > 0 and now - previous[1] >= settle
            if ready:
                seen.add(entry.name)
                pending.pop(entry.name, None)
                last_new = now
                yield path
        if timeout is not None and clock() - last_new >= timeout and not pending:
            log.info("no new micrograph in %s for %gs; stopping (--watch-timeout)", folder, timeout)
            return
        time.sleep(poll)
