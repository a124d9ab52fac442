"""Paired statistics against scipy and hand computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cryopick.evaluate.stats import benjamini_hochberg, compare_methods, recall_success_rate, wilcoxon_signed_rank


def test_wilcoxon_hand_computed():
    y = np.array([0.5, 0.5, 0.5, 0.5, 0.5])
    x = y + np.array([0.01, 0.02, -0.03, 0.04, 0.05])
    r = wilcoxon_signed_rank(x, y)
    # |d| ranks 1..5; W+ = 1+2+4+5 = 12, W- = 3; exact two-sided p = 2 * #{subsets of 1..5 with sum <= 3} / 32
    # = 2 * 5 / 32 (the subsets {}, {1}, {2}, {3}, {1,2}).
    assert (r.w_plus, r.w_minus, r.statistic) == (12, 3, 3)
    assert r.p_value == pytest.approx(10 / 32)
    z = (12 - 7.5) / math.sqrt(5 * 6 * 11 / 24)
    assert r.z == pytest.approx(z)
    assert r.r == pytest.approx(z / math.sqrt(5))
    assert r.rank_biserial == pytest.approx(9 / 15)
    # symmetric in sign
    assert wilcoxon_signed_rank(y, x).r == pytest.approx(-r.r)


def test_wilcoxon_matches_scipy_with_ties_and_zeros():
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(size=25), 1)
    y = np.round(rng.uniform(size=25), 1)
    r = wilcoxon_signed_rank(x, y)
    ref = sps.wilcoxon(x, y)
    assert r.p_value == pytest.approx(ref.pvalue) and r.statistic == pytest.approx(ref.statistic)
    approx = sps.wilcoxon(x, y, method="approx")
    assert abs(r.z) == pytest.approx(abs(approx.zstatistic))
    assert r.n == 25 and r.n_nonzero == int(np.sum(x != y))
    assert wilcoxon_signed_rank(x, x).p_value == 1.0


def test_benjamini_hochberg_known_vector():
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    # sorted 0.005, 0.01, 0.03, 0.04, 0.5 -> p*m/rank = .025, .025, .05, .05, .5 (already monotone)
    assert benjamini_hochberg(p) == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.5])
    # monotone step-up: 0.02*2/1 = 0.04 > 0.03*2/2 = 0.03 -> both 0.03
    assert benjamini_hochberg([0.02, 0.03]) == pytest.approx([0.03, 0.03])
    assert benjamini_hochberg([0.9, 0.95]) == pytest.approx([0.95, 0.95])
    out = benjamini_hochberg([0.01, np.nan])
    assert out[0] == pytest.approx(0.01) and np.isnan(out[1])
    q = np.random.default_rng(1).uniform(size=30)
    assert benjamini_hochberg(q) == pytest.approx(sps.false_discovery_control(q))


def test_recall_success_rate():
    assert recall_success_rate([0.5, 0.6, 0.79, 0.8, 0.95]) == {0.6: 0.8, 0.8: 0.4}


def test_compare_methods_reference_and_fdr():
    mics = [f"m{i}" for i in range(8)]
    rng = np.random.default_rng(2)
    base = rng.uniform(0.4, 0.6, 8)
    rows = []
    for method, shift in (("ours", 0.2), ("tm", 0.0), ("dog", -0.1)):
        for m, b in zip(mics, base):
            rows.append(dict(method=method, micrograph=m, f1=b + shift + rng.normal(0, 0.01), recall=b + shift))
    table = compare_methods(pd.DataFrame(rows), metrics=("f1", "recall"), reference="ours")
    assert len(table) == 4 and set(table["method_b"]) == {"tm", "dog"}
    assert (table["r"] > 0).all() and (table["rank_biserial"] == 1).all()
    for metric in ("f1", "recall"):
        sub = table[table["metric"] == metric]
        assert sub["p_adjusted"].to_numpy() == pytest.approx(benjamini_hochberg(sub["p_value"]))
    all_pairs = compare_methods(pd.DataFrame(rows), metrics=("f1",))
    assert len(all_pairs) == 3
