"""The template lead (issue 24): a template from the prompt and the confirmed positives, its local NCC at
each candidate as a filter of the picks, at K = 0, 5, 10 answers per class.

On the sets that ``bench_answers3d.py`` prepared (its cache; same options), the answer loop runs as there
(``unguarded`` and ``guarded``: :func:`~cryopick.picker3d.fallback.adapt_or_keep` with its defaults). At each
K the picks of B are those of the picker in use: the candidates the adapted classifier keeps (thinned by
NMS), or the settings' picks (segmentation + cluster_picks, as pick3d) where a class is not adapted; F1 on
B one-to-one within one radius. "+ template": the picks whose NCC with the template
(:func:`~cryopick.picker3d.template_lead.average_template` of the prompt and the yes-answered particles of
A, :func:`~cryopick.picker3d.template_lead.template_scores`) is below a threshold are dropped. The
threshold: at K = 0 (nothing but the prompt) ``--k0-threshold`` (and, for the settings' picks, fixed
thresholds 0-0.3 and a two-group split of the picks' NCC); with
answers, the NCC threshold that maximises F1 of the picker's decisions on the answered candidates of A
(no threshold when none beats keeping all; each answered particle of A scored with the template left
without it); "tmg": that threshold only where its gain on the answers
exceeds the binomial noise of their F1. Also the AUC of the NCC among B's candidates (the prompt's
template; and at each K the template of the prompt and the yes answers).

Usage (after bench_answers3d.py --prepare-only with the same options)::

    python benchmarks/bench_template_lead.py --classes 6 --shape 96,128,128 --particles 60 --sets 5 \\
        --sparse 3 --small-half --small-grid --out benchmarks/results/answers3d/template_sparse.json
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

from _bench import add_common_args, write_result  # noqa: E402
from bench_answers3d import ROUND, cache_folder, f1_of, load_pools, simulated_answers  # noqa: E402

KS = (0, 5, 10)


def auc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def kept_coords(pool, keep, score, min_distance) -> np.ndarray:
    """The kept candidates of ``pool``, thinned by NMS on ``score`` (what AdaptedModel.pick keeps)."""
    from cryopick.postprocess.nms import nms_points

    coords, score = pool.coords[keep], score[keep]
    return coords[nms_points(coords, score, min_distance)] if len(coords) else coords.reshape(-1, 3)


def f1_labelled(keep: np.ndarray, y: np.ndarray) -> float:
    tp = int((keep & (y == 1)).sum())
    return 2 * tp / max(1, int(keep.sum()) + int((y == 1).sum()))


def loo_scores(volume, coords, prompt_xyz, yes, d, step) -> np.ndarray:
    """NCC at each labelled position of A with the template left without the particle it sits on (the
    prompt or a yes within one radius): a template scores its own members too well. NaN where nothing is
    left."""
    from cryopick.picker3d.template_lead import average_template, template_scores

    members = np.concatenate([np.asarray(prompt_xyz, float).reshape(1, 3), np.asarray(yes, float).reshape(-1, 3)])
    dist = np.linalg.norm(np.asarray(coords, float)[:, None] - members[None], axis=2)
    which = np.where(dist.min(1) <= d / 2, dist.argmin(1), -1)
    out = np.full(len(coords), np.nan)
    for m in np.unique(which):
        rest = members if m < 0 else np.delete(members, m, axis=0)
        if not len(rest):
            continue
        tpl = average_template(volume, rest[0], rest[1:], d, rotation_step=step)
        out[which == m] = template_scores(volume, np.asarray(coords)[which == m], tpl, d, rotation_step=step)
    return out


def best_threshold(s: np.ndarray, decide: np.ndarray, y: np.ndarray) -> float:
    """NCC threshold maximising F1 of ``decide & (s >= t)`` on labelled candidates (NaN scores: kept);
    -inf when none beats all."""
    s = np.where(np.isnan(s), np.inf, s)
    best_t, best = -np.inf, f1_labelled(decide, y)
    for t in np.sort(s[decide & np.isfinite(s)]):
        v = f1_labelled(decide & (s >= t), y)
        if v > best + 1e-9:
            best_t, best = float(t), v
    return best_t


def otsu(s: np.ndarray) -> float:
    """The split of ``s`` into two groups with the largest between-group variance (-inf: fewer than 4)."""
    v = np.sort(np.asarray(s, float))
    if len(v) < 4:
        return -np.inf
    best, t = -1.0, -np.inf
    for i in range(1, len(v)):
        a, b = v[:i], v[i:]
        between = len(a) * len(b) * (a.mean() - b.mean()) ** 2
        if between > best:
            best, t = between, float(v[i])
    return t


def defaults_on_b(session, prompts, data, voxel_size, model) -> dict:
    """Each class's picks of tomogram B with the settings (segmentation + cluster_picks, as pick3d)."""
    from cryopick.io.images import Image
    from cryopick.picker3d.similarity import PromptSimilarity
    from cryopick.postprocess.cluster3d import cluster_picks

    session.picker.set_tomogram(Image(data["vol_b"], voxel_size, Path("b.mrc")))
    work = session.picker.working(prompts[0])
    prob, z = session.picker.segment(prompts, [0] * len(prompts))
    out = {}
    for k, (p, s) in enumerate(zip(prompts, session.settings)):
        lo, hi = s.size_limits(p.diameter)
        c, _ = cluster_picks(prob[k], threshold=s.threshold, min_size=lo, max_size=hi, min_distance=p.diameter / 2,
                             similarity=PromptSimilarity(model, work.volume, z[k]), min_similarity=s.min_similarity)
        out[p.label] = np.asarray(c, float).reshape(-1, 3)
    return out


def run_set(folder: Path, model, args) -> list[dict]:
    from cryopick.io.images import Image
    from cryopick.picker3d.answers import Answers, reference_code
    from cryopick.picker3d.fallback import P_MAX, particle_groups, unadapted_decisions
    from cryopick.picker3d.prompt import load_prompt
    from cryopick.picker3d.questions import AnswerSession
    from cryopick.picker3d.sweep import f1_noise
    from cryopick.picker3d.template_lead import average_template, template_scores

    done = json.loads((folder / "done.json").read_text())
    prompts = [load_prompt(p) for p in sorted(folder.glob("*.prompt"))]
    with np.load(folder / "data.npz", allow_pickle=False) as data:
        data = {k: data[k] for k in data.files}
    pools_b = load_pools(folder / "pools_b.npz")
    diam = {p.label: p.diameter for p in prompts}
    truth_b = {p.label: data["truth_b"][data["names_b"] == p.label] for p in prompts}
    session = AnswerSession(prompts, model, progress=False)
    name_a = session.add_tomogram(Image(data["vol_a"], done["voxel_size"], Path(f"{prompts[0].tomogram}.mrc")),
                                  pools=load_pools(folder / "pools_a.npz"))
    n_a = {r["class"]: r["n_A"] for r in done["rows"]}
    rows = {p.label: {"set": folder.name, "class": p.label, "diameter_px": round(p.diameter, 1), "n_A": n_a[p.label],
                      "n_B": len(truth_b[p.label])} for p in prompts}
    for k, p in enumerate(prompts):  # AUC of the prompt-only template among B's candidates (K = 0)
        pool, d = pools_b[p.label], p.diameter
        y = (np.linalg.norm(pool.coords[:, None] - truth_b[p.label][None], axis=2).min(1) <= d / 2).astype(int)
        tpl = average_template(data["vol_a"], p.positions[0], np.zeros((0, 3)), d, rotation_step=args.rotation_step)
        rows[p.label]["auc_ncc_prompt"] = auc(template_scores(data["vol_b"], pool.coords, tpl, d,
                                                              rotation_step=args.rotation_step), y)
        rows[p.label]["auc_p_max"] = auc(pool.base[:, P_MAX], y)
    default_picks = defaults_on_b(session, prompts, data, done["voxel_size"], model)
    for p in prompts:  # the settings' picks of B (as pick3d without answers) with and without the template filter
        d, r = p.diameter, rows[p.label]
        c = default_picks[p.label]
        tpl = average_template(data["vol_a"], p.positions[0], np.zeros((0, 3)), d, rotation_step=args.rotation_step)
        s_c = template_scores(data["vol_b"], c, tpl, d, rotation_step=args.rotation_step)
        r["default"] = f1_of(c, truth_b[p.label], d)
        for t in (0.0, 0.1, 0.2, 0.3):
            r[f"default_tm{t:g}"] = f1_of(c[s_c >= t], truth_b[p.label], d)
        r["default_tm_otsu"] = f1_of(c[s_c >= otsu(s_c)], truth_b[p.label], d)
    for tag, guard in (("unguarded", False), ("guarded", True)):
        session.guard = guard
        answers = Answers()
        for K in KS:
            while len(answers) // max(1, len(prompts)) < K:
                q = session.ask(ROUND, answers, tomogram=name_a, seed=args.seed)
                if not len(q):
                    break
                simulated_answers(q, data["truth_a"], data["names_a"], diam)
                answers = answers.concat(q)
            adapted = session.adapt(answers)
            for j, p in enumerate(prompts):
                am, pool, d, s = adapted[p.label], pools_b[p.label], p.diameter, session.settings[j]
                if am.fitted:
                    score = am.predict(pool)
                    coords = kept_coords(pool, score >= am.threshold, score, am.min_distance)
                else:  # the settings, as pick3d --answers picks a class that falls back
                    ref = reference_code(model, p, None, session._codes[p.label])
                    coords = default_picks[p.label]
                r = rows[p.label]
                r[f"{tag}_K{K}"] = f1_of(coords, truth_b[p.label], d)
                # the template: the prompt and the distinct yes-answered particles of A
                sets, y = session.labelled(answers, j)
                lab = sets[0]
                yes = lab.coords[y == 1]
                yes = yes[np.linalg.norm(yes - p.positions[0], axis=1) > d / 2] if len(yes) else yes
                if len(yes) > 1:  # one per particle
                    g = particle_groups(yes, d)
                    yes = yes[np.unique(g, return_index=True)[1]]
                t0 = time.perf_counter()
                tpl = average_template(data["vol_a"], p.positions[0], yes, d, rotation_step=args.rotation_step)
                s_b = template_scores(data["vol_b"], coords, tpl, d, rotation_step=args.rotation_step)
                if K == 0:
                    t = args.k0_threshold
                else:
                    s_a = loo_scores(data["vol_a"], lab.coords, p.positions[0], yes, d, args.rotation_step)
                    if am.fitted:
                        dec_a = am.predict(lab) >= am.threshold
                    else:
                        dec_a = unadapted_decisions(am, lab, s.threshold, s.min_similarity, ref)
                    t = best_threshold(s_a, dec_a, y)
                    # guarded: the filter only where it beats no filter on the answers by more than the noise
                    kept_a = dec_a & (np.isnan(s_a) | (s_a >= t))
                    gain = f1_labelled(kept_a, y) - f1_labelled(dec_a, y)
                    r[f"{tag}_tmg_K{K}"] = f1_of(coords[s_b >= t] if gain > f1_noise(
                        f1_labelled(kept_a, y), int((y == 1).sum())) else coords, truth_b[p.label], d)
                    all_b = template_scores(data["vol_b"], pool.coords, tpl, d, rotation_step=args.rotation_step)
                    y_b = (np.linalg.norm(pool.coords[:, None] - truth_b[p.label][None], axis=2).min(1) <= d / 2)
                    r[f"{tag}_auc_ncc_K{K}"] = auc(all_b, y_b.astype(int))
                r[f"{tag}_tm_K{K}"] = f1_of(coords[s_b >= t], truth_b[p.label], d)
                r[f"{tag}_tm_threshold_K{K}"] = t
                r[f"{tag}_tm_n_yes_K{K}"] = len(yes)
                r[f"{tag}_tm_seconds_K{K}"] = round(time.perf_counter() - t0, 1)
            print(f"{folder.name} {tag} K={K}: mean F1 on B {np.mean([r[f'{tag}_K{K}'] for r in rows.values()]):.3f}, "
                  f"+ template {np.mean([r[f'{tag}_tm_K{K}'] for r in rows.values()]):.3f}", flush=True)
    return list(rows.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser, "benchmarks/results/answers3d/template.json")
    for a, t, d in (("--sets", int, 5), ("--classes", int, 6), ("--shape", str, "96,128,128"), ("--particles", int, 60),
                    ("--sparse", int, 0), ("--first-set", int, 0), ("--threads", int, 1), ("--seed", int, 0),
                    ("--rotation-step", float, 45.0), ("--k0-threshold", float, 0.0)):
        parser.add_argument(a, type=t, default=d)
    parser.add_argument("--cache", default="benchmarks/results/answers3d/cache")
    parser.add_argument("--small-grid", action="store_true")
    parser.add_argument("--small-half", action="store_true")
    args = parser.parse_args()
    args.shape = tuple(int(v) for v in args.shape.split(","))
    import torch

    from cryopick.models.promptable3d import load_propicker

    torch.set_num_threads(args.threads)
    model = load_propicker(None)
    t0 = time.time()
    rows = []
    for s in range(args.first_set, args.first_set + args.sets):
        folder = cache_folder(s, args)
        if (folder / "done.json").is_file():
            rows += run_set(folder, model, args)
    methods = ["default", "default_tm0", "default_tm0.1", "default_tm0.2", "default_tm0.3", "default_tm_otsu"] + [
        f"{g}{tm}_K{K}" for g in ("unguarded", "guarded") for tm in ("", "_tm") for K in KS] + [
        f"{g}_{m}_K{K}" for g in ("unguarded", "guarded") for m in ("tmg", "auc_ncc") for K in KS[1:]]
    small = [r for r in rows if 10 <= r["diameter_px"] <= 15]
    summary = {"n_classes": len(rows), "n_small": len(small), "wall_s": time.time() - t0}
    for m in methods + ["auc_ncc_prompt", "auc_p_max"]:
        summary[f"mean_{m}"] = float(np.nanmean([r[m] for r in rows]))
        summary[f"small_mean_{m}"] = float(np.nanmean([r[m] for r in small])) if small else None
    write_result(args.out, "template_lead", False, summary, rows=rows, args=vars(args))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
