"""RELION 5 tomography in and out: tomograms.star (names, paths, bin-1 sizes, tilt-series pixel size,
binning), RELION's centred-Å convention, RELION 4 coordinates, tomogram-name rules.

The project in ``tests/data/relion5`` is written by hand from RELION 5's source (its README names the
lines); the expected Å values below are computed by hand from RELION's convention
``Å = (voxel * binning - size / 2) * pixel_size`` (``size`` in bin-1 pixels), not by cryopick.
"""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryopick.errors import CryopickError
from cryopick.io.coords import read_picks
from cryopick.io.formats import relion
from cryopick.io.formats.relion_tomo import (
    TomoGeometry,
    name_rule,
    open_tomogram,
    read_tomograms_star,
    star_tomograms,
    tomo_name,
    write_relion4,
    write_tomograms_star,
)
from cryopick.picks import Picks

PROJECT = Path(__file__).parents[1] / "data" / "relion5"
STAR = PROJECT / "Tomograms" / "job005" / "tomograms.star"
PARTICLES = PROJECT / "Picks" / "job006" / "particles.star"
#: The balls of make_tomograms.py (x, y, z voxels of the bin-8 reconstructions).
VOXELS = {"TS_01": [(10, 12, 9), (28, 26, 20), (14, 30, 22)], "TS_02": [(20, 10, 12), (30, 30, 16)]}
#: By hand: TS_01 has bin-1 size 322 x 318 x 259 (centre 161, 159, 129.5), pixel size 1.35, binning 8;
#: voxel (10, 12, 9) -> ((80 - 161) * 1.35, (96 - 159) * 1.35, (72 - 129.5) * 1.35).
ANGSTROM = {"TS_01": [(-109.35, -85.05, -77.625), (85.05, 66.15, 41.175), (-66.15, 109.35, 62.775)],
            "TS_02": [(0.0, -108.0, -43.2), (108.0, 108.0, 0.0)]}


def test_tomograms_star_gives_names_bin1_sizes_pixel_size_and_binning():
    g = read_tomograms_star(STAR)
    assert list(g) == ["TS_01", "TS_02"]
    assert g["TS_01"].size == (322.0, 318.0, 259.0) and g["TS_02"].size == (320.0, 320.0, 256.0)
    assert g["TS_01"].pixel_size == 1.35 and g["TS_01"].binning == 8.0
    assert g["TS_01"].voxel_size == pytest.approx(10.8)
    assert g["TS_01"].row["rlnTomoReconstructedTomogram"] == "Tomograms/job005/tomograms/rec_TS_01.mrc"


def test_tomograms_star_paths_resolve_from_the_project_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the project: found from a folder above the file
    sources = star_tomograms(STAR)
    assert [s.name for s in sources] == ["TS_01", "TS_02"]
    assert Path(sources[0].path) == (PROJECT / "Tomograms/job005/tomograms/rec_TS_01.mrc").resolve()
    assert Path(star_tomograms(STAR, project_dir=PROJECT)[1].path) == PROJECT / "Tomograms/job005/tomograms/rec_TS_02.mrc"
    image = sources[0].read()
    assert image.name == "TS_01" and image.pixel_size == pytest.approx(10.8) and image.data.shape == (32, 40, 40)
    again = pickle.loads(pickle.dumps(sources[1]))  # what a Dask worker gets
    assert again.read().name == "TS_02" and again.geometry == sources[1].geometry
    with pytest.raises(CryopickError, match="none of the tomograms in _rlnTomoReconstructedTomogram found.*"
                                            "--project-dir"):
        star_tomograms(STAR, project_dir=tmp_path)


def copy_project(tmp_path) -> Path:
    """The fixture project under ``tmp_path/project``, with TS_01 denoised (a copy: cryoCARE's job writes
    Denoise/jobNNN/tomograms/rec_<name>.mrc and N/A for tomograms it has not denoised)."""
    import shutil

    root = tmp_path / "project"
    shutil.copytree(PROJECT, root)
    (root / "Denoise/job008/tomograms").mkdir(parents=True)
    shutil.copy(root / "Tomograms/job005/tomograms/rec_TS_01.mrc", root / "Denoise/job008/tomograms/rec_TS_01.mrc")
    return root


def test_tomogram_kinds_and_their_errors(tmp_path, monkeypatch):
    root = copy_project(tmp_path)
    monkeypatch.chdir(root)
    denoised = star_tomograms(root / "Tomograms/job005/tomograms.star", "denoised")
    assert Path(denoised[0].path) == root / "Denoise/job008/tomograms/rec_TS_01.mrc" and denoised[1].path == "N/A"
    assert denoised[0].read().name == "TS_01"
    with pytest.raises(CryopickError, match=r"TS_02: the tomograms.star gives no file for this tomogram \('N/A'\)"):
        denoised[1].read()
    with pytest.raises(CryopickError, match=r"no _rlnTomoReconstructedTomogramHalf1 column.*--tomogram-kind "
                                            "reconstructed"):
        star_tomograms(STAR, "half1")
    with pytest.raises(CryopickError, match="no tomogram 'TS_09'; it lists TS_01, TS_02"):
        star_tomograms(STAR, names=["TS_09"])
    with pytest.raises(CryopickError, match="give the tomogram with --tomo-name"):
        open_tomogram(tomograms_star=STAR)
    assert open_tomogram(tomograms_star=STAR, name="TS_02").name == "TS_02"


def test_tomograms_star_that_does_not_match_the_file_is_refused(tmp_path):
    table = starfile.read(STAR, parse_as_string=["rlnTomoName"])
    table["rlnTomoTomogramBinning"] = 4.0  # the files are bin 8
    table["rlnTomoReconstructedTomogram"] = [str(PROJECT / p) for p in table["rlnTomoReconstructedTomogram"]]
    starfile.write({"global": table}, tmp_path / "tomograms.star")
    with pytest.raises(CryopickError, match=r"40x40x32 voxels, but the tomograms.star row of TS_01 says 322x318x259 "
                                            r"bin-1 pixels at binning 4"):
        star_tomograms(tmp_path / "tomograms.star")[0].read()
    bad = table.drop(columns=["rlnTomoTiltSeriesPixelSize"])
    starfile.write({"global": bad}, tmp_path / "bad.star")
    with pytest.raises(CryopickError, match="no _rlnTomoTiltSeriesPixelSize column"):
        read_tomograms_star(tmp_path / "bad.star")


def test_unreadable_tomograms_star_is_one_named_error(tmp_path):
    (tmp_path / "random.star").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CryopickError, match="random.star: no data table found; expected a RELION 5 tomograms.star"):
        read_tomograms_star(tmp_path / "random.star")
    (tmp_path / "particles.star").write_text(PARTICLES.read_text())
    with pytest.raises(CryopickError, match=r"particles.star: no _rlnTomoSizeX, _rlnTomoSizeY, _rlnTomoSizeZ, "
                                            r"_rlnTomoTiltSeriesPixelSize column\(s\)"):
        read_tomograms_star(tmp_path / "particles.star")


def test_numeric_tomogram_names_stay_text(tmp_path):
    table = starfile.read(STAR, parse_as_string=["rlnTomoName"]).assign(rlnTomoName=["01", "2"])
    starfile.write({"global": table}, tmp_path / "tomograms.star")
    assert list(read_tomograms_star(tmp_path / "tomograms.star")) == ["01", "2"]


def test_centred_angstrom_follows_relion5():
    g = read_tomograms_star(STAR)["TS_01"]
    np.testing.assert_allclose(g.to_angstrom(VOXELS["TS_01"]), ANGSTROM["TS_01"], atol=1e-9)
    np.testing.assert_allclose(g.to_voxels(ANGSTROM["TS_01"]), VOXELS["TS_01"], atol=1e-9)
    # Not the binned shape's centre (40 x 40 x 32 voxels / 2), not (size - 1) / 2.
    assert not np.allclose(g.to_angstrom([10, 12, 9]), (np.array([10, 12, 9]) - np.array([20, 20, 16])) * 10.8)
    assert not np.allclose(g.to_angstrom([10, 12, 9]), (np.array([80, 96, 72]) - (np.array(g.size) - 1) / 2) * 1.35)


def test_relion5_particles_read_to_the_balls_voxels():
    picks = read_picks(PARTICLES, tomograms_star=STAR)
    assert picks.pixel_size == pytest.approx(10.8)
    for name, voxels in VOXELS.items():
        np.testing.assert_allclose(picks.for_micrograph(name).coords, voxels, atol=1e-6)


def _picks(name="TS_01"):
    x, y, z = np.array(VOXELS[name], float).T
    return Picks.from_arrays(name, np.stack([x, y, z], 1), score=np.array([0.9, 0.5, np.nan])[:len(x)],
                             pixel_size=10.8)


def test_written_centred_coordinates_round_trip_through_starfile_and_cryopick(tmp_path):
    geometry = read_tomograms_star(STAR)
    picks = _picks()
    relion.write(picks, tmp_path / "TS_01.star", tomograms=geometry)
    table = starfile.read(tmp_path / "TS_01.star", parse_as_string=["rlnTomoName"])
    assert list(table["rlnTomoName"]) == ["TS_01"] * 3
    got = table[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
    np.testing.assert_allclose(got, ANGSTROM["TS_01"], atol=1e-6)
    assert list(table["rlnAutopickFigureOfMerit"]) == [0.9, 0.5, -999.0]
    back = read_picks(tmp_path / "TS_01.star", tomograms_star=STAR)
    np.testing.assert_allclose(back.coords, VOXELS["TS_01"], atol=1e-5)


def test_tomograms_star_written_back_keeps_every_column(tmp_path):
    write_tomograms_star(read_tomograms_star(STAR).values(), tmp_path / "tomograms.star")
    before = starfile.read(STAR, parse_as_string=["rlnTomoName"])
    after = starfile.read(tmp_path / "tomograms.star", parse_as_string=["rlnTomoName"])
    assert sorted(after.columns) == sorted(before.columns)
    pd.testing.assert_frame_equal(after[before.columns], before, check_dtype=False)
    # A tomogram known only as a file: its own voxels are the bin-1 pixels, binning 1.
    write_tomograms_star([TomoGeometry.as_stored("TS_09", (40, 40, 32), 10.8)], tmp_path / "own.star",
                         {"TS_09": "tomos/TS_09.mrc"})
    own = starfile.read(tmp_path / "own.star", parse_as_string=["rlnTomoName"])
    assert own.iloc[0].to_dict() == {"rlnTomoName": "TS_09", "rlnTomoSizeX": 40, "rlnTomoSizeY": 40,
                                     "rlnTomoSizeZ": 32, "rlnTomoTiltSeriesPixelSize": 10.8,
                                     "rlnTomoTomogramBinning": 1.0, "rlnTomoReconstructedTomogram": "tomos/TS_09.mrc"}


def test_relion4_coordinates_are_bin1_pixels(tmp_path):
    geometry = read_tomograms_star(STAR)["TS_01"]
    write_relion4(_picks(), tmp_path / "TS_01.star", geometry)
    table = starfile.read(tmp_path / "TS_01.star", parse_as_string=["rlnTomoName"])
    np.testing.assert_allclose(table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(),
                               np.array(VOXELS["TS_01"]) * 8.0)
    assert list(table["rlnTomoName"]) == ["TS_01"] * 3
    back = read_picks(tmp_path / "TS_01.star", tomograms_star=STAR)
    np.testing.assert_allclose(back.coords, VOXELS["TS_01"])
    assert back.pixel_size == pytest.approx(10.8)


@pytest.mark.parametrize("rule, stem, name", [
    ("relion", "rec_TS_01", "TS_01"), ("relion", "rec_TS_01_half1", "TS_01"), ("relion", "TS_01", "TS_01"),
    ("strip:rec_", "rec_TS_01", "TS_01"), ("strip:rec_,_bin4", "rec_TS_01_bin4", "TS_01"),
    ("regex:(TS_\\d+)", "20240101_rec_TS_17_denoised", "TS_17"), ("regex:TS_\\d+", "x_TS_3", "TS_3"),
    (None, "rec_TS_01", "rec_TS_01")])
def test_name_rules(rule, stem, name):
    assert name_rule(rule)(stem) == name
    assert tomo_name(f"Tomograms/job005/tomograms/{stem}.mrc", rule) == name


def test_bad_name_rules_are_named():
    with pytest.raises(CryopickError, match="--tomo-name 'rec_': unknown rule; use relion, strip:TEXT"):
        name_rule("rec_")
    with pytest.raises(CryopickError, match="--tomo-name 'regex:\\(TS': not a regular expression"):
        name_rule("regex:(TS")
    with pytest.raises(CryopickError, match="does not match the tomogram name 'tomo_a'"):
        tomo_name("tomo_a.mrc", "regex:TS_\\d+")
    with pytest.raises(CryopickError, match="leaves an empty name"):
        tomo_name("rec_.mrc", "strip:rec_")
