"""How fast ``cryopick app`` shows a large micrograph: first view (nothing cached) and a later view (cached).

A 4096² micrograph as float32 MRC and as 16-bit TIFF (random electron counts with a few bright discs),
opened through the app's HTTP API in-process (Starlette's test client, so the numbers are the server's
work without a browser): a "view" is what the page requests on opening a micrograph, the info
(``GET /api/micrographs/<name>``) and the display image (``.../image?kind=display``). Also timed: the
thumbnail (cold: nothing cached, as in the list) and one full-resolution tile of the zoom pyramid
(``.../tile?level=0``, requested after the view, as when zooming in), first and cached. "First" starts
with an empty on-disk cache and an empty in-memory image cache; "cached" clears the in-memory image
cache too, so only the on-disk cache helps (as after a server restart).

    OMP_NUM_THREADS=1 python benchmarks/bench_app_images.py           # 5 repeats
    python benchmarks/bench_app_images.py --quick                     # 2 repeats

Targets (issue 15): first view < 3 s, cached < 1 s on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import add_common_args, print_table, write_result  # noqa: E402

SIDE = 4096


def make_images(folder: Path) -> dict[str, Path]:
    import tifffile

    from cryopick.io.images import write_mrc

    rng = np.random.default_rng(0)
    counts = rng.poisson(20.0, size=(SIDE, SIDE)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 24 ** 2) * 8.0
    for x, y in rng.integers(0, SIDE - 64, size=(200, 2)):
        counts[y:y + 64, x:x + 64] += disc
    folder.mkdir(parents=True, exist_ok=True)
    write_mrc(folder / "mrc_float32.mrc", counts, pixel_size=1.0)
    tifffile.imwrite(folder / "tiff_uint16.tif", counts.astype(np.uint16))
    return {"mrc_float32": folder / "mrc_float32.mrc", "tiff_uint16": folder / "tiff_uint16.tif"}


def timed(client, url: str) -> float:
    t0 = time.perf_counter()
    r = client.get(url)
    dt = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"{url}: HTTP {r.status_code} {r.text[:200]}")
    return dt


def measure(project: Path, name: str, repeats: int) -> dict:
    from starlette.testclient import TestClient

    import cryopick.app.images as images
    from cryopick.app import create_app

    base = f"/api/micrographs/{name}"
    view = (base, base + "/image?kind=display")
    rows = {k: [] for k in ("first_view", "cached_view", "first_thumb", "cached_thumb", "first_tile", "cached_tile")}
    for _ in range(repeats):
        shutil.rmtree(project / ".cryopick-app", ignore_errors=True)
        images._memory.clear()
        with TestClient(create_app(project)) as client:
            rows["first_thumb"].append(timed(client, base + "/image?kind=thumb"))  # the list, cold
            images._memory.clear()
            rows["first_view"].append(sum(timed(client, u) for u in view))
            rows["first_tile"].append(timed(client, base + "/tile?level=0&x=3&y=3"))  # zooming in after opening
            images._memory.clear()
            rows["cached_view"].append(sum(timed(client, u) for u in view))
            rows["cached_thumb"].append(timed(client, base + "/image?kind=thumb"))
            rows["cached_tile"].append(timed(client, base + "/tile?level=0&x=3&y=3"))
    return {k: round(float(np.median(v)), 3) for k, v in rows.items()} | {"max_first_view": round(max(rows["first_view"]), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap, "benchmarks/results/app_images.json")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per image (default 5; quick 2)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        t0 = time.perf_counter()
        paths = make_images(project / "micrographs")
        print(f"made two {SIDE}² micrographs in {time.perf_counter() - t0:.1f} s", flush=True)
        results = {name: measure(project, name, repeats) for name in paths}
    table = [{"image": name, **r} for name, r in results.items()]
    print_table(table)
    ok = all(r["first_view"] < 3.0 and r["cached_view"] < 1.0 for r in results.values())
    print("targets (first view < 3 s, cached < 1 s): " + ("met" if ok else "NOT met"))
    summary = {f"{name}_{k}": v for name, r in results.items() for k, v in r.items() if k in ("first_view", "cached_view")}
    write_result(args.out, "app_images", args.quick, {**summary, "targets_met": ok}, results=results, repeats=repeats,
                 side=SIDE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
