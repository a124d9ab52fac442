"""The prompt's particle diameter: --diameter reaches the prompt; the estimate finds hollow particles."""

import math

import numpy as np
import pytest

from cryopick.picker3d.prompt import component_diameter, load_prompt


def _ball(shape, centre, radius, inner=0.0):
    zz, yy, xx = np.indices(shape)
    r = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    return (r <= radius) & (r >= inner)


def test_component_diameter_of_a_hollow_particle_counts_its_cavity():
    prob = np.zeros((64, 64, 64), np.float32)
    prob[_ball(prob.shape, (32, 32, 32), 11.0, inner=8.0)] = 0.9  # a shell: the centre voxel is empty
    prob[_ball(prob.shape, (33, 31, 32), 0.5)] = 0.9  # and a one-voxel speck inside it, a noise blob
    d = component_diameter(prob, 0.5)
    assert d is not None and abs(d - 22.0) < 1.5, d  # the shell's diameter, not its wall's volume


def test_component_diameter_solid_and_none():
    prob = np.zeros((64, 64, 64), np.float32)
    assert component_diameter(prob, 0.5) is None
    prob[_ball(prob.shape, (30, 34, 32), 6.0)] = 0.8
    d = component_diameter(prob, 0.5)
    assert abs(d - 12.0) < 1.0
    assert component_diameter(prob, 0.9) is None


@pytest.mark.parametrize("flag, value, expected", [("--diameter", "217", 21.7), ("--diameter-vox", "20", 20.0)])
def test_prompt_cli_diameter_reaches_the_prompt(tmp_path, flag, value, expected):
    from cryopick.cli.main import main as cli
    from cryopick.io.images import write_mrc

    rng = np.random.default_rng(0)
    write_mrc(tmp_path / "t.mrc", rng.normal(size=(48, 64, 64)).astype(np.float32), pixel_size=10.0)
    out = tmp_path / "p.prompt"
    assert cli(["prompt", "--tomogram", str(tmp_path / "t.mrc"), "--at", "30,30,24", flag, value, "-o", str(out),
                "--threads", "1"]) == 0
    prompt = load_prompt(out)
    assert math.isclose(prompt.diameter, expected, rel_tol=1e-6)
    assert not prompt.meta.get("diameter_estimated")


def test_component_diameter_of_an_elongated_particle_is_its_length():
    """The estimate is the particle's extent, not the sphere of its volume (issue 14: a 217 Å particle
    was estimated at 146 Å, the equal-volume sphere of its segmentation)."""
    prob = np.zeros((64, 64, 64), np.float32)
    zz, yy, xx = np.indices(prob.shape)
    prob[((xx - 32) / 10.5) ** 2 + ((yy - 32) / 5.0) ** 2 + ((zz - 32) / 5.0) ** 2 <= 1] = 0.9  # 21 voxels long
    d = component_diameter(prob, 0.5)
    sphere = (6 * (prob > 0.5).sum() / math.pi) ** (1 / 3)  # 13.4: the old, biased estimate
    assert abs(d - 21.0) < 2.0 and d > sphere + 5, (d, sphere)


def test_diameter_given_to_prompt_is_honoured_by_pick3d(tmp_path, monkeypatch):
    """prompt --diameter -> pick3d: the diameter is logged and recorded in summary.json, and it sets the
    size limits (a 300 Å particle cannot be the 80 Å blobs of this tomogram: no picks)."""
    import json

    from cryopick.cli.main import main as cli
    from cryopick.io.coords import read_picks

    from .test_batch import CENTRES, make_env

    env = make_env(tmp_path, monkeypatch)
    counts = {}
    for diameter in ("80", "300"):
        assert cli(["prompt", "--tomogram", "tomos/t0.mrc", "--at", ",".join(map(str, CENTRES["t0"][0])),
                    "--diameter", diameter, "--label", "blob", "-o", f"d{diameter}.prompt", "--threads", "1"]) == 0
        assert cli(["pick3d", "--prompt", f"d{diameter}.prompt", "--tomograms", "tomos/t1.mrc", "-o", f"out{diameter}",
                    "--window", "32", "--no-similarity", "--no-montage", "--format", "imod"]) == 0
        summary = json.loads((env / f"out{diameter}" / "summary.json").read_text())
        assert summary["diameters"]["blob"]["angstrom"] == pytest.approx(float(diameter))
        assert not summary["diameters"]["blob"]["estimated"]
        counts[diameter] = len(read_picks(env / f"out{diameter}" / "imod" / "blob" / "t1.coords"))
    assert counts == {"80": len(CENTRES["t1"]), "300": 0}
