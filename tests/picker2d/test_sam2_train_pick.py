"""End to end with the SAM2 backbone: `cryopick train --backbone sam2-test-tiny` -> `cryopick pick`
on small synthetic micrographs, through the 2D picker's CLI and Python API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryopick import Picks
from cryopick.cli.main import main as cli
from cryopick.evaluate.matching import match_points
from cryopick.io.coords import read_picks, write_picks
from cryopick.io.images import write_mrc
from cryopick.models.sam2 import CryoFSL
from cryopick.picker2d.card import load_model
from cryopick.picker2d.pick import Picker

DIAMETER = 24.0  # original pixels; trained at 12 px per particle -> working scale 1/2


def synthetic(seed: int, size: int = 320, n: int = 28, diameter: float = DIAMETER):
    """Dark blurred disks on Gaussian noise; returns ``(image, (N, 2) x, y centres)``."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    while len(centres) < n:
        p = rng.uniform(diameter, size - diameter, 2)
        if all(np.hypot(*(p - q)) > 1.3 * diameter for q in centres):
            centres.append(p)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0, 2.0, (size, size)).astype(np.float32) + 10
    for x, y in centres:
        image -= 2.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (diameter / 3.5) ** 2))
    return image, np.array(centres)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sam2_train_pick")
    for i in range(2):
        image, centres = synthetic(i)
        write_mrc(root / "train" / f"train{i}.mrc", image, pixel_size=3.0)
        write_picks(Picks.from_arrays(f"train{i}", centres), root / "coords" / f"train{i}_manualpick.star", "relion")
    truth = {}
    for i in range(2):
        image, centres = synthetic(10 + i)
        write_mrc(root / "test" / f"test{i}.mrc", image, pixel_size=3.0)
        truth[f"test{i}"] = centres
    rc = cli(["train", "--micrographs", str(root / "train"), "--coords", str(root / "coords"),
              "--diameter", str(DIAMETER), "--backbone", "sam2-test-tiny", "--target-diameter", "12",
              "--epochs", "6", "--steps-per-epoch", "15", "--lr", "3e-3", "--threads", "1", "--bf16", "off",
              "--no-progress", "-o", str(root / "model")])
    assert rc == 0
    return root, truth


def test_training_with_sam2_backbone_writes_a_cryofsl_model(trained):
    root, _ = trained
    card = json.loads((root / "model" / "card.json").read_text())
    assert card["backbone"] == "sam2-test-tiny"
    model, _ = load_model(root / "model")
    assert isinstance(model, CryoFSL) and not model.training
    # the frozen encoder is still the initial one, the adapters moved away from zero
    assert any(lin.weight.abs().max() > 0 for lin in model.adapters.shared)
    assert card["calibration"]["f1"] > 0.5, card["calibration"]


def test_pick_with_sam2_backbone_finds_the_particles(trained):
    root, truth = trained
    rc = cli(["pick", "--model", str(root / "model"), "--micrographs", str(root / "test"), "--threads", "1",
              "--bf16", "off", "--no-progress", "-o", str(root / "picks")])
    assert rc == 0
    for name, centres in truth.items():
        picks = read_picks(root / "picks" / f"{name}_autopick.star")
        result = match_points(picks.coords, centres, tolerance=DIAMETER / 2)
        assert result.f1 > 0.6, (name, result)
    # the Python API gives the same picks as the CLI
    picker = Picker(root / "model", bf16=False)
    api = picker.pick(root / "test" / "test0.mrc")
    cli_picks = read_picks(root / "picks" / "test0_autopick.star")
    assert len(api) == len(cli_picks)
