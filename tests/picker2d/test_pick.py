"""Train -> pick -> STAR from the CLI and the Python API on small synthetic micrographs; resume;
bad input."""

import json
import os

import numpy as np
import pytest

from cryopick import CryopickError, Picks
from cryopick.cli.main import main as cli
from cryopick.evaluate.matching import match_points
from cryopick.io.coords import read_picks, write_picks
from cryopick.io.images import write_mrc, write_png
from cryopick.picker2d.batch import pick_micrographs
from cryopick.picker2d.pick import Picker
from cryopick.picker2d.predict import predict_probability

DIAMETER = 24.0  # original pixels; trained at 12 px per particle -> working scale 1/2


def synthetic(seed: int, size: int = 320, n: int = 28, diameter: float = DIAMETER):
    """Dark blurred disks on noise (particles are dark in cryo-EM); ``(image, (N, 2) x, y)``."""
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < n:
        p = rng.uniform(diameter, size - diameter, 2)
        if all(np.hypot(*(p - q)) > 1.3 * diameter for q in centres):
            centres.append(p)
    centres = np.array(centres)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0, 2.0, (size, size)).astype(np.float32) + 10
    for x, y in centres:
        image -= 2.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (diameter / 3.5) ** 2))
    return image, centres


TRAIN_ARGS = ["--backbone", "unet-small", "--target-diameter", "12", "--patch-size", "64", "--batch-size", "4",
              "--epochs", "4", "--steps-per-epoch", "12", "--lr", "5e-3", "--threads", "1", "--bf16", "off",
              "--no-progress"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pick2d")
    (root / "train").mkdir()
    (root / "test").mkdir()
    (root / "neg").mkdir()
    truth = {}
    for i in range(2):
        image, centres = synthetic(i)
        write_mrc(root / "train" / f"train{i}.mrc", image, pixel_size=3.0)
        write_picks(Picks.from_arrays(f"train{i}", centres), root / "coords" / f"train{i}_manualpick.star", "relion")
    for i in range(2):
        image, centres = synthetic(10 + i)
        write_mrc(root / "test" / f"test{i}.mrc", image, pixel_size=3.0)
        truth[f"test{i}"] = centres
    write_mrc(root / "neg" / "ice.mrc", np.random.default_rng(5).normal(10, 2.0, (320, 320)).astype(np.float32),
              pixel_size=3.0)
    # Diameter given in Å (24 px x 3 Å/px) with the pixel size from the MRC headers.
    rc = cli(["train", "--micrographs", str(root / "train"), "--coords", str(root / "coords"), "--diameter", "72",
              "--diameter-unit", "A", "--negatives", str(root / "neg"), "-o", str(root / "model"), *TRAIN_ARGS])
    assert rc == 0
    return root, truth


def test_model_card_records_the_working_scale(workspace):
    root, _ = workspace
    card = json.loads((root / "model" / "card.json").read_text())
    assert card["diameter"] == pytest.approx(DIAMETER) and card["pixel_size"] == pytest.approx(3.0)
    assert card["factor"] == pytest.approx(2.0) and card["working_diameter"] == pytest.approx(12.0)
    assert card["working_pixel_size"] == pytest.approx(6.0)
    assert card["data"]["n_negative_micrographs"] == 1 and card["data"]["n_particles"] == 56
    assert 0 < card["score_threshold"] < 1 and card["cryopick_version"]


def test_pick_cli_writes_star_index_overlays_summary_and_resumes(workspace):
    root, truth = workspace
    out = root / "picks"
    assert cli(["pick", "--model", str(root / "model"), "--micrographs", str(root / "test"), "-o", str(out),
                "--overlays", "1", "--threads", "1", "--no-progress"]) == 0
    for name in truth:
        assert (out / f"{name}_autopick.star").exists()
    assert (out / "overlays" / "test0.png").exists() and not (out / "overlays" / "test1.png").exists()
    assert (out / "score_histogram.png").exists()
    counts = (out / "summary.csv").read_text().splitlines()
    assert counts[0] == "micrograph,n_picks,seconds" and len(counts) == 3
    import starfile

    index = starfile.read(out / "autopick.star")
    assert list(index.columns) == ["rlnMicrographName", "rlnMicrographCoordinates"] and len(index) == 2
    picks = read_picks(out, format="relion")
    assert set(picks.micrographs) == set(truth)
    for name, centres in truth.items():
        m = match_points(picks.for_micrograph(name).coords, centres, DIAMETER / 2)
        assert m.f1 > 0.8, (name, m.precision, m.recall)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_finished"] == 2 and summary["n_picked_this_run"] == 2

    # Rerun: nothing to do, outputs untouched.
    stamp = os.stat(out / "test0_autopick.star").st_mtime_ns
    assert cli(["pick", "--model", str(root / "model"), "--micrographs", str(root / "test"), "-o", str(out),
                "--threads", "1", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_picked_this_run"] == 0
    assert os.stat(out / "test0_autopick.star").st_mtime_ns == stamp
    # An interrupted run (no finish record for test1) redoes only that micrograph.
    (out / ".cryopick" / "test1.json").unlink()
    assert cli(["pick", "--model", str(root / "model"), "--micrographs", str(root / "test"), "-o", str(out),
                "--threads", "1", "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_picked_this_run"] == 1
    assert os.stat(out / "test0_autopick.star").st_mtime_ns == stamp


def test_picker_api_paths_arrays_and_thresholds(workspace):
    root, truth = workspace
    picker = Picker(root / "model", num_threads=1, bf16=False)
    from_file = picker.pick(root / "test" / "test0.mrc")
    image, centres = synthetic(10)
    from_array = picker.pick(image, name="test0", pixel_size=3.0)
    np.testing.assert_allclose(from_file.coords, from_array.coords)
    assert from_file.pixel_size == 3.0 and np.allclose(from_file.table["diameter"], DIAMETER)
    assert np.all(from_file.scores >= picker.threshold)
    # SAM-style: one network pass, several post-processing settings.
    picker.set_image(image, name="test0")
    assert picker.probability.shape == (160, 160)
    everything = picker.predict(threshold=0.0)
    assert len(everything) >= len(from_array)
    sparse = picker.predict(min_distance=3 * DIAMETER)
    assert len(sparse) < len(from_array)
    # Micrographs at a different pixel size are resampled to the training working scale.
    binned = image.reshape(160, 2, 160, 2).mean(axis=(1, 3))
    picks_binned = picker.pick(binned, name="binned", pixel_size=6.0)
    m = match_points(picks_binned.coords * 2, centres, DIAMETER / 2)
    assert m.f1 > 0.7


def test_tiled_inference_matches_whole_image(workspace):
    root, _ = workspace
    picker = Picker(root / "model", num_threads=1, bf16=False)
    image = np.random.default_rng(0).normal(size=(200, 232)).astype(np.float32)
    whole = predict_probability(picker.model, image)
    tiled = predict_probability(picker.model, image, tile=96, margin=24)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).mean() < 0.01


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_bad_input_errors(workspace, tmp_path, capsys):
    root, _ = workspace
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CryopickError, match="no images found"):
        pick_micrographs(Picker(root / "model"), empty, tmp_path / "out", progress=False)
    assert cli(["pick", "--model", str(root / "model"), "--micrographs", str(empty), "-o", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err
    with pytest.raises(CryopickError, match="not a cryopick model"):
        Picker(tmp_path)
    # Coordinates whose names match no micrograph.
    write_picks(Picks.from_arrays("other_name", [[10.0, 10.0]]), tmp_path / "c" / "other_name.star", "relion")
    assert cli(["train", "--micrographs", str(root / "train"), "--coords", str(tmp_path / "c"), "--diameter", "24",
                "-o", str(tmp_path / "m"), *TRAIN_ARGS]) == 2
    assert "match no image" in capsys.readouterr().err
    # Diameter in Å for images without a pixel size (PNG), and no --pixel-size.
    pngs = tmp_path / "png"
    write_png(pngs / "train0.png", synthetic(0)[0])
    assert cli(["train", "--micrographs", str(pngs), "--coords", str(root / "coords"), "--diameter", "72",
                "--diameter-unit", "A", "-o", str(tmp_path / "m2"), *TRAIN_ARGS]) == 2
    assert "pixel size" in capsys.readouterr().err
    # NaN pixels.
    bad = tmp_path / "nan"
    data = synthetic(1)[0]
    data[5, 5] = np.nan
    write_mrc(bad / "nan.mrc", data, pixel_size=3.0)
    with pytest.raises(CryopickError, match="NaN"):
        Picker(root / "model").pick(bad / "nan.mrc")


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """README command 1 on the bundled data, with a short schedule (about a minute on 2 cores)."""
    out = tmp_path / "demo"
    assert cli(["demo", "-o", str(out), "--epochs", "3", "--steps-per-epoch", "10", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["f1"] > 0.5 and len(report["per_micrograph"]) == 3
    assert (out / "picks" / "autopick.star").exists() and (out / "report.md").exists()
    assert len(list((out / "picks" / "overlays").glob("*.png"))) == 3


def test_sparse_annotation_trains_with_the_pu_loss(workspace, tmp_path, monkeypatch):
    root, _ = workspace
    # The tiny held-out strips hold a few sparse labels, fewer than calibration needs by default (then it
    # keeps the default threshold: tests/picker2d/test_train_sparse.py); this test is of the PU-corrected
    # calibration itself, so any held-out label will do.
    monkeypatch.setattr("cryopick.picker2d.calibrate.MIN_VALIDATION_LABELS_SPARSE", 1)
    # Keep a third of the particles of each training micrograph.
    for i in range(2):
        picks = read_picks(root / "coords" / f"train{i}_manualpick.star")
        write_picks(picks._with(picks.table.iloc[::3]), tmp_path / "sparse" / f"train{i}.star", "relion")
    assert cli(["train", "--micrographs", str(root / "train"), "--coords", str(tmp_path / "sparse"), "--diameter",
                "24", "--particles-per-micrograph", "28", "-o", str(tmp_path / "m"), *TRAIN_ARGS]) == 0
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["config"]["labelled_fraction"] == pytest.approx(20 / 56)
    assert card["training"]["sparse_handling"].startswith("nnPU") and card["training"]["positive_prior"] > 0
    assert card["calibration"]["precision_estimate"].startswith("estimated")
