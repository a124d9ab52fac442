"""Test-time augmentation of the probability map, the calibrated choice between Algorithm S1 and
plain peak finding, and their records in the model card (old cards keep today's behaviour)."""

import json

import numpy as np
import pytest
import torch

from cryopick import CryopickError
from cryopick.evaluate.matching import match_points
from cryopick.models.registry import build_model
from cryopick.picker2d.calibrate import calibrate_postprocess
from cryopick.picker2d.card import ModelCard, load_card, save_model
from cryopick.picker2d.pick import Picker
from cryopick.picker2d.predict import TTA_MODES, predict_probability
from cryopick.picker2d.train.data import TrainingMicrograph


class Asymmetric(torch.nn.Module):
    """A deterministic network that is not flip/rotation equivariant (a lopsided kernel + position bias)."""

    def __init__(self, ramp: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(1, 1, 5, 5, generator=g))
        self.ramp = ramp

    def forward(self, x):
        if not self.ramp:  # translation equivariant: tiles join without seams
            return torch.nn.functional.conv2d(x, self.weight, padding=2)
        h, w = x.shape[-2:]
        ramp = torch.linspace(-1, 1, w)[None, None, None, :] + torch.linspace(0, 2, h)[None, None, :, None]
        return torch.nn.functional.conv2d(x, self.weight, padding=2) + ramp


@pytest.mark.parametrize("shape", [(40, 40), (36, 52)])
def test_tta_is_the_mean_of_back_transformed_predictions(shape):
    model = Asymmetric().eval()
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    plain = predict_probability(model, image)
    np.testing.assert_array_equal(predict_probability(model, image, tta="none"), plain)
    flips = [plain, predict_probability(model, image[:, ::-1].copy())[:, ::-1],
             predict_probability(model, image[::-1].copy())[::-1],
             predict_probability(model, image[::-1, ::-1].copy())[::-1, ::-1]]
    np.testing.assert_allclose(predict_probability(model, image, tta="flips"), np.mean(flips, axis=0), atol=1e-6)
    d4 = []
    for flip in (False, True):
        src = image[:, ::-1] if flip else image
        for k in range(4):
            back = np.rot90(predict_probability(model, np.ascontiguousarray(np.rot90(src, k))), -k)
            d4.append(back[:, ::-1] if flip else back)
    out = predict_probability(model, image, tta="d4")
    assert out.shape == shape
    np.testing.assert_allclose(out, np.mean(d4, axis=0), atol=1e-6)
    assert not np.allclose(out, plain, atol=1e-3)  # the model is not equivariant: TTA changes the map
    with pytest.raises(ValueError, match="flips"):
        predict_probability(model, image, tta="rot")


def test_tta_of_a_tiled_image_matches_the_untiled_one():
    model = Asymmetric(ramp=False).eval()
    image = np.random.default_rng(2).normal(size=(90, 70)).astype(np.float32)
    np.testing.assert_allclose(predict_probability(model, image, tile=48, margin=8, tta="d4"),
                               predict_probability(model, image, tile=256, tta="d4"), atol=1e-5)


class Identity(torch.nn.Module):
    """Returns the logit of its input: the 'image' is the probability map itself."""

    def forward(self, x):
        return torch.logit(x.clamp(1e-4, 1 - 1e-4))


def blob_map(spacing: float, seed: int, r: float = 4.0, size: int = 128):
    """Gaussian blobs (painted radius ``r``) on a jittered grid ``spacing`` apart: crowded when they merge."""
    rng = np.random.default_rng(seed)
    grid = np.arange(10, size - 10, spacing)
    centres = np.array([(x, y) for y in grid for x in grid]) + rng.normal(0, 0.7, (len(grid) ** 2, 2))
    yy, xx = np.mgrid[:size, :size]
    prob = np.zeros((size, size))
    for x, y in centres:
        prob = np.maximum(prob, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (0.9 * r) ** 2)))
    prob = np.clip(0.95 * prob + rng.normal(0, 0.03, prob.shape), 0, 1).astype(np.float32)
    return prob, centres


@pytest.mark.parametrize("spacing, expected", [(6.0, "peaks"), (9.0, "s1")])
def test_calibration_chooses_the_peak_finder_that_wins_on_validation(spacing, expected):
    mics = []
    for seed in range(2):
        prob, centres = blob_map(spacing, seed)
        mics.append(TrainingMicrograph(f"m{seed}", prob, centres, frame=None, val_box=(0, 128, 0, 128)))
    kwargs = dict(radius=4.0, context=0, bf16=False, mask_threshold=0.5, score_method="mean_top",
                  min_distance=0.6 * spacing, tolerance=spacing / 2, ttas=("none",))
    default = calibrate_postprocess(Identity(), mics, **kwargs)
    assert default["peak_method"] == "s1"  # the choice is opt-in (it lost on the leave-one-out benchmark)
    cal = calibrate_postprocess(Identity(), mics, choose_method=True, **kwargs)
    assert default["variants"] == cal["variants"]
    assert cal["peak_method"] == expected and cal["tta"] == "none"
    assert set(cal["variants"]) == {"s1/tta=none", "peaks/tta=none"}
    f1 = {k: v["f1"] for k, v in cal["variants"].items()}
    assert cal["f1"] == max(f1.values())
    fixed = Identity()
    fixed.preferred_size = 128  # a SAM2-like backbone: only the card's TTA mode is calibrated
    assert set(calibrate_postprocess(fixed, mics, **{**kwargs, "ttas": None})["variants"]) == set(cal["variants"])
    full = calibrate_postprocess(Identity(), mics[:1], **{**kwargs, "ttas": None})
    assert set(full["variants"]) == {f"{m}/tta={t}" for m in ("s1", "peaks") for t in TTA_MODES}
    if expected == "peaks":  # the crowded case: the watershed merges touching particles
        assert f1["peaks/tta=none"] > f1["s1/tta=none"] + 0.1


def write_model(folder, **card_fields):
    model = build_model("unet-small")
    card = ModelCard(backbone="unet-small", backbone_kwargs=dict(getattr(model, "config", None) or {}), factor=1.0,
                     diameter=16.0, score_threshold=0.4, **card_fields)
    save_model(folder, model, card)
    return folder


def test_old_cards_load_with_s1_and_no_tta(tmp_path):
    folder = write_model(tmp_path / "m")
    data = json.loads((folder / "card.json").read_text())
    for key in ("peak_method", "tta"):
        data.pop(key)
    (folder / "card.json").write_text(json.dumps(data))
    card = load_card(folder)
    assert (card.peak_method, card.tta) == ("s1", "none")
    picker = Picker(folder, num_threads=1, bf16=False)
    assert (picker.peak_method, picker.tta, picker.threshold) == ("s1", "none", 0.4)
    assert "tta" not in picker.settings() and "peak_method" not in picker.settings()  # old pick folders resume


def test_picker_uses_the_cards_choice_and_the_variant_threshold(tmp_path, monkeypatch):
    variants = {"s1/tta=none": {"threshold": 0.45}, "peaks/tta=none": {"threshold": 0.4},
                "peaks/tta=flips": {"threshold": 0.6}, "s1/tta=d4": {"threshold": 0.7}}
    folder = write_model(tmp_path / "m", peak_method="peaks", calibration={"variants": variants})
    picker = Picker(folder, num_threads=1, bf16=False)
    assert (picker.peak_method, picker.tta, picker.threshold) == ("peaks", "none", 0.4)
    assert Picker(folder, num_threads=1, tta="flips").threshold == 0.6
    assert Picker(folder, num_threads=1, tta="d4", peak_method="s1").threshold == 0.7
    assert Picker(folder, num_threads=1, tta="d4").threshold == 0.4  # not recorded: the card's threshold
    assert Picker(folder, num_threads=1, tta="flips").settings()["tta"] == "flips"
    seen = {}

    def fake_predict(model, image, bf16=False, tta=None):
        seen["tta"] = tta
        prob, _ = blob_map(6.0, 0)
        return prob

    monkeypatch.setattr("cryopick.picker2d.pick.predict_probability", fake_predict)
    prob, centres = blob_map(6.0, 0)
    picker = Picker(folder, num_threads=1, tta="flips", border=0, detect_padding=False)
    picks = picker.pick(np.zeros((128, 128), np.float32), min_distance=3.6)
    assert seen["tta"] == "flips"
    assert match_points(picks.coords, centres, 3.0).recall > 0.6  # peaks found the crowded blobs
    s1 = Picker(folder, num_threads=1, tta="flips", peak_method="s1", border=0, detect_padding=False)
    assert len(s1.pick(np.zeros((128, 128), np.float32), min_distance=3.6)) < len(picks)


@pytest.mark.parametrize("field, value", [("peak_method", "watershed"), ("tta", "all"), ("tta", 3)])
def test_unknown_choices_in_a_card_are_one_line_errors(tmp_path, field, value):
    folder = write_model(tmp_path / "m")
    data = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps({**data, field: value}))
    with pytest.raises(CryopickError, match=field):
        load_card(folder)
    with pytest.raises(CryopickError, match="tta"):
        Picker(write_model(tmp_path / "ok"), num_threads=1, tta="x")


def test_tta_modes_are_the_documented_ones():
    assert {k: len(v) for k, v in TTA_MODES.items()} == {"none": 1, "flips": 4, "d4": 8}
