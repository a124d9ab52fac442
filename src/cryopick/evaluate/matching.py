"""One-to-one matching of picks to ground truth (2D or 3D).

A pick matches a truth particle when their centres are within ``tolerance`` pixels. Matching is an
optimal assignment: it maximises the number of matched pairs, then minimises the summed distance,
so no truth particle is counted twice and no greedy order can lose a match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class MatchResult:
    """Indices of matched pairs and the counts derived from them."""

    pred_index: np.ndarray
    truth_index: np.ndarray
    distances: np.ndarray
    n_pred: int
    n_truth: int

    @property
    def tp(self) -> int:
        return int(len(self.pred_index))

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_truth - self.tp

    @property
    def precision(self) -> float:
        return precision_recall_f1(self.tp, self.n_pred, self.n_truth)[0]

    @property
    def recall(self) -> float:
        return precision_recall_f1(self.tp, self.n_pred, self.n_truth)[1]

    @property
    def f1(self) -> float:
        return precision_recall_f1(self.tp, self.n_pred, self.n_truth)[2]


def precision_recall_f1(tp: int, n_pred: int, n_truth: int) -> tuple[float, float, float]:
    """Precision, recall, F1. Conventions: nothing predicted -> precision 1; nothing true -> recall 1;
    nothing predicted and nothing true -> all 1 (a perfect answer on an empty micrograph)."""
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_truth if n_truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def match_points(pred: np.ndarray, truth: np.ndarray, tolerance: float) -> MatchResult:
    """Optimal one-to-one matching of ``pred`` to ``truth`` within ``tolerance``.

    Parameters
    ----------
    pred, truth
        ``(N, D)`` and ``(M, D)`` coordinates in the same pixel frame.
    tolerance
        Maximum centre distance in pixels for a pair to count (inclusive).
    """
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1) if len(pred) else np.zeros((0, 2))
    truth = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1) if len(truth) else np.zeros((0, 2))
    n, m = len(pred), len(truth)
    if n == 0 or m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return MatchResult(empty, empty, np.zeros(0), n, m)
    rows, cols, dist = _candidate_pairs(pred, truth, tolerance)
    return match_candidates(rows, cols, dist, n, m)


def match_candidates(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n_pred: int, n_truth: int) -> MatchResult:
    """Optimal one-to-one matching restricted to given candidate pairs.

    Maximises the number of matched pairs, then minimises the summed ``cost`` among maximum
    matchings. Any pair criterion (distance, box IoU, ...) reduces to this: list the admissible
    pairs and give each a cost (lower is better, e.g. distance or ``1 - IoU``).

    Parameters
    ----------
    rows, cols
        ``(E,)`` indices of admissible ``(pred, truth)`` pairs.
    cost
        ``(E,)`` non-negative costs; reported back as ``MatchResult.distances``.
    n_pred, n_truth
        Total numbers of predictions and truths (unmatched ones count as FP / FN).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    cost = np.asarray(cost, dtype=np.float64)
    n, m = int(n_pred), int(n_truth)
    empty = np.zeros(0, dtype=np.int64)
    if len(rows) == 0:
        return MatchResult(empty, empty, np.zeros(0), n, m)
    # Solve each connected component of the candidate graph separately: small dense problems. Most
    # components are one admissible pair (isolated particles): those match as they are, without a solver.
    graph = coo_matrix((np.ones(len(rows)), (rows, n + cols)), shape=(n + m, n + m))
    _, component = connected_components(graph, directed=False)
    edge_component = component[rows]
    single = np.bincount(edge_component)[edge_component] == 1
    pred_out, truth_out, dist_out, comp_out = [rows[single]], [cols[single]], [cost[single]], [edge_component[single]]
    rows, cols, dist, edge_component = rows[~single], cols[~single], cost[~single], edge_component[~single]
    order = np.argsort(edge_component, kind="stable")
    rows, cols, dist, edge_component = rows[order], cols[order], dist[order], edge_component[order]
    bounds = np.flatnonzero(np.diff(edge_component)) + 1
    for r, c, d, k in zip(np.split(rows, bounds), np.split(cols, bounds), np.split(dist, bounds),
                          np.split(edge_component, bounds)):
        if len(r) == 0:
            continue
        ur, ri = np.unique(r, return_inverse=True)
        uc, ci = np.unique(c, return_inverse=True)
        big = (float(d.max()) + 1.0) * (len(ur) + len(uc) + 1)  # any real pair beats any number of non-pairs
        cost_m = np.full((len(ur), len(uc)), 2 * big)
        cost_m[ri, ci] = d - big
        a, b = linear_sum_assignment(cost_m)
        ok = cost_m[a, b] < 0
        pred_out.append(ur[a[ok]])
        truth_out.append(uc[b[ok]])
        dist_out.append(cost_m[a[ok], b[ok]] + big)
        comp_out.append(np.full(int(ok.sum()), k[0]))
    by_component = np.argsort(np.concatenate(comp_out), kind="stable")  # the order of one solve per component
    return MatchResult(
        np.concatenate(pred_out).astype(np.int64)[by_component],
        np.concatenate(truth_out).astype(np.int64)[by_component],
        np.concatenate(dist_out)[by_component],
        n,
        m,
    )


def _candidate_pairs(pred: np.ndarray, truth: np.ndarray, tolerance: float):
    """All (pred, truth) index pairs within ``tolerance`` and their distances."""
    lists = cKDTree(truth).query_ball_point(pred, r=tolerance)
    rows = np.repeat(np.arange(len(pred)), [len(x) for x in lists])
    cols = np.fromiter((j for x in lists for j in x), dtype=np.int64, count=len(rows))
    dist = np.linalg.norm(pred[rows] - truth[cols], axis=1) if len(rows) else np.zeros(0)
    return rows.astype(np.int64), cols, dist
