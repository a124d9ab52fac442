"""The template-matching input channel (``TrainConfig.template_prior``): a normalised cross-correlation
that is invariant to brightness and contrast and finds rotated copies of the template; pretrained weights
load with the new channel at zero (same output as before); trained models carry their template to picking."""

import argparse

import numpy as np
import pytest
import torch

from cryopick import CryopickError
from cryopick.baselines.template2d import box_size
from cryopick.models.registry import build_model
from cryopick.models.template_prior import TemplateCorrelation, rotated_bank
from cryopick.models.unet2d import PRETRAINED_2D, load_pretrained_2d
from cryopick.picker2d.train import TrainConfig, train_picker
from cryopick.picker2d.train.augment import AugmentConfig
from cryopick.picker2d.train.template import particle_template

from .test_pretrain import _unseen_particle_micrographs


def _elongated(box: int = 21) -> np.ndarray:
    r = np.arange(box) - box // 2
    return np.exp(-(r[:, None] ** 2 / 8.0 + r[None, :] ** 2 / 40.0)).astype(np.float32)


def _scene(template: np.ndarray):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.3, (160, 160)).astype(np.float32)
    image[30:51, 30:51] += 2 * template
    image[100:121, 90:111] += 2 * np.rot90(template)  # the same particle turned by 90 degrees
    return image


def test_response_peaks_on_rotated_copies_and_ignores_brightness_and_contrast():
    template = _elongated()
    layer = TemplateCorrelation(21, 24)
    layer.set_template(template)
    image = _scene(template)
    response = layer(torch.from_numpy(image)[None, None])[0, 0].numpy() / layer.gain
    assert response.shape == image.shape
    assert response[40, 40] > 0.8 and response[110, 100] > 0.8  # NCC of a planted copy in weak noise
    assert np.median(response) < 0.3
    for cy, cx in ((40, 40), (110, 100)):  # the maxima are on the particles
        window = response[cy - 15:cy + 16, cx - 15:cx + 16]
        assert np.unravel_index(window.argmax(), window.shape) == (15, 15)
    shifted = layer(torch.from_numpy(7.0 * image - 3.0)[None, None])[0, 0].numpy() / layer.gain
    np.testing.assert_allclose(shifted[12:-12, 12:-12], response[12:-12, 12:-12], atol=1e-4)


def test_bank_is_normalised_and_an_empty_bank_gives_no_response():
    bank = rotated_bank(_elongated(), 12)
    assert bank.shape == (12, 21, 21)
    np.testing.assert_allclose((bank**2).sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(bank.sum(axis=(1, 2)), 0.0, atol=1e-5)
    layer = TemplateCorrelation(21, 12)
    assert not layer.is_set
    assert float(layer(torch.randn(1, 1, 64, 64)).abs().max()) == 0.0
    with pytest.raises(ValueError):
        TemplateCorrelation(20)


@pytest.mark.skipif(not PRETRAINED_2D.is_file(), reason="pretrained 2D weights not in the package")
def test_pretrained_weights_load_with_the_template_channel_at_zero():
    plain, with_prior = build_model("unet"), build_model("unet", template_box=21)
    load_pretrained_2d(plain)
    load_pretrained_2d(with_prior)
    with_prior.prior.set_template(_elongated())
    assert float(with_prior.down[0][0].weight[:, 1].detach().abs().max()) == 0.0
    x = torch.from_numpy(_scene(_elongated()))[None, None][..., :152, :152]
    plain.eval()
    with_prior.eval()
    with torch.inference_mode():
        torch.testing.assert_close(with_prior(x), plain(x))


def test_template_is_the_average_of_training_particles_only():
    mics, scale = _unseen_particle_micrographs()
    box = box_size(scale.working_diameter)
    assert box % 2 == 1 and box >= scale.working_diameter
    template, n = particle_template(mics, box)
    assert template.shape == (box, box) and n > 10
    mics[0].val_box = (0, mics[0].shape[0], 0, mics[0].shape[1])  # all of micrograph 0 held out
    _, n_without = particle_template(mics, box)
    assert n_without < n
    for m in mics:
        m.coords = m.coords[:0]
    assert particle_template(mics, box) == (None, 0)


def test_trained_model_carries_its_template_to_picking(tmp_path):
    from cryopick.picker2d.card import load_model
    from cryopick.picker2d.pick import Picker

    mics, scale = _unseen_particle_micrographs()
    config = TrainConfig(template_prior=True, epochs=1, steps_per_epoch=3, batch_size=2, patch_size=64,
                         warmup_steps=1, num_threads=1, progress=False, bf16=False, val_fraction=0.3,
                         augment=AugmentConfig(scale_range=1.0, blur=0.0))
    card = train_picker(mics, scale, tmp_path / "m", config)
    record = card.training["template_prior"]
    assert record["particles"] > 10 and record["box"] == box_size(scale.working_diameter)
    assert (tmp_path / "m" / record["image"]).is_file()
    assert card.backbone_kwargs["template_box"] == record["box"]
    model, _ = load_model(tmp_path / "m")
    assert model.prior is not None and model.prior.is_set
    picker = Picker(tmp_path / "m", num_threads=1, bf16=False)
    picker.set_image(mics[0].image * 5 + 100, name="m0")
    assert picker.probability.shape[0] > 0


def test_template_prior_setting_is_checked():
    with pytest.raises(CryopickError, match="template_prior"):
        TrainConfig(template_prior=True, backbone="sam2-hiera-tiny").validate()
    with pytest.raises(CryopickError, match="template_prior"):
        TrainConfig(template_prior="yes").validate()
    from cryopick.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.add_args(parser)
    base = ["--micrographs", "m", "--coords", "c", "--diameter", "50", "-o", "out"]
    assert cli_train.config_from_args(parser.parse_args(base + ["--template-prior"])).template_prior is True
    assert cli_train.config_from_args(parser.parse_args(base)).template_prior is TrainConfig().template_prior


def test_pretraining_with_templates_warm_starts_resumes_and_ships_no_template(tmp_path):
    from cryopick.picker2d.train.pretrain import PretrainConfig, export_pretrained, pretrain

    from .test_pretrain import TINY_PRE

    plain = pretrain(tmp_path / "plain", PretrainConfig(**TINY_PRE), log_every=100)
    assert plain["history"]
    config = PretrainConfig(**dict(TINY_PRE, working_size=96, patch_size=48), template_prior=True,
                            start_weights=str(tmp_path / "plain" / "best.pt"))
    result = pretrain(tmp_path / "tp", config, log_every=100)
    assert [h["step"] for h in result["history"]] == [2, 4]
    state = torch.load(tmp_path / "tp" / "last.pt", weights_only=False)["model"]
    assert state["down.0.0.weight"].shape[1] == 2 and float(state["down.0.0.weight"][:, 1].abs().max()) > 0
    shipped = torch.load(export_pretrained(tmp_path / "tp" / "best.pt", tmp_path / "w.pt"), weights_only=False)
    assert not any(k.startswith("prior.") for k in shipped["model"])
    # the shipped file loads into both kinds of network; the template one keeps its own (empty) template
    with_prior, without = build_model("unet", template_box=21), build_model("unet")
    load_pretrained_2d(with_prior, tmp_path / "w.pt")
    load_pretrained_2d(without, tmp_path / "w.pt")
    assert not with_prior.prior.is_set
    with pytest.raises(CryopickError, match="start_weights"):
        PretrainConfig(start_weights=str(tmp_path / "missing.pt")).validate()
