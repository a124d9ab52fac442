"""Peaks of an N-D score map: local maxima at least a distance apart (the picks of correlation maps)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["find_peaks"]


def find_peaks(
    score_map: np.ndarray,
    min_distance: float,
    threshold: float | None = None,
    max_peaks: int | None = None,
    exclude_border: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a 2D/3D score map, no two closer than ``min_distance`` pixels.

    Parameters
    ----------
    score_map
        ``(H, W)`` or ``(D, H, W)``; non-finite values are never peaks.
    min_distance
        Pixels; peaks are local maxima in a cube of half-width ``floor(min_distance)`` (and not
        flat there) and are then thinned by greedy NMS with the exact Euclidean distance.
    threshold
        Keep peaks with score ``>= threshold`` (default: all).
    max_peaks
        Keep at most this many, highest first.
    exclude_border
        Drop peaks within this many pixels of the border.

    Returns
    -------
    coords : np.ndarray
        ``(N, ndim)`` in ``x, y[, z]`` order (pixels), sorted by decreasing score.
    scores : np.ndarray
        ``(N,)``.
    """
    from scipy import ndimage

    from cryopick.postprocess.nms import nms_points

    s = np.where(np.isfinite(score_map), score_map, -np.inf).astype(np.float32)
    size = 2 * int(max(1, math.floor(min_distance))) + 1
    local_max = ndimage.maximum_filter(s, size=size, mode="constant", cval=-np.inf)
    # A flat neighbourhood (e.g. NCC 0 where the image is constant) is not a peak.
    local_min = ndimage.minimum_filter(s, size=size, mode="nearest")
    peak = (s == local_max) & (s > local_min) & np.isfinite(s)
    if threshold is not None:
        peak &= s >= threshold
    if exclude_border > 0:
        inner = np.zeros_like(peak)
        inner[tuple(slice(exclude_border, n - exclude_border) for n in s.shape)] = True
        peak &= inner
    idx = np.argwhere(peak)  # (N, ndim) in array order
    vals = s[tuple(idx.T)]
    coords = idx[:, ::-1].astype(np.float64)
    keep = nms_points(coords, vals, min_distance)
    coords, vals = coords[keep], vals[keep]
    order = np.argsort(-vals, kind="stable")
    if max_peaks is not None:
        order = order[:max_peaks]
    return coords[order], vals[order].astype(np.float64)
