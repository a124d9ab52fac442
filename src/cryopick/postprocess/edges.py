"""Micrograph edges: the part of a micrograph not covered by padding bands, and picks inside it.

:func:`valid_region` finds the part of a micrograph not covered by padding bands (constant rows/columns, or
streaks where each line repeats its neighbour, as left by motion correction or by edge-replicating a shifted
frame), and :func:`inside_region` keeps picks whose centre lies at least a margin (e.g. one particle radius)
inside it (used by :func:`cryopick.postprocess.peaks2d.find_peaks_s1` through its ``region`` and ``border``).
"""

from __future__ import annotations

import numpy as np


def _padding_width(across: np.ndarray, along: np.ndarray, ref_across: float, ref_along: float,
                   flat: float) -> int:
    """Number of padding lines at the start of ``across``/``along`` (ordered from the edge inward).

    A line is padding when it is constant along its length, or when it barely differs from its inner
    neighbour (``across < flat * ref``) while varying along its length (a streak). The band ends at the innermost
    such line that keeps at least half of the lines from the edge to it padding, so one odd line at
    the very edge does not hide a band and a lone flat line inside the image does not make one.
    """
    constant = along < 0.02 * ref_along
    degenerate = constant | ((across < flat * ref_across) & (along > 3.0 * across))
    if not degenerate.any():
        return 0
    share = np.cumsum(degenerate) / np.arange(1, len(degenerate) + 1)
    ok = np.flatnonzero(degenerate & (share >= 0.5))
    return int(ok[-1]) + 1 if len(ok) else 0


def valid_region(image: np.ndarray, max_fraction: float = 0.2, flat: float = 0.3) -> tuple[int, int, int, int]:
    """Bounds ``(x0, y0, x1, y1)`` (inclusive pixel indices) of the part of a micrograph that is
    not a padding band.

    A band is a run of rows or columns at an edge that are constant (zero or mean fill) or striped
    (each line a copy of its neighbour: edge replication after drift correction, streaks across the
    edge). Detection compares, per line, the mean absolute change to the next line inward with the
    same statistic in the centre of the image; bands may be at most ``max_fraction`` of the size.
    An image without bands gives ``(0, 0, W - 1, H - 1)``.

    Parameters
    ----------
    image
        ``(H, W)`` micrograph (any scale; the bounds are in its pixels).
    max_fraction
        Widest band searched, as a fraction of the image size on that axis.
    flat
        A line is padding when its change to the next line is below this fraction of the typical
        change between neighbouring lines in the image centre.
    """
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {a.shape}")
    h, w = a.shape
    full = (0, 0, w - 1, h - 1)
    if h < 8 or w < 8 or not np.isfinite(a).all():
        return full
    cy, cx = slice(h // 4, h - h // 4), slice(w // 4, w - w // 4)
    centre = a[cy, cx]
    ref_x = float(np.abs(np.diff(centre, axis=1)).mean())  # change between neighbouring columns
    ref_y = float(np.abs(np.diff(centre, axis=0)).mean())  # ... and rows
    if ref_x <= 0 or ref_y <= 0:  # a flat centre: nothing to compare the edges with
        return full

    def band(lines: np.ndarray, ref_across: float, ref_along: float) -> int:
        # ``lines``: (n_lines + 1, length), ordered from the edge inward.
        across = np.abs(np.diff(lines, axis=0)).mean(axis=1)
        along = np.abs(np.diff(lines[:-1], axis=1)).mean(axis=1)
        return _padding_width(across, along, ref_across, ref_along, flat)

    kx, ky = max(1, int(max_fraction * w)), max(1, int(max_fraction * h))
    left = band(a[:, : kx + 1].T, ref_x, ref_y)
    right = band(a[:, ::-1][:, : kx + 1].T, ref_x, ref_y)
    top = band(a[: ky + 1], ref_y, ref_x)
    bottom = band(a[::-1][: ky + 1], ref_y, ref_x)
    return (left, top, w - 1 - right, h - 1 - bottom)


def inside_region(coords: np.ndarray, region: tuple[float, float, float, float], margin: float = 0.0) -> np.ndarray:
    """Boolean mask of ``(N, 2)`` ``x, y`` points at least ``margin`` pixels inside ``region``
    (``(x0, y0, x1, y1)``, inclusive bounds as from :func:`valid_region`)."""
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0, y0, x1, y1 = region
    m = float(margin)
    return (c[:, 0] >= x0 + m) & (c[:, 0] <= x1 - m) & (c[:, 1] >= y0 + m) & (c[:, 1] <= y1 - m)
