"""Candidates of a prompt in one tomogram and their features, for the answer loop (:mod:`.answers`).

After one segmentation pass, every local maximum of a prompt's probability map above a permissive
threshold is a *candidate* (:func:`find_candidates`: more recall than the default settings). Each gets
features (:class:`CandidateSet`): probability statistics around it, the size and shape of its
component, and the encoder embedding and segmenter prototype features of the 37³ sub-volume at it
(encoded as :class:`~cryopick.picker3d.similarity.PromptSimilarity` does). Positions are working
voxels ``x, y, z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cryopick.postprocess.nms import nms_points

BASE_FEATURES = ("p_centre", "p_mean", "p_max", "fill", "log_size", "elong_mid", "elong_min")


# -- candidates and their features ---------------------------------------------------------------------------------
def find_candidates(prob: np.ndarray, diameter: float, threshold: float, separation: float = 0.85) -> np.ndarray:
    """``(N, 3)`` ``x, y, z`` working voxels: local maxima of the smoothed map above ``threshold``, at
    least ``separation`` × ``diameter`` apart (the strongest kept: particles of one class do not
    overlap, and a large or hollow particle has several maxima)."""
    from scipy import ndimage

    r = max(1.0, diameter / 2)
    smooth = ndimage.gaussian_filter(np.asarray(prob, np.float32), sigma=max(1.0, r / 4))
    size = 2 * max(1, int(round(r / 2))) + 1
    peaks = (smooth == ndimage.maximum_filter(smooth, size=size)) & (smooth > threshold)
    zyx = np.argwhere(peaks)
    coords = zyx[:, ::-1].astype(float)
    if len(coords):
        coords = coords[nms_points(coords, smooth[tuple(zyx.T)], separation * diameter)]
    return coords


def component_table(prob: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the 6-connected components of ``prob > threshold`` and their size and shape
    (:func:`base_features` takes it, so that one map is labelled once)."""
    from scipy import ndimage

    from cryopick.postprocess.cluster3d import SIX_CONNECTED

    labels, n = ndimage.label(np.asarray(prob) > threshold, structure=SIX_CONNECTED)
    return labels, _component_shapes(labels, n)


def base_features(prob: np.ndarray, coords: np.ndarray, diameter: float, threshold: float,
                  table: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(N, len(BASE_FEATURES))`` map features at ``coords``: probability at the centre, mean and max
    within half a radius, fraction above ``threshold`` within a radius, log size of the component
    under the strongest voxel near it (in sphere volumes), and its shape (ratios of the middle and
    smallest to the largest extent; 0 without a component). ``table``: :func:`component_table` of
    the map at ``threshold`` when made already."""
    from cryopick.postprocess.cluster3d import sphere_volume

    prob = np.asarray(prob, np.float32)
    labels, shape_stats = component_table(prob, threshold) if table is None else table
    r = max(1.0, diameter / 2)
    h, hr = max(1, int(round(r / 2))), max(1, int(round(r)))
    out = np.zeros((len(coords), len(BASE_FEATURES)))
    dims = prob.shape
    for i, (x, y, z) in enumerate(np.round(np.asarray(coords, float).reshape(-1, 3)).astype(int)):
        c = (int(np.clip(z, 0, dims[0] - 1)), int(np.clip(y, 0, dims[1] - 1)), int(np.clip(x, 0, dims[2] - 1)))
        near = tuple(slice(max(0, v - h), v + h + 1) for v in c)
        block = prob[near]
        wide = prob[tuple(slice(max(0, v - hr), v + hr + 1) for v in c)]
        arg = np.unravel_index(int(np.argmax(block)), block.shape)
        lab = labels[tuple(s.start + a for s, a in zip(near, arg))]
        size, e_mid, e_min = shape_stats[lab] if lab else (0.0, 0.0, 0.0)
        out[i] = (prob[c], block.mean(), block.max(), (wide > threshold).mean(),
                  math.log((size + 1.0) / sphere_volume(diameter)), e_mid, e_min)
    return out


def _component_shapes(labels: np.ndarray, n: int) -> np.ndarray:
    """``(n + 1, 3)``: size, and the middle and smallest over the largest extent (sqrt eigenvalue ratios)."""
    stats = np.zeros((n + 1, 3))
    if n == 0:
        return stats
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx]
    d, h, w = labels.shape
    zz, rem = np.divmod(idx, h * w)
    yy, xx = np.divmod(rem, w)
    cnt = np.bincount(lab, minlength=n + 1).astype(float)
    safe = np.maximum(cnt, 1)
    axes = [a.astype(float) for a in (xx, yy, zz)]
    mean = [np.bincount(lab, weights=a, minlength=n + 1) / safe for a in axes]
    cov = np.zeros((n + 1, 3, 3))
    for i in range(3):
        for j in range(i, 3):
            m = np.bincount(lab, weights=axes[i] * axes[j], minlength=n + 1) / safe - mean[i] * mean[j]
            cov[:, i, j] = cov[:, j, i] = m
    ev = np.sqrt(np.clip(np.linalg.eigvalsh(cov + 1e-3 * np.eye(3)), 1e-6, None))  # ascending
    stats[:, 0] = cnt
    stats[:, 1] = ev[:, 1] / ev[:, 2]
    stats[:, 2] = ev[:, 0] / ev[:, 2]
    stats[0] = 0
    return stats


@dataclass
class CandidateSet:
    """Candidates of one prompt in one tomogram: ``coords`` (working voxels), map features ``base``,
    unit encoder ``embedding`` and raw ``prototypes`` of the sub-volume at each (``(N, 0)`` when the
    segmenter has none)."""

    label: str
    tomogram: str
    coords: np.ndarray
    base: np.ndarray
    embedding: np.ndarray
    prototypes: np.ndarray
    diameter: float

    def __len__(self) -> int:
        return len(self.coords)

    @classmethod
    def at(cls, model, volume, prob: np.ndarray, coords: np.ndarray, *, label: str, tomogram: str, diameter: float,
           threshold: float, bf16: bool = False, table=None) -> "CandidateSet":
        """Features of the positions ``coords`` in one tomogram's map ``prob`` and working ``volume``
        (``table``: :func:`component_table` of ``prob``, when made already)."""
        from cryopick.picker3d.similarity import encode_positions

        coords = np.asarray(coords, float).reshape(-1, 3)
        emb, proto = encode_positions(model, volume, coords, bf16=bf16)
        return cls(label, tomogram, coords, base_features(prob, coords, diameter, threshold, table), emb, proto,
                   float(diameter))

    def subset(self, index) -> "CandidateSet":
        return CandidateSet(self.label, self.tomogram, self.coords[index], self.base[index], self.embedding[index],
                            self.prototypes[index], self.diameter)

    @staticmethod
    def join(sets: Sequence["CandidateSet"]) -> "CandidateSet":
        s0 = sets[0]
        cat = lambda name: np.concatenate([getattr(s, name) for s in sets])  # noqa: E731
        return CandidateSet(s0.label, s0.tomogram, cat("coords"), cat("base"), cat("embedding"), cat("prototypes"),
                            s0.diameter)
