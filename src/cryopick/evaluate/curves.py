"""Evaluation over the score threshold: precision–recall curve, AUPRC, best-case F1 and its threshold.

The curve sweeps the threshold over the scores of the picks it is given; it is threshold-free only when
those picks are every candidate. Picks written above a threshold end the curve at their recall (see
:func:`curve_scope`, which reports how far a curve goes).

At every score threshold ``t`` the picks with ``score >= t`` are matched one-to-one to the truth
(maximum matching under the chosen rule, :mod:`cryopick.evaluate.metrics`). Re-solving the
assignment at each threshold would be quadratic; instead picks are added in order of decreasing
score and the maximum matching is grown by augmenting paths (Kuhn's algorithm): adding one pick
raises the matching size by 0 or 1, and by 1 exactly when an augmenting path from it exists. This
gives the exact maximum number of true positives for every prefix. Tied scores are added together:
the curve has one point per distinct score.

AUPRC is the step-wise area (the "average precision" of information retrieval, as in
``sklearn.metrics.average_precision_score``): ``sum_k (R_k - R_{k-1}) P_k`` with ``R_0 = 0``, over the
curve's points in order of decreasing threshold. Recall that is never reached contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryopick.evaluate.metrics import candidate_pairs, f_beta, resolve_diameter
from cryopick.picks import Picks


@dataclass
class PRCurve:
    """Points of a precision–recall curve, one per distinct threshold, in decreasing threshold order.

    Attributes
    ----------
    thresholds, precision, recall, f1
        ``(K,)``; picks with ``score >= thresholds[k]`` give ``precision[k]``, ``recall[k]``.
    tp, n_pred
        ``(K,)`` counts at each threshold.
    n_truth
        Number of truth particles.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    tp: np.ndarray
    n_pred: np.ndarray
    n_truth: int

    @property
    def auprc(self) -> float:
        return average_precision(self.precision, self.recall)

    def best(self, beta: float = 1.0) -> dict:
        """Best F-β over thresholds: ``threshold, precision, recall, f1 (= F-β), tp, n_pred, margin_threshold``.

        Ties go to the highest threshold (fewest picks). ``threshold`` is the lowest score kept;
        ``margin_threshold`` is halfway between it and the next lower score, which gives the same
        picks here and is the safer value to carry to other micrographs (a threshold calibrated on
        a few micrographs should not sit exactly on their weakest true particle).
        """
        if len(self.thresholds) == 0:
            return dict(threshold=float("nan"), precision=1.0, recall=0.0 if self.n_truth else 1.0,
                        f1=0.0 if self.n_truth else 1.0, tp=0, n_pred=0, margin_threshold=float("nan"))
        f = np.array([f_beta(p, r, beta) for p, r in zip(self.precision, self.recall)])
        k = int(np.argmax(f))
        thr = float(self.thresholds[k])
        margin = 0.5 * (thr + float(self.thresholds[k + 1])) if k + 1 < len(self.thresholds) else thr
        return dict(threshold=thr, precision=float(self.precision[k]), recall=float(self.recall[k]), f1=float(f[k]),
                    tp=int(self.tp[k]), n_pred=int(self.n_pred[k]), margin_threshold=margin)

    def at_threshold(self, threshold: float) -> dict:
        """Scores when keeping picks with ``score >= threshold``."""
        k = np.flatnonzero(self.thresholds >= threshold)
        if len(k) == 0:
            return dict(threshold=float(threshold), precision=1.0, recall=0.0 if self.n_truth else 1.0,
                        f1=0.0 if self.n_truth else 1.0, tp=0, n_pred=0)
        k = int(k[-1])
        return dict(threshold=float(threshold), precision=float(self.precision[k]), recall=float(self.recall[k]),
                    f1=float(self.f1[k]), tp=int(self.tp[k]), n_pred=int(self.n_pred[k]))

    def to_dict(self) -> dict:
        return dict(thresholds=self.thresholds.tolist(), precision=self.precision.tolist(),
                    recall=self.recall.tolist(), f1=self.f1.tolist(), tp=self.tp.tolist(),
                    n_pred=self.n_pred.tolist(), n_truth=self.n_truth, auprc=self.auprc, best=self.best())


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Step-wise area under a PR curve given in decreasing-threshold order (``R_0 = 0``)."""
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    if len(recall) == 0:
        return 0.0
    dr = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(dr * precision))


def incremental_tp(rows: np.ndarray, cols: np.ndarray, n_pred: int, n_truth: int) -> np.ndarray:
    """Growth of the maximum matching as picks ``0, 1, ..., n_pred - 1`` are added in that order.

    Parameters
    ----------
    rows, cols
        ``(E,)`` admissible ``(pick, truth)`` pairs.

    Returns
    -------
    np.ndarray
        ``(n_pred,)`` int, 1 where adding pick ``i`` grew the maximum matching, else 0; its
        cumulative sum is the maximum number of true positives of every prefix.
    """
    adj: list[list[int]] = [[] for _ in range(n_pred)]
    for r, c in zip(np.asarray(rows).tolist(), np.asarray(cols).tolist()):
        adj[r].append(c)
    match_truth = [-1] * n_truth  # truth -> pick
    match_pick = [-1] * n_pred  # pick -> truth
    gained = np.zeros(n_pred, dtype=np.int64)
    for start in range(n_pred):
        if not adj[start]:
            continue
        # Iterative DFS for an augmenting path: pick -> truth (free: done; taken: continue from its owner).
        visited: set[int] = set()
        reached_from: dict[int, int] = {}  # truth -> pick that reached it
        stack = [(start, iter(adj[start]))]
        found = -1
        while stack and found < 0:
            pick, it = stack[-1]
            for t in it:
                if t in visited:
                    continue
                visited.add(t)
                reached_from[t] = pick
                if match_truth[t] < 0:
                    found = t
                else:
                    stack.append((match_truth[t], iter(adj[match_truth[t]])))
                break
            else:
                stack.pop()
        if found < 0:
            continue
        t = found
        while True:  # flip the path: every truth on it takes the pick that reached it
            p = reached_from[t]
            previous = match_pick[p]
            match_truth[t], match_pick[p] = p, t
            if p == start:
                break
            t = previous
        gained[start] = 1
    return gained


def pr_curve_arrays(
    items: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    diameter: float,
    rule: str = "radius",
    tolerance: float = 1.0,
    iou_threshold: float = 0.6,
) -> PRCurve:
    """Pooled PR curve over several micrographs.

    Parameters
    ----------
    items
        One ``(pred_coords (N, D), scores (N,), truth_coords (M, D))`` per micrograph. Matching is
        per micrograph; counts are summed over micrographs at each threshold.
    """
    all_scores, all_gain = [], []
    n_truth = 0
    for pred, scores, truth in items:
        pred = np.asarray(pred, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64)
        if len(pred) and np.isnan(scores).any():
            raise ValueError("PR curves need a score for every pick (NaN found)")
        n_truth += len(truth)
        if len(pred) == 0:
            continue
        order = np.argsort(-scores, kind="stable")
        pred, scores = pred[order], scores[order]
        rows, cols, _ = candidate_pairs(pred, np.asarray(truth, dtype=np.float64), diameter, rule, tolerance,
                                        iou_threshold)
        gain = incremental_tp(rows, cols, len(pred), len(truth))
        all_scores.append(scores)
        all_gain.append(gain)
    if not all_scores:
        z = np.zeros(0)
        return PRCurve(z, z, z, z, z.astype(np.int64), z.astype(np.int64), n_truth)
    scores = np.concatenate(all_scores)
    gain = np.concatenate(all_gain)
    order = np.argsort(-scores, kind="stable")
    scores, gain = scores[order], gain[order]
    tp = np.cumsum(gain)
    n_pred = np.arange(1, len(scores) + 1)
    # One point per distinct threshold: the last pick of each tie group.
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    thr, tp, n_pred = scores[last], tp[last], n_pred[last]
    precision = tp / n_pred
    recall = tp / n_truth if n_truth else np.ones(len(tp))
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return PRCurve(thr, precision, recall, f1, tp.astype(np.int64), n_pred.astype(np.int64), n_truth)


def pr_curve(
    pred: Picks,
    truth: Picks,
    diameter: float | None = None,
    rule: str = "radius",
    tolerance: float = 1.0,
    iou_threshold: float = 0.6,
    micrographs: list[str] | None = None,
) -> PRCurve:
    """Pooled PR curve of a scored picks table against the truth (micrographs of ``truth`` by default)."""
    diameter = resolve_diameter(truth, diameter)
    names = micrographs if micrographs is not None else truth.micrographs
    pg, tg = dict(pred.split()), dict(truth.split())
    items = []
    for name in names:
        p = pg.get(name)
        t = tg[name].coords if name in tg else np.zeros((0, truth.ndim))
        if p is None:
            items.append((np.zeros((0, pred.ndim)), np.zeros(0), t))
        else:
            items.append((p.coords, p.scores, t))
    return pr_curve_arrays(items, diameter, rule, tolerance, iou_threshold)


def curve_scope(picks: Picks, curve: PRCurve) -> dict:
    """What a PR curve covers: the score range and recall the picks reach, and whether they were
    thresholded when written (``picks.meta["written_threshold"]``, set by the readers from a cryopick
    output folder). The curve can only be as complete as the picks: on picks written above a threshold
    it stops at their recall, so AUPRC and best F1 are then not threshold-free; ``note`` says so."""
    scores = picks.scores
    written = picks.meta.get("written_threshold")
    source = picks.meta.get("threshold_source")
    max_recall = float(curve.recall[-1]) if len(curve.recall) else 0.0
    lowest = float(np.min(scores)) if len(scores) else float("nan")
    complete = written is not None and written <= 0 and not str(source).endswith("baseline.json")
    if complete:
        note = f"every candidate was written (threshold {written:g}): the curve covers all scores"
    elif written is not None:
        note = (f"the picks were written with score ≥ {written:.4g} ({source}), so the curve stops at recall "
                f"{max_recall:.3f}: AUPRC is the area up to that recall and best F1 the best at thresholds ≥ "
                f"{written:.4g}, not threshold-free; write every candidate (e.g. cryopick pick --threshold 0) "
                "to score the whole curve")
    else:
        note = (f"the curve covers the picks given (scores ≥ {lowest:.4g}) and ends at recall {max_recall:.3f}; "
                "if they were thresholded when written, AUPRC and best F1 only cover scores above that threshold")
    return dict(lowest_score=lowest, max_recall=max_recall, written_threshold=written, threshold_source=source,
                complete=bool(complete), note=note)
