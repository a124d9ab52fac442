"""Display images for the browser: downsampled 8-bit PNGs, cached on disk.

Only what is shown changes (block-mean downsampling to at most :data:`DISPLAY_SIDE` px, percentile
contrast); the data used for training and picking are never touched. The cache key holds the file's
size and modification time, so a replaced micrograph is rendered again.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np

from cryopick.io.atomic import write_bytes

DISPLAY_SIDE = 1024
THUMB_SIDE = 160


def _cache_path(cache_dir: Path, src: Path, kind: str) -> Path:
    st = src.stat()
    key = hashlib.sha256(f"{src}|{st.st_size}|{st.st_mtime_ns}|{kind}".encode()).hexdigest()[:20]
    return cache_dir / f"{key}-{kind}.png"


def image_info(src: Path) -> dict:
    """Width and height (original pixels) and pixel size of a micrograph."""
    from cryopick.io.images import read_micrograph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = read_micrograph(src)
    shape = img.data.shape[-2:]
    return {"width": int(shape[1]), "height": int(shape[0]), "pixel_size": img.pixel_size}


def render(src: Path, cache_dir: Path, kind: str = "display") -> bytes:
    """PNG bytes of ``src`` (``kind`` ``"display"``: longest side <= 1024 px; ``"thumb"``: <= 160 px)."""
    cached = _cache_path(cache_dir, src, kind)
    if cached.is_file():
        return cached.read_bytes()
    from cryopick.io.images import read_micrograph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_micrograph(src).data
    if data.ndim == 3:
        data = data[0]
    side = DISPLAY_SIDE if kind == "display" else THUMB_SIDE
    png = _png(_downsample(np.asarray(data, dtype=np.float32), side))
    write_bytes(cached, png)
    return png


def render_region(src: Path, x0: int, y0: int, x1: int, y1: int) -> bytes:
    """PNG of the original pixels ``[y0:y1, x0:x1]`` (longest side <= 1024 px), for a zoomed-in view.

    The contrast is set on the region itself (display only)."""
    from cryopick.io.images import read_micrograph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = read_micrograph(src).data
    if data.ndim == 3:
        data = data[0]
    h, w = data.shape
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"region x {x0}..{x1}, y {y0}..{y1} is not inside the micrograph ({w} x {h} px)")
    return _png(_downsample(np.asarray(data[y0:y1, x0:x1], dtype=np.float32), DISPLAY_SIDE))


def _png(small: np.ndarray) -> bytes:
    from PIL import Image

    finite = np.isfinite(small)
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
