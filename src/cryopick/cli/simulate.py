"""Simulate micrographs (2d) or tomograms (3d) with ground-truth coordinates, classes and masks.

Examples:
  cryopick simulate 2d -o sim2d/ --n 5 --seed 0
  cryopick simulate 2d -o sim2d/ --n 20 --pixel-size 1.77 --diameter 150 250 --pdb model.cif
  cryopick simulate 3d -o sim3d/ --n 4 --seed 0 --classes 10 --shape 128 256 256

Outputs (see cryopick.simulate.dataset): micrographs/ or tomograms/ (MRC, pixel size in the
header), coordinates/ (RELION STAR), particles/ (CSV with class and angles), masks/, classes.csv,
classes/ (densities). Finished items are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryopick.cli._args import (
    finite_float,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from cryopick.errors import CryopickError


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", choices=["2d", "3d"], help="micrographs (2d) or tomograms (3d)")
    parser.add_argument("-o", "--out", required=True, help="output directory")
    parser.add_argument("--n", type=positive_int, default=5, help="number of micrographs / tomograms (default 5)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    parser.add_argument("--classes", type=nonnegative_int, default=None,
                        help="number of procedural particle classes (default 1 in 2d, 10 in 3d; 0 with --pdb)")
    parser.add_argument("--diameter", type=positive_float, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="particle diameter range in Å (default 150 250 in 2d, 100 350 in 3d)")
    parser.add_argument("--pdb", nargs="*", default=[], help="PDB / mmCIF atomic models to add as classes")
    parser.add_argument("--shape", type=positive_int, nargs="+", default=None,
                        help="image size in pixels: H W (2d, default 1024 1024) or D H W (3d, default 128 256 256)")
    parser.add_argument("--pixel-size", type=positive_float, default=None,
                        help="Å per pixel / voxel (default 2.0 in 2d, 10.0 in 3d)")
    parser.add_argument("--particles", type=nonnegative_int, default=None,
                        help="particles per image (default 200 in 2d, 100 in 3d); particles never overlap, so fewer "
                             "are placed when they do not fit (a warning and summary.json say how many)")
    parser.add_argument("--crowding", type=fraction, default=0.3,
                        help="0 scattered .. 1 touching clusters (default 0.3)")
    parser.add_argument("--defocus", type=nonnegative_float, nargs=2, metavar=("MIN", "MAX"), default=None,
                        help="defocus range in µm (default 1.0 2.5 in 2d, 3 5 in 3d)")
    parser.add_argument("--png", action="store_true", help="also write PNG previews")
    g2 = parser.add_argument_group("2d only")
    g2.add_argument("--dose", type=positive_float, nargs=2, metavar=("MIN", "MAX"), default=(25.0, 45.0),
                    help="electron dose range in e/Å² (default 25 45)")
    g2.add_argument("--carbon-edge-fraction", type=fraction, default=0.3,
                    help="fraction of micrographs with a carbon edge (default 0.3)")
    g2.add_argument("--ice-crystals", type=nonnegative_int, default=1, help="ice crystals per micrograph (default 1)")
    g2.add_argument("--aggregates", type=nonnegative_int, default=2, help="aggregates per micrograph (default 2)")
    g3 = parser.add_argument_group("3d only")
    g3.add_argument("--snr", type=positive_float, nargs=2, metavar=("MIN", "MAX"), default=(0.5, 2.0),
                    help="SNR range (signal power over particles / noise power), default 0.5 2")
    g3.add_argument("--tilt-range", type=finite_float, nargs=2, metavar=("MIN", "MAX"), default=(-60.0, 60.0),
                    help="tilt range in degrees within -90 90 (missing wedge), default -60 60")
    g3.add_argument("--membranes", type=nonnegative_int, default=2, help="vesicles per tomogram (default 2)")
    g3.add_argument("--gold-beads", type=nonnegative_int, default=5, help="gold fiducials per tomogram (default 5)")


def _range(args, option: str, low: float | None = None, high: float | None = None):
    value = getattr(args, option.lstrip("-").replace("-", "_"))
    if value is None:
        return None
    lo, hi = value
    if lo > hi:
        raise CryopickError(f"{option} MIN MAX: MIN ({lo:g}) is larger than MAX ({hi:g})")
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise CryopickError(f"{option} must lie within {low:g} .. {high:g}, got {lo:g} {hi:g}")
    return tuple(value)


def main(args: argparse.Namespace) -> int:
    from cryopick.simulate.dataset import simulate_dataset_2d, simulate_dataset_3d
    from cryopick.simulate.densities import ParticleClass
    from cryopick.simulate.shapes import random_particle_classes

    is2d = args.mode == "2d"
    shape = tuple(args.shape) if args.shape else ((1024, 1024) if is2d else (128, 256, 256))
    if len(shape) != (2 if is2d else 3):
        raise CryopickError(f"--shape needs {'2 numbers (H W)' if is2d else '3 numbers (D H W)'} for {args.mode}")
    pixel_size = args.pixel_size if args.pixel_size is not None else (2.0 if is2d else 10.0)
    diameter = _range(args, "--diameter") or ((150.0, 250.0) if is2d else (100.0, 350.0))
    for option in ("--dose", "--snr"):
        _range(args, option)
    _range(args, "--tilt-range", -90.0, 90.0)
    n_classes = args.classes if args.classes is not None else (0 if args.pdb and is2d else (1 if is2d else 10))
    classes = random_particle_classes(n_classes, seed=args.seed, voxel_size=pixel_size,
                                      diameter_range_A=diameter) if n_classes > 0 else []
    for path in args.pdb:
        classes.append(ParticleClass.from_atoms(Path(path).stem, path, voxel_size=pixel_size))
    if not classes:
        raise CryopickError("no particle classes: give --classes N (N >= 1) or --pdb FILE")
    defocus = _range(args, "--defocus") or ((1.0, 2.5) if is2d else (3.0, 5.0))
    particles = args.particles if args.particles is not None else (200 if is2d else 100)
    common = dict(shape=shape, n_particles=particles, crowding=args.crowding, defocus_um=defocus)
    if is2d:
        names = simulate_dataset_2d(args.out, args.n, args.seed, classes, png=args.png,
                                    carbon_edge_fraction=args.carbon_edge_fraction, pixel_size=pixel_size,
                                    dose=tuple(args.dose), ice_crystals=args.ice_crystals,
                                    aggregates=args.aggregates, **common)
    else:
        names = simulate_dataset_3d(args.out, args.n, args.seed, classes, png=args.png, voxel_size=pixel_size,
                                    snr=tuple(args.snr), tilt_range=tuple(args.tilt_range),
                                    membranes=args.membranes, gold_beads=args.gold_beads, **common)
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    print(f"{len(names)} {'micrographs' if is2d else 'tomograms'} with ground truth in {args.out}: "
          f"{summary['n_placed']} particles placed of {summary['n_requested']} requested")
    return 0
