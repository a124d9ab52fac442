"""Few-shot 2D picking, leave-one-out over "proteins": train 5-shot with the library defaults, pick the rest.

Each "protein" is trained on its own 5 annotated micrographs with ``train_from_files`` (the code path of
``cryopick train``; library defaults, ``--quick`` caps the epochs) and picks its held-out micrographs;
particle-level F1 (one-to-one matching, correct within one particle radius) at the calibrated threshold:

- ``empiar10017``: EMPIAR-10017 β-galactosidase JPEGs (first 5 by name train, the rest test;
  ``--data`` override), as in ``bench_fewshot_empiar.py``;
- ``sim_raw``: simulated dihedral particles, 16-bit TIFF electron counts at low dose (raw-looking);
- ``sim_denoised``: simulated elongated particles, low-passed 8-bit PNG with aggregates, ice crystals
  and carbon edges (denoised-JPEG-looking, like CryoPPP);
- ``sim_crowded``: simulated small globular particles packed ~550 per 1024² (the crowded case),
  low-passed 8-bit PNG.

Each trained model is scored with every post-processing variant whose threshold the calibration recorded
(``calibration["variants"]``: Algorithm S1 or plain peak finding, x test-time augmentation none / flips /
d4), with the variant the card chose (``chosen``) and with the one the opt-in method choice on the
validation strips would choose (``auto``); ``s1/tta=none`` is the behaviour before those options existed. Seconds per test micrograph (read + resample + network + post-processing) are given
per TTA mode; on EMPIAR-10017 these are 4096² micrographs.

    python benchmarks/bench_fewshot_loo.py --quick        # ~15 min on 2 idle cores (3 epochs per protein)
    python benchmarks/bench_fewshot_loo.py                # library defaults (9-minute budget per protein)
    python benchmarks/bench_fewshot_loo.py --quick --init random   # or pretrained: the starting weights

``--init`` chooses the starting weights (``TrainConfig.init``); runs with ``pretrained`` are cached
apart (``<quick|full>_pretrained``).

``--unlabelled N`` gives each protein N unannotated micrographs of its own (the unlabelled pool of
``TrainConfig.unlabelled_max``, self-training): the simulated families render 5 + n_test + N micrographs
and the last N are the pool; on EMPIAR-10017 the micrographs after the train and test ones (20 exist, so
at most 10 with ``--quick``). The test micrographs are never in the pool. Cached apart
(``<quick|full>_<init>_unlabelled<N>``). ``--self-training-init previous`` and ``--ignore-margin M``
(``TrainConfig.self_training_init``, ``unlabelled_ignore_margin``) measure the pool's variants (cached
apart too: ``_previous``, ``_ignore<M>``).

Trained models, rendered data and per-protein scores are cached under the ``--cache`` folder (default
``benchmarks/results/fewshot_loo/<quick|full>``); rerunning resumes (``--redo`` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import add_common_args, json_object, print_table, write_result  # noqa: E402
from bench_fewshot_empiar import DEFAULT_DATA  # noqa: E402

PROTEINS = ("empiar10017", "sim_raw", "sim_denoised", "sim_crowded")
TTAS = ("none", "flips", "d4")
METHODS = ("s1", "peaks")

# Simulated families: particle kind / size / pixel size / numbers / rendering.
FAMILIES = {
    "sim_raw": dict(kind="dihedral", diameter_A=150.0, pixel_size=3.0, n_particles=120, crowding=0.3, dose=(12.0, 20.0),
                    render="raw", aggregates=0, ice_crystals=0, carbon_every=0, seed=101),
    "sim_denoised": dict(kind="elongated", diameter_A=200.0, pixel_size=4.0, n_particles=100, crowding=0.3,
                         dose=(25.0, 40.0), render="denoised", aggregates=2, ice_crystals=1, carbon_every=3, seed=202),
    "sim_crowded": dict(kind="globular", diameter_A=100.0, pixel_size=3.0, n_particles=700, crowding=0.9,
                        dose=(30.0, 45.0), render="denoised", aggregates=0, ice_crystals=0, carbon_every=0, seed=303),
}


def render_family(name: str, out: Path, n: int, size: int = 1024):
    """Render ``n`` micrographs of a simulated family into ``out`` (cached); returns (paths, Picks, diameter px)."""
    from scipy import ndimage as ndi

    from cryopick.io.coords import read_picks
    from cryopick.io.images import write_png
    from cryopick.picks import concat
    from cryopick.simulate.micrograph import simulate_micrograph
    from cryopick.simulate.shapes import procedural_class

    fam = FAMILIES[name]
    diameter = fam["diameter_A"] / fam["pixel_size"]
    suffix = ".tif" if fam["render"] == "raw" else ".png"
    truth_file = out / "truth.star"
    paths = [out / f"{name}_{i:03d}{suffix}" for i in range(n)]
    if truth_file.is_file() and all(p.is_file() for p in paths):
        return paths, read_picks(truth_file, format="relion"), diameter
    import tifffile

    out.mkdir(parents=True, exist_ok=True)
    cls = procedural_class(name, fam["kind"], fam["diameter_A"], fam["pixel_size"], fam["seed"])
    parts = []
    for i, path in enumerate(paths):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # placement shortfalls in the crowded family are expected
            m = simulate_micrograph([cls], shape=(size, size), pixel_size=fam["pixel_size"], seed=fam["seed"] * 1000 + i,
                                    n_particles=fam["n_particles"], crowding=fam["crowding"], dose=fam["dose"],
                                    aggregates=fam["aggregates"], ice_crystals=fam["ice_crystals"],
                                    carbon_edge=bool(fam["carbon_every"]) and i % fam["carbon_every"] == 1,
                                    name=path.stem)
        if fam["render"] == "raw":
            tifffile.imwrite(path, np.clip(m.image, 0, 65535).astype(np.uint16))
        else:
            write_png(path, ndi.gaussian_filter(m.image, 1.5))
        parts.append(m.picks)
    truth = concat(parts)
    from cryopick.io.coords import write_picks

    write_picks(truth, truth_file, format="relion")
    return paths, read_picks(truth_file, format="relion"), diameter


def load_protein(name: str, args, cache: Path):
    """(train paths, test paths, unlabelled pool paths, truth Picks, diameter px) of one protein."""
    end = 5 + args.n_test
    if name == "empiar10017":
        from cryopick.io.coords import read_picks

        jpgs = sorted((Path(args.data) / "micrographs").glob("*.jpg"))
        if len(jpgs) < 6:
            raise SystemExit(f"{args.data}: expected EMPIAR-10017 micrographs/*.jpg (give --data)")
        if len(jpgs) < end + args.unlabelled:
            raise SystemExit(f"--unlabelled {args.unlabelled}: {args.data} holds {len(jpgs)} micrographs, "
                             f"{end} train and test ones; at most --unlabelled {max(0, len(jpgs) - end)}")
        truth = read_picks(Path(args.data) / "coordinates", format="cryoppp")
        return jpgs[:5], jpgs[5:end], jpgs[end : end + args.unlabelled], truth, 108.0
    paths, truth, diameter = render_family(name, cache / "data" / name, end + args.unlabelled)
    return paths[:5], paths[5:end], paths[end:], truth, diameter


def train(name: str, train_paths, truth, diameter: float, model_dir: Path, args, pool=()) -> dict:
    from cryopick.picker2d.card import load_card
    from cryopick.picker2d.train import TrainConfig, train_from_files

    if (model_dir / "card.json").is_file() and not args.redo:
        return {"cached": True, **load_card(model_dir).training}
    shutil.rmtree(model_dir, ignore_errors=True)
    config = TrainConfig(num_threads=args.threads, seed=args.seed, progress=False)
    if args.init:
        config.init = args.init
    if args.epochs:
        config.epochs = args.epochs
    if args.lr:
        config.lr = args.lr
    if args.self_training_init:
        config.self_training_init = args.self_training_init
    if args.ignore_margin:
        config.unlabelled_ignore_margin = args.ignore_margin
    if args.template_prior:
        config.template_prior = True
    if args.target_diameter:
        config.target_diameter = args.target_diameter
    if args.backbone_kwargs:
        config.backbone_kwargs = dict(args.backbone_kwargs)
    stems = [p.stem for p in train_paths]
    train_truth = truth._with(truth.table[truth.table["micrograph"].isin(stems)])
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        card = train_from_files(train_paths, train_truth, diameter, model_dir, config=config,
                                unlabelled=list(pool) or None)
    return {"cached": False, "train_seconds": round(time.perf_counter() - t, 1), **card.training}


def evaluate(model_dir: Path, test_paths, truth, diameter: float, threads: int, ttas=TTAS) -> dict:
    """F1 of every recorded variant on the test micrographs, and seconds per micrograph per TTA mode."""
    from cryopick.evaluate.matching import match_points, precision_recall_f1
    from cryopick.picker2d.pick import Picker

    rows, seconds = {}, {}
    card = None
    for tta in ttas:
        picker = Picker(model_dir, num_threads=threads, tta=tta)
        card = picker.card
        variants = card.calibration.get("variants") or {}
        counts = {m: [0, 0, 0] for m in METHODS}
        t_total = 0.0
        for path in test_paths:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                picker.set_image(picker.prepare(path))
                t_net = time.perf_counter() - t0
                gt = truth.for_micrograph(path.stem).coords
                for method in METHODS:
                    thr = (variants.get(f"{method}/tta={tta}") or {}).get("threshold", card.score_threshold)
                    t1 = time.perf_counter()
                    picks = picker.predict(threshold=thr, method=method)
                    if method == card.peak_method:
                        t_net += time.perf_counter() - t1
                    m = match_points(picks.coords, gt, diameter / 2)
                    c = counts[method]
                    c[0], c[1], c[2] = c[0] + m.tp, c[1] + m.n_pred, c[2] + m.n_truth
            t_total += t_net
        seconds[tta] = round(t_total / max(len(test_paths), 1), 3)
        for method, (tp, n_pred, n_truth) in counts.items():
            p, r, f1 = precision_recall_f1(tp, n_pred, n_truth)
            val = (variants.get(f"{method}/tta={tta}") or {}).get("f1")
            rows[f"{method}/tta={tta}"] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                                           "n_truth": n_truth, "validation_f1": val}
    chosen = f"{card.peak_method}/tta={card.tta}"
    return {"variants": rows, "seconds_per_micrograph": seconds, "chosen": chosen,
            "f1_chosen": rows.get(chosen, {}).get("f1"),
            "f1_before": rows["s1/tta=none"]["f1"], "n_test": len(test_paths)}


def tta_speed(model_dir: Path, jpgs: list[Path], n: int, workdir: Path, threads: int) -> dict:
    """End-to-end picking speed of ``n`` 4096² float32 MRCs (``bench_fewshot_empiar.speed_test``) per TTA
    mode: a copy of the model whose card asks for that mode."""
    from bench_fewshot_empiar import speed_test

    speeds = {}
    for tta in TTAS:
        copy = workdir / f"model_{tta}"
        shutil.copytree(model_dir, copy, dirs_exist_ok=True)
        card = json.loads((copy / "card.json").read_text())
        (copy / "card.json").write_text(json.dumps({**card, "tta": tta}))
        speeds[tta] = speed_test(copy, jpgs, n, workdir / f"work_{tta}", threads)
        print(f"picking speed, tta={tta}: {speeds[tta]['micrographs_per_second']} micrographs/s (4096² MRC)",
              flush=True)
    return speeds


def auto_choice(variants: dict, min_gain: float = 0.005) -> str:
    """The variant ``calibrate_postprocess(choose_method=True)`` would put in the card (no TTA): plain peaks
    when their validation F1 beats S1's by more than ``min_gain``, else S1."""
    s1, peaks = (variants[f"{m}/tta=none"].get("validation_f1") or 0.0 for m in ("s1", "peaks"))
    return "peaks/tta=none" if peaks > s1 + min_gain else "s1/tta=none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, "benchmarks/results/fewshot_loo.json")
    ap.add_argument("--data", default=DEFAULT_DATA, help="EMPIAR-10017 folder (micrographs/*.jpg, coordinates/)")
    ap.add_argument("--cache", default=None, help="models, data and scores (default benchmarks/results/fewshot_loo/<size>)")
    ap.add_argument("--proteins", default=",".join(PROTEINS), help=f"comma list of {', '.join(PROTEINS)}")
    ap.add_argument("--n-test", type=int, default=None, help="test micrographs per protein (default 10; quick 5)")
    ap.add_argument("--epochs", type=int, default=None, help="cap the epochs (default: library default; quick 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", choices=["pretrained", "random"], default=None,
                    help="starting weights of few-shot training (default: the library default, TrainConfig.init)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the library default, TrainConfig.lr)")
    ap.add_argument("--ttas", default=",".join(TTAS),
                    help=f"test-time augmentation modes scored (comma list of {', '.join(TTAS)}; default all)")
    ap.add_argument("--redo", action="store_true", help="retrain and rescore instead of using the cache")
    ap.add_argument("--unlabelled", type=int, default=0,
                    help="unannotated micrographs per protein for self-training (the unlabelled pool; default 0)")
    ap.add_argument("--self-training-init", choices=["fresh", "previous"], default=None,
                    help="starting weights of the self-training stage (default: the library default)")
    ap.add_argument("--ignore-margin", type=float, default=0.0,
                    help="TrainConfig.unlabelled_ignore_margin (default 0: the library default)")
    ap.add_argument("--template-prior", action="store_true",
                    help="TrainConfig.template_prior: the template-matching response as a second input channel "
                         "(cached apart: _template)")
    ap.add_argument("--target-diameter", type=float, default=None,
                    help="TrainConfig.target_diameter: particle diameter at the working scale, px (default: the "
                         "library default; give --cache)")
    ap.add_argument("--backbone-kwargs", type=json_object, default=None, metavar="JSON",
                    help='TrainConfig.backbone_kwargs, e.g. \'{"depth": 4}\' (give --cache)')
    ap.add_argument("--pretrained-weights", default=None, metavar="FILE",
                    help="use this file (pretrain2d.py --export) as the package's pretrained weights for --init "
                         "pretrained, to compare candidate weights without replacing the shipped file (give --cache)")
    ap.add_argument("--speed-n", type=int, default=None,
                    help="4096² MRCs picked end to end per TTA mode with the empiar10017 model (default 3; 0 = skip)")
    args = ap.parse_args(argv)
    size = "quick" if args.quick else "full"
    args.n_test = args.n_test or (5 if args.quick else 10)
    if args.quick and args.epochs is None:
        args.epochs = 3
    if args.init is None:
        from cryopick.picker2d.train import TrainConfig

        args.init = TrainConfig().init
    if args.unlabelled < 0:
        raise SystemExit("--unlabelled: a number >= 0")
    cache = Path(args.cache or f"benchmarks/results/fewshot_loo/{size}" + ("" if args.init == "random" else f"_{args.init}")
                 + (f"_unlabelled{args.unlabelled}" if args.unlabelled else "")
                 + (f"_{args.self_training_init}" if args.self_training_init else "")
                 + (f"_ignore{args.ignore_margin:g}" if args.ignore_margin else "")
                 + ("_template" if args.template_prior else ""))
    for option, holds in (("target_diameter", "the default settings' runs"), ("backbone_kwargs", "the default "
                          "settings' runs"), ("pretrained_weights", "the shipped weights' runs")):
        if getattr(args, option) and not args.cache:
            raise SystemExit(f"--{option.replace('_', '-')}: give --cache too (the default cache holds {holds})")
    if args.pretrained_weights:
        if not Path(args.pretrained_weights).is_file():
            raise SystemExit(f"--pretrained-weights: {args.pretrained_weights}: no such file")
        import cryopick.models.unet2d as unet2d

        unet2d.PRETRAINED_2D = Path(args.pretrained_weights).resolve()
    cache.mkdir(parents=True, exist_ok=True)

    import torch

    torch.set_num_threads(args.threads)
    ttas = tuple(t for t in args.ttas.split(",") if t)
    if not ttas or set(ttas) - set(TTAS):
        raise SystemExit(f"--ttas: choose from {', '.join(TTAS)}")
    results = {}
    for name in args.proteins.split(","):
        if name not in PROTEINS:
            raise SystemExit(f"--proteins: unknown {name!r}; choose from {', '.join(PROTEINS)}")
        done = cache / name / "eval.json"
        if done.is_file() and not args.redo:
            results[name] = json.loads(done.read_text())
            print(f"{name}: cached ({done})", flush=True)
            continue
        train_paths, test_paths, pool, truth, diameter = load_protein(name, args, cache)
        tr = train(name, train_paths, truth, diameter, cache / name / "model", args, pool)
        ev = evaluate(cache / name / "model", test_paths, truth, diameter, args.threads, ttas)
        ev["training"] = {k: tr.get(k) for k in ("cached", "train_seconds", "epochs_run", "best_epoch", "stopped",
                                                 "best_val_f1", "wall_seconds", "cpu_seconds_this_session", "init",
                                                 "stages", "shipped_stage")}
        ev["unlabelled_pool"] = {k: (tr.get("unlabelled_pool") or {}).get(k) for k in
                                 ("n_micrographs", "n_pseudo_labels", "stage_validation_f1", "shipped")}
        ev["load_average"] = [round(x, 2) for x in os.getloadavg()]
        from cryopick.io.atomic import write_text

        write_text(done, json.dumps(ev, indent=1) + "\n")
        results[name] = ev
        print(f"{name}: F1 before {ev['f1_before']:.3f}, chosen {ev['chosen']} {ev['f1_chosen']:.3f} "
              f"({ev['training']['epochs_run']} epochs)", flush=True)

    variants = [f"{m}/tta={t}" for t in TTAS for m in METHODS]
    rows = []
    for name, ev in results.items():
        ev["auto"] = auto_choice(ev["variants"])
        ev["f1_auto"] = ev["variants"][ev["auto"]]["f1"]
        row = {"protein": name, "n_test": ev["n_test"], "n_truth": ev["variants"]["s1/tta=none"]["n_truth"],
               "chosen": ev["chosen"], "F1 chosen": ev["f1_chosen"], "auto": ev["auto"], "F1 auto": ev["f1_auto"]}
        row.update({v: ev["variants"][v]["f1"] for v in variants if v in ev["variants"]})
        row.update({f"s/mic tta={t}": ev["seconds_per_micrograph"][t] for t in TTAS if t in ev["seconds_per_micrograph"]})
        tr = ev.get("training") or {}
        row.update({"epochs": tr.get("epochs_run"), "best epoch": tr.get("best_epoch"),
                    "train s": tr.get("train_seconds"), "val F1": tr.get("best_val_f1")})
        pool = ev.get("unlabelled_pool") or {}
        if pool.get("n_micrographs"):
            row.update({"pool": pool["n_micrographs"], "pseudo": pool["n_pseudo_labels"],
                        "val F1 per stage": "/".join(f"{f:.3f}" for f in pool["stage_validation_f1"] if f is not None),
                        "shipped": pool["shipped"]})
        rows.append(row)
    print_table(rows)
    summary = {}
    for name, ev in results.items():
        summary[f"{name} F1 before"] = ev["f1_before"]
        summary[f"{name} F1 chosen"] = ev["f1_chosen"]
    for key, label in [("s1/tta=none", "before"), ("chosen", "chosen"), ("auto", "auto method choice"), ("s1/tta=flips", "s1 flips"),
                       ("peaks/tta=none", "peaks"), ("s1/tta=d4", "s1 d4")]:
        vals = [ev[f"f1_{key}"] if key in ("chosen", "auto") else (ev["variants"].get(key) or {}).get("f1")
                for ev in results.values()]
        vals = [v for v in vals if v is not None]
        summary[f"mean F1 {label}"] = round(float(np.mean(vals)), 4) if len(vals) == len(results) and vals else None
    print("  ".join(f"{k}: {v}" for k, v in summary.items() if k.startswith("mean")), flush=True)
    speeds = None
    model = cache / "empiar10017" / "model"
    if (3 if args.speed_n is None else args.speed_n) > 0 and (model / "card.json").is_file():
        import tempfile

        jpgs = sorted((Path(args.data) / "micrographs").glob("*.jpg"))[5:]
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            speeds = tta_speed(model, jpgs, 3 if args.speed_n is None else args.speed_n, Path(tmp), args.threads)
        for tta, r in speeds.items():
            summary[f"picking mic/s tta={tta}"] = r["micrographs_per_second"]
    write_result(args.out, "fewshot_loo", args.quick, summary, proteins=results, speed=speeds,
                 settings={"threads": args.threads, "seed": args.seed, "epochs": args.epochs, "n_test": args.n_test,
                           "init": args.init, "unlabelled": args.unlabelled,
                           "self_training_init": args.self_training_init, "ignore_margin": args.ignore_margin,
                           "template_prior": args.template_prior, "cache": str(cache),
                           "pretrained_weights": args.pretrained_weights, "target_diameter": args.target_diameter,
                           "backbone_kwargs": args.backbone_kwargs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
