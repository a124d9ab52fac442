"""Particle-level precision / recall / F1 of picks against ground truth, per micrograph and pooled.

Matching is always one-to-one and optimal (:func:`cryopick.evaluate.matching.match_candidates`);
only the rule that decides whether a pick *may* match a truth particle differs:

``"radius"``
    Centre distance ``<= tolerance × radius`` (radius = diameter / 2). The common 2D convention
    (CryoPPP, crYOLO, Topaz papers use 1 radius; 0.5 is stricter). 2D and 3D.
``"iou3d"``
    Axis-aligned boxes of edge ``diameter`` around both centres overlap with IoU ``> iou_threshold``
    (default 0.6), the TomoTwin / ProPicker rule. Works in 2D too (squares). For equal boxes the
    IoU only depends on the offset ``d``: ``prod(s - |d_i|) / (2 s^D - prod(s - |d_i|))``.
``"czii"``
    The CZII cryo-ET challenge rule: distance ``<= 0.5 × radius`` and F-β with β = 4 (recall
    weighted 16× more than precision). ``tolerance`` is ignored.

Conventions for empty sets (inherited from :func:`precision_recall_f1`): nothing predicted →
precision 1, nothing true → recall 1. Pooled scores sum TP / #pred / #truth over micrographs
("micro" average); the per-micrograph table allows any other average.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from cryopick.errors import CryopickError
from cryopick.evaluate.matching import MatchResult, match_candidates, precision_recall_f1
from cryopick.picks import Picks, filter_score

RULES = ("radius", "iou3d", "czii")
CZII_TOLERANCE = 0.5
CZII_BETA = 4.0


def f_beta(precision: float, recall: float, beta: float = 1.0) -> float:
    """``(1 + β²) P R / (β² P + R)``; 0 when both are 0."""
    b2 = beta * beta
    den = b2 * precision + recall
    return float((1 + b2) * precision * recall / den) if den > 0 else 0.0


def box_iou(offsets: np.ndarray, size: float) -> np.ndarray:
    """IoU of two axis-aligned boxes of edge ``size`` whose centres differ by ``offsets`` ``(E, D)``."""
    offsets = np.abs(np.asarray(offsets, dtype=np.float64))
    inter = np.prod(np.clip(size - offsets, 0, None), axis=1)
    return inter / (2 * size ** offsets.shape[1] - inter)


def candidate_pairs(
    pred: np.ndarray,
    truth: np.ndarray,
    diameter: float,
    rule: str = "radius",
    tolerance: float = 1.0,
    iou_threshold: float = 0.6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Admissible ``(pred, truth)`` pairs under ``rule`` and their costs (lower is better).

    Parameters
    ----------
    pred, truth
        ``(N, D)``, ``(M, D)`` coordinates in pixels of one micrograph / tomogram.
    diameter
        Particle diameter in the same pixels.

    Returns
    -------
    rows, cols, cost
        ``(E,)`` each. The cost is the centre distance (``radius``, ``czii``) or ``1 - IoU`` (``iou3d``).
    """
    if rule not in RULES:
        raise CryopickError(f"unknown matching rule {rule!r}; choose one of {', '.join(RULES)}")
    if diameter is None or not np.isfinite(diameter) or diameter <= 0:
        raise CryopickError(f"particle diameter must be a positive number of pixels, got {diameter}")
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if len(pred) == 0 or len(truth) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros(0)
    if rule == "iou3d":
        reach = diameter * np.sqrt(pred.shape[1])  # no overlap at all beyond this distance
    else:
        tol = CZII_TOLERANCE if rule == "czii" else tolerance
        reach = tol * diameter / 2.0
    lists = cKDTree(truth).query_ball_point(pred, r=reach)
    rows = np.repeat(np.arange(len(pred)), [len(x) for x in lists]).astype(np.int64)
    cols = np.fromiter((j for x in lists for j in x), dtype=np.int64, count=len(rows))
    if rule == "iou3d":
        iou = box_iou(pred[rows] - truth[cols], diameter) if len(rows) else np.zeros(0)
        ok = iou > iou_threshold
        return rows[ok], cols[ok], 1.0 - iou[ok]
    dist = np.linalg.norm(pred[rows] - truth[cols], axis=1) if len(rows) else np.zeros(0)
    return rows, cols, dist


def match(
    pred: np.ndarray,
    truth: np.ndarray,
    diameter: float,
    rule: str = "radius",
    tolerance: float = 1.0,
    iou_threshold: float = 0.6,
) -> MatchResult:
    """Optimal one-to-one matching of one micrograph's picks to its truth under ``rule``."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    rows, cols, cost = candidate_pairs(pred, truth, diameter, rule, tolerance, iou_threshold)
    return match_candidates(rows, cols, cost, len(pred), len(truth))


@dataclass
class Evaluation:
    """Result of :func:`evaluate_picks`.

    Attributes
    ----------
    per_micrograph
        One row per micrograph: ``micrograph, n_pred, n_truth, tp, fp, fn, precision, recall, f1,
        fbeta``.
    pooled
        ``n_pred, n_truth, tp, fp, fn, precision, recall, f1, fbeta`` from summed counts, plus
        ``mean_precision, mean_recall, mean_f1`` (macro averages over micrographs).
    settings
        ``rule, tolerance, diameter, beta, iou_threshold, min_score``.
    matches
        ``{micrograph: MatchResult}`` (indices refer to the rows of that micrograph's picks).
    """

    per_micrograph: pd.DataFrame
    pooled: dict
    settings: dict
    matches: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {
            "settings": self.settings,
            "pooled": self.pooled,
            "per_micrograph": self.per_micrograph.to_dict(orient="records"),
        }


def _row(name: str, result: MatchResult, beta: float) -> dict:
    p, r, f = result.precision, result.recall, result.f1
    return dict(micrograph=name, n_pred=result.n_pred, n_truth=result.n_truth, tp=result.tp, fp=result.fp,
                fn=result.fn, precision=p, recall=r, f1=f, fbeta=f_beta(p, r, beta))


def pooled_scores(per_micrograph: pd.DataFrame, beta: float = 1.0) -> dict:
    """Micro (summed counts) and macro (mean over micrographs) scores of a per-micrograph table."""
    tp, n_pred, n_truth = (int(per_micrograph[c].sum()) for c in ("tp", "n_pred", "n_truth"))
    p, r, f = precision_recall_f1(tp, n_pred, n_truth)
    empty = len(per_micrograph) == 0
    return dict(
        n_micrographs=int(len(per_micrograph)), n_pred=n_pred, n_truth=n_truth, tp=tp, fp=n_pred - tp,
        fn=n_truth - tp, precision=p, recall=r, f1=f, fbeta=f_beta(p, r, beta),
        mean_precision=float("nan") if empty else float(per_micrograph["precision"].mean()),
        mean_recall=float("nan") if empty else float(per_micrograph["recall"].mean()),
        mean_f1=float("nan") if empty else float(per_micrograph["f1"].mean()),
    )


def resolve_diameter(truth: Picks, diameter: float | None) -> float:
    """The given diameter, else the median ``diameter`` column of the truth table."""
    if diameter is not None:
        return float(diameter)
    d = truth.table["diameter"].to_numpy(dtype=float)
    d = d[np.isfinite(d) & (d > 0)]
    if len(d) == 0:
        raise CryopickError("the ground truth states no particle diameter; give it with --diameter (pixels)")
    return float(np.median(d))


def evaluate_picks(
    pred: Picks,
    truth: Picks,
    diameter: float | None = None,
    rule: str = "radius",
    tolerance: float = 1.0,
    beta: float | None = None,
    iou_threshold: float = 0.6,
    min_score: float | None = None,
    micrographs: list[str] | None = None,
) -> Evaluation:
    """Per-micrograph and pooled particle-level scores.

    Parameters
    ----------
    pred, truth
        Picks tables in the same pixel frame (same ``ndim``).
    diameter
        Particle diameter in pixels; default: the median diameter of ``truth``.
    rule, tolerance, iou_threshold
        See the module docstring. ``tolerance`` is in particle radii.
    beta
        β of the reported F-β; default 4 for ``czii``, else 1.
    min_score
        Drop picks with a score below this before matching (picks without a score are kept).
    micrographs
        Names to evaluate. Default: the micrographs of ``truth``; picks on other micrographs are
        ignored (a warning says how many).
    """
    if pred.ndim != truth.ndim:
        raise CryopickError(f"picks are {pred.ndim}D but the ground truth is {truth.ndim}D")
    diameter = resolve_diameter(truth, diameter)
    if beta is None:
        beta = CZII_BETA if rule == "czii" else 1.0
    if min_score is not None:
        pred = filter_score(pred, min_score)
    names = list(micrographs) if micrographs is not None else truth.micrographs
    extra = sorted(set(pred.micrographs) - set(names))
    if extra and micrographs is None:
        if not set(pred.micrographs) & set(names) and len(pred):
            raise CryopickError(
                f"no micrograph name is shared by the picks (e.g. {extra[0]!r}) and the ground truth "
                f"(e.g. {names[0]!r}); names are file stems - rename one side (Picks.rename_micrographs)"
            )
        warnings.warn(f"{len(extra)} micrograph(s) with picks have no ground truth and are ignored (e.g. {extra[0]})")
    pred_groups = dict(pred.split())
    truth_groups = dict(truth.split())
    rows, matches = [], {}
    for name in names:
        p = pred_groups[name].coords if name in pred_groups else np.zeros((0, pred.ndim))
        t = truth_groups[name].coords if name in truth_groups else np.zeros((0, truth.ndim))
        result = match(p, t, diameter, rule, tolerance, iou_threshold)
        matches[name] = result
        rows.append(_row(name, result, beta))
    table = pd.DataFrame(rows, columns=["micrograph", "n_pred", "n_truth", "tp", "fp", "fn", "precision", "recall",
                                        "f1", "fbeta"])
    settings = dict(rule=rule, tolerance=(CZII_TOLERANCE if rule == "czii" else tolerance) if rule != "iou3d" else None,
                    diameter=diameter, beta=beta, iou_threshold=iou_threshold if rule == "iou3d" else None,
                    min_score=min_score)
    return Evaluation(table, pooled_scores(table, beta), settings, matches)
