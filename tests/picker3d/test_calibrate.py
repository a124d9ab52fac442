"""calibrate3d leaves the prompt's own particle out of the scoring (by default when the prompt was cut
from the calibration tomogram)."""

import json

import numpy as np
import pytest

from cryopick.cli.main import main as cli

from .test_batch import CENTRES, SHAPE, make_env


@pytest.fixture
def env(tmp_path, monkeypatch):
    return make_env(tmp_path, monkeypatch)


def test_calibration_leaves_the_prompt_particle_out_by_default(env, capsys):
    from cryopick.io.images import read_tomogram
    from cryopick.picker3d.outputs import read_truth
    from cryopick.picker3d.prompt import load_prompt
    from cryopick.picker3d.sweep import calibrate_tomogram, sweep_cluster
    from cryopick.picks import Picks

    centres = np.array(CENTRES["t0"], float)
    # Only the prompt particle lights up: scored, it makes F1 0.5 out of nothing; left out, F1 is 0.
    vol = np.zeros(SHAPE, np.float32)
    zz, yy, xx = np.indices(SHAPE)
    x, y, z = centres[0]
    vol[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= 16] = 0.9
    assert sweep_cluster(vol, centres, 8.0, min_similarities=[None]).best["f1"] == pytest.approx(0.5)
    assert sweep_cluster(vol, centres, 8.0, ignore=centres[:1]).best["f1"] == 0.0
    # End to end: the prompt was cut from t0, so by default its particle counts neither way.
    prompt, image = load_prompt(env / "blob.prompt"), read_tomogram(env / "tomos" / "t0.mrc")
    truth = Picks.from_arrays("t0", centres, pixel_size=10.0)
    _, default = calibrate_tomogram(image, truth, prompt, window=32, similarity=False, progress=False)
    assert default["info"]["n_truth_excluded"] == 1 and default["info"]["best_case"]["n_truth"] == 2
    assert default["info"]["best_case"]["n_pred"] == 2 and default["info"]["best_case"]["f1"] == 1.0
    _, scored = calibrate_tomogram(image, truth, prompt, window=32, similarity=False, progress=False,
                                   exclude_prompt=False)
    assert scored["info"]["best_case"]["n_truth"] == 3 and not scored["info"]["prompt_excluded"]
    # Another tomogram: nothing is left out unless asked.
    other = read_tomogram(env / "tomos" / "t1.mrc")
    t1 = Picks.from_arrays("t1", np.array(CENTRES["t1"], float), pixel_size=10.0)
    _, info = calibrate_tomogram(other, t1, prompt, window=32, similarity=False, progress=False)
    assert info["info"]["n_truth_excluded"] == 0 and not info["info"]["prompt_excluded"]
    # The CLI: default, and --include-prompt.
    from cryopick.io.coords import write_picks

    write_picks(truth, env / "truth.coords", "imod")
    assert len(read_truth(env / "truth.coords", image)) == 3
    for flag, n_truth in (([], 2), (["--include-prompt"], 3)):
        assert cli(["calibrate3d", "--prompt", "blob.prompt", "--tomogram", "tomos/t0.mrc", "--truth", "truth.coords",
                    "--window", "32", "--no-similarity", "-o", "s.json", *flag]) == 0
        saved = json.loads((env / "s.json").read_text())
        assert saved["best_case"]["n_truth"] == n_truth and saved["calibration"]["n_truth"] == n_truth
        assert f"calibrated on {n_truth} annotated particle(s)" in capsys.readouterr().out


def test_calibrate3d_saves_the_classifier_for_the_other_tomograms(env):
    """calibrate3d fits the answer loop's classifier on its tomogram's candidates labelled by the truth
    and saves it (<settings stem>.adapted.npz); pick3d --adapted picks another tomogram with it."""
    from cryopick.io.coords import write_picks
    from cryopick.picker3d.answers import AdaptedModel
    from cryopick.picks import Picks

    centres = np.array(CENTRES["t0"], float)
    write_picks(Picks.from_arrays("t0", centres[:2], pixel_size=10.0), env / "truth.coords", "imod")  # 3rd: a no
    assert cli(["calibrate3d", "--prompt", "blob.prompt", "--tomogram", "tomos/t0.mrc", "--truth", "truth.coords",
                "--window", "32", "--no-similarity", "--include-prompt", "-o", "s.json"]) == 0
    adapted = AdaptedModel.load(env / "s.adapted.npz")
    assert adapted.fitted and adapted.info["from_truth"] and adapted.info["tomogram"] == "t0"
    assert (adapted.info["n_positive"], adapted.info["n_negative"]) == (2, 1)
    assert cli(["pick3d", "--prompt", "blob.prompt", "--tomograms", "tomos/t1.mrc", "-o", "out", "--window", "32",
                "--no-montage", "--format", "imod", "--adapted", "s.adapted.npz"]) == 0
    assert json.loads((env / "out" / "summary.json").read_text())["adapted"]["blob"]["from_truth"]
    assert cli(["calibrate3d", "--prompt", "blob.prompt", "--tomogram", "tomos/t0.mrc", "--truth", "truth.coords",
                "--window", "32", "--no-similarity", "-o", "s2.json", "--no-adapted"]) == 0
    assert not (env / "s2.adapted.npz").exists()
