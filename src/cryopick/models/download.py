"""Download cache for pretrained weights (Meta's official SAM2 / SAM2.1 checkpoints).

Files live in ``$CRYOPICK_CACHE/weights`` (default ``~/.cache/cryopick/weights``). A download
streams into ``<file>.part`` next to the destination, resumes an interrupted ``.part`` with an
HTTP ``Range`` request, verifies the result and only then renames it into place, so the cache
never holds a half-written checkpoint under its final name. The SHA-256 of every finished file is
written next to it (``<file>.sha256``) and shown by ``cryopick weights list``.

Checksums: Meta publishes no SHA-256 (or size) for these files, and none could be found in a
trustworthy public source, so :data:`OFFICIAL_WEIGHTS` carries ``sha256=None``. Official files
are verified instead by loading them (``torch.load(weights_only=True)``) and checking that they
are SAM2 checkpoints whose image-encoder and mask-decoder tensors fit the named configuration
exactly. A user who has a checksum can pass it (``--sha256``) and it is enforced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable

from cryopick.errors import CryopickError
from cryopick.io.atomic import write_text

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsFile:
    """One downloadable weights file."""

    name: str  # cryopick model name, e.g. "sam2.1-hiera-large"
    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None  # bytes, when known


def _official() -> dict[str, WeightsFile]:
    files = {}
    for family, date in (("sam2", "072824"), ("sam2.1", "092824")):
        for size, stem in (("tiny", "tiny"), ("small", "small"), ("base-plus", "base_plus"), ("large", "large")):
            filename = f"{family}_hiera_{stem}.pt"
            name = f"{family}-hiera-{size}"
            files[name] = WeightsFile(name, filename,
                                      f"https://dl.fbaipublicfiles.com/segment_anything_2/{date}/{filename}")
    return files


OFFICIAL_WEIGHTS: dict[str, WeightsFile] = _official()


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The weights directory: ``cache`` if given, else ``$CRYOPICK_CACHE/weights`` or ``~/.cache/cryopick/weights``."""
    if cache is not None:
        return Path(cache)
    root = os.environ.get("CRYOPICK_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "cryopick") / "weights"


def get_entry(name: str) -> WeightsFile:
    """Look up a weights file by model name (or by its file name)."""
    if name in OFFICIAL_WEIGHTS:
        return OFFICIAL_WEIGHTS[name]
    for entry in OFFICIAL_WEIGHTS.values():
        if entry.filename == name:
            return entry
    raise CryopickError(f"unknown weights {name!r}; known: {', '.join(OFFICIAL_WEIGHTS)}")


def weights_path(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Where ``name``'s file is (or would be) in the cache."""
    return cache_dir(cache) / get_entry(name).filename


def list_weights(cache: str | os.PathLike | None = None) -> list[dict]:
    """One row per known file: name, filename, url, path, present, bytes, sha256 (from the sidecar)."""
    rows = []
    for entry in OFFICIAL_WEIGHTS.values():
        path = cache_dir(cache) / entry.filename
        sidecar = path.with_name(path.name + ".sha256")
        part = path.with_name(path.name + ".part")
        rows.append({
            "name": entry.name, "filename": entry.filename, "url": entry.url, "path": str(path),
            "present": path.is_file(),
            "bytes": path.stat().st_size if path.is_file() else (part.stat().st_size if part.is_file() else 0),
            "partial": part.is_file() and not path.is_file(),
            "sha256": sidecar.read_text().split()[0] if sidecar.is_file() and path.is_file() else None,
        })
    return rows


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, leave=False)


def download_url(url: str, dest: str | os.PathLike, sha256: str | None = None, size: int | None = None,
                 verify: Callable[[Path], None] | None = None, retries: int = 3, timeout: float = 60.0,
                 progress: bool = True, retry_wait: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming an earlier partial download.

    Parameters
    ----------
    url
        HTTP(S) URL.
    dest
        Final path. Data goes to ``dest + ".part"`` first; ``dest`` appears only when complete and
        verified. An existing ``dest`` is kept (finished work is skipped) unless its checksum is
        known and differs.
    sha256, size
        Expected SHA-256 (hex) and size in bytes, when known; a mismatch raises
        :class:`CryopickError` and removes the bad partial file.
    verify
        Extra check on the finished ``.part`` file before it is renamed (raise to reject).
    retries
        How many times an interrupted transfer is resumed within this call.
    timeout
        Socket timeout in seconds.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    sidecar = dest.with_name(dest.name + ".sha256")
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256.lower():
            log.info("%s already present", dest)
            return dest
        raise CryopickError(f"{dest} exists but its SHA-256 differs from the expected {sha256}; "
                            f"delete it and download again")

    attempt = 0
    while True:
        try:
            _fetch(url, part, timeout=timeout, progress=progress, desc=dest.name)
            break
        except (urllib.error.URLError, HTTPException, OSError, _Incomplete) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                raise CryopickError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
            got = part.stat().st_size if part.is_file() else 0
            if attempt >= retries:
                raise CryopickError(f"download of {url} interrupted after {got} bytes ({exc}); the partial file "
                                    f"{part} is kept: rerun the same command to resume") from None
            attempt += 1
            log.warning("download interrupted after %d bytes (%s); resuming (%d/%d)", got, exc, attempt, retries)
            time.sleep(retry_wait)

    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise CryopickError(f"download of {url} has {got} bytes, expected {size}; the bad file was removed, "
                            f"rerun to download again")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise CryopickError(f"checksum mismatch for {url}: expected SHA-256 {sha256.lower()}, got {digest}; "
                            f"the bad file was removed, rerun to download again (or check the URL)")
    if verify is not None:
        try:
            verify(part)
        except CryopickError as exc:
            part.unlink()
            raise CryopickError(f"downloaded {url} but it failed verification ({exc}); the file was removed") \
                from None
    os.replace(part, dest)
    write_text(sidecar, f"{digest}  {dest.name}\n")
    return dest


class _Incomplete(Exception):
    """The server closed the connection before sending all announced bytes."""


def _fetch(url: str, part: Path, timeout: float, progress: bool, desc: str) -> None:
    """Append the rest of ``url`` to ``part`` (Range request when ``part`` has data)."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "cryopick"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the partial file is complete
            return
        raise
    with response:
        status = response.status
        if offset and status == 206:
            start = int(response.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
            if start != offset:
                raise _Incomplete(f"server resumed at byte {start}, expected {offset}")
            mode = "ab"
        else:  # 200: the server ignores Range (or there was nothing to resume): start over
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None else None
        total = offset + remaining if remaining is not None else None
        received = 0
        with open(part, mode) as f, _progress(total, offset, desc, progress) as bar:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if remaining is not None and received < remaining:
            raise _Incomplete(f"connection closed after {received} of {remaining} bytes")
