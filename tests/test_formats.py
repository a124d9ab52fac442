"""Coordinate formats: round trips, files laid out as the tools write them, conversion chains, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryopick import CryopickError, Picks
from cryopick.io.coords import match_micrograph_names, read_picks, write_picks
from cryopick.io.formats import relion

DATA = Path(__file__).parent / "data" / "formats"


def _picks2d(n_mics: int = 2, per_mic: int = 5, seed: int = 0, pixel_size: float | None = 1.5) -> Picks:
    rng = np.random.default_rng(seed)
    parts = []
    for m in range(n_mics):
        xy = np.round(rng.uniform(60, 4000, size=(per_mic, 2)), 2)
        parts.append(pd.DataFrame({"micrograph": f"mic_{m:03d}", "x": xy[:, 0], "y": xy[:, 1],
                                   "score": np.round(rng.uniform(0, 1, per_mic), 4), "diameter": 108.0}))
    return Picks(pd.concat(parts, ignore_index=True), pixel_size=pixel_size)


def _same(a: Picks, b: Picks, score: bool = True, diameter: bool = True, atol: float = 1e-6) -> None:
    assert a.micrographs == b.micrographs
    np.testing.assert_allclose(a.coords, b.coords, atol=atol, rtol=0)
    if score:
        np.testing.assert_allclose(a.scores, b.scores, atol=atol, rtol=0)
    if diameter:
        np.testing.assert_allclose(a.table["diameter"], b.table["diameter"], atol=atol, rtol=0)


# -- CryoPPP CSV ----------------------------------------------------------------------------------
def test_cryoppp_real_file_read_without_flip():
    p = read_picks(DATA / "Falcon_2012_06_12-14_33_35_0.csv")
    assert p.micrographs == ["Falcon_2012_06_12-14_33_35_0"]
    np.testing.assert_array_equal(p.coords[0], [642, 3216])  # y as in the file: from the JPEG top
    assert (p.table["diameter"] == 108).all()
    flipped = read_picks(DATA / "Falcon_2012_06_12-14_33_35_0.csv", flip_y=True, height=4096)
    assert flipped.coords[0, 1] == 4095 - 3216


def test_cryoppp_round_trip_per_micrograph_and_merged(tmp_path):
    p = _picks2d()
    written = write_picks(p, tmp_path / "split", "cryoppp")
    assert sorted(f.name for f in written) == ["mic_000.csv", "mic_001.csv"]
    _same(read_picks(tmp_path / "split"), p)
    write_picks(p, tmp_path / "all.csv", "cryoppp", per_micrograph=False)
    _same(read_picks(tmp_path / "all.csv"), p)


# -- RELION ----------------------------------------------------------------------------------------
def test_relion_per_micrograph_and_index_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RELION index paths are relative to the project directory
    p = _picks2d()
    files = write_picks(p, "AutoPick/job006", "relion")
    assert [f.name for f in files] == ["mic_000_autopick.star", "mic_001_autopick.star", "autopick.star"]
    index = files[-1]
    text = index.read_text()
    assert "data_coordinate_files" in text and "AutoPick/job006/mic_000_autopick.star" in text
    _same(read_picks(index), p, diameter=False)
    _same(read_picks("AutoPick/job006", format="relion"), p, diameter=False)  # index preferred, no duplicates
    _same(read_picks(files[0]), p.for_micrograph("mic_000"), diameter=False)


def test_relion_merged_particles_round_trip(tmp_path):
    p = _picks2d(3)
    write_picks(p, tmp_path / "particles.star", "relion", per_micrograph=False)
    _same(read_picks(tmp_path / "particles.star"), p, diameter=False)


def test_write_autopick_index_api(tmp_path):
    relion.write_autopick_index({"MotionCorr/job002/Movies/a.mrc": "AutoPick/job006/Movies/a_autopick.star"},
                                tmp_path / "autopick.star")
    import starfile

    block = starfile.read(tmp_path / "autopick.star", always_dict=True)["coordinate_files"]
    assert block["rlnMicrographName"].tolist() == ["MotionCorr/job002/Movies/a.mrc"]
    assert block["rlnMicrographCoordinates"].tolist() == ["AutoPick/job006/Movies/a_autopick.star"]


# -- names ---------------------------------------------------------------------------------------
def test_match_micrograph_names(tmp_path):
    p = _picks2d(2)
    p = p._with(p.table.assign(micrograph=p.table["micrograph"].map(
        {"mic_000": "mic_000_autopick", "mic_001": "Movies/mic_001.mrc"})))
    out = match_micrograph_names(p, ["/data/mics/mic_000.mrc", "mic_001.tiff"])
    assert out.micrographs == ["mic_000", "mic_001"]
    with pytest.raises(CryopickError, match=r"picks.star: 2 of 2 micrograph name\(s\) match no image.*rename"):
        match_micrograph_names(p, ["other.mrc"], source="picks.star")
