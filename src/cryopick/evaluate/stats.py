"""Paired statistics across methods, as in the CryoFSL paper (Supplementary Tables S4–S5, Fig. S7).

- Wilcoxon signed-rank test on per-micrograph metric pairs (p-value from ``scipy.stats.wilcoxon``,
  two-sided, zero differences dropped — scipy's default).
- Effect size ``r = z / sqrt(N)``: ``z`` is the normal-approximation statistic of the signed-rank
  sum (tie-corrected, no continuity correction), signed positive when the first method scores higher;
  ``N`` is the number of paired observations (micrographs), as the paper states. The matched-pairs
  rank-biserial correlation of Kerby (2014), ``(R+ - R-) / (R+ + R-)``, is reported alongside.
- Benjamini–Hochberg adjusted p-values (the ``fdr_bh`` of statsmodels).
- Recall success rate: the fraction of micrographs whose recall is at least 0.6 / 0.8.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps


@dataclass(frozen=True)
class WilcoxonResult:
    """One paired comparison ``x`` vs ``y``.

    ``statistic`` is scipy's (the smaller of the signed-rank sums); ``w_plus`` / ``w_minus`` are the
    rank sums of positive / negative differences ``x - y``; ``n`` pairs, ``n_nonzero`` used by the test.
    """

    statistic: float
    p_value: float
    z: float
    r: float
    rank_biserial: float
    w_plus: float
    w_minus: float
    n: int
    n_nonzero: int
    median_difference: float


def wilcoxon_signed_rank(x, y) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired samples with effect sizes (see module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-D arrays of the same length (one value per micrograph)")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    d = x - y
    n = len(d)
    nz = d[d != 0]
    m = len(nz)
    med = float(np.median(d)) if n else float("nan")
    if m == 0:
        return WilcoxonResult(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, n, 0, med)
    ranks = sps.rankdata(np.abs(nz))
    w_plus = float(ranks[nz > 0].sum())
    w_minus = float(ranks[nz < 0].sum())
    mean = m * (m + 1) / 4.0
    _, counts = np.unique(np.abs(nz), return_counts=True)
    var = m * (m + 1) * (2 * m + 1) / 24.0 - float(np.sum(counts**3 - counts)) / 48.0
    z = (w_plus - mean) / math.sqrt(var) if var > 0 else 0.0
    res = sps.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return WilcoxonResult(
        statistic=float(res.statistic), p_value=float(res.pvalue), z=float(z), r=float(z / math.sqrt(n)),
        rank_biserial=(w_plus - w_minus) / (w_plus + w_minus), w_plus=w_plus, w_minus=w_minus, n=n,
        n_nonzero=m, median_difference=med,
    )


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (step-up, monotone, capped at 1), input order kept.

    ``q_(i) = min_{j >= i} p_(j) m / j`` for p-values sorted ascending; NaN stays NaN and is not counted.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    scaled = q[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.clip(adjusted, 0, 1)
    out[ok] = res
    return out


def recall_success_rate(recalls, thresholds=(0.6, 0.8)) -> dict[float, float]:
    """Fraction of micrographs with recall ``>= threshold``, per threshold."""
    r = np.asarray(recalls, dtype=np.float64)
    r = r[np.isfinite(r)]
    return {float(t): (float(np.mean(r >= t)) if len(r) else float("nan")) for t in thresholds}


def compare_methods(
    per_micrograph: pd.DataFrame,
    metrics=("precision", "recall", "f1"),
    reference: str | None = None,
    fdr_scope: str = "metric",
) -> pd.DataFrame:
    """Paired tests between methods on the micrographs they share.

    Parameters
    ----------
    per_micrograph
        Long table with columns ``method``, ``micrograph`` and one column per metric.
    metrics
        Metric columns to test.
    reference
        Compare this method against every other (the paper's design); ``None``: all pairs.
    fdr_scope
        ``"metric"``: BH over the comparisons of one metric (the paper: 30 tests per metric);
        ``"all"``: over every row.

    Returns
    -------
    pd.DataFrame
        One row per (metric, method_a, method_b): the :class:`WilcoxonResult` fields, the mean of
        each method and ``p_adjusted``. Positive ``z`` / ``r`` mean ``method_a`` scores higher.
    """
    methods = list(dict.fromkeys(per_micrograph["method"].tolist()))
    if reference is not None:
        if reference not in methods:
            raise ValueError(f"reference method {reference!r} not in {methods}")
        pairs = [(reference, m) for m in methods if m != reference]
    else:
        pairs = list(itertools.combinations(methods, 2))
    rows = []
    for metric in metrics:
        wide = per_micrograph.pivot_table(index="micrograph", columns="method", values=metric, aggfunc="first")
        for a, b in pairs:
            both = wide[[a, b]].dropna()
            if len(both) == 0:
                continue
            res = wilcoxon_signed_rank(both[a].to_numpy(), both[b].to_numpy())
            rows.append(dict(metric=metric, method_a=a, method_b=b, mean_a=float(both[a].mean()),
                             mean_b=float(both[b].mean()), **asdict(res)))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    if fdr_scope == "all":
        table["p_adjusted"] = benjamini_hochberg(table["p_value"])
    else:
        table["p_adjusted"] = np.nan
        for metric, idx in table.groupby("metric").groups.items():
            table.loc[idx, "p_adjusted"] = benjamini_hochberg(table.loc[idx, "p_value"])
    return table
