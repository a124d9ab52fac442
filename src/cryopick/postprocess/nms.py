"""Non-maximum suppression of point picks (2D or 3D): no two kept picks closer than a distance."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def nms_points(coords: np.ndarray, scores: np.ndarray, min_distance: float) -> np.ndarray:
    """Greedy NMS: visit picks by decreasing score, drop any within ``min_distance`` of a kept one.

    Parameters
    ----------
    coords
        ``(N, D)`` positions in pixels.
    scores
        ``(N,)``; higher is better. NaN scores rank last.
    min_distance
        Pixels. ``<= 0`` keeps everything.

    Returns
    -------
    np.ndarray
        Sorted indices of the kept picks.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n = len(coords)
    if n == 0 or min_distance <= 0:
        return np.arange(n)
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-scores, kind="stable")
    tree = cKDTree(coords)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[tree.query_ball_point(coords[i], r=min_distance - 1e-9)] = True
    return np.sort(np.asarray(keep, dtype=np.int64))
