"""Pick every instance of the prompted particle(s) in tomograms (ProPicker).

Examples:
  cryopick pick3d --prompt ribosome.prompt --tomograms tomos/ -o picks/
  cryopick pick3d --prompt ribosome.prompt --prompt apoferritin.prompt --tomograms tomos/ -o picks/ --mode tm
  cryopick pick3d --prompt ribosome.prompt --tomograms tomos/ -o picks/ --settings ribosome_calibrated.json
  cryopick pick3d --prompt ribosome.prompt --tomograms tomos/ -o picks/ --answers questions/
  cryopick pick3d --prompt ribosome.prompt --tomograms more/ -o picks2/ --adapted picks/adapted/ribosome.adapted.npz
  cryopick pick3d --prompt ribosome.prompt --tomograms-star Tomograms/job005/tomograms.star -o picks/
  cryopick pick3d --prompt ribosome.prompt --tomograms Tomograms/job005/tomograms/ --tomo-name relion -o picks/
RELION 5: --tomograms-star picks the tomograms of a RELION 5 tomograms.star (run from the RELION
project folder, or give --project-dir): each is named by its _rlnTomoName, read from
_rlnTomoReconstructedTomogram (--tomogram-kind denoised/half1/half2: the other columns), and placed by
its bin-1 size, tilt-series pixel size and binning, so the centred Å coordinates are RELION's. Without
it the <tomogram> name is the file stem, or what --tomo-name makes of it: relion (rec_TS_01.mrc ->
TS_01, as RELION's Reconstruct job names them), strip:TEXT[,TEXT] (remove those substrings) or
regex:PATTERN (its first group).
Scale and units: pick3d works at the prompt's voxel size (chosen by `cryopick prompt` for the model's
trained scale); each tomogram is Fourier-cropped to it on the fly and the picks are written in the
tomogram's own voxels (or Å). Distances are Å (--min-distance) or voxels of the tomogram as stored
(--min-distance-vox); --window and --stride are the network's own windows.
With --answers (from `cryopick ask3d`) the prompts are first adapted to the answers (a small
classifier over the candidates, saved as picks/adapted/<label>.adapted.npz) where the answers support
it: at least 3 confirmed particles besides the prompt and a leave-one-out F1 above the settings' by more
than its noise; else the class is picked with its settings. On the answered tomograms the answers are
the truth either way: a pick answered "no" is dropped, a "yes" (or the prompt's own particle) the picker
missed is added (score 1).
--adapted picks with such a file without more answers. Scores are then the classifier's probability.
Outputs per format and class (<label> = the prompt's label, <tomogram> = the tomogram's name):
  relion5 (default)  picks/relion5/<label>/<tomogram>_autopick.star: RELION 5 tomography STAR,
                     _rlnCenteredCoordinate{X,Y,Z}Angst = Å from the tomogram centre; plus the index
                     picks/relion5/<label>/autopick.star over every finished tomogram, all their picks in
                     picks/relion5/<label>/particles.star (+ optimisation_set.star for RELION 5's jobs),
                     and picks/relion5/tomograms.star (the input
                     tomograms.star rows, else sizes and voxel sizes at binning 1, to read the Å back)
  relion4            picks/relion4/<label>/<tomogram>.star: RELION 4 tomography STAR, _rlnTomoName and
                     _rlnCoordinateX/Y/Z in bin-1 pixels (voxels x binning; relion3 = old name, deprecated)
  imod               picks/imod/<label>/<tomogram>.coords: x y z in voxels as stored
  copick             picks/copick/ExperimentRuns/<tomogram>/Picks/cryopick_0_<label>.json: Å
With --copick (a copick project's config JSON) the tomograms are the project's runs (--runs, default
all; one --voxel-spacing and --tomo-type, optional when the runs hold one) and each prompt's picks go
back into the run as copick picks of the object named like the prompt's label (it must be a pickable
object of the config), as --user-id (default cryopick) and --session-id (default 0, copick's session
of tool picks), in Å; a rerun replaces that pick set, never adds a second one. -o is then optional:
with it the folder gets the files below as well; without it only the copick picks are written and
cryopick's records (finished runs, summary.json) go to <overlay>/cryopick/pick3d_<user>_<session>/.
  cryopick pick3d --prompt ribosome.prompt --copick config.json --runs TS_01,TS_02 --voxel-spacing 10 \
      --tomo-type wbp --session-id 1
A tomogram without picks gets empty, valid files; picks/montage/<tomogram>_<label>.png shows z-slices
with the picks; picks/summary.json counts them. Finished tomograms are skipped on a rerun; a rerun with
another prompt, model or settings into the same folder is refused unless --redo. A tomogram that
cannot be picked (unreadable, NaN or constant voxels) is skipped with a warning, the others are picked,
and the command exits with code 3 ("finished with failures", 0 = all picked, 2 = bad input) naming it;
when not one tomogram could be picked it exits 2 and writes nothing. A tomogram file replaced since it
was picked (other size or modification time) is picked again; a second run into a folder another run
is writing to is refused.
The next tomogram is read, checked and rescaled in a background thread while one is picked.
Whole data sets: --dask runs one task per tomogram (with the whole prompt set) on a Dask cluster (an
existing scheduler tcp://HOST:8786, or local[:N] worker processes here); --cluster slurm
--cluster-config site.yaml starts the workers as SLURM jobs (the YAML file is described in
`cryopick pick --help`). Each worker loads the model once (from the same --model path, or the shipped
weights); this process writes every output, record and index as results arrive, so local and Dask runs
resume each other, and a failing tomogram fails alone. Works with --copick (the runs are the tasks) and
with --answers / --adapted (adapted here, the classifiers travel with the tasks); --save-maps is local only.
  cryopick pick3d --prompt ribosome.prompt --tomograms /shared/tomos/ -o picks/ --dask local:2
  cryopick pick3d --prompt ribosome.prompt --tomograms /shared/tomos/ -o picks/ --cluster slurm \
      --cluster-config site.yaml
"""

from __future__ import annotations

import argparse
import logging

from cryopick.cli._args import (
    add_bf16,
    add_distribute,
    add_redo,
    add_threads,
    add_tomogram_kind,
    finite_float,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

log = logging.getLogger(__name__)

FORMATS = ("relion5", "relion4", "copick", "imod")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated run names, got {text!r}")
    return names


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", required=True, help="prompt file (repeat for several classes)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tomograms", nargs="+", help="tomogram files, a folder, or a glob")
    source.add_argument("--copick", metavar="CONFIG", help="copick project config JSON: pick its runs' tomograms "
                        "and write the picks back into it")
    source.add_argument("--tomograms-star", metavar="STAR", help="RELION 5 tomograms.star: pick its tomograms, "
                        "named by _rlnTomoName")
    parser.add_argument("--tomo-name", metavar="RULE", help="name the tomogram files: relion (rec_TS_01.mrc -> "
                        "TS_01), strip:TEXT[,TEXT] or regex:PATTERN (default: the file stem)")
    add_tomogram_kind(parser)
    parser.add_argument("-o", "--output", help="output folder (required with --tomograms; optional with --copick)")
    copick = parser.add_argument_group("copick (with --copick)")
    copick.add_argument("--runs", type=_names, help="comma-separated run names (default: every run with the tomogram)")
    copick.add_argument("--voxel-spacing", type=positive_float, metavar="A",
                        help="voxel spacing of the tomograms to pick, Å (default: the only one the runs have)")
    copick.add_argument("--tomo-type", help="tomogram type, e.g. wbp or denoised (default: the only one there)")
    copick.add_argument("--user-id", help="copick user id of the picks (default: cryopick)")
    copick.add_argument("--session-id", help="copick session id of the picks (default: 0, tool-made picks)")
    parser.add_argument("--mode", choices=["cluster", "tm"],
                        help="ProPicker-C (connected components) or ProPicker-TM (template matching in the mask) "
                        "(default: the settings file's, else cluster)")
    parser.add_argument("--stride", type=positive_int,
                        help="spacing of the network's windows, in its own voxels (the prompt's scale), at most "
                        "--window (default: 32 = half a window; 64 = no overlap, about 8x faster, slightly less "
                        "accurate)")
    parser.add_argument("--window", type=positive_int,
                        help="edge of the network's input window, in its own voxels, a multiple of 16 (default: 64)")
    parser.add_argument("--batch", type=positive_int,
                        help="windows per forward pass (default: 4; more uses more memory, not less time on a CPU)")
    parser.add_argument("--settings", action="append", default=[],
                        help="calibration JSON from `cryopick calibrate3d` (one, or one per --prompt)")
    parser.add_argument("--threshold", type=fraction,
                        help="probability threshold, 0-1 (overrides settings; default: the model's recommended value)")
    parser.add_argument("--min-size", type=nonnegative_float,
                        help="minimum component volume, in voxels at the prompt's scale (prefer --min-factor)")
    parser.add_argument("--max-size", type=positive_float,
                        help="maximum component volume, in voxels at the prompt's scale (prefer --max-factor)")
    parser.add_argument("--min-factor", type=nonnegative_float,
                        help="minimum component size as a multiple of the particle's sphere volume "
                        "(default: the model's recommended value)")
    parser.add_argument("--max-factor", type=positive_float,
                        help="maximum component size as a multiple of the particle's sphere volume "
                        "(default: the model's recommended value)")
    parser.add_argument("--min-similarity", type=finite_float,
                        help="drop components whose sub-volume's similarity to the prompt (cosine, -1..1) is "
                        "below this (cluster mode; default: the model's recommended value)")
    parser.add_argument("--no-similarity", action="store_true", help="no prompt-similarity check of the components")
    distance = parser.add_mutually_exclusive_group()
    distance.add_argument("--min-distance", type=nonnegative_float, metavar="A",
                          help="least distance between two picks, Å (default: the particle radius)")
    distance.add_argument("--min-distance-vox", type=nonnegative_float, metavar="VOXELS",
                          help="least distance between two picks, in voxels of the tomogram as stored")
    parser.add_argument("--tm-threshold", type=finite_float, help="minimum NCC (-1..1) of a ProPicker-TM pick "
                        "(default: the settings file's, else 0.15)")
    parser.add_argument("--tm-angle", type=positive_float,
                        help="ProPicker-TM angular step, degrees (default: the settings file's, else 30)")
    parser.add_argument("--refine", type=nonnegative_int, metavar="N",
                        help="segment twice: the second time prompted with the prompt plus the N first-pass picks "
                        "most similar to it (self-prompting; twice the time; 0 = off; default: the settings file's)")
    parser.add_argument("--answers", action="append", default=[],
                        help="answers.csv from `cryopick ask3d` (or its folder; repeatable): adapt, then pick")
    parser.add_argument("--adapted", action="append", default=[],
                        help="<label>.adapted.npz from `cryopick ask3d` or an earlier --answers run (repeatable)")
    parser.add_argument("--format", nargs="+", choices=(*FORMATS, "relion3"),
                        help="output formats in -o OUT (default: relion5)")
    parser.add_argument("--model", help="ProPicker checkpoint (default: the shipped propicker-small weights)")
    parser.add_argument("--save-maps", action="store_true", help="also write probability maps (MRC) to OUT/maps")
    parser.add_argument("--no-montage", dest="montage", action="store_false",
                        help="do not draw OUT/montage/<tomogram>_<label>.png")
    parser.add_argument("--project-dir",
                        help="RELION project folder the index paths are relative to (default: the current folder)")
    add_bf16(parser)
    add_threads(parser)
    parser.add_argument("--device", help="torch device, e.g. cuda (default: cpu)")
    add_redo(parser)
    add_distribute(parser.add_argument_group("whole data sets"), "tomogram")


def main(args: argparse.Namespace) -> int:
    from cryopick.cli._args import bf16_value, check_distribute
    from cryopick.errors import CryopickError, FinishedWithFailures
    from cryopick.picker3d.batch import pick_tomograms
    from cryopick.picker3d.copick_runs import pick_copick
    from cryopick.picker3d.predict import set_threads
    from cryopick.picker3d.questions import pick_with_answers
    from cryopick.picker3d.relion_project import pick_relion

    if args.min_similarity is not None and args.no_similarity:
        raise CryopickError("give either --min-similarity or --no-similarity")
    set_threads(args.threads)
    overrides = {k: v for k, v in {"mode": args.mode, "threshold": args.threshold, "min_size": args.min_size,
                                   "max_size": args.max_size, "min_factor": args.min_factor,
                                   "max_factor": args.max_factor, "min_distance_A": args.min_distance,
                                   "min_distance_vox": args.min_distance_vox,
                                   "tm_threshold": args.tm_threshold, "tm_angle": args.tm_angle,
                                   "refine": args.refine, "min_similarity": args.min_similarity}.items()
                 if v is not None}
    if args.no_similarity:
        overrides["min_similarity"] = None
    learn = {"answers": args.answers, "adapted": args.adapted} if args.answers or args.adapted else {}
    copick = {k: getattr(args, k) for k in ("runs", "voxel_spacing", "tomo_type", "user_id", "session_id")
              if getattr(args, k) is not None}
    if args.copick is None and copick:
        raise CryopickError(f"--{next(iter(copick)).replace('_', '-')} selects copick runs; give --copick CONFIG")
    if args.copick is None and args.output is None:
        raise CryopickError("give the output folder with -o OUT")
    if args.copick is not None and args.output is None and (args.format or args.save_maps):
        raise CryopickError(f"{'--format' if args.format else '--save-maps'} writes files into the output folder; "
                            "give -o OUT (without it, --copick writes only the copick picks)")
    if args.copick is not None and args.answers:
        raise CryopickError("--answers needs the tomogram files; with --copick give --adapted FILE (from an "
                            "earlier --answers run or ask3d)")
    check_distribute(args)
    formats = args.format or ["relion5"]
    options = dict(redo=args.redo, overrides=overrides, bf16=bf16_value(args.bf16), device=args.device,
                   save_maps=args.save_maps, montage=args.montage, project_dir=args.project_dir,
                   **{k: getattr(args, k) for k in ("dask", "cluster", "cluster_config") if getattr(args, k)},
                   **{k: v for k, v in {"stride": args.stride, "window": args.window, "batch_size": args.batch}.items()
                      if v is not None})
    relion = {k: getattr(args, k) for k in ("tomograms_star", "tomo_name", "tomogram_kind") if getattr(args, k)}
    if args.copick is not None and relion:
        raise CryopickError(f"--{next(iter(relion)).replace('_', '-')} names tomogram files; copick runs have names")
    if args.copick is not None:
        summary = pick_copick(args.copick, args.prompt, args.model, args.settings or None, args.output, formats,
                              adapted=args.adapted, **copick, **options)
    elif relion:
        summary = pick_relion(args.tomograms[0] if args.tomograms and len(args.tomograms) == 1 else args.tomograms,
                              args.prompt, args.model, args.settings or None, args.output, formats, **relion, **learn,
                              **options)
    else:
        summary = (pick_with_answers if learn else pick_tomograms)(
            args.tomograms[0] if len(args.tomograms) == 1 else args.tomograms, args.prompt, args.model,
            args.settings or None, args.output, formats, **learn, **options)
    out, failed = summary["output_dir"], summary["failed"]
    if failed:
        first = failed[0]
        raise FinishedWithFailures(f"{len(failed)} of {summary['n_tomograms']} tomogram(s) not picked (listed in "
                                   f"{out}/summary.json); first: {first['error']}")
    if summary.get("expected"):
        print(summary["expected"])
    log.info("%d tomogram(s) finished in %s: %s", summary["n_finished"], out,
             ", ".join(f"{n} {label or 'particle'}" for label, n in summary["picks"].items()))
    return 0
