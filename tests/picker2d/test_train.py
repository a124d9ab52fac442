"""Training the 2D picker: targets, losses, validation split, a tiny end-to-end run, resume."""

import json

import numpy as np
import pytest
import torch

from cryopick import CryopickError
from cryopick.picker2d.calibrate import ValidationPicks, calibrate_threshold
from cryopick.picker2d.card import load_card, load_model
from cryopick.picker2d.train import TrainConfig, WorkingScale, train_picker
from cryopick.picker2d.train import loop as train_loop
from cryopick.picker2d.train.augment import AugmentConfig, sample_patch
from cryopick.picker2d.train.batches import prepare_targets, sample_batch
from cryopick.picker2d.train.data import (
    TrainingMicrograph,
    assign_validation,
    assign_validation_strips,
    disk_target,
    positive_prior,
)
from cryopick.picker2d.train.losses import balanced_bce, nnpu_loss
from cryopick.preprocess import WorkingFrame, diameter_in_pixels


def synthetic_micrograph(seed: int, size: int = 160, n: int = 28, diameter: float = 12.0):
    """Bright blurred disks on Gaussian noise; returns ``(image, (N, 2) x, y centres)``."""
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < n:
        p = rng.uniform(diameter, size - diameter, 2)
        if all(np.hypot(*(p - q)) > 1.3 * diameter for q in centres):
            centres.append(p)
    centres = np.array(centres)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(0, 1, (size, size)).astype(np.float32)
    for x, y in centres:
        image += 2.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (diameter / 3.5) ** 2))
    return image, centres


def training_micrographs(n_mics=2, **kw):
    mics = []
    for i in range(n_mics):
        image, centres = synthetic_micrograph(i, **kw)
        frame = WorkingFrame(image.shape, image.shape)
        norm = (image - np.median(image)) / image.std()
        mics.append(TrainingMicrograph(f"mic{i}", norm.astype(np.float32), centres, frame))
    return mics


TINY = dict(backbone="unet-small", target_diameter=12.0, patch_size=64, batch_size=4, epochs=4,
            steps_per_epoch=12, warmup_steps=5, lr=5e-3, patience=10, num_threads=1, progress=False,
            bf16=False, augment=AugmentConfig(scale_range=1.0, blur=0.0))


def test_working_scale_from_diameter():
    s = WorkingScale.from_diameter(108, pixel_size=1.77)
    assert s.factor == pytest.approx(6.75) and s.working_diameter == pytest.approx(16.0)
    assert s.working_pixel_size == pytest.approx(1.77 * 6.75)
    assert WorkingScale.from_diameter(108, target_diameter=20).factor == pytest.approx(5.4)
    assert WorkingScale.from_diameter(10).factor == 1.0  # never upsample
    with pytest.raises(CryopickError):
        WorkingScale.from_diameter(0)


def test_diameter_units():
    assert diameter_in_pixels(191.16, "A", pixel_size=1.77) == pytest.approx(108.0)
    assert diameter_in_pixels(108, "px") == 108
    with pytest.raises(CryopickError, match="pixel size"):
        diameter_in_pixels(190, "A", pixel_size=None)


def test_disk_target_and_validation_strips():
    mask = disk_target((40, 50), np.array([[10.0, 10.0], [45.0, 35.0]]), radius=3)
    assert mask.sum() == 2 * 29  # a radius-3 digital disk has 29 pixels; both fully inside
    assert mask[10, 10] == 1 and mask[10, 14] == 0
    mics = training_micrographs(3, size=100, n=5)
    assign_validation_strips(mics, 0.2, seed=0)
    boxes = [m.val_box for m in mics]
    assert all(b[1] - b[0] == 100 and b[3] - b[2] == 20 for b in boxes)
    assert len({b[2] for b in boxes}) == 3  # the strip moves between micrographs
    inside = mics[0].in_val(mics[0].coords)
    x0, x1 = boxes[0][2], boxes[0][3]
    np.testing.assert_array_equal(inside, (mics[0].coords[:, 0] >= x0) & (mics[0].coords[:, 0] < x1))


def test_whole_micrographs_held_out_when_there_are_enough():
    mics = training_micrographs(5, size=100, n=5)
    assert assign_validation(mics, 0.2, seed=0) == "micrographs"
    held = [m for m in mics if m.val_box is not None]
    assert len(held) == 1 and held[0].val_box == (0, 100, 0, 100)
    targets = prepare_targets(mics, 3.0)
    rng = np.random.default_rng(0)
    for _ in range(5):  # the held-out micrograph never feeds training (its weight is all zero)
        _, _, w, _ = sample_batch(mics, targets, 32, 4, rng, None)
        assert w.sum() > 0
    assert targets[mics.index(held[0])][1].sum() == 0
    two = training_micrographs(2, size=100, n=5)
    assert assign_validation(two, 0.2) == "strips" and all(m.val_box[3] - m.val_box[2] == 20 for m in two)


def test_balanced_bce_weights_classes_equally():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    weight = torch.ones_like(target)
    sp = torch.nn.functional.softplus
    expected = 0.5 * sp(-logits.flatten()[0]) + 0.5 * sp(logits.flatten()[1:]).mean()
    assert balanced_bce(logits, target, weight).item() == pytest.approx(expected.item(), rel=1e-6)
    weight[0, 0, 1, 1] = 0  # excluded pixel
    expected = 0.5 * sp(-logits.flatten()[0]) + 0.5 * sp(logits.flatten()[1:3]).mean()
    assert balanced_bce(logits, target, weight).item() == pytest.approx(expected.item(), rel=1e-6)


def test_nnpu_does_not_punish_unlabelled_particles():
    # Labelled and unlabelled particles look the same (high logits); background low.
    labelled = torch.zeros(1, 1, 10, 10)
    labelled[0, 0, 0, :5] = 1
    logits = torch.full((1, 1, 10, 10), -4.0)
    logits[0, 0, 0, :] = 4.0  # 5 labelled + 5 unlabelled particle pixels
    weight = torch.ones_like(labelled)
    prior = 5 / 95  # fraction of particle pixels among the unlabelled ones
    as_negative = balanced_bce(logits, labelled, weight).item()
    pu = nnpu_loss(logits, labelled, weight, prior).item()
    truth = torch.zeros_like(labelled)
    truth[0, 0, 0, :] = 1
    true_loss = balanced_bce(logits, truth, weight).item()  # the loss if every particle were labelled
    assert pu == pytest.approx(true_loss, rel=0.05)  # nnPU recovers it from 5 of 10 labels ...
    assert as_negative > 5 * pu  # ... while BCE calls the 5 unlabelled particles errors
    assert nnpu_loss(logits, labelled, weight, 0.0).item() == pytest.approx(as_negative)
    # The non-negative correction: a prior that is too high cannot drive the loss below zero.
    assert nnpu_loss(logits, labelled, weight, 0.5).item() >= 0


def test_positive_prior_from_labelled_fraction():
    mics = training_micrographs(1, size=100, n=10)
    assert positive_prior(mics, 3.0, 1.0) == 0.0
    full_area = 10 * np.pi * 9
    mics[0].coords = mics[0].coords[:1]  # 1 of 10 labelled
    expected = (full_area - np.pi * 9) / (100 * 100 - np.pi * 9)
    assert positive_prior(mics, 3.0, 0.1) == pytest.approx(expected, rel=1e-6)


def test_sample_patch_shapes_and_padding():
    rng = np.random.default_rng(0)
    image = np.ones((30, 40), np.float32)
    img, tgt, wgt = sample_patch(image, np.zeros((30, 40), np.uint8), np.ones((30, 40), np.uint8), 64, rng,
                                 AugmentConfig())
    assert img.shape == tgt.shape == wgt.shape == (64, 64)
    assert 0 < wgt.sum() <= 30 * 40  # padding carries no weight


def test_calibration_picks_the_f1_optimum():
    truth = np.array([[10.0, 10.0], [30.0, 10.0], [50.0, 10.0]])
    coords = np.array([[10.0, 11.0], [30.0, 9.0], [50.0, 10.0], [70.0, 10.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.4])  # the false pick scores lowest
    cal = calibrate_threshold([ValidationPicks(coords, scores, truth)], tolerance=3.0,
                              grid=np.array([0.3, 0.5, 0.75, 0.85]))
    assert cal["threshold"] == 0.5 and cal["f1"] == pytest.approx(1.0)
    # Near-optimal thresholds (F1 within 0.2 of the best: 0.857 at 0.3, 1 at 0.5, 0.8 at 0.75; 0.5 at
    # 0.85 is not): the middle of that plateau is taken, not an end of it.
    lenient = calibrate_threshold([ValidationPicks(coords, scores, truth)], tolerance=3.0,
                                  grid=np.array([0.3, 0.5, 0.75, 0.85]), tolerance_f1=0.2)
    assert lenient["threshold"] == 0.5
    wide = calibrate_threshold([ValidationPicks(coords, scores, truth)], tolerance=3.0,
                               grid=np.array([0.2, 0.3, 0.5, 0.75, 0.85]), tolerance_f1=0.2)
    assert wide["threshold"] == 0.5 and wide["f1"] == pytest.approx(1.0)
    # Sparse labels: 2 of 6 particles labelled; precision is estimated from the recall on them.
    truth6 = np.array([[10.0 * i, 50.0] for i in range(1, 7)])
    picks = np.concatenate([truth6, [[200.0, 200.0], [250.0, 250.0]]])
    scores = np.array([0.95, 0.9, 0.85, 0.7, 0.65, 0.6, 0.4, 0.35])
    labelled = truth6[[1, 5]]  # the particles scoring 0.9 and 0.6
    sparse = calibrate_threshold([ValidationPicks(picks, scores, labelled)], tolerance=3.0,
                                 labelled_fraction=1 / 3, grid=np.array([0.3, 0.5, 0.75]))
    # 0.75: recall 1/2 -> F1 0.67; 0.5: all 6 true picks, estimated precision 1 -> F1 1;
    # 0.3: 8 picks for an estimated 6 particles -> precision 0.75.
    assert sparse["threshold"] == 0.5 and sparse["precision"] == pytest.approx(1.0)
    np.testing.assert_allclose(sparse["curve"]["precision"], [0.75, 1.0, 1.0])
    np.testing.assert_allclose(sparse["curve"]["recall"], [1.0, 1.0, 0.5])


def test_tiny_training_run_learns_and_writes_a_model(tmp_path):
    mics = training_micrographs(2)
    scale = WorkingScale.from_diameter(12.0, pixel_size=2.0, target_diameter=12.0)
    card = train_picker(mics, scale, tmp_path / "model", TrainConfig(**TINY))
    assert (tmp_path / "model" / "model.pt").exists() and not (tmp_path / "model" / "checkpoint.pt").exists()
    loaded = load_card(tmp_path / "model")
    assert loaded.backbone == "unet-small" and loaded.diameter == 12.0 and loaded.pixel_size == 2.0
    assert loaded.score_threshold == card.score_threshold
    assert loaded.training["epochs_run"] == 4 and len(loaded.training["history"]) == 4
    assert loaded.data["n_particles"] == 56
    # It learned something real: validation F1 far above chance on blobs this clear.
    assert card.calibration["f1"] > 0.8
    model, _ = load_model(tmp_path / "model")
    assert not model.training
    json.loads((tmp_path / "model" / "card.json").read_text())
    with pytest.raises(CryopickError, match="already holds a trained model"):
        train_picker(training_micrographs(2), scale, tmp_path / "model", TrainConfig(**TINY))


@pytest.mark.parametrize("labelled_fraction, crash_at, init", [(1.0, 2, "fresh"), (0.5, 4, "fresh"),
                                                               (0.5, 4, "previous"), (0.5, 5, "previous")])
def test_interrupted_training_resumes_exactly(tmp_path, monkeypatch, labelled_fraction, crash_at, init):
    """Ctrl-C after a checkpoint, rerun: the same losses as an uninterrupted run. With sparse labels
    the crash happens in the second (self-training) stage, after the pseudo-labels were written
    (and, when the second network starts from the first, after its weights were saved)."""
    scale = WorkingScale.from_diameter(12.0, target_diameter=12.0)
    config = dict(TINY, epochs=3, steps_per_epoch=4, labelled_fraction=labelled_fraction, self_training_init=init)

    def mics():
        m = training_micrographs(2)
        if labelled_fraction < 1:
            for x in m:
                x.coords = x.coords[::2]
        return m

    reference = train_picker(mics(), scale, tmp_path / "ref", TrainConfig(**config))
    original = train_loop.save_checkpoint
    calls = {"n": 0}

    def save_then_crash(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt  # the user pressed Ctrl-C after this epoch

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_picker(mics(), scale, tmp_path / "run", TrainConfig(**config))
    monkeypatch.setattr(train_loop, "save_checkpoint", original)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(CryopickError, match="different settings"):
        train_picker(mics(), scale, tmp_path / "run", TrainConfig(**dict(config, lr=1e-3)))
    resumed = train_picker(mics(), scale, tmp_path / "run", TrainConfig(**config))
    assert resumed.training["stages"] == reference.training["stages"]
    assert len(resumed.training["stages"]) == (1 if labelled_fraction == 1 else 2)
    ref_loss = [h["loss"] for h in reference.training["history"]]
    res_loss = [h["loss"] for h in resumed.training["history"]]
    assert len(res_loss) == 3
    np.testing.assert_allclose(res_loss, ref_loss, rtol=1e-5)
    assert resumed.score_threshold == pytest.approx(reference.score_threshold)
    assert not (tmp_path / "run" / "pseudo_labels.npz").exists()
    assert not (tmp_path / "run" / "previous_stage.pt").exists()


def test_no_labels_is_an_error(tmp_path):
    mics = training_micrographs(1)
    mics[0].coords = np.zeros((0, 2))
    with pytest.raises(CryopickError, match="no labelled particles"):
        train_picker(mics, WorkingScale.from_diameter(12.0, target_diameter=12.0), tmp_path / "m", TrainConfig(**TINY))


class _FixedSizeBackbone(torch.nn.Module):
    """A stand-in for a large backbone (e.g. SAM2): fixed square input, frozen encoder from a
    checkpoint, small trainable head."""

    preferred_size = 64
    input_multiple = 16

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 1, 1)
        for p in self.encoder.parameters():
            p.requires_grad = False

    def forward(self, x):
        assert x.shape[-2:] == (64, 64), x.shape  # the loop and inference must honour preferred_size
        return self.head(torch.relu(self.encoder(x)))

    def trainable_parameters(self):
        return list(self.head.parameters())


def test_backbone_contract_fixed_size_and_frozen_checkpoint(tmp_path):
    from cryopick.models.registry import register_model
    from cryopick.picker2d.pick import Picker

    base = tmp_path / "base.pt"
    torch.save(_FixedSizeBackbone().state_dict(), base)

    @register_model("test-fixed-size", task="picker2d")
    def build(checkpoint=None):
        model = _FixedSizeBackbone()
        if checkpoint:
            model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model

    config = TrainConfig(**dict(TINY, backbone="test-fixed-size", checkpoint=str(base), patch_size=None, batch_size=None,
                                epochs=1, steps_per_epoch=2))
    card = train_picker(training_micrographs(1, size=100, n=8), WorkingScale.from_diameter(12.0, target_diameter=12.0),
                        tmp_path / "model", config)
    assert card.training["config"]["patch_size"] == 64
    saved = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert set(saved) == {"head.weight", "head.bias"}  # frozen weights come from the base checkpoint
    picker = Picker(tmp_path / "model", num_threads=1, bf16=False)
    frozen = torch.load(base, weights_only=True)["encoder.weight"]
    assert torch.equal(picker.model.encoder.weight, frozen)
    assert picker.pick(np.random.default_rng(0).normal(size=(100, 100)).astype(np.float32)) is not None
