"""A tiny 2D picker made in a second (no training) and small micrographs, for the scale-out tests.

The network is an untrained ``unet-small`` (seeded); its card's mask threshold is set to the 75th percentile
of its probability map on a probe image, so every micrograph gets dozens of (meaningless but
deterministic) picks: enough to tell whether two runs picked the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryopick.io.images import write_mrc

SIZE = 256


def make_model(directory: Path) -> Path:
    import torch

    from cryopick.models.registry import build_model
    from cryopick.picker2d.card import ModelCard, save_model
    from cryopick.picker2d.pick import Picker

    torch.manual_seed(0)
    model = build_model("unet-small")
    card = ModelCard(backbone="unet-small", factor=2.0, diameter=24.0, pixel_size=3.0, score_threshold=0.0,
                     mask_threshold=0.5)
    save_model(directory, model, card)
    probe = Picker(directory, num_threads=1, bf16=False)
    probe.set_image(micrograph(99), name="probe")
    card.mask_threshold = float(np.percentile(probe.probability, 75))
    save_model(directory, model, card)
    return directory


def micrograph(seed: int, size: int = SIZE) -> np.ndarray:
    """Noise with a few dark blobs."""
    rng = np.random.default_rng(seed)
    image = rng.normal(10, 2, (size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    for x, y in rng.uniform(20, size - 20, (12, 2)):
        image -= 3 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 7.0 ** 2)).astype(np.float32)
    return image


def write_micrographs(folder: Path, n: int, start: int = 0, size: int = SIZE) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"mic{i:03d}.mrc"
        write_mrc(path, micrograph(i, size), pixel_size=3.0)
        paths.append(path)
    return paths


def picks_by_name(folder: Path) -> dict:
    """``{micrograph: (coords, scores)}`` of the RELION picks in ``folder``."""
    from cryopick.io.coords import read_picks

    out = {}
    for path in sorted(folder.glob("*_autopick.star")):
        picks = read_picks(path, format="relion")
        name = path.name[: -len("_autopick.star")]
        out[name] = (picks.coords, picks.scores)
    return out


def assert_same_picks(a: dict, b: dict, coord_tol: float = 0.01, score_tol: float = 1e-4) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        (ca, sa), (cb, sb) = a[name], b[name]
        assert len(ca) == len(cb), name
        order_a, order_b = np.lexsort(ca.T[::-1]), np.lexsort(cb.T[::-1])
        np.testing.assert_allclose(ca[order_a], cb[order_b], atol=coord_tol, err_msg=name)
        np.testing.assert_allclose(sa[order_a], sb[order_b], atol=score_tol, err_msg=name)
