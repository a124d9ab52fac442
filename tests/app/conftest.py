"""Fixtures of the app tests: a small project of synthetic micrographs (bright discs on noise) made here."""

from __future__ import annotations

import numpy as np
import pytest

DIAMETER = 20.0


def make_project(root, n: int = 3, size: int = 256, seed: int = 0):
    """``root/micrographs/mic_<i>.mrc`` with discs at known positions; returns {name: (N, 2) centres}."""
    from cryopick.io.images import write_mrc

    rng = np.random.default_rng(seed)
    (root / "micrographs").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    truth = {}
    for i in range(n):
        img = rng.normal(0, 1, (size, size)).astype(np.float32)
        centres = []
        while len(centres) < 12:
            c = rng.uniform(20, size - 20, 2)
            if all(np.hypot(*(c - d)) > DIAMETER * 1.3 for d in centres):
                centres.append(c)
        for x, y in centres:
            img += 3.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (DIAMETER / 4) ** 2))
        write_mrc(root / "micrographs" / f"mic_{i}.mrc", img, pixel_size=2.0)
        truth[f"mic_{i}"] = np.array(centres)
    (root / "app.json").write_text('{"diameter": %g}\n' % DIAMETER)
    return truth


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    truth = make_project(root)
    return root, truth
