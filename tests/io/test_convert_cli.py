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
