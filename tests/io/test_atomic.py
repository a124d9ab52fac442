"""Atomic writes give files the umask's mode (0o666 & ~umask), not mkstemp's private 0o600."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import numpy as np
import pytest

from cryopick.io.atomic import atomic_path, current_umask, write_bytes, write_text
from cryopick.io.coords import write_picks
from cryopick.io.images import write_mrc, write_ome_zarr, write_png
from cryopick.picks import Picks


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_respect_the_umask(tmp_path, mask):
    with umask(mask):
        assert current_umask() == mask
        write_text(tmp_path / "a.txt", "x")
        write_bytes(tmp_path / "b.bin", b"x")
        with atomic_path(tmp_path / "c.npy") as tmp:
            np.save(tmp, np.zeros(3))
        write_mrc(tmp_path / "m.mrc", np.zeros((8, 8), np.float32), pixel_size=1.0)
        write_png(tmp_path / "p.png", np.arange(64.0).reshape(8, 8))
        picks = Picks.from_arrays("mic", np.array([[1.0, 2.0], [3.0, 4.0]]), score=0.5)
        files = write_picks(picks, tmp_path / "star", "relion")
        write_ome_zarr(tmp_path / "v.zarr", np.zeros((4, 4, 4), np.float32), pixel_size=1.0)
        write_ome_zarr(tmp_path / "new" / "w.zarr", np.zeros((4, 4, 4), np.float32))  # parent made too
    for name in ("a.txt", "b.bin", "c.npy", "m.mrc", "p.png", *[f.relative_to(tmp_path) for f in files]):
        assert _mode(tmp_path / name) == 0o666 & ~mask, name
    assert _mode(tmp_path / "v.zarr") == _mode(tmp_path / "new" / "w.zarr") == 0o777 & ~mask
    assert not [p for p in tmp_path.rglob(".*tmp*")], "no temporary file left behind"


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
