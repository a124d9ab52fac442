"""How well each 2D post-processing setting ranks the picks of trained leave-one-out models.

For every cached model of a ``bench_fewshot_loo.py`` run, the probability map of each test micrograph is
computed once and post-processed with each setting (peak method × region score × mask threshold); all
candidates are kept and the best F1 over score thresholds is reported (pooled over the test micrographs,
one-to-one matching within one particle radius). The best-case threshold takes calibration out of the
comparison: a setting that ranks true particles above false ones better scores higher. Settings whose
best case is not above the default's on every protein cannot beat it once calibrated.

    python benchmarks/postprocess_sweep.py --cache benchmarks/results/fewshot_loo/quick_pre1000_s0 --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fewshot_loo import DEFAULT_DATA, PROTEINS, load_protein  # noqa: E402

#: (peak method, region score, mask threshold); the first is the library default.
SETTINGS = (("s1", "mean_top", 0.5), ("s1", "mean_top", 0.3), ("s1", "mean", 0.5), ("s1", "mean", 0.3),
            ("s1", "max", 0.5), ("s1", "max", 0.3), ("peaks", "mean_top", 0.5))


def sweep(model_dir: Path, test_paths, truth, diameter: float, threads: int) -> dict:
    """Best-case F1 of each setting on the test micrographs."""
    from cryopick.picker2d.calibrate import ValidationPicks, f1_curve
    from cryopick.picker2d.pick import Picker

    picker = Picker(model_dir, num_threads=threads)
    card = picker.card
    regions: dict[tuple, list] = {s: [] for s in SETTINGS}
    for path in test_paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picker.set_image(picker.prepare(path))
        gt = truth.for_micrograph(path.stem).coords
        for setting in SETTINGS:
            method, score, mask = setting
            default_mask = card.mask_threshold
            card.mask_threshold = mask  # the mask threshold S1 segments at (the card's setting)
            try:
                peaks = picker.peaks(threshold=0.0, method=method, score=score)
            finally:
                card.mask_threshold = default_mask
            picks = picker.to_picks(peaks)
            regions[setting].append(ValidationPicks(picks.coords, np.asarray(peaks.scores, float), gt))
    grid = np.linspace(0.0, 1.0, 201)
    return {"/".join(map(str, s)): round(float(np.max(f1_curve(r, diameter / 2, grid)[2])), 4)
            for s, r in regions.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, help="a bench_fewshot_loo.py cache folder (models and data)")
    ap.add_argument("--quick", action="store_true", help="the run was --quick (5 test micrographs)")
    ap.add_argument("--proteins", default=",".join(PROTEINS))
    ap.add_argument("--data", default=DEFAULT_DATA, help="EMPIAR-10017 folder")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    ns = argparse.Namespace(n_test=5 if args.quick else 10, unlabelled=0, data=args.data)
    results = {}
    for name in args.proteins.split(","):
        if not (cache / name / "model" / "card.json").is_file():
            print(f"{name}: no model in {cache}", flush=True)
            continue
        _, test_paths, _, truth, diameter = load_protein(name, ns, cache)
        results[name] = sweep(cache / name / "model", test_paths, truth, diameter, args.threads)
        print(name, json.dumps(results[name]), flush=True)
    if results:
        default = "/".join(map(str, SETTINGS[0]))
        print("best-case F1 minus the default's, per setting and protein:")
        for s in SETTINGS[1:]:
            key = "/".join(map(str, s))
            print(f"  {key:18s}", " ".join(f"{n} {results[n][key] - results[n][default]:+.4f}" for n in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
