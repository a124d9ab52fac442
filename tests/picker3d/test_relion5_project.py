"""A RELION 5 project in and out of ``cryopick prompt`` / ``pick3d``: tomograms from its tomograms.star,
picks under RELION's names (``TS_01``, not ``rec_TS_01``), centred Å as RELION 5 computes them, and a
``relion5/tomograms.star`` that carries the tilt-series pixel size and binning.

The segmenter is the position-faithful stand-in of ``test_batch.py`` (probability = brightness), so
the picks are the balls of ``tests/data/relion5/make_tomograms.py`` exactly; the expected Å are the
hand-computed values of ``tests/io/test_relion5.py``.
"""

import json

import numpy as np
import pytest
import starfile

import cryopick.picker3d.pick as P
from cryopick.cli.main import main as cli
from cryopick.io.coords import read_picks
from tests.io.test_relion5 import ANGSTROM, STAR, VOXELS, copy_project
from tests.picker3d.test_batch import fake_segment

TOMOS = "Tomograms/job005/tomograms.star"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The fixture project copied to ``tmp_path`` (the working folder = RELION's project folder), with
    a prompt ``blob.prompt`` cut from TS_01 through its tomograms.star, and the stand-in segmenter."""
    root = copy_project(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.setattr(P, "segment", fake_segment)
    assert cli(["prompt", "--tomograms-star", TOMOS, "--tomo-name", "TS_01", "--at", "10,12,9", "--diameter-vox", "8",
                "-o", "blob.prompt"]) == 0
    return root


def pick3d(*extra):
    return cli(["pick3d", "--prompt", "blob.prompt", "-o", "picks", "--window", "32", "--no-similarity",
                "--no-montage", *extra])


def _sorted(rows):
    rows = np.asarray(rows, float)
    return rows[np.lexsort(rows.T[::-1])]


def test_prompt_from_tomograms_star_is_named_and_scaled_as_relion(project):
    from cryopick.picker3d.prompt import load_prompt

    prompt = load_prompt("blob.prompt")  # made by the fixture, with --tomograms-star --tomo-name TS_01
    assert prompt.tomogram == "TS_01" and prompt.voxel_size == pytest.approx(10.8)
    np.testing.assert_allclose(prompt.positions, [VOXELS["TS_01"][0]])
    # --coords: RELION 5 centred Å, converted through the tomograms.star, rows of TS_01 only.
    assert cli(["prompt", "--tomograms-star", TOMOS, "--tomo-name", "TS_01", "--coords", "Picks/job006/particles.star",
                "--diameter-vox", "8", "-o", "three.prompt"]) == 0
    np.testing.assert_allclose(load_prompt("three.prompt").positions, VOXELS["TS_01"], atol=1e-6)


@pytest.fixture
def picked(project):
    assert pick3d("--tomograms-star", TOMOS, "--format", "relion5", "relion4") == 0
    return project / "picks"


def test_pick3d_tomograms_star_writes_relion_names_and_centred_angstrom(picked):
    files = sorted(p.name for p in (picked / "relion5" / "blob").glob("*_autopick.star"))
    assert files == ["TS_01_autopick.star", "TS_02_autopick.star"]
    for name in VOXELS:
        table = starfile.read(picked / "relion5" / "blob" / f"{name}_autopick.star", parse_as_string=["rlnTomoName"])
        assert set(table["rlnTomoName"]) == {name}
        got = table[[f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"]].to_numpy()
        np.testing.assert_allclose(_sorted(got), _sorted(ANGSTROM[name]), atol=1.1)  # 0.1 voxel = 1.08 Å
    merged = starfile.read(picked / "relion5" / "blob" / "particles.star", parse_as_string=["rlnTomoName"])
    assert sorted(merged["rlnTomoName"]) == ["TS_01"] * 3 + ["TS_02"] * 2
    # As RELION's picking job: an optimisation set naming that table and the tomograms.star (project paths).
    opt = starfile.read(picked / "relion5" / "blob" / "optimisation_set.star")
    assert opt.iloc[0].to_dict() == {"rlnTomoParticlesFile": "picks/relion5/blob/particles.star",
                                     "rlnTomoTomogramsFile": "picks/relion5/tomograms.star"}
    summary = json.loads((picked / "summary.json").read_text())
    assert sorted(summary["picks_per_tomogram"]) == ["TS_01", "TS_02"]


def test_pick3d_tomograms_star_out_carries_pixel_size_and_binning(picked):
    before = starfile.read(STAR, parse_as_string=["rlnTomoName"])
    after = starfile.read(picked / "relion5" / "tomograms.star", parse_as_string=["rlnTomoName"])
    assert list(after["rlnTomoTiltSeriesPixelSize"]) == [1.35, 1.35]
    assert list(after["rlnTomoTomogramBinning"]) == [8.0, 8.0]
    assert list(after["rlnTomoSizeX"]) == [322, 320]  # bin-1 pixels, not the 40 voxels of the files
    assert sorted(after.columns) == sorted(before.columns)  # the input rows, every column
    # The picks read back (cryopick's reader, through the written tomograms.star) are the balls' voxels.
    back = read_picks(picked / "relion5" / "blob", tomograms_star=picked / "relion5" / "tomograms.star")
    for name, voxels in VOXELS.items():
        np.testing.assert_allclose(_sorted(back.for_micrograph(name).coords), _sorted(voxels), atol=0.1)
    # RELION 4: bin-1 pixels = voxels x 8.
    r4 = starfile.read(picked / "relion4" / "blob" / "TS_01.star", parse_as_string=["rlnTomoName"])
    assert set(r4["rlnTomoName"]) == {"TS_01"}
    np.testing.assert_allclose(_sorted(r4[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()),
                               _sorted(np.array(VOXELS["TS_01"]) * 8.0), atol=0.8)


def test_pick3d_tomo_name_rule_names_files_as_relion(project):
    assert pick3d("--tomograms", "Tomograms/job005/tomograms/", "--tomo-name", "relion") == 0
    files = sorted(p.name for p in (project / "picks" / "relion5" / "blob").glob("*_autopick.star"))
    assert files == ["TS_01_autopick.star", "TS_02_autopick.star"]
    own = starfile.read(project / "picks" / "relion5" / "tomograms.star", parse_as_string=["rlnTomoName"])
    assert list(own["rlnTomoName"]) == ["TS_01", "TS_02"] and list(own["rlnTomoTomogramBinning"]) == [1.0, 1.0]
    assert list(own["rlnTomoSizeX"]) == [40, 40] and list(own["rlnTomoTiltSeriesPixelSize"]) == [10.8, 10.8]
    back = read_picks(project / "picks" / "relion5" / "blob", tomograms_star=project / "picks/relion5/tomograms.star")
    np.testing.assert_allclose(_sorted(back.for_micrograph("TS_02").coords), _sorted(VOXELS["TS_02"]), atol=0.1)


def test_pick3d_denoised_kind_fails_a_tomogram_without_one_alone(project, capsys):
    assert pick3d("--tomograms-star", TOMOS, "--tomogram-kind", "denoised") == 3
    assert "TS_02: the tomograms.star gives no file for this tomogram ('N/A')" in capsys.readouterr().err
    assert (project / "picks" / "relion5" / "blob" / "TS_01_autopick.star").is_file()
    assert not (project / "picks" / "relion5" / "blob" / "TS_02_autopick.star").exists()


@pytest.mark.parametrize("args, message", [
    (("--tomograms-star", TOMOS, "--tomo-name", "relion"), "with --tomograms-star the names are its _rlnTomoName"),
    (("--tomograms", "Tomograms/job005/tomograms/", "--tomo-name", "rec_"), "--tomo-name 'rec_': unknown rule"),
    (("--tomograms", "Tomograms/job005/tomograms/", "--tomogram-kind", "half1"), "chooses a column of --tomograms-star"),
    (("--tomograms-star", TOMOS, "--tomogram-kind", "half1"), "no _rlnTomoReconstructedTomogramHalf1 column"),
])
def test_pick3d_relion_option_errors(project, capsys, args, message):
    assert pick3d(*args) == 2
    assert message in capsys.readouterr().err


def test_relion3_is_a_deprecated_spelling_of_relion4(caplog):
    from cryopick.picker3d.outputs import check_formats

    assert check_formats(["relion5", "relion3", "relion4"]) == ["relion5", "relion4"]
    assert "'relion3' is deprecated" in caplog.text

