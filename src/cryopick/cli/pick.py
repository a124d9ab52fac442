"""Pick particles in micrographs with a trained 2D picker (resumable; RELION STAR by default).

Writes one coordinate file per micrograph (RELION: <name>_autopick.star, plus the RELION 4/5
autopick.star index), overlay PNGs for a few micrographs, summary.csv (picks per micrograph),
summary.json and score_histogram.png. Micrographs already picked in the output directory are
skipped, so an interrupted run continues where it stopped; a rerun with another model or other
settings into a folder with picks is refused unless --redo.

Picks in padding bands at the micrograph edges (constant or striped rows/columns, e.g. from motion
correction) and within --border of the edge are dropped. Coordinates are micrograph pixels.

Whole data sets: by default reading and preprocessing run in prefetch threads while the network runs,
and outputs are written as they finish. --dask runs on a Dask cluster (an existing scheduler, or
local[:N] worker processes on this machine); --cluster slurm starts Dask workers as SLURM jobs
(adaptive: jobs come and go with the work), configured by a YAML file of SLURMCluster settings:

  cores: 8              # per SLURM job (required)
  memory: 32GB          # per SLURM job (required)
  processes: 2          # Dask workers per job
  queue: short
  walltime: "02:00:00"
  adapt: {minimum_jobs: 0, maximum_jobs: 20}

Workers load the model once each, from the same path (a shared file system). Every output is
written by this process, atomically; a micrograph counts as finished once its record is written, so
a rerun after Ctrl-C, a crash or a killed worker picks only what is missing (and micrographs whose
file changed since). --watch DIR picks micrographs as they land in DIR during data collection: a
file is read once its size has not changed for --settle seconds, or at once when a marker
<file>.done appears next to it; it stops after --watch-timeout seconds without a new micrograph, or
on Ctrl-C. A micrograph that cannot be read or picked fails alone and is listed (with the reason)
in the final summary and summary.json.

Exit codes: 0 every micrograph picked (or already picked); 2 bad input or options, or not one
micrograph could be picked (nothing is written); 3 the run finished but N micrographs failed (listed; rerun
to retry only them); 130 interrupted by Ctrl-C (finished micrographs are kept, rerun to resume).

Examples:
  cryopick pick --model model/ --micrographs mics/ -o picks/
  cryopick pick --model model/ --micrographs mics/ -o picks/ --dask local:4
  cryopick pick --model /shared/model/ --micrographs /shared/mics/ -o picks/ --cluster slurm --cluster-config site.yaml
  cryopick pick --model model/ --watch /data/session1/Micrographs/ --watch-timeout 1800 -o picks/
  cryopick pick --model model/ --micrographs 'Movies/*.mrc' --format cryolo --threshold 0.6 -o picks/
  cryopick pick --model model/ --micrographs MotionCorr/job002/Movies/ -o AutoPick/job010/ --project-dir .
"""

from __future__ import annotations

import argparse

from cryopick.cli._args import (
    add_bf16,
    add_distribute,
    add_redo,
    add_threads,
    bf16_value,
    check_distribute,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory written by `cryopick train`")
    parser.add_argument("--micrographs", help="micrographs: directory, glob or file (required unless --watch)")
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
    scale = parser.add_argument_group("whole data sets")
    scale.add_argument("--prefetch", type=positive_int, metavar="N",
                       help="threads that read and preprocess micrographs ahead of the network (default: one per "
                            "core beyond the network's, at least 2, at most 4)")
    scale.add_argument("--sequential", action="store_true",
                       help="one micrograph after the other, no overlap of reading, network and writing (slower; "
                            "default: overlapped)")
    add_distribute(scale, "micrograph")
    scale.add_argument("--watch", metavar="DIR",
                       help="pick micrographs as they land in DIR (also those already there); stops after "
                            "--watch-timeout or on Ctrl-C")
    scale.add_argument("--watch-timeout", type=positive_float, metavar="S",
                       help="with --watch: stop after S seconds without a new micrograph (default: never, Ctrl-C)")
    scale.add_argument("--settle", type=nonnegative_float, metavar="S",
                       help="with --watch: a file is complete once its size has not changed for S seconds (default "
                            "5; a <file>.done marker makes it complete at once)")
    parser.add_argument("-o", "--output", required=True, help="output directory")


def main(args: argparse.Namespace) -> int:
    from cryopick.distribute import Execution
    from cryopick.distribute.summary import EXIT_FAILURES, EXIT_OK
    from cryopick.errors import CryopickError
    from cryopick.picker2d.batch import Watch, pick_folder

    if args.micrographs is None and args.watch is None:
        raise CryopickError("give --micrographs (a folder, glob or file) or --watch DIR")
    check_distribute(args)
    for flag, needs in (("watch_timeout", "watch"), ("settle", "watch")):
        if getattr(args, flag) is not None and getattr(args, needs) is None:
            raise CryopickError(f"--{flag.replace('_', '-')} only applies with --{needs}")
    if (args.dask or args.cluster) and (args.prefetch is not None or args.sequential):
        raise CryopickError("--prefetch and --sequential apply to the local run, not to --dask / --cluster "
                            "(each Dask worker runs one micrograph at a time per thread)")
    options = {"threshold": args.threshold, "min_distance": args.min_distance, "border": args.border,
               "pixel_size": args.pixel_size, "overlays": args.overlays, "project_dir": args.project_dir}
    execution = Execution(engine="sequential" if args.sequential else "pipeline", prefetch=args.prefetch,
                          dask=args.dask, cluster=args.cluster, cluster_config=args.cluster_config)
    watching = Watch(args.watch, args.watch_timeout, args.settle)
    summary = pick_folder(args.model, args.micrographs, args.output, format=args.format,
                          overlay_names=args.overlay or None, detect_padding=not args.no_padding_check,
                          bf16=bf16_value(args.bf16), num_threads=args.threads, redo=args.redo,
                          progress=not args.no_progress, execution=execution, watching=watching,
                          **{k: v for k, v in options.items() if v is not None})
    rate = summary["micrographs_per_second"]
    ppm = summary["picks_per_micrograph"]
    print(f"{summary['n_picks']} picks in {summary['n_finished']} micrographs "
          f"({summary['n_picked_this_run']} picked now, {summary.get('n_skipped', 0)} already picked"
          + (f", {rate:.2f} micrographs/s" if rate else "") + f"; picks per micrograph min {ppm['min']}, "
          f"median {ppm['median']:g}, max {ppm['max']}) -> {args.output}")
    failed = summary.get("failed") or []
    for item in failed[:20]:
        print(f"  failed: {item['input']}: {item['error']}")
    if len(failed) > 20:
        print(f"  ... and {len(failed) - 20} more (see {args.output}/summary.json)")
    if failed:
        print(f"{len(failed)} micrograph{'s' * (len(failed) != 1)} failed; fix or remove them and rerun to pick "
              "only those")
        return EXIT_FAILURES
    return EXIT_OK
