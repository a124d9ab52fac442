"""Atomic file writing: a temp file in the target directory, renamed into place on success.

An interrupted writer never leaves a half-written output; a reader sees the old file or the new one.
The file gets the mode an ordinary ``open(path, "w")`` would give it (``0o666`` less the umask),
not the private ``0o600`` of :func:`tempfile.mkstemp`, so collaborators and a shared RELION project
can read it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from cryopick.errors import CryopickError

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read from ``/proc`` where possible, so it is never changed, even briefly)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """Mode of a newly created file (``0o666 & ~umask``) or directory (``0o777 & ~umask``)."""
    return (0o777 if directory else 0o666) & ~current_umask()


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give ``tmp`` (a file or directory) the default mode and rename it to ``path`` atomically."""
    tmp = Path(tmp)
    os.chmod(tmp, default_mode(directory=tmp.is_dir()))
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on clean exit it replaces ``path`` atomically.

    The temporary file keeps the final suffix so libraries that dispatch on the extension
    (``mrcfile``, ``starfile``, matplotlib) write the right format. The final file has the mode
    ``0o666 & ~umask`` (see :func:`publish`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        publish(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def make_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the folder ``path`` (with parents) for a command's outputs and check it is writable;
    one-line :class:`CryopickError` naming ``what`` when it is a file, cannot be made or is read-only."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        article = "an" if what[:1] in "aeiou" else "a"
        raise CryopickError(f"{out}: is a file, not {article} {what}: -o names a file, not a folder; "
                            "choose another -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CryopickError(f"{out}: cannot create the {what} ({exc.strerror or exc}); choose another -o") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CryopickError(f"{out}: the {what} is not writable; choose another -o")
    return out


_TEMPORARY = None


def remove_stale_temporaries(directory: str | os.PathLike, recursive: bool = True) -> int:
    """Delete the temporary files of atomic writes that a killed run left in ``directory`` (hidden
    files ``.<stem>.<8 random chars>.tmp<suffix>`` from :func:`atomic_path`, and write probes
    ``.cryopick-write-test-*``); returns how many. Call only while no other run writes there (hold
    :meth:`cryopick.io.resume.RunState.lock`)."""
    import re

    global _TEMPORARY
    if _TEMPORARY is None:
        _TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?$|^\.cryopick-write-test-")
    root = Path(directory)
    if not root.is_dir():
        return 0
    removed = 0
    for path in root.rglob(".*") if recursive else root.glob(".*"):
        if _TEMPORARY.match(path.name) and path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed
