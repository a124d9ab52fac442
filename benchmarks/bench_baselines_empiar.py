"""Training-free baselines on EMPIAR-10017: Difference of Gaussians and classic template matching.

Split (shared with the few-shot benchmark): micrographs sorted by file name, the first 5 are
"training" (template source and threshold calibration), the other 15 are the test set.

For each baseline every micrograph is picked once without a threshold (peaks cached under
``--cache``; reruns resume), then on the test micrographs:

- ``best``: best F1 over all thresholds chosen on the test set itself (the optimistic "best case");
- ``calibrated``: F1 at the threshold that maximises F1 on the 5 training micrographs (fair);
- AUPRC, F1 at 0.5 radius at the calibrated threshold, mean per-micrograph F1, recall success rates;
- median seconds per micrograph (4096² JPEG, read + pick; measured when it was picked, kept in
  the cache), template building time.

A pick is correct within one particle radius (54 px) of a true centre, one-to-one optimal matching.

    python benchmarks/bench_baselines_empiar.py              # 5 train + 15 test
    python benchmarks/bench_baselines_empiar.py --quick      # 5 train + 5 test, for run_all
    python benchmarks/bench_baselines_empiar.py --report benchmarks/results/baselines_report
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import add_common_args, print_table, write_result  # noqa: E402

DEFAULT_DATA = "/work/shared/data/empiar-10017"
DIAMETER = 108.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, "benchmarks/results/baselines_empiar.json")
    ap.add_argument("--data", default=DEFAULT_DATA, help="directory with micrographs/ and coordinates/")
    ap.add_argument("--methods", nargs="+", default=["dog", "template"], choices=["dog", "template"])
    ap.add_argument("--n-train", type=int, default=5)
    ap.add_argument("--n-test", type=int, default=None, help="test micrographs (default all; --quick: 5)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--angle-step", type=float, default=10.0, help="template picker in-plane step (degrees)")
    ap.add_argument("--n-templates", type=int, default=1)
    ap.add_argument("--working-diameter", type=float, default=24.0)
    ap.add_argument("--cache", default="benchmarks/results/baselines_cache", help="per-micrograph peak cache")
    ap.add_argument("--report", help="also write a cryopick evaluate report (Markdown, PNG, JSON) here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from cryopick.baselines.dog import dog_pick
    from cryopick.baselines.pipeline import calibrate_score_threshold, load_image, pick_all
    from cryopick.baselines.template2d import build_templates, template_pick
    from cryopick.evaluate.curves import pr_curve
    from cryopick.evaluate.metrics import evaluate_picks
    from cryopick.evaluate.stats import compare_methods, recall_success_rate
    from cryopick.io.coords import read_picks
    from cryopick.io.images import image_name, list_images

    data = Path(args.data)
    paths = list_images(data / "micrographs")
    truth = read_picks(data / "coordinates")
    n_test = args.n_test if args.n_test is not None else (5 if args.quick else len(paths) - args.n_train)
    train, test = paths[: args.n_train], paths[args.n_train: args.n_train + n_test]
    train_names, test_names = [image_name(p) for p in train], [image_name(p) for p in test]
    print(f"EMPIAR-10017: {len(train)} training micrographs, {len(test)} test micrographs, diameter {DIAMETER:g} px",
          flush=True)
    cache = Path(args.cache)
    rows, details, per_mic, final = [], {}, [], {}
    for method in args.methods:
        t0 = time.perf_counter()
        build_s = 0.0
        if method == "dog":
            def picker(image):
                return dog_pick(image, DIAMETER, working_diameter=args.working_diameter, threshold=None)
            tag = f"dog_wd{args.working_diameter:g}"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images = [load_image(p) for p in train]
            templates = build_templates(images, [truth.for_micrograph(n).coords for n in train_names], DIAMETER,
                                        working_diameter=args.working_diameter, n_templates=args.n_templates,
                                        angle_step=args.angle_step)
            del images
            build_s = time.perf_counter() - t0

            def picker(image):
                return template_pick(image, templates, angle_step=args.angle_step, threshold=None)
            tag = f"template_k{args.n_templates}_a{args.angle_step:g}_wd{args.working_diameter:g}_n{args.n_train}"
        todo = train + test
        done_before = sum((cache / tag / f"{image_name(p)}.npz").exists() for p in todo)
        picks = pick_all(todo, picker, DIAMETER, cache_dir=cache / tag, progress=False)
        fresh = len(todo) - done_before
        timed = [s for s in picks.meta["seconds"].values() if np.isfinite(s)]
        s_per_mic = float(np.median(timed)) if timed else None
        train_picks = picks._with(picks.table[picks.table["micrograph"].isin(train_names)])
        train_truth = truth._with(truth.table[truth.table["micrograph"].isin(train_names)])
        calib = calibrate_score_threshold(train_picks, train_truth, DIAMETER)
        test_truth = truth._with(truth.table[truth.table["micrograph"].isin(test_names)])
        curve = pr_curve(picks, test_truth, DIAMETER, micrographs=test_names)
        best = curve.best()
        thr = calib["threshold"]
        ev = evaluate_picks(picks, test_truth, DIAMETER, min_score=thr, micrographs=test_names)
        ev05 = evaluate_picks(picks, test_truth, DIAMETER, tolerance=0.5, min_score=thr, micrographs=test_names)
        rsr = recall_success_rate(ev.per_micrograph["recall"])
        row = dict(method=method, best_f1=best["f1"], best_thr=best["threshold"], auprc=curve.auprc,
                   calib_thr=thr, calib_f1=ev.pooled["f1"], calib_P=ev.pooled["precision"],
                   calib_R=ev.pooled["recall"], calib_f1_r05=ev05.pooled["f1"], mean_f1=ev.pooled["mean_f1"],
                   train_f1=calib["f1"],
                   s_per_mic=s_per_mic, build_s=build_s)
        rows.append(row)
        details[method] = dict(calibration=calib, test_best=best, test_calibrated=ev.pooled,
                               test_calibrated_r05=ev05.pooled, recall_success_rate=rsr,
                               per_micrograph=ev.per_micrograph.to_dict(orient="records"),
                               micrographs_picked_now=fresh)
        table = ev.per_micrograph.copy()
        table.insert(0, "method", method)
        per_mic.append(table)
        final[method] = (picks, thr)
    print_table(rows)
    import pandas as pd

    stats = []
    if len(per_mic) == 2:
        tests = compare_methods(pd.concat(per_mic, ignore_index=True), ("precision", "recall", "f1"))
        stats = tests.to_dict(orient="records")
        for t in stats:
            print(f"Wilcoxon {t['metric']}: {t['method_a']} {t['mean_a']:.3f} vs {t['method_b']} {t['mean_b']:.3f}, "
                  f"p = {t['p_value']:.3g} (BH {t['p_adjusted']:.3g}), r = {t['r']:.2f}")
    summary = {}
    for r in rows:
        m = r["method"]
        summary.update({f"{m}_best_f1": r["best_f1"], f"{m}_calibrated_f1": r["calib_f1"], f"{m}_auprc": r["auprc"]})
        if r["s_per_mic"] is not None:
            summary[f"{m}_s_per_micrograph"] = r["s_per_mic"]
    out = write_result(args.out, "baselines_empiar", args.quick, summary, rows=rows, methods=details,
                       statistics=stats, split=dict(train=train_names, test=test_names), diameter=DIAMETER,
                       settings={k: v for k, v in vars(args).items()})
    print(f"results: {out}")
    if args.report:
        from cryopick.evaluate.report import evaluate_methods, write_report

        methods = {m: p for m, (p, _) in final.items()}
        summ = evaluate_methods(methods, test_truth, DIAMETER, micrographs=test_names,
                                min_score={m: t for m, (_, t) in final.items()})
        overlay = test_names[:1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            images = {n: load_image(p) for n, p in zip(test_names, test) if n in overlay}
        paths_written = write_report(summ, args.report, images=images, methods=methods, truth=test_truth,
                                     overlay_micrographs=overlay,
                                     title="Baselines on EMPIAR-10017 (15 test micrographs, calibrated thresholds)")
        print(f"report: {paths_written['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
