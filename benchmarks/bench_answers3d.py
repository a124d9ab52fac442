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
seconds per answer round (adapt + choose, all classes of the set, candidates encoded already) and an
estimate of the one-off cost of encoding one class's candidates in a 200x512x512 tomogram (the set's
candidates per voxel x the time per candidate, timed on 256 positions).

Usage::

    python benchmarks/bench_answers3d.py --quick      # 1 set of 6 classes, 96x192x192
    python benchmarks/bench_answers3d.py              # 3 sets of 8 classes, 128x256x256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench import add_common_args, print_table, write_result  # noqa: E402
from bench_propicker import choose_prompt, make_set  # noqa: E402

KS = (0, 5, 10, 20)
ROUND = 5


def simulated_answers(questions, tomo, diameters: dict) -> None:
    """Fill ``questions.table['answer']`` from the truth of ``tomo`` (voxels as stored = working here)."""
    truth = tomo.picks.coords
    names = tomo.picks.table["label"].to_numpy()
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


def run_set(s: int, model, args) -> tuple[list[dict], list[float]]:
    from cryopick.io.images import Image
    from cryopick.picker3d.answers import Answers
    from cryopick.picker3d.calibrate import settings_from_best, sweep_cluster
    from cryopick.picker3d.card import default_settings
    from cryopick.picker3d.prompt import Prompt, cut_prompt
    from cryopick.picker3d.questions import AnswerSession
    from cryopick.picker3d.similarity import PromptSimilarity
    from cryopick.postprocess.cluster3d import cluster_picks

    classes, tomos = make_set(s, args.classes, args.shape, args.particles)
    rng = np.random.default_rng(s)
    images = [Image(t.volume, t.voxel_size, Path(f"{t.name}.mrc")) for t in tomos]
    prompts, diam = [], {}
    for c in classes:
        counts = [int((t.picks.table["label"] == c.name).sum()) for t in tomos]
        pos = choose_prompt(tomos[0], c.name, rng)
        if min(counts) < args.min_instances or pos is None:
            continue
        d = c.diameter / tomos[0].voxel_size
        prompts.append(Prompt(cut_prompt(tomos[0].volume, pos)[None], np.asarray([pos]), images[0].name,
                              tomos[0].voxel_size, 1.0, d, c.name))
        diam[c.name] = d
    session = AnswerSession(prompts, model, progress=False)
    session.add_tomogram(images[0])
    prob_a = session.frames[images[0].name][1]
    # tomogram B: one segmentation pass with the prompts' codes (as pick3d)
    session.picker.set_tomogram(images[1])
    work_b = session.picker.working(prompts[0])
    prob_b, z_b = session.picker.segment(prompts, [0] * len(prompts))
    truth = [{p.label: t.picks.coords[(t.picks.table["label"] == p.label).to_numpy()] for p in prompts} for t in tomos]
    defaults = default_settings(model)
    rows = {p.label: {"set": s, "class": p.label, "diameter_px": round(p.diameter, 1),
                      "n_B": len(truth[1][p.label])} for p in prompts}
    for k, p in enumerate(prompts):
        d, r = p.diameter, rows[p.label]
        sim_b = PromptSimilarity(model, work_b.volume, z_b[k])
        lo, hi = defaults.size_limits(d)
        c, _ = cluster_picks(prob_b[k], threshold=defaults.threshold, min_size=lo, max_size=hi, min_distance=d / 2,
                             similarity=sim_b, min_similarity=defaults.min_similarity)
        r["default"] = f1_of(c, truth[1][p.label], d)
        sim_a = PromptSimilarity(model, tomos[0].volume, z_b[k])  # same prompt code (refine 0)
        best = settings_from_best(sweep_cluster(prob_a[k], truth[0][p.label], d, similarity=sim_a,
                                                ignore=p.positions).best)
        lo, hi = defaults.__class__(**{**defaults.__dict__, **best}).size_limits(d)
        c, _ = cluster_picks(prob_b[k], threshold=best["threshold"], min_size=lo, max_size=hi, min_distance=d / 2,
                             similarity=sim_b, min_similarity=best["min_similarity"])
        r["calibrated"] = f1_of(c, truth[1][p.label], d)
    answers, seconds = Answers(), []
    for K in KS:
        while (len(answers) // max(1, len(prompts))) < K:
            t0 = time.perf_counter()
            q = session.ask(ROUND, answers, tomogram=images[0].name, seed=s)
            seconds.append(time.perf_counter() - t0)
            if not len(q):
                break
            simulated_answers(q, tomos[0], diam)
            answers = answers.concat(q)
        adapted = session.adapt(answers)
        for k, p in enumerate(prompts):
            am = adapted[p.label]
            if am.fitted:
                coords, _ = am.pick(model, prob_b[k], work_b.volume, tomogram=images[1].name)
                rows[p.label][f"answered_K{K}"] = f1_of(coords, truth[1][p.label], p.diameter)
            else:  # no yes and no no yet: pick3d --answers picks this class with its settings
                rows[p.label][f"answered_K{K}"] = rows[p.label]["default"]
            rows[p.label][f"thr_K{K}"] = am.threshold
        yes = answers.table["answer"].eq("yes").sum()
        print(f"set {s} K={K}: {len(answers)} answers ({yes} yes), mean F1 on B "
              f"{np.mean([r[f'answered_K{K}'] for r in rows.values()]):.3f}", flush=True)
    n_cand = np.mean([len(session.pools[(images[0].name, p.label)]) for p in prompts])
    return list(rows.values()), seconds, n_cand / float(np.prod(args.shape))


def encode_time(model, density: float, shape=(200, 512, 512), sample: int = 256) -> dict:
    """Seconds to encode the candidates of one class expected in a ``shape`` tomogram (``density``:
    candidates per voxel and class), timed on ``sample`` positions."""
    from cryopick.picker3d.similarity import encode_positions

    n = int(round(density * np.prod(shape)))
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(64, 64, 64)).astype(np.float32)
    coords = rng.uniform(18, 46, size=(sample, 3))
    t0 = time.perf_counter()
    encode_positions(model, vol, coords)
    per = (time.perf_counter() - t0) / len(coords)
    return {"candidates_per_class_200x512x512": n, "encode_s_per_candidate": per,
            "encode_s_per_class_200x512x512": per * n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, "benchmarks/results/answers3d/bench.json")
    parser.add_argument("--model", help="ProPicker checkpoint (default: shipped weights)")
    parser.add_argument("--sets", type=int, default=3)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--shape", default="128,256,256")
    parser.add_argument("--particles", type=int, default=300)
    parser.add_argument("--min-instances", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.shape = tuple(int(v) for v in args.shape.split(","))
    if args.quick:
        args.sets, args.classes, args.shape, args.particles = 1, 6, (96, 192, 192), 150
    import torch

    from cryopick.models.promptable3d import load_propicker

    torch.set_num_threads(args.threads)
    model = load_propicker(args.model)
    rows, seconds, density = [], [], []
    t0 = time.time()
    for s in range(args.sets):
        r, sec, dens = run_set(s, model, args)
        rows += r
        seconds += sec
        density.append(dens)
    print_table(rows)
    summary = {f"mean_f1_{m}": float(np.mean([r[m] for r in rows])) for m in ("default", "calibrated")}
    summary.update({f"mean_f1_answered_K{K}": float(np.mean([r[f"answered_K{K}"] for r in rows])) for K in KS})
    small = [r for r in rows if 10 <= r["diameter_px"] <= 15]
    if small:
        summary.update({f"small_mean_f1_answered_K{K}": float(np.mean([r[f"answered_K{K}"] for r in small]))
                        for K in (0, 10)})
        summary["small_n_classes"] = len(small)
    summary.update({"n_classes": len(rows), "seconds_per_round_mean": float(np.mean(seconds)) if seconds else None,
                    "seconds_per_round_max": float(np.max(seconds)) if seconds else None,
                    "threads": args.threads, "wall_s": time.time() - t0})
    enc = encode_time(model, float(np.mean(density)))
    summary.update(enc)
    write_result(args.out, "answers3d", args.quick, summary, rows=rows, round_seconds=seconds,
                 args={k: v for k, v in vars(args).items()})
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
