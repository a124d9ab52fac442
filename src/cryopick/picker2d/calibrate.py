"""Choosing the score threshold on held-out annotated data.

Picks found in the validation strips are matched one-to-one to the labelled centres within one
particle radius; the threshold that maximises F1 is kept in the model card.

With sparse labels (a known fraction ``f`` of the particles annotated) precision cannot be
measured against the labels. Assuming the labelled particles are a random sample of all particles,
the recall ``R(t)`` measured on the held-out labelled particles estimates the true recall at
threshold ``t``; the held-out data contain about ``N = n_labelled / f`` particles, so with ``n(t)``
picks there the estimated precision is ``min(1, R(t) N / n(t))``.

:func:`calibrate_postprocess` records the calibrated threshold of every post-processing method
(Algorithm S1 or plain peak finding, :data:`cryopick.postprocess.peaks2d.PEAK_METHODS`) and test-time
augmentation mode (:data:`cryopick.picker2d.predict.TTA_MODES`), so a picker run with another one
still uses a calibrated threshold. With ``choose_method`` it also picks the method with the higher
validation F1; that is off by default (:data:`CHOOSE_METHOD`): on the leave-one-out benchmark
(``benchmarks/fewshot_loo.md``) the validation strips chose plain peaks on EMPIAR-10017, where it lost
0.018 test F1, and the choice lowered the mean F1 over the four "proteins".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cryopick.evaluate.matching import match_points
from cryopick.picker2d.predict import DEFAULT_TTA, TTA_MODES, predict_probability
from cryopick.postprocess.peaks2d import PEAK_METHODS, find_peaks_2d

if TYPE_CHECKING:
    from cryopick.picker2d.train.data import TrainingMicrograph

#: Whether training chooses the peak method on the validation data (see the module docstring).
CHOOSE_METHOD = False

#: Held-out labelled particles below which validation F1 is not measured (early stopping and calibration
#: fall back to the last epoch and the default threshold). With every particle annotated one label makes
#: precision and recall measurable; with sparse labels precision is only estimated from the recall of the
#: held-out labels (see the module docstring), which a handful of labels leave at chance.
MIN_VALIDATION_LABELS = 1
MIN_VALIDATION_LABELS_SPARSE = 10


#: Score threshold when none can be calibrated (no measurable validation data).
DEFAULT_THRESHOLD = 0.5


def min_validation_labels(sparse: bool) -> int:
    """Fewest held-out labelled particles that make validation F1 measurable."""
    return MIN_VALIDATION_LABELS_SPARSE if sparse else MIN_VALIDATION_LABELS


def unmeasurable_validation(mics: list[TrainingMicrograph], sparse: bool, val_fraction: float) -> str | None:
    """The note to give when validation F1 cannot be measured, else ``None``.

    With held-out data holding fewer labelled particles than :func:`min_validation_labels` (none; with
    sparse labels, a handful), nothing is held out (in place: every ``val_box`` is cleared, so the few
    labels all train): training then never stops early, keeps the last epoch's weights and uses
    :data:`DEFAULT_THRESHOLD`. Without held-out data (``val_fraction`` 0) the same holds."""
    if not any(m.val_box is not None for m in mics):
        return (f"no validation data (val_fraction {val_fraction:g}): no early stopping (the last epoch's "
                f"weights are kept) and the default score threshold {DEFAULT_THRESHOLD:g} is used")
    held_out = sum(int(m.in_val(m.coords).sum()) for m in mics if not m.negative and not m.unlabelled)
    needed = min_validation_labels(sparse)
    if held_out >= needed:
        return None
    for m in mics:
        m.val_box = None
    return (f"validation cannot be measured: {held_out} labelled particle(s) would be held out (at least "
            f"{needed} needed{' with sparse labels' if sparse else ''}); all labels are used for training, no "
            f"early stopping (the last epoch's weights are kept) and the default score threshold "
            f"{DEFAULT_THRESHOLD:g} is used")


@dataclass
class ValidationPicks:
    """Picks and labels of one validation region, in working pixels."""

    coords: np.ndarray  # (N, 2) picks
    scores: np.ndarray  # (N,)
    truth: np.ndarray  # (M, 2) labelled centres


def f1_curve(regions: list[ValidationPicks], tolerance: float, thresholds: np.ndarray,
             labelled_fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (pooled over regions) at each score threshold.

    A pick is kept at threshold ``t`` when ``score >= t``; matching is redone per threshold.
    """
    thresholds = np.asarray(thresholds, float)
    tp = np.zeros(len(thresholds))
    n_pred = np.zeros(len(thresholds))
    n_truth = sum(len(r.truth) for r in regions)
    for region in regions:
        for k, t in enumerate(thresholds):
            keep = region.scores >= t
            n_pred[k] += keep.sum()
            if keep.any() and len(region.truth):
                tp[k] += match_points(region.coords[keep], region.truth, tolerance).tp
    recall = tp / n_truth if n_truth else np.ones_like(tp)
    if labelled_fraction >= 1:
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 1.0)
    else:
        n_particles = n_truth / labelled_fraction
        precision = np.where(n_pred > 0, np.minimum(1.0, recall * n_particles / np.maximum(n_pred, 1)), 1.0)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return precision, recall, f1


def calibrate_threshold(regions: list[ValidationPicks], tolerance: float, labelled_fraction: float = 1.0,
                        grid: np.ndarray | None = None, default: float = 0.5, tolerance_f1: float = 0.02) -> dict:
    """Score threshold at the centre of the near-optimal part of the pooled validation F1 curve.

    Returns a dict with ``threshold``, ``f1``, ``precision``, ``recall`` and the curve. Of the
    thresholds whose F1 is within ``tolerance_f1`` of the best, the middle one (by rank) is chosen.
    Validation curves from a few hundred held-out particles (a few dozen with sparse labels) are
    noisy and often flat-topped over a wide range of thresholds: their argmax jumps around, and
    either end of the plateau is biased (the low end towards false positives, the high end towards
    missed particles); the centre is the stable choice. Without any validation labels ``default``
    is returned.
    """
    if grid is None:
        grid = np.round(np.arange(0.30, 0.971, 0.01), 4)
    n_truth = sum(len(r.truth) for r in regions)
    if not regions or n_truth == 0:
        return {"threshold": float(default), "f1": None, "precision": None, "recall": None,
                "note": "no labelled particles in the validation data; default threshold used"}
    precision, recall, f1 = f1_curve(regions, tolerance, grid, labelled_fraction)
    best = float(f1.max())
    near = np.flatnonzero(f1 >= best - tolerance_f1)
    k = int(near[len(near) // 2])
    return {
        "threshold": float(grid[k]),
        "f1": float(f1[k]),
        "precision": float(precision[k]),
        "recall": float(recall[k]),
        "labelled_fraction": float(labelled_fraction),
        "n_validation_particles": int(n_truth),
        "precision_estimate": ("measured" if labelled_fraction >= 1 else
                               "estimated from recall on held-out labels and the expected particle count"),
        "curve": {"threshold": grid.tolist(), "f1": f1.round(4).tolist(),
                  "precision": precision.round(4).tolist(), "recall": recall.round(4).tolist()},
    }


def validation_maps(model, mics: list[TrainingMicrograph], context: int, bf16: bool,
                    tta: str | None = None) -> list[tuple]:
    """Probability map of each validation region plus ``context`` pixels around it:
    ``[(micrograph, map, (x0, y0) offset of the map)]``."""
    maps = []
    was_training = model.training
    model.eval()
    for m in mics:
        if m.val_box is None:
            continue
        y0, y1, x0, x1 = m.val_box
        h, w = m.shape
        cy0, cy1, cx0, cx1 = max(0, y0 - context), min(h, y1 + context), max(0, x0 - context), min(w, x1 + context)
        prob = predict_probability(model, m.image[cy0:cy1, cx0:cx1], bf16=bf16, tta=tta)
        maps.append((m, prob, (cx0, cy0)))
    model.train(was_training)
    return maps


def picks_from_maps(maps: list[tuple], radius: float, mask_threshold: float, score_method: str,
                    min_distance: float, margin: float = 0.0, peak_method: str = "s1") -> list[ValidationPicks]:
    """Post-process the maps of :func:`validation_maps` and keep the picks inside the validation boxes."""
    regions = []
    for m, prob, offset in maps:
        peaks = find_peaks_2d(prob, radius, method=peak_method, threshold=mask_threshold, score=score_method,
                              min_distance=min_distance)
        coords = peaks.coords + list(offset)
        keep = m.in_val(coords, margin)
        truth = m.coords[m.in_val(m.coords, margin)] if not m.negative else np.zeros((0, 2))
        regions.append(ValidationPicks(coords[keep], peaks.scores[keep], truth))
    return regions


def validation_picks(model, mics: list[TrainingMicrograph], radius: float, context: int,
                     bf16: bool, mask_threshold: float, score_method: str, min_distance: float,
                     margin: float = 0.0, peak_method: str = "s1", tta: str | None = None) -> list[ValidationPicks]:
    """Run the model on each validation region (plus ``context`` pixels around it) and pick."""
    maps = validation_maps(model, mics, context, bf16, tta=tta)
    return picks_from_maps(maps, radius, mask_threshold, score_method, min_distance, margin, peak_method)


def variant_key(peak_method: str, tta: str) -> str:
    """Name of a post-processing variant in ``calibration["variants"]``."""
    return f"{peak_method}/tta={tta}"


def calibrate_postprocess(model, mics: list[TrainingMicrograph], radius: float, context: int, bf16: bool,
                          mask_threshold: float, score_method: str, min_distance: float, tolerance: float,
                          labelled_fraction: float = 1.0, methods: tuple[str, ...] = PEAK_METHODS,
                          ttas: tuple[str, ...] | None = None, tta: str = DEFAULT_TTA,
                          choose_method: bool = CHOOSE_METHOD, min_gain: float = 0.005) -> dict:
    """Calibrate the threshold of every post-processing variant (peak method x TTA mode) on the
    validation data; the card's variant uses ``tta`` and ``"s1"``, or with ``choose_method`` the method
    with the best validation F1.

    Returns :func:`calibrate_threshold`'s dict for the card's variant, plus ``peak_method``, ``tta``
    and ``variants`` (per variant: threshold, F1, precision, recall). Another method than ``"s1"`` is
    chosen only when its calibrated validation F1 is higher by more than ``min_gain`` (held-out
    strips hold a few hundred particles, so smaller differences are noise). ``ttas`` (default: every
    mode, but only ``tta`` for backbones with a fixed large input such as SAM2, whose validation pass
    is expensive) are the TTA modes whose variants are recorded.
    """
    if ttas is None:
        ttas = tuple(TTA_MODES) if getattr(model, "preferred_size", None) is None else (tta,)
    variants, chosen = {}, {}
    for mode in dict.fromkeys((tta, *ttas)):
        maps = validation_maps(model, mics, context, bf16, tta=mode)
        for method in methods:
            regions = picks_from_maps(maps, radius, mask_threshold, score_method, min_distance, peak_method=method)
            cal = calibrate_threshold(regions, tolerance, labelled_fraction, grid=score_grid(regions, fine=True))
            variants[variant_key(method, mode)] = {k: cal.get(k) for k in ("threshold", "f1", "precision", "recall")}
            if mode == tta:
                chosen[method] = cal
    best = "s1" if "s1" in chosen else next(iter(chosen))
    for method, cal in chosen.items():
        if choose_method and (cal["f1"] or 0.0) > (chosen[best]["f1"] or 0.0) + min_gain:
            best = method
    return {**chosen[best], "peak_method": best, "tta": tta, "variants": variants}


def score_grid(regions: list[ValidationPicks], fine: bool = False) -> np.ndarray:
    """Candidate thresholds: quantiles of the validation pick scores (scores of well-trained
    networks crowd near 1, so a fixed grid would be too coarse there), at least 0.3."""
    scores = np.concatenate([r.scores for r in regions]) if regions else np.zeros(0)
    scores = scores[scores >= 0.3]
    if len(scores) == 0:
        return np.array([0.5])
    q = np.quantile(scores, np.linspace(0, 0.995, 200 if fine else 40))
    return np.unique(np.round(np.concatenate([[0.3], q]), 4))
