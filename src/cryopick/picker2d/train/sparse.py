"""Sparse annotation detected from the micrographs themselves (a few clicks on micrographs full of particles).

People often click a handful of particles per micrograph. Trained as if complete, every unclicked particle
is taught as background, the held-out labels are too few to measure anything, and the calibrated threshold
is meaningless. :func:`detect_sparse_annotation` counts what the annotated micrographs hold and compares:

1. a difference of Gaussians tuned to the particle radius (:func:`cryopick.baselines.dog.dog_map`, robust-σ
   units, so one level means the same on every micrograph) is computed on each working image; its sign is
   the one that makes the annotated particles bright (dark or bright particles alike);
2. the response at each annotated particle (the strongest within half a radius of the click) gives the
   level of "a particle like the ones clicked": the ``quantile`` (0.2) of those responses, pooled over the
   micrographs;
3. local maxima at least 0.7 diameters apart above that level are counted per micrograph; about
   ``1 - quantile`` of the particles lie above it, so the estimate is ``count / (1 - quantile)``.

Annotation is called sparse when the annotated particles are fewer than ``ratio`` (1/4) of that estimate.
On the bundled EMPIAR-10017 example the fully annotated micrographs give estimates of 0.7-1.5x their
annotated counts (never sparse), 5 clicks per micrograph give 5 of ~320-590 (sparse); on simulated
micrographs with 70 particles, full annotation is estimated at 64-70 and 5 clicks at 34-70. People click
the clearest particles, which raises the level and lowers the estimate: the rule errs towards "complete".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cryopick.picker2d.train.data import TrainingMicrograph

log = logging.getLogger(__name__)

#: Annotated particles below this fraction of the estimated count: sparse annotation.
SPARSE_RATIO = 0.25
#: Quantile of the annotated particles' responses that sets the counting level.
LEVEL_QUANTILE = 0.2


@dataclass
class SparseEstimate:
    """What :func:`detect_sparse_annotation` found.

    ``per_micrograph``: estimated particles per annotated micrograph (mean); ``annotated``: annotated
    particles per annotated micrograph (mean); ``counts``: estimate per micrograph name; ``sparse``: the rule's
    verdict."""

    per_micrograph: float
    annotated: float
    n_micrographs: int
    counts: dict
    sparse: bool

    def message(self) -> str:
        return (f"sparse annotation detected: ~{self.per_micrograph:.0f} particles per micrograph, "
                f"{self.annotated:.3g} annotated → positive-unlabelled training")


def _response(image: np.ndarray, radius: float) -> np.ndarray:
    from cryopick.baselines.dog import dog_map

    return dog_map(image, radius)


def _at_clicks(response: np.ndarray, coords: np.ndarray, radius: float) -> np.ndarray:
    """The largest response within about half a radius of each click (clicks are rarely on the centre)."""
    from scipy import ndimage

    size = max(1, int(radius)) | 1
    top = ndimage.maximum_filter(response, size=size)
    h, w = response.shape
    xs = np.clip(np.round(coords[:, 0]).astype(int), 0, w - 1)
    ys = np.clip(np.round(coords[:, 1]).astype(int), 0, h - 1)
    return top[ys, xs]


def estimate_particle_counts(mics: list[TrainingMicrograph], working_diameter: float,
                             quantile: float = LEVEL_QUANTILE) -> dict[str, float]:
    """Estimated number of particles on each annotated micrograph (see the module docstring); ``{}`` when no
    micrograph has annotated particles."""
    from cryopick.postprocess.peaks import find_peaks

    annotated = [m for m in mics if not m.negative and not m.unlabelled and len(m.coords)]
    if not annotated:
        return {}
    radius = 0.5 * working_diameter
    responses, at = [], []
    for m in annotated:
        r = _response(m.image, radius)
        responses.append(r)
        at.append(_at_clicks(r, m.coords, radius))
    clicked = np.concatenate(at)
    sign = 1.0 if np.median(clicked) >= 0 else -1.0  # dark particles: the DoG dips at them
    if sign < 0:
        clicked = np.concatenate([_at_clicks(-r, m.coords, radius) for r, m in zip(responses, annotated)])
    level = float(np.quantile(clicked, quantile))
    counts = {}
    for m, r in zip(annotated, responses):
        peaks, _ = find_peaks(sign * r, 0.7 * working_diameter, threshold=level, exclude_border=int(radius))
        counts[m.name] = len(peaks) / (1.0 - quantile)
    return counts


def detect_sparse_annotation(mics: list[TrainingMicrograph], working_diameter: float,
                             ratio: float = SPARSE_RATIO) -> SparseEstimate | None:
    """Estimate how many particles the annotated micrographs hold and whether the annotation is sparse
    (annotated < ``ratio`` x estimated, pooled over the micrographs); ``None`` without annotated particles."""
    counts = estimate_particle_counts(mics, working_diameter)
    if not counts:
        return None
    annotated = [m for m in mics if m.name in counts]
    n_lab = sum(len(m.coords) for m in annotated)
    total = sum(counts.values())
    per_mic = total / len(counts)
    estimate = SparseEstimate(per_micrograph=per_mic, annotated=n_lab / len(counts), n_micrographs=len(counts),
                              counts={k: round(v, 1) for k, v in counts.items()}, sparse=n_lab < ratio * total)
    log.debug("particle count estimate per micrograph: %s (annotated %d)", estimate.counts, n_lab)
    return estimate
