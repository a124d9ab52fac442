"""ProPicker-C: particle centres from a 3D occupancy map by connected-component clustering.

Threshold the map, label 6-connected components, keep those whose size in voxels lies in
``[min_size, max_size]`` (defaults from the particle diameter: 0.1× and 1.2× the volume of a sphere of
that diameter), and report each component's centroid. Score = the component's mean probability.
Optionally, components whose *prompt similarity* (any callable of the centroids, e.g.
:class:`cryopick.picker3d.similarity.PromptSimilarity`) is below ``min_similarity`` are dropped — this removes
instances of other particles that the map also lights up — and non-maximum suppression at
``min_distance`` removes picks closer than that.

For sweeps (:mod:`cryopick.picker3d.sweep`) the labelling is split from the size filter:
:func:`components` labels once per threshold, :func:`select` filters by size cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from cryopick.postprocess.nms import nms_points

SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)


def sphere_volume(diameter: float) -> float:
    """Voxels in a sphere of ``diameter`` voxels."""
    return float(np.pi / 6.0 * diameter**3)


def default_size_limits(diameter: float, min_factor: float = 0.1, max_factor: float = 1.2) -> tuple[float, float]:
    """``(min_size, max_size)`` in voxels: ``min_factor`` and ``max_factor`` × the sphere volume."""
    v = sphere_volume(diameter)
    return min_factor * v, max_factor * v


@dataclass
class Components:
    """Connected components of a thresholded map.

    Attributes
    ----------
    centroids
        ``(N, 3)`` in ``x, y, z`` voxel order (the picks convention).
    sizes
        ``(N,)`` voxels per component.
    scores
        ``(N,)`` mean probability inside each component.
    """

    centroids: np.ndarray
    sizes: np.ndarray
    scores: np.ndarray


def components(prob: np.ndarray, threshold: float = 0.5) -> Components:
    """Label 6-connected components of ``prob > threshold`` and measure them.

    ``prob`` is ``(D, H, W)``; it may be a memory map (it is read in full once).
    """
    mask = np.asarray(prob) > threshold
    labels, n = ndimage.label(mask, structure=SIX_CONNECTED)
    if n == 0:
        return Components(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    flat = labels.ravel()
    sel = flat > 0
    lab = flat[sel]
    sizes = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    idx = np.flatnonzero(sel)
    d, h, w = labels.shape
    zz, rem = np.divmod(idx, h * w)
    yy, xx = np.divmod(rem, w)
    cent = np.stack([np.bincount(lab, weights=a, minlength=n + 1)[1:] for a in (xx, yy, zz)], axis=1) / sizes[:, None]
    psum = np.bincount(lab, weights=np.asarray(prob).ravel()[sel], minlength=n + 1)[1:]
    return Components(cent, sizes, psum / sizes)


def select(comp: Components, min_size: float = 0.0, max_size: float = np.inf) -> np.ndarray:
    """Indices of components with ``min_size <= size <= max_size`` voxels."""
    return np.flatnonzero((comp.sizes >= min_size) & (comp.sizes <= max_size))


def cluster_picks(
    prob: np.ndarray,
    threshold: float = 0.5,
    diameter: float | None = None,
    min_size: float | None = None,
    max_size: float | None = None,
    min_distance: float | None = None,
    similarity: Callable[[np.ndarray], np.ndarray] | None = None,
    min_similarity: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ProPicker-C on one ``(D, H, W)`` probability map.

    Parameters
    ----------
    threshold
        Probability above which a voxel is foreground.
    diameter
        Particle diameter in voxels; gives the default size limits (see :func:`default_size_limits`).
    min_size, max_size
        Component size limits in voxels (override the diameter defaults; without either, no limit).
    min_distance
        Voxels; picks closer than this are thinned by NMS on the score (``None``: no NMS).
    similarity, min_similarity
        ``similarity(coords) -> (N,)`` for ``(N, 3)`` ``x, y, z`` centroids; components scoring
        below ``min_similarity`` are dropped before NMS (``None``: no filter).

    Returns
    -------
    coords : ``(N, 3)`` ``x, y, z`` voxels; scores : ``(N,)`` mean probability per component.
    """
    lo, hi = default_size_limits(diameter) if diameter else (0.0, np.inf)
    lo = lo if min_size is None else min_size
    hi = hi if max_size is None else max_size
    comp = components(prob, threshold)
    keep = select(comp, lo, hi)
    coords, scores = comp.centroids[keep], comp.scores[keep]
    if min_similarity is not None and len(coords):
        if similarity is None:
            raise ValueError("min_similarity needs a similarity function")
        ok = np.asarray(similarity(coords)) >= min_similarity
        coords, scores = coords[ok], scores[ok]
    if min_distance and len(coords):
        k = nms_points(coords, scores, min_distance)
        coords, scores = coords[k], scores[k]
    return coords, scores
