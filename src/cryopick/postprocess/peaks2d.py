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

Every factor above is a field of :class:`PeakFinding` (or a keyword argument of the same name). Each pick gets a score from the probability map inside
its region (``"mean"``, ``"max"``, or the default ``"mean_top"``: the mean of the highest half),
and picks closer than ``min_distance`` are suppressed by :func:`cryopick.postprocess.nms.nms_points`.

Micrograph edges (:func:`~cryopick.postprocess.edges.valid_region`, ``inside_region``) live in
:mod:`cryopick.postprocess.edges`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from cryopick.config import check, check_number, configure, is_number, set_field
from cryopick.postprocess.edges import inside_region
from cryopick.postprocess.nms import nms_points

DISTANCE_THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25)
MIN_DISTANCES = (0.3, 0.4, 0.5)
#: region scores of a pick (:func:`region_scores`)
SCORE_METHODS = ("mean_top", "mean", "max")


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


@dataclass(frozen=True)
class PeakFinding:
    """The settings of Algorithm S1 (see the module docstring; lengths are fractions of the particle radius
    ``r``, areas fractions of ``E = pi r^2``).

    ``threshold``: probability above which a pixel belongs to the mask (step 1); ``distance_thresholds``,
    ``min_distances``: the step 3 grid; ``erosion_diameter``: step 4 erosion disk; ``seed_separation``:
    step 5, seeds closer than this are merged; ``min_area``, ``max_area``, ``small_area``,
    ``min_circularity``: step 7 (circularity ``4 pi A / P^2``, 1 for a disk); ``second_pass``,
    ``second_pass_min_area``, ``second_pass_separation``: step 8; ``score``: region score of a pick,
    ``"mean_top"`` (mean of the top half of the region's probabilities), ``"mean"`` or ``"max"``.
    """

    threshold: float = 0.5
    distance_thresholds: tuple[float, ...] = DISTANCE_THRESHOLDS
    min_distances: tuple[float, ...] = MIN_DISTANCES
    erosion_diameter: float = 0.8
    seed_separation: float = 0.5
    min_area: float = 0.05
    max_area: float = 2.5
    min_circularity: float = 0.4
    small_area: float = 1.3
    second_pass: bool = True
    second_pass_min_area: float = 0.05
    second_pass_separation: float = 0.8
    score: str = "mean_top"

    def __post_init__(self) -> None:
        check_number(self, "threshold", 0, 1)
        for name in ("distance_thresholds", "min_distances"):
            value = getattr(self, name)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            check(self, name, all(is_number(v) and v >= 0 for v in values), "numbers >= 0")
            set_field(self, name, tuple(values))
        for name in ("erosion_diameter", "seed_separation", "min_area", "min_circularity", "small_area",
                     "second_pass_min_area", "second_pass_separation"):
            check_number(self, name, 0)
        check_number(self, "max_area", self.min_area, strict_lo=True)
        check(self, "second_pass", isinstance(self.second_pass, (bool, np.bool_)), "True or False")
        check(self, "score", self.score in SCORE_METHODS, " or ".join(map(repr, SCORE_METHODS)))


def find_peaks_s1(probability: np.ndarray, radius: float, config: PeakFinding | None = None, *,
                  min_distance: float | None = None, min_score: float | None = None, return_labels: bool = False,
                  region: tuple[float, float, float, float] | None = None, border: float = 0.0,
                  **options) -> Peaks2d:
    """Algorithm S1 on a probability map, then scores and duplicate suppression.

    ``probability``: ``(H, W)`` particle probability in [0, 1]; ``radius``: particle radius ``r`` in pixels of
    the map (of the target blobs the model was trained to paint). ``config``: the :class:`PeakFinding` settings;
    its fields may also be given as keywords (``threshold=0.6``, ``second_pass=False``), which replace those
    of ``config``. ``min_distance``: duplicate suppression distance in pixels (``None``: ``r``, picks closer
    than one radius are one particle; 0: none); ``min_score``: drop picks scoring below it;
    ``return_labels``: keep the region label image. ``region``, ``border``: keep only centres inside
    ``region`` (``(x0, y0, x1, y1)`` inclusive bounds in pixels of the map, e.g.
    :func:`~cryopick.postprocess.edges.valid_region` at the map's scale; default the whole map) and at least
    ``border`` pixels from its edge, before duplicate suppression (a dropped edge pick suppresses nothing);
    their scores go to :attr:`Peaks2d.edge_scores`. Returns picks sorted by decreasing score.
    """
    cfg = configure(PeakFinding, config, options, "find_peaks_s1")
    prob = np.asarray(probability, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"probability map must be 2D, got shape {prob.shape}")
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    r = float(radius)
    mask = prob > cfg.threshold
    empty = Peaks2d(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(prob.shape, np.int32) if return_labels else None)
    if not mask.any():
        return empty
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    seeds = _seeds(mask, dist, r, cfg)  # steps 2-5
    regions = _watershed(dist, seeds, mask)  # step 6
    centres, labels, areas = _kept_regions(mask, regions, len(seeds), r, cfg)  # step 7
    if cfg.second_pass:  # step 8
        centres, labels, areas = _second_pass(mask, labels, centres, areas, r, cfg)
    if len(centres) == 0:
        return empty
    coords, scores, labels = _scored(prob, labels, centres, cfg.score)
    coords, scores, areas, edge_scores = _selected(coords, scores, areas, prob.shape, r, min_distance, min_score,
                                                   region, border)
    order = np.argsort(-scores, kind="stable")
    return Peaks2d(coords[order], scores[order], areas[order], labels if return_labels else None, edge_scores)


def _seeds(mask: np.ndarray, dist: np.ndarray, r: float, cfg: PeakFinding) -> np.ndarray:
    """Steps 3-5: ``(K, 2)`` row, col seeds from the distance map's local maxima and the eroded mask, merged."""
    seeds = []
    for md in cfg.min_distances:
        seeds.extend(_local_maxima(dist, max(1, int(round(md * r))), [t * r for t in cfg.distance_thresholds]))
    seeds = np.unique(np.concatenate(seeds), axis=0) if seeds else np.zeros((0, 2), np.int64)
    eroded = ndi.binary_erosion(mask, structure=_disk(cfg.erosion_diameter * r / 2))
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
    return _merge_seeds(seeds, dist[seeds[:, 0], seeds[:, 1]] if len(seeds) else np.zeros(0), cfg.seed_separation * r)


def _watershed(dist: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Step 6: marker watershed of ``-dist`` inside the mask; seed ``k`` owns label ``k + 1``."""
    from skimage.segmentation import watershed

    markers = np.zeros(mask.shape, np.int32)
    markers[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
    return watershed(-dist, markers, mask=mask) if len(seeds) else np.zeros(mask.shape, np.int32)


def _kept_regions(mask: np.ndarray, regions: np.ndarray, n: int, r: float, cfg: PeakFinding):
    """Step 7: the regions within the area bounds that are round enough (or small): their centroids
    (row, col), the label image of the kept regions, their areas."""
    E = np.pi * r * r
    index = np.arange(1, n + 1)
    areas = np.bincount(regions.ravel(), minlength=n + 1)[1:].astype(np.float64)
    perimeters = _perimeters(regions, n) if n else np.zeros(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.where(perimeters > 0, 4 * np.pi * areas / perimeters**2, 0.0)
    keep = (areas >= cfg.min_area * E) & (areas <= cfg.max_area * E) & (
        (circularity > cfg.min_circularity) | (areas < cfg.small_area * E))
    kept = index[keep]
    centres = np.asarray(ndi.center_of_mass(mask, regions, kept)).reshape(-1, 2) if len(kept) else np.zeros((0, 2))
    return centres, np.where(np.isin(regions, kept), regions, 0).astype(np.int32), areas[keep]


def _second_pass(mask: np.ndarray, labels: np.ndarray, centres: np.ndarray, areas: np.ndarray, r: float,
                 cfg: PeakFinding):
    """Step 8: blobs of the mask left uncovered, large enough and far enough from every pick, join as picks."""
    E = np.pi * r * r
    leftover = mask & (labels == 0)
    blob_labels, n_blobs = ndi.label(leftover)
    if not n_blobs:
        return centres, labels, areas
    blob_index = np.arange(1, n_blobs + 1)
    blob_areas = np.bincount(blob_labels.ravel(), minlength=n_blobs + 1)[1:].astype(np.float64)
    big = blob_index[blob_areas >= cfg.second_pass_min_area * E]
    if not len(big):
        return centres, labels, areas
    blob_centres = np.asarray(ndi.center_of_mass(leftover, blob_labels, big)).reshape(-1, 2)
    if len(centres):
        d, _ = cKDTree(centres).query(blob_centres)
        far = d > cfg.second_pass_separation * r
    else:
        far = np.ones(len(big), bool)
    start = int(labels.max()) + 1
    for k, b in enumerate(big[far]):
        labels[blob_labels == b] = start + k
    return (np.concatenate([centres, blob_centres[far]]), labels,
            np.concatenate([areas, blob_areas[big[far] - 1]]))


def _scored(prob: np.ndarray, labels: np.ndarray, centres: np.ndarray, method: str):
    """``x, y`` coordinates, scores and the label image relabelled 1..N in pick order."""
    order_labels = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[order_labels] = np.arange(1, len(order_labels) + 1)
    labels = lut[labels]
    owner = labels[np.clip(np.round(centres[:, 0]).astype(int), 0, prob.shape[0] - 1),
                   np.clip(np.round(centres[:, 1]).astype(int), 0, prob.shape[1] - 1)]
    scores = region_scores(prob, labels, len(order_labels), method=method)
    # A centroid can fall outside its own (non-convex) region; fall back to the map value there.
    pick_scores = np.where(owner > 0, scores[np.maximum(owner, 1) - 1],
                           prob[np.round(centres[:, 0]).astype(int), np.round(centres[:, 1]).astype(int)])
    return centres[:, ::-1].copy(), pick_scores, labels  # (row, col) -> (x, y)


def _selected(coords, scores, areas, shape, r, min_distance, min_score, region, border):
    """Drop centres outside ``region`` / within ``border`` (their scores returned apart), suppress
    duplicates closer than ``min_distance`` (``None``: ``r``), drop scores below ``min_score``."""
    edge_scores = np.zeros(0)
    if region is not None or border > 0:
        h, w = shape
        inside = inside_region(coords, region if region is not None else (0, 0, w - 1, h - 1), border)
        edge_scores = scores[~inside]
        coords, scores, areas = coords[inside], scores[inside], areas[inside]
    if min_distance is None:
        min_distance = r
    keep = nms_points(coords, scores, min_distance) if min_distance > 0 else np.arange(len(coords))
    coords, scores, areas = coords[keep], scores[keep], areas[keep]
    if min_score is not None:
        ok = scores >= min_score
        coords, scores, areas = coords[ok], scores[ok], areas[ok]
    return coords, scores, areas, edge_scores


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
    mask threshold, ``score`` its region score, ``s1_options`` other :class:`PeakFinding` fields) or ``"peaks"`` (:func:`find_peaks_simple` with candidates
    above ``min(threshold, PEAKS_FLOOR)``; ``score`` and ``s1_options`` unused)."""
    if method == "s1":
        config = configure(PeakFinding, None, {"threshold": threshold, "score": score, **s1_options}, "find_peaks_2d")
        return find_peaks_s1(probability, radius, config, min_distance=min_distance, min_score=min_score,
                             region=region, border=border)
    if method == "peaks":
        return find_peaks_simple(probability, radius, threshold=min(threshold, PEAKS_FLOOR),
                                 min_distance=min_distance, min_score=min_score, region=region, border=border)
    raise ValueError(f"unknown peak method {method!r}; use one of {', '.join(PEAK_METHODS)}")
