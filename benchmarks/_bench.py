"""Shared helpers for benchmark scripts (the convention is documented in benchmarks/README.md)."""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path


def add_common_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    """``--quick`` (small size for run_all) and ``--out PATH.json``."""
    parser.add_argument("--quick", action="store_true", help="small configuration (run_all uses this)")
    parser.add_argument("--out", default=default_out, help=f"result JSON (default {default_out})")


def json_object(text: str) -> dict:
    """argparse ``type=`` for an option that takes a JSON object (e.g. ``'{"depth": 4}'``)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object, e.g. '{{\"depth\": 4}}', not {text!r}")
    return value


def peak_rss_gb() -> float:
    """Peak resident memory of this process and its finished children, GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024**2


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_result(path: str | Path, benchmark: str, quick: bool, summary: dict, **details) -> Path:
    """Write ``{"benchmark", "quick", "summary", "peak_memory_gb", "finished", **details}`` atomically.

    ``summary`` must be flat: ``{name: number or string}``; run_all prints it as the script's row.
    """
    from cryopick.io.atomic import write_text

    data = dict(benchmark=benchmark, quick=bool(quick), summary=summary, peak_memory_gb=round(peak_rss_gb(), 3),
                finished=time.strftime("%Y-%m-%d %H:%M:%S"), **details)
    path = Path(path)
    write_text(path, json.dumps(_clean(data), indent=1) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    """Print rows of dicts as an aligned plain-text table."""
    if not rows:
        return
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), flush=True)
