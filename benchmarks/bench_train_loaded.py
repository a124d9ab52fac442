"""Training on a busy machine: does ``cryopick train`` keep its epochs when other processes share the CPU?

One protein of the leave-one-out benchmark (default ``sim_raw``: 5 annotated micrographs to train, 5 to
test) is trained with the library defaults except a time budget small enough to bind (``--max-minutes``,
default 2) with early stopping switched off (``patience`` = ``epochs``), so the number of epochs trained is
exactly what the budget fits. The same training is run with ``0, 1, 2, ...`` extra busy processes beside it
(``--busy``; each a pure-Python loop that keeps one core busy, started before training and killed after).
Each run reports epochs trained, the charged and the wall-clock minutes, the threads used, the best
validation F1 and the test F1 of the picks at the calibrated threshold.

``--clock cpu`` charges the budget the way it was charged before (``min(wall, CPU)`` per step, without the
machine's counters), to compare.

    OMP_NUM_THREADS=2 python benchmarks/bench_train_loaded.py --busy 0,1,2
    OMP_NUM_THREADS=2 python benchmarks/bench_train_loaded.py --busy 1 --clock cpu

Every finished run is cached in ``--cache`` (default ``benchmarks/results/train_loaded``); rerunning skips it
(``--redo`` to run again). The machine's load average at the start of each run is recorded: other work
on the machine is part of the load.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import print_table, write_result  # noqa: E402
from bench_fewshot_loo import PROTEINS, evaluate, load_protein  # noqa: E402


def _spin() -> None:  # one busy core
    x = 0
    while True:
        x = (x + 1) % 1000003


def run_one(name: str, busy: int, clock: str, args, cache: Path) -> dict:
    from cryopick.picker2d.train import TrainConfig, train_from_files
    from cryopick.picker2d.train import loop as train_loop
    from cryopick.training import BudgetClock

    out = cache / f"{name}_busy{busy}_{clock}"
    done = out / "result.json"
    if done.is_file() and not args.redo:
        print(f"{out.name}: cached", flush=True)
        return json.loads(done.read_text())
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    train_paths, test_paths, truth, diameter = load_protein(name, args, cache)
    stems = [p.stem for p in train_paths]
    train_truth = truth._with(truth.table[truth.table["micrograph"].isin(stems)])
    config = TrainConfig(max_minutes=args.max_minutes, epochs=args.epochs, patience=args.epochs, min_epochs=1,
                         seed=args.seed, progress=False)
    if clock == "cpu":
        train_loop.BudgetClock = functools.partial(BudgetClock, machine=None)
    ctx = mp.get_context("spawn")
    spinners = [ctx.Process(target=_spin, daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        time.sleep(2.0 if busy else 0.0)  # let the thread choice see the busy processes
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            card = train_from_files(train_paths, train_truth, diameter, out / "model", config=config)
        wall = time.perf_counter() - t0
    finally:
        for p in spinners:
            p.kill()
        train_loop.BudgetClock = BudgetClock
    ev = evaluate(out / "model", test_paths, truth, diameter, threads=2, ttas=("none",))
    tr = card.training
    result = {"protein": name, "busy processes": busy, "clock": clock, "load avg at start": load[0],
              "epochs": tr["epochs_run"], "best epoch": tr["best_epoch"], "stopped": tr["stopped"],
              "charged min": round(tr["budget"]["charged_minutes"], 2), "wall min": round(wall / 60, 2),
              "threads": "/".join(str(t) for t in sorted({h.get("threads") for h in tr.get("history", []) if h.get("threads")})), "val F1": round(tr["best_val_f1"], 4),
              "test F1": ev["f1_chosen"]}
    from cryopick.io.atomic import write_text

    write_text(done, json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, default=str), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protein", default="sim_raw", choices=PROTEINS)
    ap.add_argument("--busy", default="0,1,2", help="comma list of extra busy processes, one run each")
    ap.add_argument("--clock", default="share", choices=["share", "cpu"],
                    help="share: the budget clock of cryopick; cpu: min(wall, CPU) as before")
    ap.add_argument("--max-minutes", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-test", type=int, default=5)
    ap.add_argument("--data", default=None, help="EMPIAR-10017 folder (for --protein empiar10017)")
    ap.add_argument("--cache", default="benchmarks/results/train_loaded")
    ap.add_argument("--out", default="benchmarks/results/train_loaded.json")
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args(argv)
    if args.data is None:
        from bench_fewshot_empiar import DEFAULT_DATA

        args.data = DEFAULT_DATA
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    rows = [run_one(args.protein, int(b), args.clock, args, cache) for b in args.busy.split(",") if b.strip()]
    print_table(rows)
    write_result(args.out, "train_loaded", False, {f"busy {r['busy processes']} {r['clock']}": r["epochs"] for r in rows},
                 runs=rows, settings=vars(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
