"""Pick particles in micrographs with a trained 2D picker (resumable; RELION STAR by default).

Writes one coordinate file per micrograph (RELION: <name>_autopick.star, plus the RELION 4/5
autopick.star index), overlay PNGs for a few micrographs, summary.csv (picks per micrograph),
summary.json and score_histogram.png. Micrographs already picked in the output directory are
skipped, so an interrupted run continues where it stopped.

Examples:
  cryopick pick --model model/ --micrographs mics/ -o picks/
  cryopick pick --model model/ --micrographs 'Movies/*.mrc' --format cryolo --threshold 0.6 -o picks/
"""

from __future__ import annotations

import argparse

from cryopick.cli._args import add_threads


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory written by `cryopick train`")
    parser.add_argument("--micrographs", required=True, help="micrographs: directory, glob or file")
    parser.add_argument("--format", default="relion",
                        help="coordinate format: relion (default), cryolo, eman2, topaz, cryoppp, imod")
    parser.add_argument("--threshold", type=float,
                        help="score threshold (default: the model's calibrated one; 0 keeps every candidate)")
    parser.add_argument("--min-distance", type=float,
                        help="duplicate suppression distance in micrograph px (default: one particle radius)")
    parser.add_argument("--pixel-size", type=float, help="Å/px of the micrographs (default: from the headers)")
    parser.add_argument("--overlays", type=int, default=3, help="overlay PNGs for the first N micrographs")
    parser.add_argument("--overlay", action="append", default=[], metavar="NAME",
                        help="draw an overlay for this micrograph (repeatable; replaces --overlays)")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bfloat16 autocast")
    add_threads(parser)
    parser.add_argument("--redo", action="store_true", help="pick again micrographs that are already done")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-o", "--output", required=True, help="output directory")


def main(args: argparse.Namespace) -> int:
    from cryopick.picker2d.pick import Picker
    from cryopick.runtime import configure_threads

    picker = Picker(args.model, threshold=args.threshold, min_distance=args.min_distance,
                    pixel_size=args.pixel_size, bf16={"auto": None, "on": True, "off": False}[args.bf16],
                    num_threads=configure_threads(args.threads))
    summary = picker.pick_many(args.micrographs, args.output, format=args.format, overlays=args.overlays,
                               overlay_names=args.overlay or None, resume=not args.redo,
                               progress=not args.no_progress)
    rate = summary["micrographs_per_second"]
    print(f"{summary['n_picks']} picks in {summary['n_finished']} micrographs "
          f"({summary['n_picked_this_run']} picked now"
          + (f", {rate:.2f} micrographs/s" if rate else "") + f") -> {args.output}")
    return 0
