"""Fixtures shared by the answer-loop tests (test_answers.py, test_fallback.py)."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def model():
    from cryopick.models.promptable3d import load_propicker

    return load_propicker()


@pytest.fixture(scope="module")
def prompt():
    from cryopick.picker3d.prompt import Prompt

    rng = np.random.default_rng(0)
    return Prompt(rng.normal(size=(1, 37, 37, 37)).astype(np.float32), np.zeros((1, 3)), "t", 10.0, 1.0, 12.0, "a")
