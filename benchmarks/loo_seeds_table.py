"""Leave-one-out F1 of two starting weights over several training seeds: one table from the benchmark caches.

Reads ``<cache>/<protein>/eval.json`` written by ``bench_fewshot_loo.py`` for every ``--runs`` entry
(``LABEL:SEED:CACHE`` -- e.g. ``random:0:benchmarks/results/fewshot_loo/quick_random_s0``) and prints, per
protein, the test F1 of the card's default variant (``s1/tta=none``) for each label and seed, the
mean over seeds, and the per-seed difference of the second label minus the first (paired: same seed,
same data).

    python benchmarks/loo_seeds_table.py --runs random:0:DIR0 pretrained:0:DIR1 random:1:DIR2 pretrained:1:DIR3
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fewshot_loo import PROTEINS  # noqa: E402

VARIANT = "s1/tta=none"


def collect(runs: list[str]) -> tuple[dict, list[str]]:
    """``scores[protein][label][seed] = F1`` and the labels in the order given."""
    scores: dict = defaultdict(lambda: defaultdict(dict))
    labels: list[str] = []
    for run in runs:
        try:
            label, seed, cache = run.split(":", 2)
            seed_i = int(seed)
        except ValueError:
            raise SystemExit(f"--runs {run!r}: expected LABEL:SEED:CACHE") from None
        if label not in labels:
            labels.append(label)
        for protein in PROTEINS:
            path = Path(cache) / protein / "eval.json"
            if path.is_file():
                scores[protein][label][seed_i] = json.loads(path.read_text())["variants"][VARIANT]["f1"]
    return scores, labels


def table(scores: dict, labels: list[str]) -> list[str]:
    a, b = labels[0], labels[-1]
    lines = [f"| protein | {' | '.join(f'{lab} F1 per seed' for lab in labels)} | {' | '.join(f'{lab} mean' for lab in labels)} "
             f"| {b} − {a} per seed | mean Δ |", "|---" * (2 * len(labels) + 3) + "|"]
    means = defaultdict(list)
    for protein in PROTEINS:
        if protein not in scores:
            continue
        row = scores[protein]
        seeds = sorted(set(row.get(a, {})) & set(row.get(b, {})))
        per = [", ".join(f"{row[lab][s]:.3f}" for s in sorted(row.get(lab, {}))) for lab in labels]
        mean = {lab: float(np.mean(list(row[lab].values()))) if row.get(lab) else float("nan") for lab in labels}
        deltas = [row[b][s] - row[a][s] for s in seeds]
        for lab in labels:
            means[lab].append(mean[lab])
        lines.append(f"| {protein} | {' | '.join(per)} | {' | '.join(f'{mean[lab]:.3f}' for lab in labels)} | "
                     f"{', '.join(f'{d:+.3f}' for d in deltas)} | {np.mean(deltas) if deltas else float('nan'):+.3f} |")
    lines.append(f"| **mean** | {' | '.join('' for _ in labels)} | "
                 f"{' | '.join(f'**{np.mean(means[lab]):.4f}**' for lab in labels)} | | "
                 f"**{np.mean(means[b]) - np.mean(means[a]):+.4f}** |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="LABEL:SEED:CACHE entries")
    args = ap.parse_args(argv)
    scores, labels = collect(args.runs)
    if len(labels) < 2:
        raise SystemExit("--runs: give at least two labels (e.g. random and pretrained)")
    print("\n".join(table(scores, labels)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
