"""Run every ``benchmarks/bench_*.py`` at its ``--quick`` size and collect their JSON into one table.

    python benchmarks/run_all.py                      # all, quick, results in benchmarks/results/quick/
    python benchmarks/run_all.py --only baselines     # scripts whose name contains "baselines"
    python benchmarks/run_all.py --full               # without --quick (hours)

Each script runs as ``python benchmarks/bench_<name>.py --quick --out <dir>/<name>.json`` in its own
process (one after the other, so timings are not disturbed), with a per-script time limit. The
collected table is printed and written to ``<dir>/summary.json`` and ``<dir>/summary.md``. A script
that fails or writes no JSON is reported as such and does not stop the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _bench import print_table  # noqa: E402


def discover(only: list[str] | None = None) -> list[Path]:
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if any(o in s.stem for o in only)]
    return scripts


def load_result(path: Path) -> dict | None:
    """The script's JSON; also accepts ``<path>/results.json`` if a script treated --out as a directory."""
    for candidate in (path, path / "results.json", path.with_suffix("") / "results.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError:
                return None
    return None


def summary_of(result: dict) -> dict:
    """The flat ``summary`` dict, or the scalar top-level values of a script that has none."""
    if isinstance(result.get("summary"), dict):
        return {k: v for k, v in result["summary"].items() if isinstance(v, (int, float, str, bool)) or v is None}
    return {k: v for k, v in result.items() if isinstance(v, (int, float, bool)) and k != "quick"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", default="benchmarks/results/quick", help="where each <name>.json goes")
    ap.add_argument("--only", nargs="+", help="run only scripts whose name contains one of these")
    ap.add_argument("--full", action="store_true", help="run the full configurations (no --quick)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per script (default 900)")
    ap.add_argument("--threads", type=int, default=2, help="OMP/MKL/torch threads per script (default 2)")
    ap.add_argument("--list", action="store_true", help="list the scripts and exit")
    args = ap.parse_args(argv)

    scripts = discover(args.only)
    if args.list or not scripts:
        print("\n".join(s.name for s in scripts) or "no benchmark scripts found")
        return 0
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows, collected = [], {}
    for script in scripts:
        name = script.stem[len("bench_"):]
        out = out_dir / f"{name}.json"
        log = out_dir / f"{name}.log"
        cmd = [sys.executable, str(script), "--out", str(out)] + ([] if args.full else ["--quick"])
        print(f"== {script.name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            with open(log, "w") as fh:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=args.timeout)
            status = "ok" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timeout ({args.timeout:g} s)"
        wall = time.perf_counter() - t0
        result = load_result(out)
        if result is None and status == "ok":
            status = "no JSON"
        if status != "ok":
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            print(f"   {status}; log {log}" + ("".join(f"\n   | {line}" for line in tail)), flush=True)
        summary = summary_of(result) if result else {}
        collected[name] = dict(status=status, wall_s=round(wall, 1), summary=summary, json=str(out), log=str(log))
        rows.append(dict(benchmark=name, status=status, wall_s=round(wall, 1),
                         results="  ".join(f"{k}={_short(v)}" for k, v in summary.items())))
        print(f"   {status} in {wall:.0f} s", flush=True)
    print()
    print_table(rows, ["benchmark", "status", "wall_s", "results"])
    (out_dir / "summary.json").write_text(json.dumps(collected, indent=1) + "\n")
    md = ["| benchmark | status | wall (s) | results |", "|---|---|---|---|"]
    md += [f"| {r['benchmark']} | {r['status']} | {r['wall_s']} | {r['results']} |" for r in rows]
    (out_dir / "summary.md").write_text("\n".join(md) + "\n")
    print(f"\nsummary: {out_dir / 'summary.md'}")
    return 0 if all(c["status"] == "ok" for c in collected.values()) else 1


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
