"""Active learning in the app: does annotating the micrographs ``app.suggest.rank`` proposes reach a given F1
with fewer micrographs than annotating random ones?

One simulated "protein" (a procedural dihedral particle) imaged on a pool of micrographs, most of them
typical and some atypical/harder (low dose, thick ice with a strong gradient, far defocus, carbon edge
with aggregates and ice crystals, crowded), plus held-out test micrographs with the same mix. Every
strategy starts from the same annotated micrograph (a typical one) and adds one pool micrograph per round:

- ``suggest``: the app's loop — train, pick the whole pool (``pick_folder`` at the review threshold, as
  the app's Pick job), rank the pool's unannotated micrographs with :func:`cryopick.app.suggest.rank`
  (the code behind the Suggest button) and annotate the first;
- ``random-<seed>``: a random unannotated pool micrograph (several seeds).

Each round trains a fresh few-shot model (``train_from_files``, the code of ``cryopick train``; small,
quick settings: ``unet-small``, few epochs, one training seed for every run so that only the chosen
micrographs differ) and scores particle F1 on the held-out micrographs at the calibrated threshold
(one-to-one matching within one particle radius). A model trained on the whole pool gives the ceiling;
"micrographs to reach the target" is the first number of annotated micrographs whose F1 reaches
``--target`` x the ceiling.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_active_learning.py          # ~1 h on 2 loaded cores
    python benchmarks/bench_active_learning.py --quick          # 512² micrographs, 2 epochs, 2 rounds, 2 random seeds

Everything is cached under ``--cache`` (default ``benchmarks/results/active_learning/<quick|full>``):
rendered data, each trained model (keyed by its annotated set, so identical sets are trained once),
its test F1 and its pool picks; a rerun resumes. Results: ``--out`` JSON and a table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import add_common_args, print_table, write_result  # noqa: E402

PIXEL_SIZE = 4.0
DIAMETER_A = 180.0
TYPICAL = dict(dose=(25.0, 35.0), defocus_um=(1.2, 2.2), ice_gradient=(0.0, 0.3), crowding=0.3)
# Atypical/harder imaging conditions: (label, overrides of simulate_micrograph's arguments).
ATYPICAL = [
    ("lowdose", dict(dose=(6.0, 8.0))),
    ("thickice", dict(ice_gradient=(1.5, 2.0), ice_noise=2.5)),
    ("fardefocus", dict(defocus_um=(3.5, 4.5))),
    ("carbon", dict(carbon_edge=True, aggregates=4, ice_crystals=2)),
    ("crowded", dict(crowding=0.85, n_particles_factor=2.5)),
]


def _design(quick: bool) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(pool, test): (name, overrides) per micrograph. The first pool micrograph is the starting one."""
    n_typ_pool, n_typ_test = (4, 3) if quick else (6, 4)
    atyp = ATYPICAL[:3] if quick else ATYPICAL
    pool = [(f"pool_typical{i}", {}) for i in range(n_typ_pool)] + [(f"pool_{a}", o) for a, o in atyp]
    test = [(f"test_typical{i}", {}) for i in range(n_typ_test)] + [(f"test_{a}", o) for a, o in atyp]
    return pool, test


def render(cache: Path, size: int, quick: bool):
    """Micrographs (MRC) and truth (RELION STAR) of the pool and the test set, cached."""
    from cryopick.io.coords import read_picks, write_picks
    from cryopick.io.images import write_mrc
    from cryopick.picks import concat
    from cryopick.simulate.micrograph import simulate_micrograph
    from cryopick.simulate.shapes import procedural_class

    pool, test = _design(quick)
    folder = cache / "data"
    truth_file = folder / "truth.star"
    paths = {name: folder / f"{name}.mrc" for name, _ in pool + test}
    if not (truth_file.is_file() and all(p.is_file() for p in paths.values())):
        folder.mkdir(parents=True, exist_ok=True)
        cls = procedural_class("protein", "dihedral", DIAMETER_A, PIXEL_SIZE, 7)
        n_base = int(60 * (size / 768) ** 2)
        parts = []
        for i, (name, over) in enumerate(pool + test):
            kw = {**TYPICAL, **over}
            n = int(n_base * kw.pop("n_particles_factor", 1.0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = simulate_micrograph([cls], shape=(size, size), pixel_size=PIXEL_SIZE, seed=1000 + i, n_particles=n,
                                        name=name, **kw)
            write_mrc(paths[name], m.image.astype(np.float32), pixel_size=PIXEL_SIZE)
            parts.append(m.picks)
            print(f"rendered {name}: {len(m.picks)} particles", flush=True)
        write_picks(concat(parts), truth_file, format="relion")
    truth = read_picks(truth_file, format="relion")
    return [n for n, _ in pool], [n for n, _ in test], paths, truth


def _key(names) -> str:
    return hashlib.sha256("|".join(sorted(names)).encode()).hexdigest()[:12]


def train(names, paths, truth, diameter: float, cache: Path, args) -> Path:
    """A model trained on the annotated ``names`` (cached by the set)."""
    from cryopick.picker2d.train import TrainConfig, train_from_files

    model_dir = cache / "models" / _key(names)
    if (model_dir / "card.json").is_file():
        return model_dir
    shutil.rmtree(model_dir, ignore_errors=True)
    config = TrainConfig(backbone="unet-small", epochs=args.epochs, steps_per_epoch=args.steps, min_epochs=args.epochs,
                         patience=args.epochs, max_minutes=None, seed=0, num_threads=args.threads, progress=False)
    table = truth._with(truth.table[truth.table["micrograph"].isin(list(names))])
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_from_files([paths[n] for n in sorted(names)], table, diameter, model_dir, config=config, redo=True)
    (model_dir / "names.json").write_text(json.dumps({"names": sorted(names),
                                                      "seconds": round(time.perf_counter() - t0, 1)}))
    print(f"  trained on {len(names)} micrograph(s) in {time.perf_counter() - t0:.0f} s", flush=True)
    return model_dir


def test_f1(model_dir: Path, test_names, paths, truth, diameter: float, threads: int) -> dict:
    """Particle F1 on the held-out micrographs at the calibrated threshold (cached next to the model)."""
    from cryopick.evaluate.matching import match_points, precision_recall_f1
    from cryopick.picker2d.pick import Picker

    cached = model_dir / "test.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    picker = Picker(model_dir, num_threads=threads)
    tp = n_pred = n_truth = 0
    per = {}
    for name in test_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            picker.set_image(paths[name])
            picks = picker.predict()
        m = match_points(picks.coords, truth.for_micrograph(name).coords, diameter / 2)
        tp, n_pred, n_truth = tp + m.tp, n_pred + m.n_pred, n_truth + m.n_truth
        per[name] = round(precision_recall_f1(m.tp, m.n_pred, m.n_truth)[2], 4)
    p, r, f1 = precision_recall_f1(tp, n_pred, n_truth)
    out = {"f1": round(f1, 4), "precision": round(p, 4), "recall": round(r, 4), "per_micrograph": per}
    cached.write_text(json.dumps(out))
    return out


def suggest_next(model_dir: Path, pool, annotated, paths, threads: int) -> dict:
    """What the app's Suggest button proposes after its Pick job over the pool (cached next to the model)."""
    from cryopick.app.jobs import REVIEW_THRESHOLD
    from cryopick.app.suggest import rank
    from cryopick.io.resume import RunState
    from cryopick.picker2d.card import load_card
    from cryopick.picker2d.pick import pick_folder

    cached = model_dir / f"suggest-{_key(annotated)}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    picks_dir = model_dir / "pool_picks"
    if not (picks_dir / "summary.json").is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pick_folder(model_dir, [paths[n] for n in pool], picks_dir, threshold=REVIEW_THRESHOLD, overlays=0,
                        redo=True, progress=False, num_threads=threads)
    records = {r["micrograph"]: r["candidate_scores"] for r in RunState(picks_dir).records()
               if isinstance(r.get("candidate_scores"), list)}
    threshold = load_card(model_dir).score_threshold
    ranked = rank(records, threshold, set(annotated), excluded=set(annotated), top=len(pool))
    out = {"next": ranked[0]["name"], "ranking": ranked}
    cached.write_text(json.dumps(out))
    return out


def run_strategy(strategy: str, pool, test, paths, truth, diameter, cache: Path, args) -> list[dict]:
    annotated = [pool[0]]
    rng = np.random.default_rng(int(strategy.split("-")[1])) if strategy.startswith("random") else None
    rows = []
    for rnd in range(args.rounds + 1):
        model = train(annotated, paths, truth, diameter, cache, args)
        score = test_f1(model, test, paths, truth, diameter, args.threads)
        row = {"strategy": strategy, "n_annotated": len(annotated), "f1": score["f1"],
               "precision": score["precision"], "recall": score["recall"], "annotated": list(annotated)}
        rows.append(row)
        print(f"{strategy}: {len(annotated)} annotated -> test F1 {score['f1']:.3f} ({', '.join(annotated)})", flush=True)
        if rnd == args.rounds:
            break
        left = [n for n in pool if n not in annotated]
        if rng is not None:
            annotated = annotated + [left[int(rng.integers(len(left)))]]
        else:
            sug = suggest_next(model, pool, annotated, paths, args.threads)
            row["why"] = sug["ranking"][0]["reason"]
            annotated = annotated + [sug["next"]]
    return rows


def reach(rows: list[dict], target: float) -> int | None:
    for r in rows:
        if r["f1"] >= target:
            return r["n_annotated"]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, "benchmarks/results/active_learning.json")
    ap.add_argument("--cache", default=None, help="cache folder (default benchmarks/results/active_learning/<quick|full>)")
    ap.add_argument("--size", type=int, default=None, help="micrograph side, px (default 768; quick 512)")
    ap.add_argument("--rounds", type=int, default=None, help="micrographs added after the first (default 4; quick 2)")
    ap.add_argument("--seeds", type=int, default=None, help="random-order seeds (default 4; quick 2)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per training (default 6; quick 2)")
    ap.add_argument("--steps", type=int, default=30, help="steps per epoch (default 30)")
    ap.add_argument("--target", type=float, default=0.95, help="target F1 as a fraction of the ceiling (default 0.95)")
    ap.add_argument("--target-f1", type=float, default=None,
                    help="absolute target F1 instead (then the whole-pool ceiling is trained only with --ceiling)")
    ap.add_argument("--ceiling", action="store_true", help="train the whole-pool ceiling even with --target-f1")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--redo", action="store_true", help="start over (delete the cache)")
    args = ap.parse_args(argv)
    args.size = args.size or (512 if args.quick else 768)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.seeds = args.seeds or (2 if args.quick else 4)
    args.epochs = args.epochs or (2 if args.quick else 6)
    cache = Path(args.cache or f"benchmarks/results/active_learning/{'quick' if args.quick else 'full'}")
    if args.redo:
        shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    pool, test, paths, truth = render(cache, args.size, args.quick)
    diameter = DIAMETER_A / PIXEL_SIZE
    strategies = ["suggest"] + [f"random-{s}" for s in range(args.seeds)]
    rows = []
    for strategy in strategies:
        rows += run_strategy(strategy, pool, test, paths, truth, diameter, cache, args)
    ceiling = None
    if args.target_f1 is None or args.ceiling:
        ceiling_model = train(pool, paths, truth, diameter, cache, args)
        ceiling = test_f1(ceiling_model, test, paths, truth, diameter, args.threads)["f1"]
    target = round(args.target_f1 if args.target_f1 is not None else args.target * ceiling, 4)

    by = {s: [r for r in rows if r["strategy"] == s] for s in strategies}
    random_mean = [float(np.mean([by[s][i]["f1"] for s in strategies[1:]])) for i in range(args.rounds + 1)]
    table = [{"n_annotated": i + 1, "suggest": by["suggest"][i]["f1"], "random_mean": random_mean[i],
              **{s: by[s][i]["f1"] for s in strategies[1:]}} for i in range(args.rounds + 1)]
    print_table(table)
    needed = {s: reach(by[s], target) for s in strategies}
    random_needed = [needed[s] for s in strategies[1:]]
    print((f"ceiling (all {len(pool)} pool micrographs): F1 {ceiling:.3f}; " if ceiling is not None else "")
          + f"target {target:.3f}")
    print("micrographs to reach the target: " + ", ".join(f"{s} {needed[s] or '>' + str(args.rounds + 1)}"
                                                          for s in strategies))
    print("suggested order: " + " -> ".join(by["suggest"][-1]["annotated"]))
    summary = {"ceiling_f1": ceiling, "target_f1": target,
               "suggest_needed": needed["suggest"] or -1,
               "random_needed_mean": float(np.mean([n if n else args.rounds + 2 for n in random_needed])),
               "suggest_auc": round(float(np.mean([r["f1"] for r in by["suggest"]])), 4),
               "random_auc": round(float(np.mean(random_mean)), 4),
               "seconds": round(time.perf_counter() - t0, 1)}
    write_result(args.out, "active_learning", args.quick, summary, table=table, rows=rows, needed=needed,
                 settings={"size": args.size, "rounds": args.rounds, "seeds": args.seeds, "epochs": args.epochs,
                           "steps": args.steps, "pool": pool, "test": test, "diameter_px": diameter,
                           "target_fraction": args.target})
    return 0


if __name__ == "__main__":
    sys.exit(main())
