"""ProPicker benchmark: generalisation to unseen particle classes, speed, and template matching.

Measures, on simulated tomograms whose particle classes were never seen in training (class seed
300000+; training used the pool seed 1, validation seed 2):

1. *generalisation* — for every class of every test set: one prompt cut from tomogram A around one
   instance; segmentation of tomograms A and B (all classes in one pass, stride 32); best-case F1
   (threshold × min size × max size on the tomogram scored) on A and B; *fair* F1: the settings
   calibrated on A applied to B and those from B applied to A; F1 with the default settings
   (`cryopick.picker3d.settings.default_settings`: the threshold and size factors recommended with the weights,
   applied to the true diameter). A pick is correct within one radius of a true centre, one-to-one.
   The sweeps include the minimum prompt similarity (``--no-similarity``: without it; the summary
   also gives the best case without it); ``--refine N`` segments a second time with self-prompting.
2. *speed* — one prompt on a 200×512×512 tomogram at stride 32 (``--threads``), with the weights'
   default settings (``--refine`` as given), in a child process: wall time and peak resident memory.
3. *template matching* — on a 128-voxel-wide corner of tomogram B of the first set, for a few
   classes: exhaustive FFT template matching (the prompt as template, whole crop, angular step
   ``--tm-angle``) against ProPicker-C and ProPicker-TM (same template and angular step, inside the
   predicted mask); time and best-case F1 of each, on one core.

Usage::

    python benchmarks/bench_propicker.py                 # full (about 1 h on 2 busy cores)
    python benchmarks/bench_propicker.py --quick         # a few minutes
    python benchmarks/bench_propicker.py --model benchmarks/results/propicker/run1/best.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench import add_common_args, peak_rss_gb, print_table, write_result  # noqa: E402

CLASS_SEED = 300_000


def make_set(set_index: int, n_classes: int, shape, n_particles: int, voxel_size: float = 10.0):
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    classes = random_particle_classes(n_classes, seed=CLASS_SEED + set_index, voxel_size=voxel_size,
                                      diameter_range_A=(70.0, 330.0))
    tomos = [simulate_tomogram(classes, shape=shape, voxel_size=voxel_size, seed=1000 * set_index + k,
                               n_particles=n_particles, name=f"set{set_index}_{'AB'[k]}") for k in range(2)]
    return classes, tomos


def choose_prompt(tomo, label: str, rng: np.random.Generator) -> np.ndarray | None:
    """An instance of ``label`` away from the borders (x, y, z), or None."""
    t = tomo.picks.table
    coords = tomo.picks.coords[(t["label"] == label).to_numpy()]
    shape_xyz = np.asarray(tomo.volume.shape[::-1])
    ok = np.all((coords >= 18) & (coords <= shape_xyz - 19), axis=1)
    coords = coords[ok]
    return None if len(coords) == 0 else coords[int(rng.integers(len(coords)))]


def generalisation(model, args, quick: bool) -> tuple[list[dict], dict]:
    from dataclasses import replace

    import torch

    from cryopick.picker3d.pick import refined_code
    from cryopick.picker3d.predict import predict_tomogram
    from cryopick.picker3d.prompt import Prompt, cut_prompt, flipped_views
    from cryopick.picker3d.settings import default_settings
    from cryopick.picker3d.similarity import PromptSimilarity
    from cryopick.picker3d.sweep import score_points, settings_from_best, sweep_cluster
    from cryopick.postprocess.cluster3d import cluster_picks

    defaults = default_settings(model)
    rows = []
    cache = {}
    for s in range(args.first_set, args.first_set + args.sets):
        t0 = time.time()
        classes, tomos = make_set(s, args.classes, args.shape, args.particles)
        rng = np.random.default_rng(s)
        labels, prompts, diameters = [], [], []
        for c in classes:
            counts = [int((t.picks.table["label"] == c.name).sum()) for t in tomos]
            pos = choose_prompt(tomos[0], c.name, rng)
            if min(counts) < args.min_instances or pos is None:
                continue
            labels.append(c.name)
            prompts.append(cut_prompt(tomos[0].volume, pos))
            diameters.append(c.diameter / tomos[0].voxel_size)
        if not labels:
            continue
        z = torch.stack([model.combine(model.embed(flipped_views(p[None]) if args.prompt_flips else p[None]))
                         for p in prompts])
        probs = [predict_tomogram(model.segmenter, t.volume, z, stride=args.stride, progress=False) for t in tomos]
        codes = [z, z]  # per tomogram: the prompt codes its map was made with
        if args.refine:  # self-prompting, as pick_tomogram(refine=N) with the default settings
            codes = []
            for t, prob in zip(tomos, probs):
                prompts_k = [Prompt(p[None], np.zeros((1, 3)), "A", 10.0, 1.0, d, lab)
                             for p, d, lab in zip(prompts, diameters, labels)]
                codes.append(torch.stack([refined_code(model, t.volume, prob[k], pk, defaults, args.refine)
                                          for k, pk in enumerate(prompts_k)]))
            probs = [predict_tomogram(model.segmenter, t.volume, c, stride=args.stride, progress=False)
                     for t, c in zip(tomos, codes)]
        for k, (label, d) in enumerate(zip(labels, diameters)):
            truths = [t.picks.coords[(t.picks.table["label"] == label).to_numpy()] for t in tomos]
            sims = [PromptSimilarity(model, t.volume, c[k]) if args.similarity else None for t, c in zip(tomos, codes)]
            sweeps = [sweep_cluster(p[k], tr, d, similarity=sm) for p, tr, sm in zip(probs, truths, sims)]
            row = {"set": s, "class": label, "diameter_px": round(d, 1), "n_A": len(truths[0]), "n_B": len(truths[1]),
                   "best_A": sweeps[0].best["f1"], "best_B": sweeps[1].best["f1"]}
            if args.similarity:  # the same sweep restricted to no similarity check
                plain = [sw.table[sw.table["min_similarity"].isna()]["f1"].max() for sw in sweeps]
                row.update({"best_A_nosim": plain[0], "best_B_nosim": plain[1]})
            for src, dst, name in ((0, 1, "fair_A_to_B"), (1, 0, "fair_B_to_A")):
                b = settings_from_best(sweeps[src].best)
                lo, hi = replace(defaults, **b).size_limits(d)
                coords, _ = cluster_picks(probs[dst][k], threshold=b["threshold"], min_size=lo, max_size=hi,
                                          min_distance=d / 2, similarity=sims[dst], min_similarity=b["min_similarity"])
                row[name] = score_points(coords, truths[dst], d / 2)["f1"]
            lo, hi = defaults.size_limits(d)
            coords, _ = cluster_picks(probs[1][k], threshold=defaults.threshold, min_size=lo, max_size=hi,
                                      min_distance=d / 2, similarity=sims[1] or PromptSimilarity(model, tomos[1].volume, codes[1][k]),
                                      min_similarity=defaults.min_similarity)
            row["default_B"] = score_points(coords, truths[1], d / 2)["f1"]
            row["smin_A"] = sweeps[0].best.get("min_similarity", np.nan)
            row["thr_A"] = sweeps[0].best["threshold"]
            rows.append(row)
        print(f"set {s}: {len(labels)} classes, {time.time() - t0:.0f} s", flush=True)
        if not cache:
            cache = {"classes": classes, "tomos": tomos, "labels": labels, "prompts": prompts,
                     "diameters": diameters, "probs": probs}
    summary = {
        "mean_best_case_f1": float(np.mean([(r["best_A"] + r["best_B"]) / 2 for r in rows])),
        "mean_calibrated_f1": float(np.mean([(r["fair_A_to_B"] + r["fair_B_to_A"]) / 2 for r in rows])),
        "mean_default_settings_f1": float(np.mean([r["default_B"] for r in rows])),
        **({"mean_best_case_f1_without_similarity": float(np.mean([(r["best_A_nosim"] + r["best_B_nosim"]) / 2
                                                                    for r in rows]))} if args.similarity else {}),
        "n_classes": len(rows),
    }
    return rows, summary, cache


def speed_child(args) -> None:
    """Run in a child process: pick one prompt in the big tomogram, print JSON timing + peak memory."""
    import torch

    from cryopick.io.images import read_tomogram
    from cryopick.models.promptable3d import load_propicker
    from cryopick.picker3d.pick import pick_tomogram
    from cryopick.picker3d.prompt import Prompt, cut_prompt
    from cryopick.picker3d.settings import default_settings

    torch.set_num_threads(args.threads)
    meta = json.loads(Path(args.speed_child).with_suffix(".json").read_text())
    model = load_propicker(args.model)
    image = read_tomogram(args.speed_child)
    sub = cut_prompt(image.data, meta["prompt_xyz"])[None]
    prompt = Prompt(sub, np.asarray([meta["prompt_xyz"]]), image.name, image.pixel_size, 1.0, meta["diameter"],
                    "particle")
    import os
    import resource

    t0, r0, load0 = time.time(), resource.getrusage(resource.RUSAGE_SELF), os.getloadavg()[0]
    picks = pick_tomogram(image, [prompt], model, default_settings(model), stride=args.stride, progress=False,
                          refine=args.refine)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    # On a shared machine the wall time includes waiting for the cores; cpu_s / threads is the wall
    # time the same work takes on idle cores.
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "threads": args.threads, "idle_estimate_s": cpu / args.threads,
                      "load_before": load0, "load_after": os.getloadavg()[0], "n_picks": len(picks),
                      "peak_rss_gb": _vm_hwm_gb()}))


def _vm_hwm_gb() -> float:
    """Peak resident memory of this process since exec (getrusage's maximum survives exec on Linux,
    so a child forked from a big parent would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return peak_rss_gb()


def speed(args, quick: bool) -> dict:
    from cryopick.io.atomic import write_text
    from cryopick.io.images import write_mrc
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    shape = (100, 256, 256) if quick else (200, 512, 512)
    path = Path(args.cache) / f"speed_{'x'.join(map(str, shape))}.mrc"
    if not path.exists():
        classes = random_particle_classes(10, seed=CLASS_SEED + 99, voxel_size=10.0, diameter_range_A=(70.0, 330.0))
        n = int(np.prod(shape) / (128 * 256 * 256) * args.particles)
        tomo = simulate_tomogram(classes, shape=shape, voxel_size=10.0, seed=99, n_particles=n, name=path.stem)
        write_mrc(path, tomo.volume, pixel_size=10.0)
        first = tomo.picks.table.iloc[0]
        write_text(path.with_suffix(".json"), json.dumps({"prompt_xyz": [float(first.x), float(first.y), float(first.z)],
                                                          "diameter": float(first.diameter)}))
        del tomo
    cmd = [sys.executable, __file__, "--speed-child", str(path), "--threads", str(args.threads),
           "--stride", str(args.stride), "--refine", str(args.refine)] + (["--model", args.model] if args.model else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["shape"] = list(shape)
    return result


def tm_comparison(model, cache: dict, args, quick: bool) -> list[dict]:

    from cryopick.picker3d.predict import predict_tomogram
    from cryopick.picker3d.prompt import flipped_views
    from cryopick.picker3d.sweep import sweep_cluster, sweep_scores
    from cryopick.postprocess.propicker_tm import prompt_template, tm_in_mask, tm_pick

    tomo = cache["tomos"][1]
    # A 128-voxel-wide corner of the tomogram keeps the exhaustive search to minutes per class
    # (both methods run on the same crop; ProPicker's windows are reflected at its borders).
    volume = np.ascontiguousarray(tomo.volume[:, :128, :128])
    rows = []
    for k in range(min(args.tm_classes, len(cache["labels"]))):
        label, d, sub = cache["labels"][k], cache["diameters"][k], cache["prompts"][k]
        truth = tomo.picks.coords[(tomo.picks.table["label"] == label).to_numpy()]
        truth = truth[np.all(truth < np.asarray(volume.shape[::-1]), axis=1)]
        template = prompt_template(sub[None], d)
        t0 = time.time()
        coords, scores = tm_pick(volume, template, angle_step=args.tm_angle, min_distance=d / 2)
        t_tm = time.time() - t0
        f1_tm = sweep_scores(coords, scores, truth, d / 2).best["f1"]
        t0 = time.time()
        z = model.combine(model.embed(flipped_views(sub[None]) if args.prompt_flips else sub[None]))[None]
        prob = predict_tomogram(model.segmenter, volume, z, stride=args.stride, progress=False)[0]
        t_seg = time.time() - t0
        t0 = time.time()
        sw = sweep_cluster(prob, truth, d)
        b = sw.best
        t1 = time.time()
        from cryopick.postprocess.cluster3d import cluster_picks

        cluster_picks(prob, threshold=b["threshold"], min_size=b["min_size"], max_size=b["max_size"], min_distance=d / 2)
        t_cluster = time.time() - t1
        t0 = time.time()
        c2, s2 = tm_in_mask(volume, prob, sub[None], threshold=0.5, diameter=d, angle_step=args.tm_angle, min_score=None)
        t_ptm = time.time() - t0
        f1_ptm = sweep_scores(c2, s2, truth, d / 2).best["f1"]
        rows.append({"class": label, "n_true": len(truth), "tm_s": t_tm, "tm_f1": f1_tm,
                     "propicker_c_s": t_seg + t_cluster, "propicker_c_f1": b["f1"],
                     "propicker_tm_s": t_seg + t_ptm, "propicker_tm_f1": f1_ptm,
                     "speedup_c": t_tm / (t_seg + t_cluster), "speedup_tm": t_tm / (t_seg + t_ptm),
                     "shape": "x".join(map(str, volume.shape))})
        print_table([rows[-1]])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, "benchmarks/results/propicker/bench.json")
    parser.add_argument("--model", help="ProPicker checkpoint (default: shipped weights)")
    parser.add_argument("--sets", type=int, default=4, help="test class sets (2 tomograms each)")
    parser.add_argument("--first-set", type=int, default=0,
                        help="index of the first test set (split a run over processes: --first-set 2 --sets 2)")
    parser.add_argument("--classes", type=int, default=8, help="classes per set")
    parser.add_argument("--shape", default="128,256,256", help="test tomogram D,H,W")
    parser.add_argument("--particles", type=int, default=300, help="particles per test tomogram")
    parser.add_argument("--min-instances", type=int, default=5)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--tm-angle", type=float, default=30.0)
    parser.add_argument("--tm-classes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on this shared 2-core machine 2 threads are slower)")
    parser.add_argument("--no-prompt-flips", dest="prompt_flips", action="store_false",
                        help="encode the prompt as is (default: averaged over its 8 mirror views, as pick3d)")
    parser.add_argument("--no-similarity", dest="similarity", action="store_false",
                        help="sweep without the minimum prompt similarity (the post-processing before it existed)")
    parser.add_argument("--refine", type=int, default=0,
                        help="self-prompting: re-segment with the prompt plus this many first-pass picks")
    parser.add_argument("--skip", nargs="*", default=[], choices=["generalisation", "speed", "tm"])
    parser.add_argument("--cache", default="benchmarks/results/propicker/bench_cache")
    parser.add_argument("--speed-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.shape = tuple(int(s) for s in args.shape.split(","))
    if args.speed_child:
        speed_child(args)
        return 0
    import torch

    from cryopick.models.promptable3d import load_propicker

    torch.set_num_threads(args.threads)
    if args.quick:
        args.sets, args.classes, args.shape, args.particles, args.tm_classes = 1, 6, (96, 192, 192), 150, 1
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    model = load_propicker(args.model)
    t0 = time.time()
    rows, summary, cache = [], {}, {}
    if "generalisation" not in args.skip:
        rows, summary, cache = generalisation(model, args, args.quick)
        print_table(rows)
        summary["generalisation_s"] = time.time() - t0
    details = {"generalisation": rows, "model": args.model or "shipped", "model_meta": model.meta.get("train_config", {}),
               "args": {k: v for k, v in vars(args).items() if k != "speed_child"}}
    if "speed" not in args.skip:
        sp = speed(args, args.quick)
        summary.update({"speed_shape": "x".join(map(str, sp["shape"])), "speed_wall_s": sp["wall_s"],
                        "speed_cpu_s": sp["cpu_s"], "speed_idle_estimate_s": sp["idle_estimate_s"],
                        "speed_peak_rss_gb": sp["peak_rss_gb"]})
        details["speed"] = sp
    if "tm" not in args.skip and cache:
        tm_rows = tm_comparison(model, cache, args, args.quick)
        details["tm"] = tm_rows
        summary.update({"tm_exhaustive_f1": float(np.mean([r["tm_f1"] for r in tm_rows])),
                        "tm_propicker_c_f1": float(np.mean([r["propicker_c_f1"] for r in tm_rows])),
                        "tm_propicker_tm_f1": float(np.mean([r["propicker_tm_f1"] for r in tm_rows])),
                        "tm_speedup_c": float(np.mean([r["speedup_c"] for r in tm_rows])),
                        "tm_speedup_tm": float(np.mean([r["speedup_tm"] for r in tm_rows]))})
    write_result(args.out, "propicker", args.quick, summary, **details)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
