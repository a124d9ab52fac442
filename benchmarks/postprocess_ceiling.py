"""Ceiling of the 2D post-processing on a leave-one-out family: F1 when the network is perfect.

The true centres of the test micrographs are painted as the training targets are (disks of a quarter
of the particle diameter at 16 working px per particle), Algorithm S1 (``find_peaks_2d``) picks that
map, and picks are matched one-to-one to the truth within one particle radius. An F1 below 1 is what
post-processing alone loses (particles closer than the disks can separate); the rest of the gap to 1
of a trained model is the network's.

    python benchmarks/postprocess_ceiling.py --family sim_crowded      # renders into the benchmark cache if needed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fewshot_loo import FAMILIES, render_family  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from cryopick.evaluate.matching import match_points, precision_recall_f1
    from cryopick.picker2d.train.data import disk_target
    from cryopick.postprocess.peaks2d import find_peaks_2d

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), default="sim_crowded")
    ap.add_argument("--cache", default="benchmarks/results/fewshot_loo/full_pretrained_s0/data",
                    help="rendered families (bench_fewshot_loo.py's data folder)")
    ap.add_argument("--n-test", type=int, default=10)
    args = ap.parse_args(argv)
    paths, truth, diameter = render_family(args.family, Path(args.cache) / args.family, 5 + args.n_test)
    factor, working = diameter / 16.0, 16.0
    tp = fp = fn = 0
    nearest = []
    for path in paths[5:]:
        centres = truth.table[truth.table["micrograph"] == path.stem][["x", "y"]].to_numpy() / factor
        nearest.append(cKDTree(centres).query(centres, k=2)[0][:, 1])
        side = int(np.ceil(1024 / factor)) + 1
        probability = disk_target((side, side), centres, 0.25 * working).astype(np.float32)
        picks = find_peaks_2d(probability, 0.5 * working, threshold=0.5, min_distance=0.5 * working)
        match = match_points(picks.coords, centres, 0.5 * working)
        tp, fp, fn = tp + match.tp, fp + match.fp, fn + match.fn
    nearest = np.concatenate(nearest) / working
    print(f"{args.family}: {len(paths) - 5} test micrographs, {tp + fn} particles; post-processing ceiling "
          f"F1 {precision_recall_f1(tp, tp + fp, tp + fn)[2]:.4f} (tp {tp}, fp {fp}, fn {fn}); nearest neighbour "
          f"< 0.5 diameter: {np.mean(nearest < 0.5):.4f}, median {np.median(nearest):.2f} diameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
