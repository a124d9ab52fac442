"""Scale-out of `cryopick pick`: the local pipeline vs a sequential loop, flat memory, Dask == local.

(a) throughput of the local pipeline (default `cryopick pick`) vs the sequential loop (`--sequential`:
    read, preprocess, network, post-process, write one micrograph after the other, the network on
    every free core) on the same N simulated 4096^2 micrographs, one run each, in this order;
(b) peak memory (max RSS of the `cryopick pick` process) at two input counts (100 and 1,000 in the
    full run): the inputs are hard links to a few distinct simulated micrographs, so 1,000 inputs
    need no 64 GB of disk (the page cache then serves most reads: this measures memory, not disk);
(c) a Dask LocalCluster with 2 worker processes picks the same as the local pipeline (same set,
    coordinates to 0.01 px, scores to 1e-4);
(d) end-to-end micrographs per second of (a)'s pipeline run (read, preprocess, network,
    post-process, write STAR + records).

The machine load (1-minute load average and the cores other processes kept busy, measured just
before) is recorded beside every number. Every part is cached in the output folder (rerun to
continue; --redo to measure again). The model: `--model DIR`, else one trained for 2 minutes on 2 of
the simulated micrographs (cached).

    python benchmarks/bench_scaleout.py --quick          # N=12, memory at 10 vs 100 inputs
    python benchmarks/bench_scaleout.py                  # N=200, memory at 100 vs 1000 inputs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import add_common_args, print_table, write_result  # noqa: E402

CHILD = ("import json, resource, sys, time; from cryopick.cli.main import main; t = time.perf_counter(); "
         "rc = main(sys.argv[1:]); print('BENCH ' + json.dumps({'rc': rc, 'seconds': time.perf_counter() - t, "
         "'max_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, "
         "'cpu_seconds': sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}))")


def load() -> dict:
    from cryopick.runtime import measure_busy_cores

    busy = measure_busy_cores(1.0)
    return {"loadavg_1min": round(os.getloadavg()[0], 2), "busy_cores_other": None if busy is None else round(busy, 2)}


def run_pick(args: list[str], log: Path) -> dict:
    """`cryopick pick ARGS` in a fresh process; its wall time, exit code and peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    before = load()
    proc = subprocess.run([sys.executable, "-c", CHILD, "pick", *args], env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"cryopick pick failed (see {log}):\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1][6:])
    result.update({"load_before": before, "loadavg_after": round(os.getloadavg()[0], 2)})
    return result


def simulate(root: Path, n_distinct: int) -> list[Path]:
    sim = root / "sim"
    if len(list((sim / "micrographs").glob("*.mrc"))) < n_distinct or not (sim / "summary.json").is_file():
        subprocess.run([sys.executable, "-m", "cryopick", "simulate", "2d", "-o", str(sim), "--n", str(n_distinct),
                        "--shape", "4096", "4096", "--pixel-size", "1.77", "--diameter", "170", "200",
                        "--particles", "600"], check=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    return sorted((sim / "micrographs").glob("*.mrc"))[:n_distinct]


def model(root: Path, mics: list[Path], given: str | None) -> Path:
    if given:
        return Path(given)
    out = root / "model"
    if not (out / "card.json").is_file():
        train = root / "train_mics"
        train.mkdir(parents=True, exist_ok=True)
        for m in mics[:2]:
            if not (train / m.name).exists():
                os.link(m, train / m.name)
        subprocess.run([sys.executable, "-m", "cryopick", "train", "--micrographs", str(train), "--coords",
                        str(root / "sim" / "coordinates"), "--diameter", "105", "--max-minutes", "2", "--min-epochs",
                        "2", "--no-progress", "-o", str(out)], check=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    return out


def linked_inputs(root: Path, mics: list[Path], n: int) -> Path:
    """A folder of ``n`` micrographs: hard links to the distinct ones, round robin."""
    folder = root / f"inputs_{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = folder / f"mic_{i:05d}.mrc"
        if not target.exists():
            os.link(mics[i % len(mics)], target)
    return folder


def picks_by_name(folder: Path) -> dict:
    from cryopick.io.coords import read_picks

    out = {}
    for path in sorted(folder.glob("*_autopick.star")):
        picks = read_picks(path, format="relion")
        out[path.name[: -len("_autopick.star")]] = (picks.coords, picks.scores)
    return out


def same_picks(a: dict, b: dict, coord_tol: float = 0.01, score_tol: float = 1e-4) -> bool | str:
    """True when both runs picked the same micrographs, the same number of picks in each, at the
    same coordinates (to ``coord_tol`` px) with the same scores (to ``score_tol``); else why not."""
    import numpy as np

    if sorted(a) != sorted(b):
        return f"different micrographs: {sorted(set(a) ^ set(b))[:5]}"
    for name in a:
        (ca, sa), (cb, sb) = a[name], b[name]
        if len(ca) != len(cb):
            return f"{name}: {len(ca)} vs {len(cb)} picks"
        ia, ib = np.lexsort(ca.T[::-1]), np.lexsort(cb.T[::-1])
        dc, ds = np.abs(ca[ia] - cb[ib]).max(initial=0), np.abs(sa[ia] - sb[ib]).max(initial=0)
        if dc > coord_tol or ds > score_tol:
            return f"{name}: coordinates differ by {dc:.4f} px, scores by {ds:.2e}"
    return True


def cached(cache: dict, key: str, redo: bool, path: Path, fn):
    if key not in cache or redo:
        cache[key] = fn()
        path.write_text(json.dumps(cache, indent=1) + "\n")
    return cache[key]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, "benchmarks/results/scaleout/results.json")
    ap.add_argument("--work", default="benchmarks/results/scaleout", help="simulated data, model, runs (cached)")
    ap.add_argument("--model", help="a trained 2D model (default: train one for 2 minutes, cached)")
    ap.add_argument("--n", type=int, help="micrographs for (a), (c), (d) (default 200; 12 with --quick)")
    ap.add_argument("--memory-sizes", type=int, nargs=2, help="input counts for (b) (default 100 1000; 10 100 quick)")
    ap.add_argument("--distinct", type=int, default=6, help="distinct simulated micrographs (default 6)")
    ap.add_argument("--dask-n", type=int, default=8, help="micrographs for (c) (default 8)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["a", "b", "c"], help="parts to skip")
    ap.add_argument("--redo", action="store_true", help="measure again instead of using cached parts")
    args = ap.parse_args(argv)
    n = args.n or (12 if args.quick else 200)
    sizes = args.memory_sizes or ([10, 100] if args.quick else [100, 1000])
    root = Path(args.work)
    root.mkdir(parents=True, exist_ok=True)
    cache_path = root / ("cache_quick.json" if args.quick else "cache.json")
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    mics = simulate(root, args.distinct)
    model_dir = model(root, mics, args.model)
    common = ["--model", str(model_dir), "--no-progress", "--overlays", "0"]
    rows, summary = [], {"n_micrographs": n, "cores": os.cpu_count()}

    if "a" not in args.skip:
        inputs = linked_inputs(root, mics, n)
        runs = {}
        for mode, extra in (("sequential", ["--sequential"]), ("pipeline", [])):
            def measure(extra=extra, mode=mode):
                out = root / f"picks_{mode}_{n}"
                shutil.rmtree(out, ignore_errors=True)
                return run_pick([*common, "--micrographs", str(inputs), "-o", str(out), *extra],
                                root / f"{mode}_{n}.log")

            runs[mode] = cached(cache, f"a:{mode}:{n}", args.redo, cache_path, measure)
            r = runs[mode]
            rows.append({"part": f"a {mode}", "n": n, "seconds": r["seconds"], "mic_per_s": n / r["seconds"],
                         "cpu_s_per_mic": r["cpu_seconds"] / n if "cpu_seconds" in r else None,
                         "max_rss_gb": r["max_rss_gb"], "load": r["load_before"]["loadavg_1min"],
                         "busy_other": r["load_before"]["busy_cores_other"]})
        speedup = runs["sequential"]["seconds"] / runs["pipeline"]["seconds"]
        summary.update({"a_speedup_pipeline_vs_sequential": round(speedup, 2),
                        "d_mic_per_s_pipeline": round(n / runs["pipeline"]["seconds"], 3),
                        "d_mic_per_s_sequential": round(n / runs["sequential"]["seconds"], 3)})

    if "b" not in args.skip:
        mem = {}
        for size in sizes:
            def measure(size=size):
                out = root / f"picks_memory_{size}"
                shutil.rmtree(out, ignore_errors=True)
                return run_pick([*common, "--micrographs", str(linked_inputs(root, mics, size)), "-o", str(out)],
                                root / f"memory_{size}.log")

            mem[size] = cached(cache, f"b:{size}", args.redo, cache_path, measure)
            r = mem[size]
            rows.append({"part": "b memory", "n": size, "seconds": r["seconds"], "mic_per_s": size / r["seconds"],
                         "max_rss_gb": r["max_rss_gb"], "load": r["load_before"]["loadavg_1min"],
                         "busy_other": r["load_before"]["busy_cores_other"]})
        lo, hi = (mem[s]["max_rss_gb"] for s in sizes)
        summary.update({f"b_peak_rss_gb_{sizes[0]}": round(lo, 3), f"b_peak_rss_gb_{sizes[1]}": round(hi, 3),
                        "b_memory_growth_pct": round(100 * (hi - lo) / lo, 1)})

    if "c" not in args.skip:
        def compare():
            inputs = linked_inputs(root, mics, args.dask_n)
            out = {}
            for mode, extra in (("local", []), ("dask", ["--dask", "local:2"])):
                folder = root / f"picks_{mode}_compare"
                shutil.rmtree(folder, ignore_errors=True)
                out[mode] = run_pick([*common, "--micrographs", str(inputs), "-o", str(folder), *extra],
                                     root / f"compare_{mode}.log")
            a, b = picks_by_name(root / "picks_local_compare"), picks_by_name(root / "picks_dask_compare")
            return {"same": same_picks(a, b), "n_picks": int(sum(len(c) for c, _ in a.values())), **out}

        c = cached(cache, f"c:{args.dask_n}", args.redo, cache_path, compare)
        rows.append({"part": "c dask local:2", "n": args.dask_n, "seconds": c["dask"]["seconds"],
                     "mic_per_s": args.dask_n / c["dask"]["seconds"], "max_rss_gb": c["dask"]["max_rss_gb"],
                     "load": c["dask"]["load_before"]["loadavg_1min"],
                     "busy_other": c["dask"]["load_before"]["busy_cores_other"]})
        summary.update({"c_dask_equals_local": c["same"] is True, "c_n_picks_compared": c["n_picks"]})

    print_table(rows, ["part", "n", "seconds", "mic_per_s", "cpu_s_per_mic", "max_rss_gb", "load", "busy_other"])
    for k, v in summary.items():
        print(f"{k}: {v}")
    write_result(args.out, "scaleout", args.quick, summary, rows=rows, cache=cache, model=str(model_dir),
                 distinct_micrographs=[m.name for m in mics], hard_linked_inputs=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
