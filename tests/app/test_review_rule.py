"""The review's one visibility rule (which picks a page shows and the server accepts or exports) against one
spec, ``tests/data/review/visible.json``: the Python rule of the server and the JavaScript rule of both pages
(run by node here, and in chromium by ``test_browser.py``), and the 3D review built on the same rule."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cryopick.app.review import visible

SPEC = Path(__file__).parents[1] / "data" / "review" / "visible.json"
RULE_JS = Path(__file__).parents[2] / "src" / "cryopick" / "app" / "static" / "review.js"
CASES = json.loads(SPEC.read_text())["cases"]


def args(case):
    return case["coords"], case["scores"], case["rejected"], case["threshold"], case["min_distance"], case["near"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_python_rule_follows_the_spec(case):
    assert visible(*args(case)) == case["shown"]


def run_js_rule(cases) -> list:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed; test_browser.py checks the same rule in chromium")
    script = ("const { reviewVisible } = require(process.argv[1]);"
              "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(JSON.stringify(cases.map((c) => reviewVisible(c.coords, c.scores, c.rejected,"
              " c.threshold, c.min_distance, c.near))));")
    out = subprocess.run([node, "-e", script, str(RULE_JS)], input=json.dumps(cases), capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_javascript_rule_follows_the_spec():
    got = run_js_rule(CASES)
    assert {c["name"]: g for c, g in zip(CASES, got)} == {c["name"]: c["shown"] for c in CASES}


def test_both_rules_agree_on_random_picks():
    """Beyond the hand-written cases: 2D and 3D picks with ties, missing scores and rejections nearby."""
    import numpy as np

    rng = np.random.default_rng(7)
    cases = []
    for k in range(40):
        dim, n = 2 + k % 2, int(rng.integers(0, 30))
        coords = np.round(rng.uniform(0, 60, (n, dim)), 1).tolist()
        scores = [None if rng.random() < 0.1 else round(float(rng.choice([0.5, rng.random()])), 2) for _ in range(n)]
        rejected = [list(np.add(coords[i], rng.normal(0, 1.5, dim)).round(1)) for i in range(0, n, 4)]
        cases.append({"coords": coords, "scores": scores, "rejected": rejected,
                      "threshold": float(rng.choice([0.0, 0.3, 0.5])), "min_distance": float(rng.choice([0, 8])),
                      "near": 2.5})
    assert run_js_rule(cases) == [visible(*args(c)) for c in cases]


def test_same_picks_compares_sets_not_counts():
    from cryopick.app.review import same_picks

    assert same_picks([[1, 2, 3], [4, 5, 6]], [[4, 5, 6.001], [1, 2, 3]])
    assert not same_picks([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 5, 7]])
    assert not same_picks([[1, 2, 3]], [[1, 2, 3], [1, 2, 3]])
