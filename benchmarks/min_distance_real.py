"""How the peak finder's minimum distance changes F1 of a trained 2D model on a real protein's test split.

The probability map of each test micrograph is computed once with the model (a ``bench_real_loo.py``
cache's ``model/``); every candidate is then kept at each minimum distance (a fraction of the particle
diameter; the product's default is one radius, 0.5) and scored pooled over the test micrographs, one-to-one
within one particle radius: at the model's own calibrated threshold (what ``cryopick pick`` writes; that
threshold was calibrated at the minimum distance the model was trained with) and best-case (the best score
threshold on the test micrographs). ``annotated p5`` is the 5th percentile of the training annotations'
nearest-neighbour distances, kept within 0.25-0.5 diameters (a rule tried for crowded proteins and not kept;
``real_loo.md``).

    python benchmarks/min_distance_real.py --model /work/bench/real_loo/empiar-10059/seed0/model \\
        --protein empiar-10059 --data ../shared/data --fractions 0.5,0.4,0.35,0.3,0.25
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_loo import load_real  # noqa: E402


def _score(per_mic: list[tuple[np.ndarray, np.ndarray, np.ndarray]], radius: float, thresholds: np.ndarray):
    """(tp, n_pred, n_truth) pooled over micrographs at each threshold."""
    from cryopick.evaluate.matching import match_points

    out = np.zeros((len(thresholds), 3), dtype=np.int64)
    for coords, scores, truth in per_mic:
        for i, t in enumerate(thresholds):
            keep = scores >= t
            m = match_points(coords[keep], truth, radius)
            out[i] += (m.tp, int(keep.sum()), len(truth))
    return out


def main(argv: list[str] | None = None) -> int:
    from scipy.spatial import cKDTree

    from cryopick.evaluate.matching import precision_recall_f1
    from cryopick.picker2d.pick import Picker

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a trained model folder (model.pt + card.json)")
    ap.add_argument("--protein", required=True, help="empiar-10017, empiar-10059 or empiar-10146 under --data")
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--fractions", default="0.5,0.4,0.35,0.3,0.25",
                    help="minimum distances as fractions of the particle diameter")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    train, test, truth, diameter = load_real(args.data, args.protein)
    nn = np.concatenate([cKDTree(c).query(c, k=2)[0][:, 1] for c in (truth.for_micrograph(p.stem).coords for p in train)
                         if len(c) >= 2])
    rule = float(np.clip(np.percentile(nn, 5.0), 0.25 * diameter, 0.5 * diameter))
    fractions = [float(f) for f in args.fractions.split(",")]
    picker = Picker(args.model, num_threads=args.threads, bf16=False)
    radius = 0.5 * diameter
    per_fraction: dict[float, list] = {f: [] for f in fractions + [rule / diameter]}
    for path in test:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picker.set_image(path)
        gt = truth.for_micrograph(path.stem).coords
        for f in per_fraction:
            picks = picker.predict(threshold=0.0, min_distance=f * diameter)
            per_fraction[f].append((picks.coords, picks.table["score"].to_numpy(), gt))
    thresholds = np.round(np.arange(0.0, 1.0001, 0.01), 4)
    own = float(picker.threshold)
    print(f"{args.protein}: {len(test)} test micrographs, {sum(len(t[2]) for t in per_fraction[fractions[0]])} "
          f"particles, diameter {diameter:g} px; model threshold {own:.3f}; annotated p5 = "
          f"{rule / diameter:.3f} diameters ({rule:.1f} px)")
    print("| minimum distance (diameters) | F1 at the model's threshold | precision / recall | best F1 | at threshold |")
    print("|---|---|---|---|---|")
    for f, rows in per_fraction.items():
        counts = _score(rows, radius, np.append(thresholds, own))
        f1s = [precision_recall_f1(*c)[2] for c in counts[:-1]]
        p, r, f1 = precision_recall_f1(*counts[-1])
        best = int(np.argmax(f1s))
        name = f"{f:.3f}" + (" (annotated p5)" if f == rule / diameter else "")
        print(f"| {name} | {f1:.4f} | {p:.3f} / {r:.3f} | {f1s[best]:.4f} | {thresholds[best]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
