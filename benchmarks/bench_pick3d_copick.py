"""pick3d --copick: a simulated copick project picked with and without reading ahead (cryopick issue 16).

A filesystem copick project (built with the copick API) holds ``--runs`` runs, each a simulated
tomogram at 10 Å (``wbp``) with particles of a few classes. One instance of the first class in the
first run is picked by a "curator" (a copick pick set); the prompt is cut from it
(:func:`prompt_from_copick`). Then every run is picked with the shipped weights and the picks are
written back into the project, twice, in two sessions: ``prefetch=0`` (read, check and rescale each
tomogram in the picking loop) and ``prefetch=1`` (the next one in a background thread), in the order
0, 1, 0, 1 (each mode's best time kept, to spread the load of a shared machine). Reported: seconds per
run of each mode, the speed-up, the seconds per run of reading, checking and rescaling (the most
reading ahead can hide), whether the two sessions' copick picks agree (to 1e-6 Å), F1 of the
copick picks against the truth (Å, within one radius), and that a rerun skips every run and leaves
one pick set per run and session.

Usage::

    python benchmarks/bench_pick3d_copick.py --quick   # 4 runs of 64x128x128
    python benchmarks/bench_pick3d_copick.py           # 6 runs of 96x192x192
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _bench import add_common_args, print_table, write_result  # noqa: E402


def build_project(folder: Path, n_runs: int, shape, seed: int = 424242):
    import copick
    from copick.models import PickableObject

    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    classes = random_particle_classes(3, seed=seed, voxel_size=10.0, diameter_range_A=(150.0, 250.0))
    target = classes[0]
    root = copick.new_config(str(folder / "config.json"), str(folder / "overlay"),
                             pickable_objects=[PickableObject(name="target", is_particle=True, label=1,
                                                              radius=target.diameter / 2)])
    truths = {}
    for k in range(n_runs):
        name = f"TS_{k + 1:02d}"
        sim = simulate_tomogram(classes, shape=shape, voxel_size=10.0, seed=k, n_particles=int(np.prod(shape) / 40000),
                                snr=3.0, membranes=0, gold_beads=0, name=name)
        root.new_run(name).new_voxel_spacing(10.0).new_tomogram("wbp").from_numpy(sim.volume, levels=1)
        table = sim.picks.table
        truths[name] = table[table["label"] == target.name][["x", "y", "z"]].to_numpy(float) * 10.0  # Å
    first = truths["TS_01"][0]
    root.get_run("TS_01").new_picks("target", "1", "curator").from_numpy(first[None])
    return folder / "config.json", target, truths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "benchmarks/results/pick3d_copick.json")
    parser.add_argument("--runs", type=int, help="runs in the project (default 4 quick, 6 full)")
    parser.add_argument("--work", default="benchmarks/results/pick3d_copick_work", help="scratch folder")
    args = parser.parse_args()
    import copick

    from cryopick.evaluate.matching import match_points
    from cryopick.picker3d.copick_runs import pick_copick, prompt_from_copick

    n_runs = args.runs or (4 if args.quick else 6)
    shape = (64, 128, 128) if args.quick else (96, 192, 192)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    config, target, truths = build_project(work / "project", n_runs, shape)
    build_s = time.perf_counter() - t0
    prompt = prompt_from_copick(config, "TS_01", "target", user_id="curator", diameter_A=target.diameter)
    times = {0: [], 1: []}
    for prefetch in (0, 1, 0, 1):
        session = f"{10 + prefetch}{len(times[prefetch])}"
        t = time.perf_counter()
        summary = pick_copick(config, [prompt], session_id=session, output_dir=work / f"out_{session}",
                              formats=["relion5"], montage=False, progress=False, prefetch=prefetch)
        times[prefetch].append(time.perf_counter() - t)
        assert summary["n_picked_this_run"] == n_runs and not summary["failed"], summary
    root = copick.from_file(str(config))
    rows, agree, f1s = [], True, []
    for name, truth in truths.items():
        sets = {p.session_id: p for p in root.get_run(name).get_picks(object_name="target", user_id="cryopick")}
        a, b = (sets[s].numpy()[0] for s in ("100", "110"))
        a, b = (x[np.lexsort(x.T[::-1])] for x in (a, b))  # rows in one order, each point kept whole
        agree &= a.shape == b.shape and bool(np.allclose(a, b, atol=1e-6))
        f1 = match_points(a, truth, target.diameter / 2).f1
        f1s.append(f1)
        rows.append({"run": name, "truth": len(truth), "picks": len(a), "f1": f1})
    # Rerun of one session: every run skipped, still one pick set per run and session.
    again = pick_copick(config, [prompt], session_id="100", output_dir=work / "out_100", formats=["relion5"],
                        montage=False, progress=False)
    root = copick.from_file(str(config))
    one_set = all(len(root.get_run(n).get_picks(object_name="target", user_id="cryopick", session_id="100")) == 1
                  for n in truths)
    # What reading ahead can hide: reading, checking and rescaling one run's tomogram (the loop's own work).
    from cryopick.io import copick as C
    from cryopick.picker3d.prefetch import prepare_tomogram

    root_c = C.open_project(config)
    t = time.perf_counter()
    for source in C.find_tomograms(root_c, C.select_runs(root_c, None, config), 10.0, "wbp"):
        prepare_tomogram(source, prompt, ["relion5"])
    prepare_s = (time.perf_counter() - t) / n_runs
    best = {k: min(v) for k, v in times.items()}
    result = {"runs": n_runs, "shape": "x".join(map(str, shape)), "s_per_run_no_prefetch": best[0] / n_runs,
              "s_per_run_prefetch": best[1] / n_runs, "s_per_run_read_check_rescale": prepare_s, "speedup": best[0] / best[1], "sessions_agree": agree,
              "f1_mean": float(np.mean(f1s)), "rerun_skipped": again["n_skipped"], "one_set_per_run": one_set}
    print_table(rows)
    print_table([result])
    print(f"(project built in {build_s:.1f} s; all times {times}; load average {os.getloadavg()})")
    write_result(args.out, "pick3d_copick", args.quick, result, per_run=rows, times=times,
                 load_average=os.getloadavg(), build_seconds=build_s)
    return 0 if agree and one_set and again["n_skipped"] == n_runs else 1


if __name__ == "__main__":
    sys.exit(main())
