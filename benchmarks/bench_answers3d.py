"""The 3D answer loop: F1 on unseen classes after 1 prompt + K yes/no answers (cryopick issue 14).

On the project simulator's never-trained classes (the generalisation sets of ``bench_propicker.py``:
class seed 300000+, tomograms A and B per set), every class is prompted with one instance in tomogram
A (all classes of a set in one pass, as ``pick3d`` with several prompts). A simulated user answers the
questions of :class:`cryopick.picker3d.questions.AnswerSession` from the truth (yes; the other class's
label when the candidate is another particle; no for background), in rounds of 5 per class, up to
K = 0, 5, 10, 20; the adapted models are then applied to tomogram B without more answers (a class
without both a yes and a no is picked with the default settings, as ``pick3d --answers`` does). Per K: mean
F1 on B over classes (one-to-one within one radius). Compared with the model's default settings and
with settings calibrated on A (best-case sweep incl. minimum similarity, applied to B). Also the
seconds per answer round (adapt + choose, all classes of the set, candidates encoded already).

The expensive part (simulation, segmentation of A and B, encoding every candidate) is cached per set
under ``benchmarks/results/answers3d/cache/`` (``--no-cache`` recomputes): reruns that change only the
adaptation take seconds per set.

``--sparse N`` (issue 24): tomogram A, where the prompts are cut, the user answers and the calibration is
made, holds exactly N particles of each class (B as in the dense set): calibration from N - 1 particles
(the prompt's own is left out) and answers where the class is rare. ``--small-half``: half the classes
10-15 voxels. Calibration is scored for several rules (best on A, the previous shrink rule,
:func:`~cryopick.picker3d.sweep.choose_settings` with each of ``_calibration_rules.NOISE_FACTORS``), all looked up in B's
sweep of the same grid. The answer loop runs once per arm of ``GUARDS`` (unguarded, the previous guard,
:func:`~cryopick.picker3d.fallback.adapt_or_keep` with its defaults and other minimum-positive / margin
choices), with the share of "likely" questions answered yes.

``--timing``: seconds per answer round on a synthetic 200×512×512 tomogram (one prompt, the real
segmentation and candidates; the round = adapt + choose the next questions, as ``cryopick ask3d``
after its first pass), plus the one-off first pass.

Usage::

    python benchmarks/bench_answers3d.py --quick      # 1 set of 6 classes, 96x192x192
    python benchmarks/bench_answers3d.py              # 3 sets of 8 classes, 128x256x256
    python benchmarks/bench_answers3d.py --timing     # seconds per round at 200x512x512
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench import add_common_args, print_table, write_result  # noqa: E402
from _calibration_rules import NOISE_FACTORS, calibration_rows  # noqa: E402
from bench_propicker import choose_prompt, make_set  # noqa: E402

KS = (0, 5, 10, 20)
#: --small-grid: a coarse calibration grid around the defaults (0.15, 0.05-3x, 0.8), ~40x fewer points
SMALL_GRID = {"thresholds": (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8), "min_factors": (0.0, 0.05, 0.2),
              "max_factors": (1.2, 3.0, np.inf), "min_similarities": (None, 0.5, 0.6, 0.7, 0.8, 0.9)}
ROUND = 5
#: answer guards compared: (name, guard, adapt_or_keep options); the previous rule: min 0 yes, margin 0, leave
#: one candidate out; the others leave one particle out
GUARDS = (("unguarded", False, {}), ("guarded_old", True, {"min_positives": 0, "margin_factor": 0.0, "by_particle": False}),
          ("guarded", True, {}), ("guarded_n2z0", True, {"min_positives": 2, "margin_factor": 0.0}),
          ("guarded_n3z0", True, {"min_positives": 3, "margin_factor": 0.0}),
          ("guarded_n2z1", True, {"min_positives": 2, "margin_factor": 1.0}),
          ("guarded_n4z1", True, {"min_positives": 4, "margin_factor": 1.0}),
          ("guarded_n3z2", True, {"min_positives": 3, "margin_factor": 2.0}))


def simulated_answers(questions, truth: np.ndarray, names: np.ndarray, diameters: dict) -> None:
    """Fill ``questions.table['answer']`` from the truth (voxels as stored = working here)."""
    out = []
    for _, q in questions.table.iterrows():
        d = np.linalg.norm(truth - np.array([q.x, q.y, q.z]), axis=1)
        j = int(np.argmin(d)) if len(d) else -1
        if j < 0 or d[j] > diameters[q.label] / 2:
            out.append("no")
        else:
            out.append("yes" if names[j] == q.label else str(names[j]))
    questions.table["answer"] = out


def f1_of(coords, truth, d) -> float:
    from cryopick.evaluate.matching import match_points

    return match_points(np.asarray(coords, float).reshape(-1, 3), truth, d / 2).f1


def make_mixed_set(set_index: int, n_classes: int, shape, n_particles: int, voxel_size: float = 10.0):
    """As ``bench_propicker.make_set``, but half of the classes 10-15 voxels (100-150 Å at 10 Å) and the
    other half 15.5-33 voxels (issue 24: half of the prompted classes small)."""
    from bench_propicker import CLASS_SEED
    from cryopick.simulate.shapes import random_particle_classes
    from cryopick.simulate.tomogram import simulate_tomogram

    n_small = n_classes - n_classes // 2
    classes = (random_particle_classes(n_small, seed=CLASS_SEED + set_index, voxel_size=voxel_size,
                                       diameter_range_A=(100.0, 150.0))
               + random_particle_classes(n_classes - n_small, seed=CLASS_SEED + 50_000 + set_index,
                                         voxel_size=voxel_size, diameter_range_A=(155.0, 330.0)))
    tomos = [simulate_tomogram(classes, shape=shape, voxel_size=voxel_size, seed=1000 * set_index + k,
                               n_particles=n_particles, name=f"set{set_index}_{'AB'[k]}") for k in range(2)]
    return classes, tomos


def cache_folder(s: int, args) -> Path:
    tag = f"{args.classes}c_{'x'.join(map(str, args.shape))}_{args.particles}p" + ("_smallgrid" if args.small_grid else "")
    tag += "_mixed" if args.small_half else ""
    return Path(args.cache) / (tag + (f"_sparse{args.sparse}" if args.sparse else "")) / f"set{s}"


# -- the cached first pass of one set -------------------------------------------------------------------------------
def prepare(s: int, model, args) -> Path:
    """Simulate set ``s``, segment A and B, find and encode the candidates, score defaults and
    calibration; everything under the returned folder (reused when there)."""
    from cryopick.io.images import Image
    from cryopick.picker3d.candidates import CandidateSet, component_table, find_candidates
    from cryopick.picker3d.prompt import Prompt, cut_prompt, save_prompt
    from cryopick.picker3d.questions import AnswerSession, _save_pools
    from cryopick.picker3d.settings import default_settings
    from cryopick.picker3d.similarity import PromptSimilarity
    from cryopick.picker3d.sweep import settings_from_best, sweep_cluster
    from cryopick.postprocess.cluster3d import cluster_picks

    folder = cache_folder(s, args)
    if (folder / "done.json").is_file() and not args.no_cache:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    classes, tomos = (make_mixed_set if args.small_half else make_set)(s, args.classes, args.shape, args.particles)
    if args.sparse:  # tomogram A holds exactly args.sparse particles of each class (B as in the dense set)
        from cryopick.simulate.tomogram import simulate_tomogram

        for j in range(50):  # the first layout where every class has a particle away from the borders (a prompt)
            tomos[0] = simulate_tomogram(classes, shape=args.shape, voxel_size=tomos[0].voxel_size,
                                         seed=1000 * s + 100 * j, counts=[args.sparse] * len(classes),
                                         name=f"set{s}_A")
            if all(choose_prompt(tomos[0], c.name, np.random.default_rng(0)) is not None for c in classes):
                break
    rng = np.random.default_rng(s)
    images = [Image(t.volume, t.voxel_size, Path(f"{t.name}.mrc")) for t in tomos]
    prompts = []
    for c in classes:
        counts = [int((t.picks.table["label"] == c.name).sum()) for t in tomos]
        pos = choose_prompt(tomos[0], c.name, rng)
        if counts[1] < args.min_instances or counts[0] < (2 if args.sparse else args.min_instances) or pos is None:
            continue
        d = c.diameter / tomos[0].voxel_size
        prompts.append(Prompt(cut_prompt(tomos[0].volume, pos)[None], np.asarray([pos]), images[0].name,
                              tomos[0].voxel_size, 1.0, d, c.name))
    for k, p in enumerate(prompts):
        save_prompt(p, folder / f"{k:02d}.prompt")
    session = AnswerSession(prompts, model, progress=False)
    name_a = session.add_tomogram(images[0])
    prob_a = session.frames[name_a][1]
    _save_pools(folder / "pools_a.npz", session.saved_pools(name_a), {})
    # tomogram B: one pass with the prompts' codes (as pick3d), its candidates as AdaptedModel.pick finds them
    session.picker.set_tomogram(images[1])
    work_b = session.picker.working(prompts[0])
    prob_b, z_b = session.picker.segment(prompts, [0] * len(prompts))
    pools_b = {}
    for k, p in enumerate(prompts):
        coords = find_candidates(prob_b[k], p.diameter, session.candidate_threshold[k])
        pools_b[p.label] = CandidateSet.at(model, work_b.volume, prob_b[k], coords, label=p.label,
                                           tomogram=images[1].name, diameter=p.diameter,
                                           threshold=session.candidate_threshold[k],
                                           table=component_table(prob_b[k], session.candidate_threshold[k]))
    _save_pools(folder / "pools_b.npz", pools_b, {})
    truth = [{p.label: t.picks.coords[(t.picks.table["label"] == p.label).to_numpy()] for p in prompts} for t in tomos]
    defaults = default_settings(model)
    grid = SMALL_GRID if args.small_grid else {}
    rows = {}
    for k, p in enumerate(prompts):
        d = p.diameter
        r = rows[p.label] = {"set": s, "class": p.label, "diameter_px": round(d, 1), "n_A": len(truth[0][p.label]),
                             "n_B": len(truth[1][p.label])}
        sim_b = PromptSimilarity(model, work_b.volume, z_b[k])
        # every grid point scored on B too: any rule that chooses settings on A is scored on B by a look-up
        sweep_cluster(prob_b[k], truth[1][p.label], d, similarity=sim_b, **grid).table.to_csv(
            folder / f"sweep_b_{k:02d}.csv", index=False)
        lo, hi = defaults.size_limits(d)
        c, _ = cluster_picks(prob_b[k], threshold=defaults.threshold, min_size=lo, max_size=hi, min_distance=d / 2,
                             similarity=sim_b, min_similarity=defaults.min_similarity)
        r["default"] = f1_of(c, truth[1][p.label], d)
        sim_a = PromptSimilarity(model, tomos[0].volume, z_b[k])  # same prompt code (refine 0)
        sweep = sweep_cluster(prob_a[k], truth[0][p.label], d, similarity=sim_a, ignore=p.positions, **grid)
        sweep.table.assign(cls=p.label, diameter_px=d).to_csv(folder / f"sweep_a_{k:02d}.csv", index=False)
        best = settings_from_best(sweep.best)
        r["calibrated_settings"] = best
        lo, hi = defaults.__class__(**{**defaults.__dict__, **best}).size_limits(d)
        c, _ = cluster_picks(prob_b[k], threshold=best["threshold"], min_size=lo, max_size=hi, min_distance=d / 2,
                             similarity=sim_b, min_similarity=best["min_similarity"])
        r["calibrated"] = f1_of(c, truth[1][p.label], d)
    np.savez_compressed(folder / "data.npz", vol_a=tomos[0].volume.astype(np.float32),
                        vol_b=tomos[1].volume.astype(np.float32),
                        truth_a=tomos[0].picks.coords, names_a=tomos[0].picks.table["label"].to_numpy().astype(str),
                        truth_b=tomos[1].picks.coords, names_b=tomos[1].picks.table["label"].to_numpy().astype(str))
    (folder / "done.json").write_text(json.dumps({"rows": list(rows.values()), "seconds": time.time() - t0,
                                                  "voxel_size": tomos[0].voxel_size}, default=float))
    print(f"set {s}: prepared in {time.time() - t0:.0f} s -> {folder}", flush=True)
    return folder


def load_pools(path: Path) -> dict:
    from cryopick.picker3d.candidates import CandidateSet

    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return {m["key"]: CandidateSet(m["label"], m["tomogram"], *(np.asarray(data[f"{i}_{k}"]) for k in
                ("coords", "base", "embedding", "prototypes")), m["diameter"]) for i, m in enumerate(meta)}


def pick_f1(am, pool, truth, d) -> float:
    """F1 of what :meth:`AdaptedModel.pick` keeps, on the cached candidates ``pool`` of a tomogram."""
    from cryopick.postprocess.nms import nms_points

    prob = am.predict(pool)
    keep = np.flatnonzero(prob >= am.threshold)
    coords, prob = pool.coords[keep], prob[keep]
    if len(coords):
        coords = coords[nms_points(coords, prob, am.min_distance)]
    return f1_of(coords, truth, d)


# -- the answer loop on a prepared set ------------------------------------------------------------------------------
def run_set(folder: Path, model, args) -> tuple[list[dict], list[float]]:
    from cryopick.io.images import Image
    from cryopick.picker3d.answers import Answers, adapt
    from cryopick.picker3d.prompt import load_prompt
    from cryopick.picker3d.questions import AnswerSession

    done = json.loads((folder / "done.json").read_text())
    prompts = [load_prompt(p) for p in sorted(folder.glob("*.prompt"))]
    with np.load(folder / "data.npz", allow_pickle=False) as data:
        data = {k: data[k] for k in data.files}
    pools_b = load_pools(folder / "pools_b.npz")
    rows = {r["class"]: {k: v for k, v in r.items() if k != "calibrated_settings"} for r in done["rows"]}
    diam = {p.label: p.diameter for p in prompts}
    truth_b = {p.label: data["truth_b"][data["names_b"] == p.label] for p in prompts}
    session = AnswerSession(prompts, model, progress=False)
    image_a = Image(data["vol_a"], done["voxel_size"], Path(f"{prompts[0].tomogram}.mrc"))
    name_a = session.add_tomogram(image_a, pools=load_pools(folder / "pools_a.npz"))
    # calibrate3d's classifier: every candidate of A labelled by the truth (picks B like pick3d --adapted)
    for p in prompts:
        pool_a, d = session.pools[(name_a, p.label)], p.diameter
        t = data["truth_a"][data["names_a"] == p.label]
        y = (np.linalg.norm(pool_a.coords[:, None] - t[None], axis=2).min(1) <= d / 2).astype(int)
        am = adapt(model, p, pool_a, pool_a, y, candidate_threshold=session.candidate_threshold[0])
        rows[p.label]["calibrated_classifier"] = pick_f1(am, pools_b[p.label], truth_b[p.label], d)
    calibration_rows(folder, prompts, rows, model)
    seconds = []
    for tag, guard, options in GUARDS:
        session.guard, session.guard_options = guard, options
        answers, likely = Answers(), []
        for K in KS:
            while (len(answers) // max(1, len(prompts))) < K:
                t0 = time.perf_counter()
                q = session.ask(ROUND, answers, tomogram=name_a, seed=args.seed)
                seconds.append(time.perf_counter() - t0)
                if not len(q):
                    break
                simulated_answers(q, data["truth_a"], data["names_a"], diam)
                # the first round(0.4 * ROUND) questions of each class are its most likely candidates
                n_top = int(round(0.4 * ROUND))
                likely += [a == "yes" for _, g in q.table.groupby("label", sort=False) for a in g["answer"][:n_top]]
                answers = answers.concat(q)
            adapted = session.adapt(answers)
            for p in prompts:
                am, pool, r = adapted[p.label], pools_b[p.label], rows[p.label]
                if am.fitted:
                    r[f"{tag}_K{K}"] = pick_f1(am, pool, truth_b[p.label], p.diameter)
                else:  # no yes and no no yet, or the answers fell back: pick3d --answers uses the settings
                    r[f"{tag}_K{K}"] = r["default"]
                r[f"{tag}_picker_K{K}"] = am.info.get("expected", {}).get("picker", "settings")
                r[f"{tag}_expected_f1_K{K}"] = am.info.get("expected", {}).get("f1")
            yes = answers.table["answer"].eq("yes").sum()
            print(f"{folder.name} {tag} K={K}: {len(answers)} answers ({yes} yes; likely questions "
                  f"{sum(likely)}/{len(likely)} yes), mean F1 on B "
                  f"{np.mean([r[f'{tag}_K{K}'] for r in rows.values()]):.3f}", flush=True)
            for r in rows.values():
                r[f"{tag}_likely_yes_K{K}"] = f"{sum(likely)}/{len(likely)}"
    return list(rows.values()), seconds


# -- the recommended settings for small particles -------------------------------------------------------------------
def defaults_check(folders, model) -> dict:
    """Mean F1 on A (sweep tables of the cached sets) of the model's recommended setting against the
    single grid point best for the 10-15-voxel classes, that point chosen on the other sets (leave one
    set out) so that the gain is not the choice's own luck."""

    from cryopick.picker3d.settings import default_settings

    tables = [pd.read_csv(f).assign(set=folder.name) for folder in folders for f in sorted(folder.glob("sweep_a_*.csv"))]
    if not tables:
        return {}
    grid = ["threshold", "min_factor", "max_factor", "min_similarity"]
    t = pd.concat(tables, ignore_index=True)
    t[grid] = t[grid].fillna(np.inf).round(3)
    d = default_settings(model)
    now = (round(d.threshold, 3), round(d.min_factor, 3), np.inf if d.max_factor is None else round(d.max_factor, 3),
           np.inf if d.min_similarity is None else round(d.min_similarity, 3))
    out = {}
    for name, sub in (("all", t), ("small", t[(t["diameter_px"] >= 10) & (t["diameter_px"] <= 15)])):
        if sub.empty:
            continue
        mean = sub.groupby(grid)["f1"].mean()
        out[f"defaults_{name}_n_classes"] = int(sub.groupby(["set", "cls"]).ngroups)
        out[f"defaults_{name}_f1_now"] = float(mean.get(now, np.nan))
        out[f"defaults_{name}_best_setting"] = [float(v) for v in mean.idxmax()]
        out[f"defaults_{name}_f1_best_in_sample"] = float(mean.max())
        held = [float(sub[sub["set"] == s_].groupby(grid)["f1"].mean().get(
                sub[sub["set"] != s_].groupby(grid)["f1"].mean().idxmax(), np.nan)) for s_ in sub["set"].unique()
                if (sub["set"] != s_).any()]
        now_by_set = [float(sub[sub["set"] == s_].groupby(grid)["f1"].mean().get(now, np.nan))
                      for s_ in sub["set"].unique() if (sub["set"] != s_).any()]
        if held:
            out[f"defaults_{name}_f1_held_out"] = float(np.mean(held))
            out[f"defaults_{name}_f1_now_same_sets"] = float(np.mean(now_by_set))
    return out


# -- seconds per round at 200x512x512 -------------------------------------------------------------------------------
def timing(model, args) -> dict:
    """One prompt on a synthetic 200x512x512 tomogram: first pass (segment + candidates), then rounds
    of adapt + ask with simulated answers; seconds of each."""
    from cryopick.io.images import Image
    from cryopick.picker3d.answers import Answers
    from cryopick.picker3d.prompt import Prompt, cut_prompt
    from cryopick.picker3d.questions import AnswerSession
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    classes = random_particle_classes(4, seed=300_000, voxel_size=10.0, diameter_range_A=(100.0, 150.0))
    t0 = time.perf_counter()
    tomo = simulate_tomogram(classes, shape=(200, 512, 512), voxel_size=10.0, seed=7, n_particles=1500,
                             name="timing")
    t_sim = time.perf_counter() - t0
    c = classes[0]
    pos = choose_prompt(tomo, c.name, np.random.default_rng(0))
    d = c.diameter / tomo.voxel_size
    prompt = Prompt(cut_prompt(tomo.volume, pos)[None], np.asarray([pos]), "timing", 10.0, 1.0, d, c.name)
    session = AnswerSession([prompt], model, progress=False)
    t0 = time.perf_counter()
    name = session.add_tomogram(Image(tomo.volume, 10.0, Path("timing.mrc")))
    first = time.perf_counter() - t0
    answers, rounds = Answers(), []
    for _ in range(args.timing_rounds):
        t0 = time.perf_counter()
        q = session.ask(10, answers, tomogram=name)
        rounds.append(time.perf_counter() - t0)
        simulated_answers(q, tomo.picks.coords, tomo.picks.table["label"].to_numpy(), {c.name: d})
        answers = answers.concat(q)
    return {"timing_shape": "200x512x512", "timing_simulate_s": t_sim, "timing_first_pass_s": first,
            "timing_candidates": len(session.pools[(name, c.name)]), "timing_round_s": rounds,
            "timing_round_max_s": max(rounds), "timing_diameter_px": d}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, "benchmarks/results/answers3d/bench.json")
    parser.add_argument("--model", help="ProPicker checkpoint (default: shipped weights)")
    parser.add_argument("--sets", type=int, help="generalisation sets (default 3; --quick: 1)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--shape", default="128,256,256")
    parser.add_argument("--particles", type=int, default=300)
    parser.add_argument("--min-instances", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="question tie-breaking seed")
    parser.add_argument("--cache", default="benchmarks/results/answers3d/cache")
    parser.add_argument("--no-cache", action="store_true", help="recompute the cached first pass")
    parser.add_argument("--timing", action="store_true", help="only the 200x512x512 seconds-per-round timing")
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--sparse", type=int, default=0, metavar="N",
                        help="tomogram A (prompts, answers, calibration) holds about N particles of each class")
    parser.add_argument("--first-set", type=int, default=0)
    parser.add_argument("--small-grid", action="store_true", help="a coarse calibration grid (SMALL_GRID), for speed")
    parser.add_argument("--small-half", action="store_true",
                        help="half of the classes 10-15 voxels, the rest 15.5-33 (make_mixed_set)")
    parser.add_argument("--prepare-only", action="store_true", help="only fill the cache of the first passes")
    args = parser.parse_args()
    args.shape = tuple(int(v) for v in args.shape.split(","))
    args.sets_given, args.sets = args.sets is not None, 3 if args.sets is None else args.sets
    if args.quick:
        args.classes, args.shape, args.particles = 6, (96, 192, 192), 150
        args.sets = args.sets if args.sets_given else 1
    import torch

    from cryopick.models.promptable3d import load_propicker

    torch.set_num_threads(args.threads)
    model = load_propicker(args.model)
    t0 = time.time()
    if args.timing:
        summary = timing(model, args)
        summary.update({"threads": args.threads, "wall_s": time.time() - t0})
        write_result(args.out, "answers3d_timing", False, summary)
        print(json.dumps(summary, indent=1))
        return 0
    if args.prepare_only:
        for s in range(args.first_set, args.first_set + args.sets):
            prepare(s, model, args)
        return 0
    rows, seconds, folders = [], [], []
    for s in range(args.first_set, args.first_set + args.sets):
        folders.append(prepare(s, model, args))
        r, sec = run_set(folders[-1], model, args)
        rows += r
        seconds += sec
    print_table(rows)
    methods = (["default", "default_lookup", "calibrated", "calibrated_best", "calibrated_shrunk_old"]
               + ["calibrated_new" + ("" if z == NOISE_FACTORS[0] else f"_z{z:g}") for z in NOISE_FACTORS]
               + ["calibrated_classifier"] + [f"{g[0]}_K{K}" for g in GUARDS for K in KS])
    summary = {f"mean_f1_{m}": float(np.nanmean([r.get(m, np.nan) for r in rows])) for m in methods}
    small = [r for r in rows if 10 <= r["diameter_px"] <= 15]
    if small:
        summary.update({f"small_mean_f1_{m}": float(np.nanmean([r.get(m, np.nan) for r in small])) for m in methods})
        summary["small_n_classes"] = len(small)
    for m in methods[2:]:  # classes below the defaults by more than 0.02 (calibration: the same grid's defaults)
        ref = "default_lookup" if m.startswith("calibrated") and m != "calibrated_classifier" else "default"
        summary[f"n_below_default_{m}"] = int(sum(r.get(m, np.nan) < r[ref] - 0.02 for r in rows))
        summary[f"n_above_default_{m}"] = int(sum(r.get(m, np.nan) > r[ref] + 0.02 for r in rows))
    for tag, _, _ in GUARDS:
        for K in KS[1:]:
            per_set = {r["set"]: r.get(f"{tag}_likely_yes_K{K}", "0/0").split("/") for r in rows}  # one per set
            summary[f"likely_yes_{tag}_K{K}"] = (f"{sum(int(a) for a, _ in per_set.values())}/"
                                                  f"{sum(int(b) for _, b in per_set.values())}")
    summary.update({"n_classes": len(rows), "seconds_per_round_mean": float(np.mean(seconds)) if seconds else None,
                    "seconds_per_round_max": float(np.max(seconds)) if seconds else None,
                    "threads": args.threads, "wall_s": time.time() - t0})
    summary.update(defaults_check(folders, model))
    write_result(args.out, "answers3d", args.quick, summary, rows=rows, round_seconds=seconds,
                 args={k: v for k, v in vars(args).items()})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
