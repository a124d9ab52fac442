"""Coordinate formats: round trips, files laid out as the tools write them, conversion chains, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryopick import CryopickError, Picks
from cryopick.io.coords import match_micrograph_names, read_picks, write_picks
from cryopick.io.formats import relion

DATA = Path(__file__).parents[1] / "data" / "formats"


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


def _picks3d(n_tomos: int = 2, per: int = 4, seed: int = 1, pixel_size: float | None = 10.0) -> Picks:
    rng = np.random.default_rng(seed)
    parts = []
    for t in range(n_tomos):
        xyz = np.round(rng.uniform(20, 400, size=(per, 3)), 2)
        parts.append(pd.DataFrame({"micrograph": f"TS_{t:03d}", "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
                                   "score": np.round(rng.uniform(0, 1, per), 4), "diameter": 24.0,
                                   "label": "ribosome"}))
    return Picks(pd.concat(parts, ignore_index=True), pixel_size=pixel_size, ndim=3)


# -- round trips of every format (write -> read gives the same picks) ---------------------------
def test_eman2_round_trip(tmp_path):
    p = _picks2d()
    write_picks(p, tmp_path / "box", "eman2")
    _same(read_picks(tmp_path / "box"), p, score=False)  # .box keeps no score; box size = diameter
    write_picks(p, tmp_path / "box220", "eman2", box_size=220)
    q = read_picks(tmp_path / "box220", diameter=108)
    _same(q, p, score=False)


def test_cryolo_round_trip_2d_and_3d(tmp_path):
    p = _picks2d()
    write_picks(p, tmp_path / "cbox", "cryolo", box_size=160)
    _same(read_picks(tmp_path / "cbox"), p)  # diameter round-trips through _EstWidth/_EstHeight
    p3 = _picks3d()
    write_picks(p3, tmp_path / "cbox3d", "cryolo")
    q3 = read_picks(tmp_path / "cbox3d")
    assert q3.ndim == 3
    _same(q3, p3._with(p3.table.assign(label="")))


def test_topaz_round_trip(tmp_path):
    p = _picks2d(3)
    write_picks(p, tmp_path / "particles.txt", "topaz")
    _same(read_picks(tmp_path / "particles.txt"), p, diameter=False)
    write_picks(p, tmp_path / "per_mic", "topaz")
    _same(read_picks(tmp_path / "per_mic", format="topaz"), p, diameter=False)


def test_imod_round_trip(tmp_path):
    p3 = _picks3d()
    write_picks(p3, tmp_path / "coords", "imod")
    assert sorted(f.name for f in (tmp_path / "coords").iterdir()) == ["TS_000.coords", "TS_001.coords"]
    _same(read_picks(tmp_path / "coords"), p3, score=False, diameter=False)
    write_picks(p3.for_micrograph("TS_000"), tmp_path / "one.coords", origin=1)
    assert (tmp_path / "one.coords").read_text().split()[0] == f"{p3.coords[0, 0] + 1:g}"
    _same(read_picks(tmp_path / "one.coords", origin=1, micrograph="TS_000"), p3.for_micrograph("TS_000"),
          score=False, diameter=False)


def test_copick_round_trip(tmp_path):
    p3 = _picks3d()
    files = write_picks(p3, tmp_path / "project", "copick")
    assert files[0] == tmp_path / "project/ExperimentRuns/TS_000/Picks/cryopick_0_ribosome.json"
    q = read_picks(tmp_path / "project", format="copick")
    assert q.pixel_size == 10.0 and set(q.table["label"]) == {"ribosome"}
    _same(q, p3, diameter=False)
    # locations are stored in Å
    import json

    doc = json.loads(files[0].read_text())
    assert doc["unit"] == "angstrom"
    np.testing.assert_allclose(doc["points"][0]["location"]["x"], p3.coords[0, 0] * 10.0)


def test_relion5_tomo_round_trip(tmp_path):
    p3 = _picks3d()
    write_picks(p3, tmp_path / "particles.star", "relion", tomo_size=(464, 464, 200))
    q = read_picks(tmp_path / "particles.star", tomo_size=(464, 464, 200), voxel_size=10.0)
    _same(q, p3._with(p3.table.assign(label="")), diameter=False)


def test_relion5_tomo_size_follows_rescaling(tmp_path):
    geometry = dict(tomo_size=(928, 928, 464), voxel_size=10.0)
    p = read_picks(DATA / "relion5_tomo/particles.star", **geometry)
    write_picks(p, tmp_path / "bin2.star", "relion", to_pixel_size=20.0, tomo_size=geometry["tomo_size"])
    q = read_picks(tmp_path / "bin2.star", tomo_size=(464, 464, 232), voxel_size=20.0)
    np.testing.assert_allclose(q.coords, p.coords / 2)  # same Å, half the voxels
    with pytest.raises(CryopickError, match=r"voxel size 10 Å given but the picks are at 20 Å/px"):
        write_picks(q, tmp_path / "x.star", "relion", tomo_size=(464, 464, 232), voxel_size=10.0)


# -- files laid out the way the tools write them -----------------------------------------------
def test_read_relion31_autopick_file():
    p = read_picks(DATA / "relion31/mic_0001_autopick.star")
    assert p.micrographs == ["mic_0001"]
    np.testing.assert_allclose(p.coords, [[1234.5, 678.25], [512, 1024], [3001, 97]])
    np.testing.assert_allclose(p.scores, [2.31845, 1.024, -0.25])


def test_read_relion4_index_with_project_relative_paths():
    p = read_picks(DATA / "relion4/AutoPick/job006/autopick.star")
    assert p.micrographs == ["mic_0001", "mic_0002"]
    np.testing.assert_allclose(p.coords, [[1234.5, 678.25], [100, 200], [300, 400]])
    assert p.scores[0] == 3.5 and np.isnan(p.scores[1:]).all()  # -999 = no score (manual picks)


def test_read_relion31_particles_with_optics():
    p = read_picks(DATA / "relion31_particles/particles.star")
    assert p.micrographs == ["mic_0001", "mic_0002"] and p.pixel_size == 1.77  # _rlnMicrographPixelSize
    np.testing.assert_allclose(p.coords, [[1234.5, 678.25], [512, 1024]])
    assert read_picks(DATA / "relion31_particles/particles.star", pixel_size=0.885).pixel_size == 0.885


def test_read_relion5_tomography_particles():
    kw = dict(tomo_size=(928, 928, 464), voxel_size=10.0)
    p = read_picks(DATA / "relion5_tomo/particles.star", **kw)
    assert p.ndim == 3 and p.pixel_size == 10.0 and p.micrographs == ["TS_001", "TS_002"]
    np.testing.assert_allclose(p.coords, [[100, 200, 50], [587.5, 472.25, 243.75], [464, 464, 232]])
    q = read_picks(DATA / "relion5_tomo/particles.star", tomograms_star=DATA / "relion5_tomo/tomograms.star")
    np.testing.assert_allclose(q.coords, p.coords)  # 3712/4 = 928 voxels of 2.5*4 = 10 Å
    with pytest.raises(CryopickError, match=r"particles.star.*--tomo-size X,Y,Z --voxel-size"):
        read_picks(DATA / "relion5_tomo/particles.star")


def test_read_cryolo_cbox():
    p = read_picks(DATA / "cryolo/mic_0001.cbox")
    assert p.ndim == 2 and p.micrographs == ["mic_0001"]
    np.testing.assert_allclose(p.coords, [[1234.5, 678.25], [512, 1024]])  # corner + 220/2
    np.testing.assert_allclose(p.scores, [0.91, 0.35])
    np.testing.assert_allclose(p.table["diameter"], [148, 220])  # mean(EstWidth, EstHeight), else box
    p3 = read_picks(DATA / "cryolo/TS_001.cbox")
    assert p3.ndim == 3
    np.testing.assert_allclose(p3.coords, [[100, 200, 50]])  # z is the centre slice, not a corner


def test_read_eman2_box():
    p = read_picks(DATA / "eman2/mic_0001.box")
    np.testing.assert_allclose(p.coords, [[1234, 678], [512, 1024]])
    assert (p.table["diameter"] == 220).all()


def test_read_topaz_txt():
    p = read_picks(DATA / "topaz/predicted_particles_all_upsampled.txt")
    assert p.micrographs == ["mic_0001", "mic_0002"]
    np.testing.assert_allclose(p.coords, [[1234, 678], [512, 1024], [100, 200]])
    np.testing.assert_allclose(p.scores, [3.125, -0.5, 1.0])
    assert len(read_picks(DATA / "topaz/predicted_particles_all_upsampled.txt", min_score=0)) == 2


def test_read_imod_coords():
    p = read_picks(DATA / "imod/TS_001.coords")
    assert p.ndim == 3 and p.micrographs == ["TS_001"]
    np.testing.assert_allclose(p.coords, [[100, 200, 50], [1234.5, 678.25, 87.75]])
    q = read_picks(DATA / "imod/TS_001_objects.txt", micrograph="TS_001")  # numbers only: IMOD, not Topaz
    assert q.meta["format"] == "imod"
    assert q.table["label"].tolist() == ["1", "1", "2"]
    np.testing.assert_allclose(q.coords[:2], p.coords)


def test_read_copick_json_needs_voxel_size():
    path = DATA / "copick/ExperimentRuns/TS_001/Picks/alice_1_ribosome.json"
    with pytest.raises(CryopickError, match=r"alice_1_ribosome.json: copick locations are in Å.*--voxel-size"):
        read_picks(path)
    p = read_picks(path, voxel_size=10.0)
    assert p.micrographs == ["TS_001"] and p.table["label"].tolist() == ["ribosome"] * 2
    np.testing.assert_allclose(p.coords, [[100, 200, 50], [1234.5, 678.25, 87.75]])


# -- one known particle through every conversion chain ------------------------------------------
def test_one_particle_survives_every_2d_conversion_chain(tmp_path):
    """x=1234.5, y=678.25 in a CryoPPP CSV (JPEG frame, 4096 px high) -> RELION -> EMAN2 -> crYOLO ->
    Topaz (binned 4x, axes swapped) -> IMOD -> CryoPPP, every frame change inverted on the way back."""
    H = 4096
    start = Picks.from_arrays("mic_0001", [[1234.5, 678.25]], score=0.75, diameter=108)
    write_picks(start, tmp_path / "a.csv", "cryoppp")
    p = read_picks(tmp_path / "a.csv", flip_y=True, height=H)  # JPEG rows -> MRC rows
    np.testing.assert_allclose(p.coords, [[1234.5, H - 1 - 678.25]])
    write_picks(p, tmp_path / "b.star", "relion")
    p = read_picks(tmp_path / "b.star", micrograph="mic_0001")
    write_picks(p, tmp_path / "c.box", "eman2", diameter=108)
    p = read_picks(tmp_path / "c.box", micrograph="mic_0001")
    write_picks(p, tmp_path / "d.cbox", "cryolo", box_size=216)
    p = read_picks(tmp_path / "d.cbox", micrograph="mic_0001")
    write_picks(p, tmp_path / "e.txt", "topaz", scale=0.25, swap_xy=True)  # Topaz on a 4x-binned micrograph
    p = read_picks(tmp_path / "e.txt", swap_xy=True, scale=4.0)
    write_picks(p, tmp_path / "f.coords", "imod")
    p = read_picks(tmp_path / "f.coords", micrograph="mic_0001")
    write_picks(p, tmp_path / "g.csv", "cryoppp", flip_y=True, height=H, diameter=108)
    end = read_picks(tmp_path / "g.csv", micrograph="mic_0001")
    np.testing.assert_allclose(end.coords, [[1234.5, 678.25]], atol=1e-6, rtol=0)
    np.testing.assert_allclose(end.table["diameter"], [108], atol=1e-6)


def test_one_particle_survives_every_3d_conversion_chain(tmp_path):
    """(1234.5, 678.25, 87.75) voxels -> RELION 5 centred Å -> copick Å (other pixel size) -> IMOD ->
    crYOLO 3D -> back."""
    start = Picks.from_arrays("TS_001", [[1234.5, 678.25, 87.75]], score=0.5, diameter=24, pixel_size=7.84)
    geometry = dict(tomo_size=(2048, 2048, 512), voxel_size=7.84)
    write_picks(start, tmp_path / "a.star", "relion", **geometry)
    p = read_picks(tmp_path / "a.star", **geometry)
    write_picks(p, tmp_path / "b.json", "copick", to_pixel_size=15.68)  # 2x binned tomogram
    p = read_picks(tmp_path / "b.json", to_pixel_size=7.84)
    assert p.pixel_size == 7.84
    write_picks(p, tmp_path / "c.coords", "imod")
    p = read_picks(tmp_path / "c.coords", micrograph="TS_001")
    write_picks(p, tmp_path / "d.cbox", "cryolo", box_size=32)
    end = read_picks(tmp_path / "d.cbox", micrograph="TS_001")
    np.testing.assert_allclose(end.coords, [[1234.5, 678.25, 87.75]], atol=1e-6, rtol=0)


# -- bad input -----------------------------------------------------------------------------------
def test_unknown_extension(tmp_path):
    f = tmp_path / "picks.xyz"
    f.write_text("1 2 3\n")
    with pytest.raises(CryopickError, match=r"picks.xyz: unknown coordinate file extension '.xyz'"):
        read_picks(f)


@pytest.mark.parametrize("name, text, pattern", [
    ("m.csv", "X-Coordinate,Diameter\n1,108\n", r"m.csv: .*missing column\(s\) Y-Coordinate"),
    ("m.star", "data_\n\nloop_\n_rlnAnglePsi #1\n1.0\n", r"m.star: no RELION coordinate columns"),
    ("m.txt", "image_name\tx_coord\nm\t1\n", r"m.txt: .*missing column\(s\) y_coord"),
    ("m.cbox", "data_cryolo\n\nloop_\n_CoordinateX #1\n_CoordinateY #2\n1 2\n", r"m.cbox: .*missing column\(s\) Width"),
    ("m.box", "10\n", r"m.box: EMAN .box rows need at least x and y"),
    ("m.coords", "1 2 3 4 5 6\n", r"m.coords: 6 values per line"),
    ("m.json", '{"a": 1}', r"m.json: not a copick picks file"),
])
def test_missing_columns(tmp_path, name, text, pattern):
    (tmp_path / name).write_text(text)
    with pytest.raises(CryopickError, match=pattern):
        read_picks(tmp_path / name, voxel_size=1.0)


@pytest.mark.parametrize("name, text", [
    ("n.csv", "X-Coordinate,Y-Coordinate,Diameter\n1,2,108\nnan,4,108\n"),
    ("n.star", "data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n1 2\n3 nan\n"),
    ("n.box", "1\t2\t10\t10\nNaN\t2\t10\t10\n"),
    ("n.coords", "1 2 3\n4 inf 6\n"),
    ("n.txt", "image_name\tx_coord\ty_coord\nn\t1\t\n"),
])
def test_nan_coordinates_rejected(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(CryopickError, match=rf"{name}: 1 coordinate\(s\) are NaN or infinite \(first at row 2|"
                                           rf"{name}: 1 coordinate\(s\) are NaN or infinite \(first at row 1"):
        read_picks(tmp_path / name)


def test_non_numeric_value_named(tmp_path):
    (tmp_path / "t.csv").write_text("X-Coordinate,Y-Coordinate\n1,2\nabc,3\n")
    with pytest.raises(CryopickError, match=r"t.csv: column 'X-Coordinate' has a non-numeric value 'abc'"):
        read_picks(tmp_path / "t.csv")


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(CryopickError, match=r"nope.star: no such file"):
        read_picks(tmp_path / "nope.star")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CryopickError, match=r"empty: no coordinate files found"):
        read_picks(tmp_path / "empty")


def test_names_that_match_no_micrograph_name_the_file():
    p = read_picks(DATA / "relion4/AutoPick/job006/autopick.star")
    with pytest.raises(CryopickError, match=r"autopick.star: 1 of 2 micrograph name\(s\) match no image: mic_0002"):
        match_micrograph_names(p, ["MotionCorr/job002/Movies/mic_0001.mrc", "mic_0003.mrc"])
    with pytest.warns(UserWarning, match="dropped"):
        kept = match_micrograph_names(p, ["mic_0001.mrc"], allow_unmatched=True)
    assert kept.micrographs == ["mic_0001"]


def test_writers_are_atomic_and_refuse_impossible_output(tmp_path, monkeypatch):
    p = _picks2d(2)
    with pytest.raises(CryopickError, match=r"x.box: 2 micrographs cannot go into one eman2 file"):
        write_picks(p, tmp_path / "x.box", "eman2")
    with pytest.raises(CryopickError, match=r"x.box: the EMAN2 .box format needs a box size"):
        write_picks(Picks.from_arrays("m", [[1.0, 2.0]]), tmp_path / "x.box", "eman2")
    with pytest.raises(CryopickError, match=r"x.json: copick stores Å"):
        write_picks(Picks.from_arrays("m", [[1.0, 2.0, 3.0]]), tmp_path / "x.json", "copick")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    # an interrupted writer leaves the previous file intact and no temporary behind
    target = tmp_path / "keep.csv"
    target.write_text("old\n")
    import cryopick.io.formats.cryoppp as cryoppp

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cryoppp, "format_number", boom)
    with pytest.raises(KeyboardInterrupt):
        write_picks(p.for_micrograph("mic_000"), target, "cryoppp")
    assert target.read_text() == "old\n" and [f.name for f in tmp_path.iterdir()] == ["keep.csv"]


def test_relion5_tomo_directory_with_index_uses_geometry(tmp_path):
    """A directory of per-tomogram RELION 5 files plus its autopick.star index reads back with the geometry."""
    p3 = _picks3d()
    out = tmp_path / "picks"
    write_picks(p3, out, "relion", tomo_size=(464, 464, 200))
    assert (out / "autopick.star").exists()
    q = read_picks(out, format="relion", tomo_size=(464, 464, 200), voxel_size=10.0)
    np.testing.assert_allclose(np.sort(q.coords, axis=0), np.sort(p3.coords, axis=0), atol=1e-6)


# -- plain CSV tables ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, ndim, expected", [
    ("x,y\n10,20\n30,40\n", 2, [[10, 20], [30, 40]]),                               # the hand-made table
    ("X,Y,Score,Diameter\n10,20,0.5,108\n", 2, [[10, 20]]),                        # case, extra columns
    (" ,X,Y,Slice\n1,10,20,1\n", 2, [[10, 20]]),                                    # Fiji / ImageJ results
    ("x_coord\ty_coord\tscore\n10\t20\t0.9\n", 2, [[10, 20]]),                       # Topaz names, tabs
    ("rlnCoordinateX;rlnCoordinateY;rlnAutopickFigureOfMerit\n10;20;0.3\n", 2, [[10, 20]]),  # semicolons
    ("Coordinate X,Coordinate Y,Coordinate Z\n10,20,5\n", 3, [[10, 20, 5]]),
    ("index,axis-0,axis-1\n0,20,10\n", 2, [[10, 20]]),                              # napari: array order
    ("axis-0,axis-1,axis-2\n5,20,10\n", 3, [[10, 20, 5]]),
    ("10 20\n30 40\n", 2, [[10, 20], [30, 40]]),                                    # no header: x y
    ("10,20,5\n", 3, [[10, 20, 5]]),                                                # no header: x y z
    ("\ufeffx,y\r\n10,20\r\n", 2, [[10, 20]]),                                       # spreadsheet BOM, CRLF
])
def test_plain_csv_layouts(tmp_path, text, ndim, expected):
    (tmp_path / "mic_7.csv").write_text(text, newline="")
    p = read_picks(tmp_path / "mic_7.csv")
    assert p.ndim == ndim and p.micrographs == ["mic_7"]
    np.testing.assert_allclose(p.coords, expected)


def test_plain_csv_score_diameter_micrograph_and_class(tmp_path):
    (tmp_path / "all.csv").write_text("image_name,x,y,score,diameter,class\nmics/a.mrc,1,2,0.5,108,ribo\n"
                                      "b,3,4,0.25,,apo\n")
    p = read_picks(tmp_path / "all.csv")
    assert p.micrographs == ["a", "b"] and p.table["label"].tolist() == ["ribo", "apo"]
    np.testing.assert_allclose(p.scores, [0.5, 0.25])
    np.testing.assert_allclose(p.table["diameter"], [108, np.nan])
    assert p.meta["csv_layout"] == "plain"
    assert read_picks(DATA / "Falcon_2012_06_12-14_33_35_0.csv").meta["csv_layout"] == "cryoppp"


@pytest.mark.parametrize("text, pattern", [
    ("x,X\n1,2\n", r"several columns could be 'x' \(x, X\)"),
    ("x,y,x\n1,2,3\n", r"column\(s\) x appear more than once"),
    ("1,2,3,4\n", r"4 numbers per row and no header.*add a header line"),
    ("a,b\n1,2\n", r"missing column\(s\) x, y \(found: a, b\)"),
])
def test_plain_csv_ambiguous_or_incomplete(tmp_path, text, pattern):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(CryopickError, match=rf"bad.csv: .*{pattern}"):
        read_picks(tmp_path / "bad.csv")


def test_star_with_a_duplicated_column_is_an_error(tmp_path):
    (tmp_path / "dup.star").write_text("data_\n\nloop_\n_rlnCoordinateX #1\n_rlnCoordinateY #2\n_rlnCoordinateX #3\n"
                                       "10 20 30\n")
    with pytest.raises(CryopickError, match=r"dup.star: column\(s\) _rlnCoordinateX appear more than once"):
        read_picks(tmp_path / "dup.star")


def test_topaz_names_with_dots_are_kept_whole(tmp_path):
    """Topaz writes ``image_name`` without extension; a name with a dot of its own (EMPIAR-10025's
    ``…_00002es.frames``, ``grid1.2_0003``) must not lose its last part, while a real image suffix goes."""
    (tmp_path / "t.txt").write_text("image_name\tx_coord\ty_coord\tscore\n"
                                    "14sep05c_00024sq_00003hl_00002es.frames\t10\t20\t1.5\n"
                                    "grid1.2_0003\t30\t40\t0.5\n"
                                    "mic_0007.mrc\t50\t60\t0.1\n")
    p = read_picks(tmp_path / "t.txt", "topaz")
    assert p.table["micrograph"].tolist() == ["14sep05c_00024sq_00003hl_00002es.frames", "grid1.2_0003", "mic_0007"]


def test_folder_of_mixed_formats_says_what_it_left_out(tmp_path, caplog):
    """A folder holding RELION .star beside cryoPPP .csv is read as the commoner format; the .csv files
    are not silently dropped: one warning names them and the option that reads them."""
    p = _picks2d(4)
    write_picks(p, tmp_path / "a.star", "relion")
    write_picks(p, tmp_path / "b.star", "relion")
    write_picks(p, tmp_path / "c.csv", "cryoppp", per_micrograph=False)
    caplog.set_level("WARNING")
    got = read_picks(tmp_path)
    assert got.meta["format"] == "relion"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "left out 1 .csv file(s) of another format" in warnings[0] and "cryoppp" in warnings[0]
    caplog.clear()
    read_picks(tmp_path, "relion")  # the format given: no guess, nothing to say
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
