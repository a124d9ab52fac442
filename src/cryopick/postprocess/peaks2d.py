"""Particle centres from a 2D probability map: the CryoFSL post-processing (Algorithm S1) plus
per-pick scores and duplicate suppression.

Algorithm S1 (CryoFSL supplement), for a particle of radius ``r`` pixels in the map's frame and
``E = pi r^2``:

1. threshold the probability map (default 0.5) -> binary mask;
2. Euclidean distance transform of the mask;
3. local maxima of the distance map for every distance threshold in ``r x (0.05 ... 0.25)`` and
   every minimum separation in ``r x (0.3, 0.4, 0.5)``;
4. extra seeds: centroids of the blobs of the mask eroded by a disk of diameter ``0.8 r`` that
   hold no seed from step 3;
5. merge all seeds, strongest (largest distance) first, dropping any within ``0.5 r`` of a kept one;
6. marker watershed of ``-distance`` inside the mask;
7. keep a region when ``0.05 E <= area <= 2.5 E`` and (circularity ``4 pi A / P^2 > 0.4`` or
   ``area < 1.3 E``); its centroid is a pick;
8. second pass: blobs of the mask not covered by kept regions with ``area >= 0.05 E`` and centroid
   more than ``0.8 r`` from every pick are added.

Every factor above is a keyword argument. Each pick gets a score from the probability map inside
its region (``"mean"``, ``"max"``, or the default ``"mean_top"``: the mean of the highest half),
and picks closer than ``min_distance`` are suppressed by :func:`cryopick.postprocess.nms.nms_points`.

Micrograph edges: :func:`valid_region` finds the part of a micrograph not covered by padding bands
(constant rows/columns, or streaks where each line repeats its neighbour, as left by motion
correction or by edge-replicating a shifted frame), and :func:`inside_region` keeps picks whose
centre lies at least a margin (e.g. one particle radius) inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cryopick.postprocess.nms import nms_points

DISTANCE_THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25)
MIN_DISTANCES = (0.3, 0.4, 0.5)


@dataclass
class Peaks2d:
    """Picks found in one map.

    Attributes
    ----------
    coords
        ``(N, 2)`` float ``x, y`` (column, row) in pixels of the map.
    scores
        ``(N,)`` score in [0, 1] from the probability map.
    areas
        ``(N,)`` area of each pick's region in pixels (0 for none).
    labels
        ``(H, W)`` int32 region label image (0 = background); pick ``i`` owns label ``i + 1``
        before NMS (kept for diagnostics and overlays).
    edge_scores
        Scores of the centres dropped because they lie outside ``region`` or within ``border`` of its
        edge (see :func:`find_peaks_s1`), before duplicate suppression and ``min_score``.
    """

    coords: np.ndarray
    scores: np.ndarray
    areas: np.ndarray
    labels: np.ndarray | None = None
    edge_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.coords)


def _disk(radius: float) -> np.ndarray:
    r = max(int(np.floor(radius)), 0)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x**2 + y**2 <= radius**2 + 1e-9


def _local_maxima(dist: np.ndarray, min_distance: int, thresholds) -> list[np.ndarray]:
    """For each threshold, ``(K, 2)`` row, col of pixels that equal the maximum of their
    ``(2 d + 1)^2`` window and exceed it (the ``peak_local_max`` criterion, without its border
    exclusion). The maximum filter is computed once for all thresholds."""
    size = 2 * max(int(min_distance), 1) + 1
    maxed = ndi.maximum_filter(dist, size=size, mode="constant", cval=0.0)
    is_max = dist == maxed
    return [np.argwhere(is_max & (dist > t)) for t in np.atleast_1d(thresholds)]


def _merge_seeds(points: np.ndarray, strength: np.ndarray, min_separation: float) -> np.ndarray:
    """Greedy merge: strongest first, drop seeds within ``min_separation`` of a kept one."""
    if len(points) == 0:
        return points.reshape(0, 2)
    keep = nms_points(points.astype(float), strength, min_separation)
    return points[keep]


def _perimeters(labels: np.ndarray, n: int) -> np.ndarray:
    """Crofton-free perimeter estimate per label: count of 4-connected boundary pixel edges,
    corrected by ``pi/4`` toward the Euclidean length (exact for large disks on average)."""
    padded = np.pad(labels, 1)
    edges = np.zeros(n + 1, dtype=np.float64)
    for axis in (0, 1):
        a = padded
        b = np.roll(padded, 1, axis=axis)
        diff = a != b
        np.add.at(edges, a[diff], 1)
        np.add.at(edges, b[diff], 1)
    return edges[1:] * (np.pi / 4)


def find_peaks_s1(
    probability: np.ndarray,
    radius: float,
    threshold: float = 0.5,
    distance_thresholds: tuple[float, ...] = DISTANCE_THRESHOLDS,
    min_distances: tuple[float, ...] = MIN_DISTANCES,
    erosion_diameter: float = 0.8,
    seed_separation: float = 0.5,
    min_area: float = 0.05,
    max_area: float = 2.5,
    min_circularity: float = 0.4,
    small_area: float = 1.3,
    second_pass: bool = True,
    second_pass_min_area: float = 0.05,
    second_pass_separation: float = 0.8,
    score: str = "mean_top",
    min_distance: float | None = None,
    min_score: float | None = None,
    return_labels: bool = False,
    region: tuple[float, float, float, float] | None = None,
    border: float = 0.0,
) -> Peaks2d:
    """Algorithm S1 on a probability map, then scores and duplicate suppression.

    Parameters
    ----------
    probability
        ``(H, W)`` particle probability in [0, 1] (sigmoid of the network logits).
    radius
        Particle radius ``r`` in pixels of the map (the radius of the target blobs the model was
        trained to paint). All other length factors are multiples of it, areas multiples of
        ``E = pi r^2``.
    threshold
        Probability above which a pixel belongs to the mask.
    distance_thresholds, min_distances
        Step 3 grid, as fractions of ``r``.
    erosion_diameter
        Step 4: diameter of the erosion disk, fraction of ``r``.
    seed_separation
        Step 5: seeds closer than this fraction of ``r`` are merged.
    min_area, max_area, small_area
        Step 7 area bounds, fractions of ``E``.
    min_circularity
        Step 7 circularity bound ``4 pi A / P^2`` (1 for a disk).
    second_pass, second_pass_min_area, second_pass_separation
        Step 8 switch, minimum area (fraction of ``E``) and separation (fraction of ``r``).
    score
        ``"mean_top"`` (mean of the top half of the region's probabilities), ``"mean"`` or ``"max"``.
    min_distance
        Duplicate suppression distance in pixels; ``None`` -> ``r`` (picks closer than one radius
        are treated as the same particle); ``0`` disables it.
    min_score
        Drop picks scoring below this (``None`` keeps all).
    return_labels
        Keep the region label image in the result.
    region, border
        Keep only centres inside ``region`` (``(x0, y0, x1, y1)`` inclusive bounds in pixels of the map,
        e.g. :func:`valid_region` mapped to the map's scale; default the whole map) and at least
        ``border`` pixels from its edge; applied before duplicate suppression, so a dropped edge pick
        suppresses nothing. Their scores are kept in :attr:`Peaks2d.edge_scores`.

    Returns
    -------
    Peaks2d
        Picks sorted by decreasing score.
    """
    prob = np.asarray(probability, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"probability map must be 2D, got shape {prob.shape}")
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    r = float(radius)
    E = np.pi * r * r
    mask = prob > threshold
    empty = Peaks2d(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(prob.shape, np.int32) if return_labels else None)
    if not mask.any():
        return empty

    # Steps 2-5: seeds from the distance transform and from the eroded mask.
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    seeds = []
    for md in min_distances:
        seeds.extend(_local_maxima(dist, max(1, int(round(md * r))), [t * r for t in distance_thresholds]))
    seeds = np.unique(np.concatenate(seeds), axis=0) if seeds else np.zeros((0, 2), np.int64)
    eroded = ndi.binary_erosion(mask, structure=_disk(erosion_diameter * r / 2))
    if eroded.any():
        # Extra seeds for cores the peak finder missed: eroded blobs holding no seed yet contribute
        # their centroid. (Adding the centroid of *every* eroded blob would put a spurious seed in
        # the neck between two touching particles whose cores stay connected after erosion.)
        eroded_labels, n_eroded = ndi.label(eroded)
        has_seed = np.zeros(n_eroded + 1, bool)
        has_seed[eroded_labels[seeds[:, 0], seeds[:, 1]]] = True
        missing = np.flatnonzero(~has_seed[1:]) + 1
        if len(missing):
            centres = np.asarray(ndi.center_of_mass(eroded, eroded_labels, missing)).reshape(-1, 2)
            seeds = np.concatenate([seeds, np.round(centres).astype(np.int64)])
    seeds = seeds[mask[seeds[:, 0], seeds[:, 1]]] if len(seeds) else seeds
    seeds = _merge_seeds(seeds, dist[seeds[:, 0], seeds[:, 1]] if len(seeds) else np.zeros(0),
                         seed_separation * r)

    # Step 6: marker watershed of -distance inside the mask.
    from skimage.segmentation import watershed

    markers = np.zeros(prob.shape, np.int32)
    markers[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
    regions = watershed(-dist, markers, mask=mask) if len(seeds) else np.zeros(prob.shape, np.int32)

    # Step 7: area and circularity filter.
    n = len(seeds)
    index = np.arange(1, n + 1)
    areas = np.bincount(regions.ravel(), minlength=n + 1)[1:].astype(np.float64)
    perimeters = _perimeters(regions, n) if n else np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.where(perimeters > 0, 4 * np.pi * areas / perimeters**2, 0.0)
    keep = (areas >= min_area * E) & (areas <= max_area * E) & ((circularity > min_circularity) | (areas < small_area * E))
    kept = index[keep]
    centres = np.asarray(ndi.center_of_mass(mask, regions, kept)).reshape(-1, 2) if len(kept) else np.zeros((0, 2))
    final_labels = np.where(np.isin(regions, kept), regions, 0).astype(np.int32)
    kept_areas = areas[keep]

    # Step 8: leftover blobs far from every pick.
    if second_pass:
        leftover = mask & (final_labels == 0)
        blob_labels, n_blobs = ndi.label(leftover)
        if n_blobs:
            blob_index = np.arange(1, n_blobs + 1)
            blob_areas = np.bincount(blob_labels.ravel(), minlength=n_blobs + 1)[1:].astype(np.float64)
            big = blob_index[blob_areas >= second_pass_min_area * E]
            if len(big):
                blob_centres = np.asarray(ndi.center_of_mass(leftover, blob_labels, big)).reshape(-1, 2)
                if len(centres):
                    d, _ = cKDTree(centres).query(blob_centres)
                    far = d > second_pass_separation * r
                else:
                    far = np.ones(len(big), bool)
                start = int(final_labels.max()) + 1
                for k, b in enumerate(big[far]):
                    final_labels[blob_labels == b] = start + k
                centres = np.concatenate([centres, blob_centres[far]])
                kept_areas = np.concatenate([kept_areas, blob_areas[big[far] - 1]])

    if len(centres) == 0:
        return empty
    # Relabel 1..N in pick order so scores can be gathered per label.
    order_labels = np.unique(final_labels[final_labels > 0])
    lut = np.zeros(int(final_labels.max()) + 1, np.int32)
    lut[order_labels] = np.arange(1, len(order_labels) + 1)
    final_labels = lut[final_labels]
    owner = final_labels[np.clip(np.round(centres[:, 0]).astype(int), 0, prob.shape[0] - 1),
                         np.clip(np.round(centres[:, 1]).astype(int), 0, prob.shape[1] - 1)]
    scores = region_scores(prob, final_labels, len(order_labels), method=score)
    # A centroid can fall outside its own (non-convex) region; fall back to the map value there.
    pick_scores = np.where(owner > 0, scores[np.maximum(owner, 1) - 1],
                           prob[np.round(centres[:, 0]).astype(int), np.round(centres[:, 1]).astype(int)])
    coords = centres[:, ::-1].copy()  # (row, col) -> (x, y)

    edge_scores = np.zeros(0)
    if region is not None or border > 0:
        h, w = prob.shape
        inside = inside_region(coords, region if region is not None else (0, 0, w - 1, h - 1), border)
        edge_scores = pick_scores[~inside]
        coords, pick_scores, kept_areas = coords[inside], pick_scores[inside], kept_areas[inside]
    if min_distance is None:
        min_distance = r
    keep_idx = nms_points(coords, pick_scores, min_distance) if min_distance > 0 else np.arange(len(coords))
    coords, pick_scores, kept_areas = coords[keep_idx], pick_scores[keep_idx], kept_areas[keep_idx]
    if min_score is not None:
        ok = pick_scores >= min_score
        coords, pick_scores, kept_areas = coords[ok], pick_scores[ok], kept_areas[ok]
    order = np.argsort(-pick_scores, kind="stable")
    return Peaks2d(coords[order], pick_scores[order], kept_areas[order], final_labels if return_labels else None,
                   edge_scores)


def region_scores(probability: np.ndarray, labels: np.ndarray, n: int, method: str = "mean_top") -> np.ndarray:
    """Score per region ``1..n`` of ``labels`` from ``probability``.

    ``"mean"``: mean probability; ``"max"``: maximum; ``"mean_top"``: mean of the pixels at or above
    the region's median (robust to a ragged edge and to a single hot pixel).
    """
    if n == 0:
        return np.zeros(0)
    index = np.arange(1, n + 1)
    if method == "mean":
        return np.asarray(ndi.mean(probability, labels, index), dtype=np.float64)
    if method == "max":
        return np.asarray(ndi.maximum(probability, labels, index), dtype=np.float64)
    if method == "mean_top":
        med = np.asarray(ndi.median(probability, labels, index), dtype=np.float64)
        thr = np.zeros(n + 1)
        thr[1:] = med
        top = (labels > 0) & (probability >= thr[labels])
        return np.asarray(ndi.mean(probability, np.where(top, labels, 0), index), dtype=np.float64)
    raise ValueError(f"unknown score method {method!r}; use 'mean_top', 'mean' or 'max'")


def find_peaks_simple(probability: np.ndarray, radius: float, threshold: float = 0.5,
                      min_distance: float | None = None, min_score: float | None = None,
                      region: tuple[float, float, float, float] | None = None, border: float = 0.0) -> Peaks2d:
    """Plain peak finding, the alternative to S1 for crowded micrographs: local maxima of the
    probability map smoothed with a Gaussian of ``radius / 3``, above ``threshold``, at least
    ``min_distance`` (default ``r``) apart. Scores are the smoothed map values. Touching particles
    whose painted blobs merge into one mask region still give one maximum each, where the watershed
    of S1 may split or drop them. ``region`` and ``border`` as in :func:`find_peaks_s1`."""
    prob = ndi.gaussian_filter(np.asarray(probability, np.float32), max(radius / 3, 0.5))
    md = radius if min_distance is None else min_distance
    peaks = _local_maxima(prob, max(1, int(round(md))), threshold)[0]
    scores = prob[peaks[:, 0], peaks[:, 1]].astype(np.float64)
    coords = peaks[:, ::-1].astype(np.float64)
    edge_scores = np.zeros(0)
    if region is not None or border > 0:
        h, w = prob.shape
        inside = inside_region(coords, region if region is not None else (0, 0, w - 1, h - 1), border)
        edge_scores = scores[~inside]
        coords, scores = coords[inside], scores[inside]
    keep = nms_points(coords, scores, md) if md > 0 and len(coords) else np.arange(len(coords))
    coords, scores = coords[keep], scores[keep]
    if min_score is not None:
        coords, scores = coords[scores >= min_score], scores[scores >= min_score]
    order = np.argsort(-scores, kind="stable")
    return Peaks2d(coords[order], scores[order], np.zeros(len(order)), None, edge_scores)


#: Post-processing methods of a 2D probability map (the card's ``peak_method``).
PEAK_METHODS = ("s1", "peaks")
#: Lowest smoothed probability a local maximum needs to be a candidate of ``"peaks"`` (calibrated
#: thresholds start at 0.3, see :func:`cryopick.picker2d.calibrate.score_grid`).
PEAKS_FLOOR = 0.3


def find_peaks_2d(probability: np.ndarray, radius: float, method: str = "s1", threshold: float = 0.5,
                  score: str = "mean_top", min_distance: float | None = None, min_score: float | None = None,
                  region: tuple[float, float, float, float] | None = None, border: float = 0.0,
                  **s1_options) -> Peaks2d:
    """Picks from a probability map with ``method``: ``"s1"`` (:func:`find_peaks_s1`; ``threshold`` is its
    mask threshold, ``score`` its region score) or ``"peaks"`` (:func:`find_peaks_simple` with candidates
    above ``min(threshold, PEAKS_FLOOR)``; ``score`` and ``s1_options`` unused)."""
    if method == "s1":
        return find_peaks_s1(probability, radius, threshold=threshold, score=score, min_distance=min_distance,
                             min_score=min_score, region=region, border=border, **s1_options)
    if method == "peaks":
        return find_peaks_simple(probability, radius, threshold=min(threshold, PEAKS_FLOOR),
                                 min_distance=min_distance, min_score=min_score, region=region, border=border)
    raise ValueError(f"unknown peak method {method!r}; use one of {', '.join(PEAK_METHODS)}")


# -- micrograph edges ----------------------------------------------------------------------------
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
