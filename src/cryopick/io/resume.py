"""Resumable batch runs: which inputs of an output folder are finished, and with what settings.

One mechanism for 2D (``pick``) and 3D (``pick3d``) and any later batch job (the scale-out manifest
grows from it). An output folder holds a hidden ``.cryopick/`` directory:

- ``.cryopick/<name>.json`` — one record per finished input (micrograph or tomogram), written
  atomically *after* every output file of that input, so a record means "finished";
- ``.cryopick/run.json`` — the run's fingerprint (model, prompt, settings as a JSON-able dict).

A rerun with the same fingerprint skips finished inputs; with a different one it refuses (the user
asked for other picks than those on disk) unless told to redo them. Unreadable records (a zero-byte
or truncated file left by a full disk) count as "not finished": the input is picked again, the
damaged record is replaced and a warning names it.

The manifest of a scaled-out run: a record may carry the input's identity (``"input": {"path",
"size", "mtime_ns"}``, see :func:`input_stamp`); :meth:`RunState.is_done` with ``source=`` then
also requires the file to be unchanged, so an input replaced after it was picked is picked again.
:meth:`RunState.lock` keeps two runs from writing into one folder at once (an advisory ``flock``
that dies with its process, so a killed run never leaves a stale lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text
from cryopick.io.jsonutil import dumps

log = logging.getLogger(__name__)

STATE_DIR = ".cryopick"
RUN_FILE = "run.json"
LOCK_FILE = "lock"


def input_stamp(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies an input file's contents cheaply: its path as given, size and mtime (ns)."""
    st = os.stat(path)
    return {"path": str(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


class RunState:
    """Finished-input records of one output folder.

    Parameters
    ----------
    output_dir
        The run's output folder (created if missing).
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir)
        self.dir = self.output_dir / STATE_DIR
        self._pending: dict | None = None  # fingerprint to record with the first finished input

    def path(self, name: str) -> Path:
        """Path of the record of input ``name``."""
        return self.dir / f"{name}.json"

    def record(self, name: str) -> dict | None:
        """The record of a finished input, or ``None`` if not finished (or its record is unreadable)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            log.warning("%s is damaged (e.g. an earlier run stopped on a full disk); %s will be done again",
                        path, name)
            return None
        return data if isinstance(data, dict) else None

    def is_done(self, name: str, *outputs: str | os.PathLike, source: str | os.PathLike | None = None) -> bool:
        """True if ``name`` has a valid record and every one of ``outputs`` exists; with ``source``
        (the input file) also when the record's ``input`` stamp still matches its size and mtime
        (records without a stamp, from earlier versions, are trusted)."""
        record = self.record(name)
        if record is None or not all(Path(p).exists() for p in outputs):
            return False
        stamp = record.get("input")
        if source is None or not isinstance(stamp, dict) or "size" not in stamp:
            return True
        try:
            now = input_stamp(source)
        except OSError:
            return False
        changed = now["size"] != stamp.get("size") or now["mtime_ns"] != stamp.get("mtime_ns")
        if changed:
            log.info("%s changed since it was picked (size or modification time); picking it again", source)
        return not changed

    def mark_done(self, name: str, record: dict[str, Any]) -> Path:
        """Write the record of a finished input (atomically; call after its outputs are written).

        The run's fingerprint (from :meth:`check_fingerprint`) is recorded with the first one, so a run
        that fails before finishing anything leaves no state behind."""
        if self._pending is not None:
            write_text(self.dir / RUN_FILE, dumps(self._pending, indent=1) + "\n")
            self._pending = None
        return write_text(self.path(name), dumps(record) + "\n")

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder's run lock for the ``with`` block; a :class:`CryopickError` when another
        process holds it (two runs writing one folder would interleave their records)."""
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.dir / LOCK_FILE, "a")
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise CryopickError(f"{self.output_dir}: another run is writing into this folder now; wait for it "
                                    "to finish or choose another output folder") from None
            yield self
        finally:
            fh.close()  # releases the lock

    def forget(self, name: str) -> None:
        """Remove the record of ``name`` (it will be done again)."""
        self.path(name).unlink(missing_ok=True)

    def records(self, names: list[str] | None = None) -> list[dict]:
        """Valid records of ``names`` (in that order), or of every finished input (sorted by name)."""
        if names is None:
            names = sorted(p.stem for p in self.dir.glob("*.json") if p.name != RUN_FILE and not p.name.startswith(".")) \
                if self.dir.is_dir() else []
        out = []
        for n in names:
            r = self.record(n)
            if r is not None:
                out.append(r)
        return out

    # -- fingerprint -------------------------------------------------------------------------------
    def check_fingerprint(self, fingerprint: dict[str, Any], redo: bool = False) -> bool:
        """Compare this run's ``fingerprint`` with the one on disk and record it.

        Returns ``True`` when earlier records are still valid (same fingerprint, or none on disk), and
        ``False`` when ``redo`` is set and they differ (the caller then redoes every input). Without
        ``redo`` a difference raises a :class:`CryopickError` naming what changed and the fix.
        """
        path = self.dir / RUN_FILE
        new = json.loads(dumps(fingerprint))
        old = None
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                old = None
        has_records = bool(self.records())
        if old is not None and has_records and old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if not redo:
                raise CryopickError(
                    f"{self.output_dir} holds picks made with other {', '.join(changed)}; pick into a new "
                    f"folder, or give --redo to replace them")
            log.warning("%s: %s changed; redoing every input", self.output_dir, ", ".join(changed))
            for p in self.dir.glob("*.json"):
                if p.name != RUN_FILE:
                    p.unlink()
            write_text(path, dumps(new, indent=1) + "\n")
            return False
        if old != new:
            if has_records:  # a folder of an earlier version: adopt its records under this fingerprint
                write_text(path, dumps(new, indent=1) + "\n")
            else:
                self._pending = new  # written with the first finished input (see mark_done)
        return True
