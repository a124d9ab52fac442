"""Display images for the browser: downsampled 8-bit PNGs and a tile pyramid, cached on disk.

Only what is shown changes (block-mean downsampling, percentile contrast); the data used for training
and picking are never touched. Three kinds of image, all cached under the project's
``.cryopick-app/cache/`` (the key holds the file's size and modification time, so a replaced
micrograph is rendered again):

- ``display``: the whole micrograph, longest side <= :data:`DISPLAY_SIDE` px (the first view);
- ``thumb``: longest side <= :data:`THUMB_SIDE` px (the list);
- tiles of the pyramid for zoomed-in views: level ``L`` is the micrograph block-averaged by ``2**L``,
  cut in :data:`TILE` x :data:`TILE` px tiles; the contrast range is set once per level over the whole
  micrograph, so tiles join without seams. The last few decoded micrographs stay in memory, so the
  tiles of a view are cut from one read.

Width, height and pixel size are cached too (``info``), so a micrograph seen before opens without
reading its pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from cryopick.io.atomic import write_bytes

DISPLAY_SIDE = 1024
THUMB_SIDE = 160
TILE = 512
MEMORY_IMAGES = 2  # decoded micrographs kept in memory for cutting tiles
_memory: OrderedDict = OrderedDict()
_memory_lock = threading.Lock()


def _cache_path(cache_dir: Path, src: Path, kind: str, suffix: str = ".png") -> Path:
    st = src.stat()
    key = hashlib.sha256(f"{src}|{st.st_size}|{st.st_mtime_ns}|{kind}".encode()).hexdigest()[:20]
    return cache_dir / f"{key}-{kind}{suffix}"


def _load(src: Path) -> np.ndarray:
    """The micrograph as float32 (2D), from the small in-memory cache when it was read just before."""
    from cryopick.io.images import read_micrograph

    st = src.stat()
    key = (str(src), st.st_size, st.st_mtime_ns)
    with _memory_lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_micrograph(src).data
    data = np.asarray(data[0] if data.ndim == 3 else data, dtype=np.float32)
    with _memory_lock:
        _memory[key] = data
        while len(_memory) > MEMORY_IMAGES:
            _memory.popitem(last=False)
    return data


def image_info(src: Path, cache_dir: Path | None = None) -> dict:
    """Width and height (original pixels), pixel size and pyramid levels of a micrograph (cached)."""
    from cryopick.io.images import read_micrograph

    cached = _cache_path(cache_dir, src, "info", ".json") if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text())
        except (OSError, ValueError):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = read_micrograph(src)
    h, w = (int(v) for v in img.data.shape[-2:])
    info = {"width": w, "height": h, "pixel_size": img.pixel_size, "tile": TILE, "levels": levels(w, h)}
    if cached is not None:
        from cryopick.io.atomic import write_text

        write_text(cached, json.dumps(info))
    return info


def levels(width: int, height: int) -> int:
    """Pyramid levels: level ``L`` (block size ``2**L``) exists while it is finer than the display image."""
    display = int(np.ceil(max(width, height) / DISPLAY_SIDE))
    n = 1
    while 2 ** n < display:
        n += 1
    return n if display > 1 else 0


def render(src: Path, cache_dir: Path, kind: str = "display") -> bytes:
    """PNG bytes of ``src`` (``kind`` ``"display"``: longest side <= 1024 px; ``"thumb"``: <= 160 px)."""
    cached = _cache_path(cache_dir, src, kind)
    if cached.is_file():
        return cached.read_bytes()
    side = DISPLAY_SIDE if kind == "display" else THUMB_SIDE
    png = _png(_downsample(_load(src), side))
    write_bytes(cached, png)
    return png


def render_tile(src: Path, cache_dir: Path, level: int, tx: int, ty: int) -> bytes:
    """PNG of tile ``(tx, ty)`` of pyramid level ``level`` (block size ``2**level``): at most TILE x TILE px
    covering original pixels ``[ty*TILE*2**level, ...)`` x ``[tx*TILE*2**level, ...)``."""
    info = image_info(src, cache_dir)
    if not 0 <= level < max(info["levels"], 1):  # checked first: 2 ** level of a huge number never ends
        raise ValueError(f"level must be between 0 and {max(info['levels'] - 1, 0)}, got {level}")
    cached = _cache_path(cache_dir, src, f"tile{level}-{tx}-{ty}")
    if cached.is_file():
        return cached.read_bytes()
    f = 2 ** level
    span = TILE * f
    if not (0 <= tx * span < info["width"] and 0 <= ty * span < info["height"]):
        raise ValueError(f"tile {tx}, {ty} of level {level} is outside the micrograph "
                         f"({info['width']} x {info['height']} px)")
    data = _load(src)
    lo, hi = _level_range(src, cache_dir, data, f)
    region = data[ty * span:(ty + 1) * span, tx * span:(tx + 1) * span]
    h, w = region.shape[0] // f * f, region.shape[1] // f * f
    if f > 1:
        region = region[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    png = _png(region, (lo, hi))
    write_bytes(cached, png)
    return png


def _level_range(src: Path, cache_dir: Path, data: np.ndarray, f: int) -> tuple[float, float]:
    """Display contrast range of level ``2**f``: percentiles over the whole micrograph (sampled), cached."""
    cached = _cache_path(cache_dir, src, f"range{f}", ".json")
    try:
        return tuple(json.loads(cached.read_text()))
    except (OSError, ValueError):
        pass
    h, w = data.shape[0] // f * f, data.shape[1] // f * f
    step = max(1, int(np.sqrt(h * w / f / f / 250_000)))  # ~250k block means are plenty for percentiles
    rows = np.arange(0, h // f, step)
    sample = data[:h].reshape(h // f, f, w)[rows].mean(axis=1)[:, :w].reshape(len(rows), w // f, f).mean(axis=2)
    finite = sample[np.isfinite(sample)]
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5])) if finite.size else (0.0, 1.0)
    from cryopick.io.atomic import write_text

    write_text(cached, json.dumps([lo, hi]))
    return lo, hi


def render_region(src: Path, x0: int, y0: int, x1: int, y1: int) -> bytes:
    """PNG of the original pixels ``[y0:y1, x0:x1]`` (longest side <= 1024 px), uncached; the contrast is
    set on the region itself (display only). The page itself uses the cached tiles (:func:`render_tile`)."""
    data = _load(src)
    h, w = data.shape
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"region x {x0}..{x1}, y {y0}..{y1} is not inside the micrograph ({w} x {h} px)")
    return _png(_downsample(np.asarray(data[y0:y1, x0:x1], dtype=np.float32), DISPLAY_SIDE))


def _png(small: np.ndarray, contrast: tuple[float, float] | None = None) -> bytes:
    from PIL import Image

    finite = np.isfinite(small)
    if contrast is not None:
        lo, hi = contrast
    else:
        lo, hi = np.percentile(small[finite], [0.5, 99.5]) if finite.any() else (0.0, 1.0)
    scaled = np.clip((np.nan_to_num(small, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((scaled * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _downsample(data: np.ndarray, side: int) -> np.ndarray:
    """Block mean by the smallest integer factor that fits ``side``, then an exact resize."""
    h, w = data.shape
    factor = int(np.ceil(max(h, w) / side))
    if factor > 1:
        hh, ww = h // factor * factor, w // factor * factor
        data = data[:hh, :ww].reshape(hh // factor, factor, ww // factor, factor).mean(axis=(1, 3))
    return data
