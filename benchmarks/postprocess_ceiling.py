"""Ceiling of the 2D post-processing on a leave-one-out family: F1 when the network is perfect.

The true centres of the test micrographs are painted as the training targets are (disks of a quarter
of the particle diameter at 16 working px per particle), Algorithm S1 (``find_peaks_2d``) picks that
map, and picks are matched one-to-one to the truth within one particle radius. An F1 below 1 is what
post-processing alone loses (particles closer than the disks can separate); the rest of the gap to 1
of a trained model is the network's.

    python benchmarks/postprocess_ceiling.py --family sim_crowded      # renders into the benchmark cache if needed
    python benchmarks/postprocess_ceiling.py --family empiar10017 --radius-fraction 0.35   # the real set, smaller disks
    python benchmarks/postprocess_ceiling.py --real empiar-10059 --data ../shared/data     # a real protein's test split
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fewshot_loo import DEFAULT_DATA, FAMILIES, load_protein  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from cryopick.evaluate.matching import match_points, precision_recall_f1
    from cryopick.picker2d.train.data import disk_target
    from cryopick.postprocess.peaks2d import find_peaks_2d

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=sorted(FAMILIES) + ["empiar10017"], default="sim_crowded")
    ap.add_argument("--radius-fraction", type=float, default=0.5,
                    help="painted disk radius as a fraction of the particle radius (TrainConfig.target_radius_fraction)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="EMPIAR-10017 folder (micrographs/*.jpg, coordinates/)")
    ap.add_argument("--cache", default="benchmarks/results/fewshot_loo/full_pretrained_s0",
                    help="a bench_fewshot_loo.py cache folder (its data/ holds the rendered families)")
    ap.add_argument("--n-test", type=int, default=10)
    ap.add_argument("--min-distance-fraction", type=float, default=0.5,
                    help="peak finder's minimum distance as a fraction of the particle diameter (the product's: 0.5)")
    ap.add_argument("--real", default=None, help="a real data set of bench_real_loo.py (empiar-10017, empiar-10059, "
                                                 "empiar-10146) under --data: its fixed test split instead of --family")
    args = ap.parse_args(argv)
    if not 0 < args.radius_fraction <= 1:
        raise SystemExit("--radius-fraction: a number in (0, 1]")
    if args.real:
        from bench_real_loo import load_real

        _, test_paths, truth, diameter = load_real(args.data, args.real)
        args.family = args.real
    else:
        ns = argparse.Namespace(n_test=args.n_test, unlabelled=0, data=args.data)
        _, test_paths, _, truth, diameter = load_protein(args.family, ns, Path(args.cache))
    factor, working = diameter / 16.0, 16.0
    tp = fp = fn = 0
    nearest = []
    for path in test_paths:
        with PILImage.open(path) as image:  # the header only
            width, height = image.size
        centres = truth.table[truth.table["micrograph"] == path.stem][["x", "y"]].to_numpy() / factor
        nearest.append(cKDTree(centres).query(centres, k=2)[0][:, 1])
        shape = (int(np.ceil(height / factor)) + 1, int(np.ceil(width / factor)) + 1)
        probability = disk_target(shape, centres, 0.5 * args.radius_fraction * working).astype(np.float32)
        picks = find_peaks_2d(probability, 0.5 * args.radius_fraction * working, threshold=0.5,
                              min_distance=args.min_distance_fraction * working)
        match = match_points(picks.coords, centres, 0.5 * working)
        tp, fp, fn = tp + match.tp, fp + match.fp, fn + match.fn
    nearest = np.concatenate(nearest) / working
    print(f"{args.family} (disks of {args.radius_fraction:g} x the radius, minimum distance {args.min_distance_fraction:g} "
          f"diameters): {len(test_paths)} test micrographs, {tp + fn} particles; post-processing ceiling "
          f"F1 {precision_recall_f1(tp, tp + fp, tp + fn)[2]:.4f} (tp {tp}, fp {fp}, fn {fn}); nearest neighbour "
          f"< 0.5 diameter: {np.mean(nearest < 0.5):.4f}, median {np.median(nearest):.2f} diameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
