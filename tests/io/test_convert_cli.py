"""``cryopick convert``: conversions through the command line, and one-line errors without traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryopick import Picks
from cryopick.cli.main import main
from cryopick.io.coords import read_picks, write_picks

DATA = Path(__file__).parents[1] / "data" / "formats"


def _run(capsys, *argv) -> tuple[int, str]:
    code = main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.err


def test_cryoppp_to_relion_with_flip(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _ = _run(capsys, DATA / "Falcon_2012_06_12-14_33_35_0.csv", "-o", "AutoPick/job100", "--to", "relion",
                   "--flip-y", "--height", 4096)
    assert code == 0
    p = read_picks("AutoPick/job100/autopick.star")
    assert p.micrographs == ["Falcon_2012_06_12-14_33_35_0"] and len(p) == 5
    np.testing.assert_allclose(p.coords[0], [642, 4095 - 3216])


def test_cli_chain_returns_the_same_particle(tmp_path, capsys):
    start = Picks.from_arrays("mic_0001", [[1234.5, 678.25]], score=0.75, diameter=108)
    write_picks(start, tmp_path / "mic_0001.csv", "cryoppp")
    steps = [  # (input, output, options); every frame change is undone later in the chain
        ("mic_0001.csv", "star", ["--to", "relion", "--flip-y", "--height", "4096"]),
        ("star/mic_0001_autopick.star", "box", ["--to", "eman2", "--diameter", "108"]),
        ("box/mic_0001.box", "cbox", ["--to", "cryolo", "--box-size", "216"]),
        ("cbox/mic_0001.cbox", "binned.txt", ["--to", "topaz", "--scale", "0.25", "--swap-xy"]),
        ("binned.txt", "full.txt", ["--to", "topaz", "--scale", "4", "--swap-xy"]),
        ("full.txt", "coords", ["--to", "imod"]),
        ("coords/mic_0001.coords", "end", ["--to", "cryoppp", "--flip-y", "--height", "4096", "--diameter", "108"]),
    ]
    for src, dst, options in steps:
        code, err = _run(capsys, tmp_path / src, "-o", tmp_path / dst, *options)
        assert code == 0, err
    end = read_picks(tmp_path / "end" / "mic_0001.csv")
    np.testing.assert_allclose(end.coords, [[1234.5, 678.25]], atol=1e-6, rtol=0)


def test_merge_and_split(tmp_path, capsys):
    code, _ = _run(capsys, DATA / "topaz/predicted_particles_all_upsampled.txt", "-o", tmp_path / "all.csv",
                   "--to", "cryoppp", "--merge")
    assert code == 0
    assert read_picks(tmp_path / "all.csv").micrographs == ["mic_0001", "mic_0002"]
    code, _ = _run(capsys, tmp_path / "all.csv", "-o", tmp_path / "split", "--to", "cryoppp", "--split")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["mic_0001.csv", "mic_0002.csv"]


def test_pixel_size_conversion_and_tomo(tmp_path, capsys):
    code, err = _run(capsys, DATA / "relion5_tomo/particles.star", "-o", tmp_path / "cp", "--to", "copick",
                     "--tomo-size", "928,928,464", "--voxel-size", "10", "--from-pixel-size", "10",
                     "--to-pixel-size", "20")
    assert code == 0, err
    p = read_picks(tmp_path / "cp", format="copick")
    assert p.pixel_size == 20.0
    np.testing.assert_allclose(p.coords[0], [50, 100, 25])


@pytest.mark.parametrize("argv, pattern", [
    (["missing.star", "-o", "x.csv"], "missing.star: no such file"),
    (["{data}/eman2/mic_0001.box", "-o", "x.unknown"], "x.unknown: unknown coordinate file extension"),
    (["{data}/eman2/mic_0001.box", "-o", "x.csv", "--flip-y"], "--flip-y needs --height"),
    (["{data}/relion5_tomo/particles.star", "-o", "x.coords"], "particles.star: RELION 5 centred coordinates"),
    (["{data}/Falcon_2012_06_12-14_33_35_0.csv", "-o", "x.json"], "copick picks are 3D"),
])
def test_errors_are_one_line_without_traceback(tmp_path, capsys, monkeypatch, argv, pattern):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(data=DATA) for a in argv]
    code, err = _run(capsys, *argv)
    assert code == 2
    assert pattern in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no half-written output


def test_failed_directory_write_leaves_nothing(tmp_path, capsys):
    code, err = _run(capsys, DATA / "relion4/AutoPick/job006/autopick.star", "-o", tmp_path / "boxes", "--to", "eman2")
    assert code == 2 and "needs a box size" in err
    assert not (tmp_path / "boxes").exists()


def _argparse_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(["convert", *map(str, argv)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("option, value", [
    ("--scale", "0"), ("--scale", "-2"), ("--scale", "nan"), ("--height", "0"), ("--height", "inf"),
    ("--from-pixel-size", "-1"), ("--to-pixel-size", "0"), ("--min-score", "nan"), ("--diameter", "0"),
    ("--box-size", "-5"), ("--voxel-size", "nan"), ("--tomo-size", "10,0,10"), ("--tomo-size", "10,10"),
])
def test_every_numeric_option_is_validated(tmp_path, capsys, option, value):
    err = _argparse_error(capsys, DATA / "eman2/mic_0001.box", "-o", tmp_path / "out", option, value)
    assert option in err
    assert not (tmp_path / "out").exists()


def test_existing_outputs_are_not_replaced_without_force(tmp_path, capsys):
    src = DATA / "eman2/mic_0001.box"
    (tmp_path / "taken.txt").write_text("precious\n")
    code, err = _run(capsys, src, "-o", tmp_path / "taken.txt")
    assert code == 2 and "taken.txt: 1 output file(s) exist already" in err and "--force" in err
    assert (tmp_path / "taken.txt").read_text() == "precious\n"
    code, err = _run(capsys, src, "-o", tmp_path / "taken.txt", "--force")
    assert code == 0 and "x_coord" in (tmp_path / "taken.txt").read_text()
    code, err = _run(capsys, src, "-o", tmp_path / "star", "--to", "relion")
    assert code == 0
    code, err = _run(capsys, src, "-o", tmp_path / "star", "--to", "relion")
    assert code == 2 and "2 output file(s) exist already" in err and len(err.strip().splitlines()) == 1
    code, err = _run(capsys, src, "-o", tmp_path / "star", "--to", "relion", "--force")
    assert code == 0


def test_output_that_is_a_file_where_a_directory_is_needed(tmp_path, capsys):
    (tmp_path / "existing").write_text("")
    code, err = _run(capsys, DATA / "eman2/mic_0001.box", "-o", tmp_path / "existing", "--to", "relion")
    assert code == 2 and "existing: is an existing file, but relion output goes into a directory" in err
    code, err = _run(capsys, DATA / "eman2/mic_0001.box", "-o", tmp_path / "existing" / "sub", "--to", "relion")
    assert code == 2 and "cannot write" in err and "Traceback" not in err


def test_plain_xy_csv_converts(tmp_path, capsys):
    (tmp_path / "mic_1.csv").write_text("x,y\n100,200\n")
    code, err = _run(capsys, tmp_path / "mic_1.csv", "-o", tmp_path / "out", "--to", "eman2", "--diameter", "50")
    assert code == 0, err
    np.testing.assert_allclose(read_picks(tmp_path / "out" / "mic_1.box").coords, [[100, 200]])


def test_box_export_of_pick_output_uses_the_models_diameter(tmp_path, capsys, monkeypatch):
    """A `cryopick pick` folder (RELION STAR, no diameter column) names its model; the model card holds the
    diameter, so exporting to .box / .cbox does not ask for --diameter again."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "card.json").write_text('{"diameter": 108.0, "task": "picker2d"}')
    picks = Picks.from_arrays("mic_1", [[500.0, 600.0]], score=0.9)
    write_picks(picks, tmp_path / "picks", "relion")
    (tmp_path / "picks" / "summary.json").write_text('{"model": "model", "n_picks": 1}')
    code, err = _run(capsys, tmp_path / "picks", "-o", tmp_path / "box", "--to", "eman2")
    assert code == 0, err
    box = read_picks(tmp_path / "box" / "mic_1.box")
    np.testing.assert_allclose(box.table["diameter"], [108.0])
    np.testing.assert_allclose(box.coords, [[500, 600]])
    code, err = _run(capsys, tmp_path / "picks", "-o", tmp_path / "cbox", "--to", "cryolo")
    assert code == 0, err
    # an explicit --diameter still wins
    code, err = _run(capsys, tmp_path / "picks", "-o", tmp_path / "box2", "--to", "eman2", "--diameter", "64")
    assert code == 0 and read_picks(tmp_path / "box2" / "mic_1.box").table["diameter"].tolist() == [64.0]
