"""Simulator speed (micrographs/s, tomograms/s on one core) and a power-spectrum comparison with real data.

    python benchmarks/bench_simulate.py            # full: 5 micrographs 1024², 1 at 4096², 3 tomograms
    python benchmarks/bench_simulate.py --quick    # 2 micrographs, 1 tomogram

The realism check compares the rotationally averaged power spectrum of a simulated 1.77 Å/px
micrograph (a 190 Å D2 particle, like beta-galactosidase) with a real EMPIAR-10017 micrograph in the
40–400 Å band: log-log slope of each. The real JPEGs were published denoised (blur, non-local means,
Wiener, CLAHE), so the raw simulation is expected to be flatter; the slope of the simulation after a
Gaussian low-pass (σ = 7 px, roughly that denoising) is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from cryopick.io.atomic import write_text  # noqa: E402
from cryopick.simulate.ctf import radial_profile  # noqa: E402
from cryopick.simulate.micrograph import simulate_micrograph  # noqa: E402
from cryopick.simulate.shapes import procedural_class, random_particle_classes  # noqa: E402
from cryopick.simulate.tomogram import simulate_tomogram  # noqa: E402

DEFAULT_DATA = "/work/shared/data/empiar-10017"


def psd_slope(image: np.ndarray, pixel_size: float, band_A=(40.0, 400.0)) -> float:
    """Log-log slope of the radially averaged power spectrum between ``band_A`` resolutions."""
    a = np.asarray(image, np.float64)
    a = a - a.mean()
    power = np.abs(np.fft.fftshift(np.fft.fft2(a))) ** 2
    k, p = radial_profile(power, pixel_size, n_bins=min(a.shape) // 4)
    sel = (k > 1 / band_A[1]) & (k < 1 / band_A[0]) & (p > 0)
    return float(np.polyfit(np.log(k[sel]), np.log(p[sel]), 1)[0])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small configuration")
    parser.add_argument("--out", default="benchmarks/results/simulate.json", help="result JSON")
    parser.add_argument("--data", default=DEFAULT_DATA, help="EMPIAR-10017 folder (micrographs/*.jpg)")
    args = parser.parse_args(argv)
    n_mic, n_tomo = (2, 1) if args.quick else (5, 3)
    rows = []

    t0 = time.perf_counter()
    classes3d = random_particle_classes(10, seed=0, voxel_size=10.0, diameter_range_A=(100, 350))
    t_classes3d = time.perf_counter() - t0
    t0 = time.perf_counter()
    classes2d = random_particle_classes(3, seed=0, voxel_size=2.0, diameter_range_A=(150, 250))
    t_classes2d = time.perf_counter() - t0
    rows.append(("10 classes @10 Å", f"{t_classes3d:.2f} s"))
    rows.append(("3 classes @2 Å", f"{t_classes2d:.2f} s"))

    t0 = time.perf_counter()
    placed = []
    for i in range(n_mic):
        m = simulate_micrograph(classes2d, shape=(1024, 1024), pixel_size=2.0, seed=i, n_particles=200,
                                carbon_edge=i % 2 == 0, ice_crystals=1, aggregates=2)
        placed.append(m.params["n_placed"])
    mic_per_s = n_mic / (time.perf_counter() - t0)
    rows.append(("micrographs/s 1024² @2 Å", f"{mic_per_s:.2f} ({np.mean(placed):.0f} particles each)"))

    big_per_s = None
    if not args.quick:
        t0 = time.perf_counter()
        big = simulate_micrograph(classes2d, shape=(4096, 4096), pixel_size=1.0, seed=0, n_particles=600,
                                  carbon_edge=True, ice_crystals=2, aggregates=4)
        big_per_s = 1 / (time.perf_counter() - t0)
        rows.append(("micrographs/s 4096² @1 Å", f"{big_per_s:.3f} ({big.params['n_placed']} particles)"))

    t0 = time.perf_counter()
    for i in range(n_tomo):
        simulate_tomogram(classes3d, shape=(128, 256, 256), voxel_size=10.0, seed=i, n_particles=150,
                          membranes=2, gold_beads=5)
    tomo_per_s = n_tomo / (time.perf_counter() - t0)
    rows.append(("tomograms/s 128x256x256 @10 Å", f"{tomo_per_s:.3f} (150 particles, 10 classes)"))

    # Realism: power-spectrum slope in the 40-400 Å band vs a real micrograph.
    slope_real = slope_sim = None
    jpgs = sorted(Path(args.data, "micrographs").glob("*.jpg")) if Path(args.data).exists() else []
    if jpgs:
        from PIL import Image

        real = np.asarray(Image.open(jpgs[0]).convert("L"), np.float32)[1024:3072, 1024:3072]
        slope_real = psd_slope(real, 1.77)
        bgal = procedural_class("bgal_like", "dihedral", 190.0, 1.77, 5)
        sim = simulate_micrograph([bgal], shape=(2048, 2048), pixel_size=1.77, seed=0, n_particles=150,
                                  crowding=0.5, dose=40.0)
        slope_sim = psd_slope(sim.image, 1.77)
        from scipy import ndimage

        slope_sim_lp = psd_slope(ndimage.gaussian_filter(sim.image, 7.0), 1.77)
        rows.append(("PSD slope 40-400 Å real(denoised) / sim raw / sim low-passed σ=7 px",
                     f"{slope_real:.2f} / {slope_sim:.2f} / {slope_sim_lp:.2f}"))

    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    summary = {"micrographs_per_s_1024": round(mic_per_s, 3), "tomograms_per_s_128x256x256": round(tomo_per_s, 3),
               "classes10_at_10A_s": round(t_classes3d, 2)}
    if big_per_s is not None:
        summary["micrographs_per_s_4096"] = round(big_per_s, 4)
    if slope_real is not None:
        summary["psd_slope_real"] = round(slope_real, 3)
        summary["psd_slope_sim"] = round(slope_sim, 3)
        summary["psd_slope_sim_lowpass7"] = round(slope_sim_lp, 3)
    result = {"benchmark": "simulate", "quick": args.quick, "summary": summary,
              "peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
              "threads": os.environ.get("OMP_NUM_THREADS")}
    write_text(args.out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
