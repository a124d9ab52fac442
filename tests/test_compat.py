"""Files that users already have — written by cryopick 0.1.0 before the wings were split — still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).parent / "data" / "models"


def test_old_2d_model_folder_loads_and_predicts():
    from cryopick.picker2d.card import load_model
    from cryopick.picker2d.predict import predict_probability

    model, card = load_model(DATA / "unet_v0_1_0")
    assert card.backbone == "unet" and card.factor == 4.0 and card.score_threshold == 0.42
    assert card.working_diameter == 16.0
    prob = predict_probability(model, np.zeros((40, 40), np.float32))
    assert prob.shape == (40, 40) and np.all((prob >= 0) & (prob <= 1))


def test_old_prompt_loads():
    from cryopick.picker3d.prompt import load_prompt

    prompt = load_prompt(DATA / "prompt_v0_1_0.prompt")
    assert prompt.label == "fixture" and prompt.subvolumes.shape == (1, 37, 37, 37)
    assert prompt.diameter == 12.0


def test_old_settings_load():
    from cryopick.picker3d.settings import PickSettings

    settings = PickSettings.load(DATA / "settings_v0_1_0.json")
    assert settings.threshold == 0.3 and settings.min_similarity == 0.8 and settings.mode == "cluster"


def test_shipped_3d_weights_load():
    from cryopick.models.promptable3d import load_propicker

    model = load_propicker()
    assert isinstance(model, torch.nn.Module)
    assert model.meta.get("default_threshold") is not None or model.meta
