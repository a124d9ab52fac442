"""Display images of ``cryopick app``: a 4096² micrograph shows quickly, from the on-disk cache after the first view."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from cryopick.app.images import DISPLAY_SIDE, render, render_region
from cryopick.io.images import write_mrc


def test_large_micrograph_renders_fast_and_is_cached(tmp_path):
    data = np.random.default_rng(0).normal(size=(4096, 4096)).astype(np.float32)
    data[:64, :64] = 50.0  # a bright corner: contrast from percentiles, so it does not wash out the rest
    write_mrc(tmp_path / "big.mrc", data, pixel_size=1.0)
    t0 = time.perf_counter()
    png = render(tmp_path / "big.mrc", tmp_path / "cache")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = render(tmp_path / "big.mrc", tmp_path / "cache")
    cached = time.perf_counter() - t0
    assert png == again and first < 3.0 and cached < 1.0, (first, cached)  # the targets
    img = np.asarray(Image.open(tmp_path / "cache" / next(p.name for p in (tmp_path / "cache").iterdir())))
    assert img.shape == (DISPLAY_SIDE, DISPLAY_SIDE) and img.dtype == np.uint8
    assert 60 < img[100:, 100:].mean() < 200  # noise stays mid-grey
    # a replaced micrograph is rendered again (the cache key holds size and modification time)
    write_mrc(tmp_path / "big.mrc", np.zeros((512, 256), np.float32) + np.arange(256, dtype=np.float32))
    small = np.asarray(Image.open(__import__("io").BytesIO(render(tmp_path / "big.mrc", tmp_path / "cache"))))
    assert small.shape == (512, 256)


def test_regions_for_zoomed_views(tmp_path):
    import io

    import pytest

    data = np.random.default_rng(1).normal(size=(3000, 2000)).astype(np.float32)
    write_mrc(tmp_path / "m.mrc", data)
    img = Image.open(io.BytesIO(render_region(tmp_path / "m.mrc", 100, 200, 400, 350)))
    assert img.size == (300, 150)  # full resolution when it fits
    img = Image.open(io.BytesIO(render_region(tmp_path / "m.mrc", 0, 0, 2000, 3000)))
    assert max(img.size) <= DISPLAY_SIDE
    for box in ((0, 0, 0, 10), (-1, 0, 10, 10), (0, 0, 2001, 10), (10, 10, 5, 20)):
        with pytest.raises(ValueError):
            render_region(tmp_path / "m.mrc", *box)


def test_tile_pyramid_is_cached_and_seamless(tmp_path, monkeypatch):
    import io

    import pytest

    from cryopick.app.images import TILE, image_info, render_tile

    data = np.random.default_rng(2).normal(size=(3000, 2000)).astype(np.float32)
    data[:, 1000:] += 3.0  # right half brighter: per-tile contrast would stretch each tile to full range
    write_mrc(tmp_path / "m.mrc", data)
    cache = tmp_path / "cache"
    info = image_info(tmp_path / "m.mrc", cache)
    assert (info["width"], info["height"], info["tile"], info["levels"]) == (2000, 3000, TILE, 2)
    left = np.asarray(Image.open(io.BytesIO(render_tile(tmp_path / "m.mrc", cache, 0, 0, 0))))
    right = np.asarray(Image.open(io.BytesIO(render_tile(tmp_path / "m.mrc", cache, 0, 3, 0))))
    assert left.shape == (TILE, TILE) and right.shape == (TILE, 2000 - 3 * TILE)
    assert right.mean() > left.mean() + 60  # one contrast range per level: the brighter half stays brighter
    edge = np.asarray(Image.open(io.BytesIO(render_tile(tmp_path / "m.mrc", cache, 1, 1, 2))))
    assert edge.shape == ((3000 - 2048) // 2, (2000 - 1024) // 2)  # level 1: 2x2 blocks, partial edge tile
    for bad in ((2, 0, 0), (0, 4, 0), (0, 0, 6), (-1, 0, 0), (1, -1, 0)):
        with pytest.raises(ValueError):
            render_tile(tmp_path / "m.mrc", cache, *bad)

    # seen before: info and tiles come from the cache, without reading the pixels again
    import cryopick.app.images as images
    import cryopick.io.images

    images._memory.clear()
    monkeypatch.setattr(cryopick.io.images, "read_micrograph", lambda p: (_ for _ in ()).throw(AssertionError(p)))
    assert image_info(tmp_path / "m.mrc", cache) == info
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(render_tile(tmp_path / "m.mrc", cache, 0, 0, 0)))), left)
