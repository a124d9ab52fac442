"""Pick particles in micrographs with a trained 2D picker (resumable; RELION STAR by default).

Writes one coordinate file per micrograph (RELION: <name>_autopick.star, plus the RELION 4/5
autopick.star index), overlay PNGs for a few micrographs, summary.csv (picks per micrograph),
summary.json and score_histogram.png. Micrographs already picked in the output directory are
skipped, so an interrupted run continues where it stopped; a rerun with another model or other
settings into a folder with picks is refused unless --redo.

Picks in padding bands at the micrograph edges (constant or striped rows/columns, e.g. from motion
correction) and within --border of the edge are dropped. Coordinates are micrograph pixels.

Examples:
  cryopick pick --model model/ --micrographs mics/ -o picks/
  cryopick pick --model model/ --micrographs 'Movies/*.mrc' --format cryolo --threshold 0.6 -o picks/
  cryopick pick --model model/ --micrographs MotionCorr/job002/Movies/ -o AutoPick/job010/ --project-dir .
"""

from __future__ import annotations

import argparse

from cryopick.cli._args import (
    add_bf16,
    add_redo,
    add_threads,
    bf16_value,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory written by `cryopick train`")
    parser.add_argument("--micrographs", required=True, help="micrographs: directory, glob or file")
    parser.add_argument("--format", default="relion",
                        help="coordinate format: relion (default), cryolo, eman2, topaz, cryoppp, imod")
    parser.add_argument("--threshold", type=fraction, metavar="S",
                        help="score threshold, 0 to 1 (default: the model's calibrated one; 0 keeps every candidate)")
    parser.add_argument("--min-distance", type=nonnegative_float, metavar="PX",
                        help="duplicate suppression distance in micrograph pixels (default: the model's, else one "
                             "particle radius; 0 = off)")
    parser.add_argument("--border", type=nonnegative_float, metavar="PX",
                        help="drop picks closer than PX micrograph pixels to the edge of the image, or of its padding "
                             "bands (default: one particle radius; 0 = off)")
    parser.add_argument("--no-padding-check", action="store_true",
                        help="do not look for constant or striped padding bands at the micrograph edges (default: "
                             "detect them and pick nothing there)")
    parser.add_argument("--pixel-size", type=positive_float, metavar="A",
                        help="Å/px of the micrographs (default: from the file headers)")
    parser.add_argument("--overlays", type=nonnegative_int, metavar="N",
                        help="overlay PNGs for the first N micrographs (default: 3; 0 = none)")
    parser.add_argument("--overlay", action="append", default=[], metavar="NAME",
                        help="draw an overlay for this micrograph (repeatable; replaces --overlays)")
    parser.add_argument("--project-dir", metavar="DIR",
                        help="RELION project folder: paths in autopick.star are written relative to it (default: "
                             "as given on the command line)")
    add_bf16(parser)
    add_threads(parser)
    add_redo(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-o", "--output", required=True, help="output directory")


def main(args: argparse.Namespace) -> int:
    from cryopick.picker2d.pick import pick_folder

    options = {"threshold": args.threshold, "min_distance": args.min_distance, "border": args.border,
               "pixel_size": args.pixel_size, "overlays": args.overlays, "project_dir": args.project_dir}
    summary = pick_folder(args.model, args.micrographs, args.output, format=args.format,
                          overlay_names=args.overlay or None, detect_padding=not args.no_padding_check,
                          bf16=bf16_value(args.bf16), num_threads=args.threads, redo=args.redo,
                          progress=not args.no_progress, **{k: v for k, v in options.items() if v is not None})
    rate = summary["micrographs_per_second"]
    print(f"{summary['n_picks']} picks in {summary['n_finished']} micrographs "
          f"({summary['n_picked_this_run']} picked now"
          + (f", {rate:.2f} micrographs/s" if rate else "") + f") -> {args.output}")
    return 0
