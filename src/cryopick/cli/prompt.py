"""Make a 3D prompt: cut the sub-volume around one (or a few) clicked example particle(s).

Examples:
  cryopick prompt --tomogram TS_01.mrc --at 412,388,96 -o ribosome.prompt
  cryopick prompt --tomogram TS_01.mrc --at 412,388,96 --at 120,80,60 --diameter 280 -o ribosome.prompt
  cryopick prompt --tomogram TS_01.mrc --coords examples.star -o ribosome.prompt
  cryopick prompt --copick config.json --run TS_01 --object ribosome -o ribosome.prompt
  cryopick prompt --tomograms-star Tomograms/job005/tomograms.star --tomo-name TS_01 --at 412,388,96 -o ribosome.prompt
With --tomograms-star (RELION 5) the tomogram is the --tomo-name row's reconstruction (--tomogram-kind
for the denoised or half tomograms), its voxel size the tilt-series pixel size x binning, and --coords
may be RELION 5 centred Å coordinates (the rows of that tomogram are used). With --tomogram,
--tomo-name names the tomogram (a name, or relion / strip:TEXT / regex:PATTERN as in pick3d).
With --copick the examples are the run's copick picks of --object (narrowed by --user-id and
--session-id when the run holds several such pick sets), cut from the run's tomogram (--voxel-spacing,
--tomo-type: optional when the run has one); the label defaults to the object name, so that
`pick3d --copick` writes the picks to that object.
Positions are x,y,z in voxels of the tomogram as stored (0-based). The particle diameter is --diameter
in Å (or --diameter-vox in voxels of the tomogram as stored); without either it is estimated from the
segmentation around the examples (stored in the prompt file).
Scale: by default the network works at the voxel size it was trained at (the weights' card: 9-13 Å/voxel,
particles 6-33 voxels across), the nearest one that puts the particle in that range; finer tomograms are
Fourier-cropped on the fly and picks come back in the tomogram's own voxels. --voxel-size or --binning
override the choice; a particle the network cannot see there is refused (< 2 voxels) or warned about.
`pick3d` works at the prompt's scale.
"""

from __future__ import annotations

import argparse
import logging
import math

from cryopick.cli._args import add_threads, add_tomogram_kind, deprecated, positive_float

log = logging.getLogger(__name__)


def _xyz(text: str) -> tuple[float, float, float]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected x,y,z (three numbers), got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected x,y,z numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite x,y,z voxel numbers, got {text!r}")
    return values


def add_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tomogram", help="tomogram (MRC or OME-Zarr) holding the example(s)")
    source.add_argument("--copick", metavar="CONFIG", help="copick project config JSON: examples from its picks")
    source.add_argument("--tomograms-star", metavar="STAR", help="RELION 5 tomograms.star: cut from its --tomo-name "
                        "tomogram")
    parser.add_argument("--tomo-name", metavar="NAME", help="with --tomograms-star: which tomogram (_rlnTomoName); "
                        "with --tomogram: its name, or a rule (relion, strip:TEXT, regex:PATTERN)")
    add_tomogram_kind(parser, "tomogram")
    parser.add_argument("--project-dir", help="RELION project folder the tomograms.star paths are relative to "
                        "(default: the current folder, else a folder above the file)")
    copick = parser.add_argument_group("copick (with --copick)")
    copick.add_argument("--run", help="copick run holding the examples")
    copick.add_argument("--object", help="pickable object whose picks are the examples")
    copick.add_argument("--user-id", help="user id of the pick set (default: any, when only one set exists)")
    copick.add_argument("--session-id", help="session id of the pick set (default: any, when only one exists)")
    copick.add_argument("--voxel-spacing", type=positive_float, metavar="A",
                        help="voxel spacing of the run's tomogram to cut from, Å (default: the only one)")
    copick.add_argument("--tomo-type", help="tomogram type, e.g. wbp (default: the only one at that spacing)")
    parser.add_argument("--at", type=_xyz, action="append", default=[], metavar="X,Y,Z",
                        help="example centre in voxels (repeat for several examples)")
    parser.add_argument("--coords", help="coordinate file with example centres (any supported 3D format)")
    parser.add_argument("-o", "--output", required=True, help="prompt file to write (e.g. ribosome.prompt)")
    parser.add_argument("--label", help="class name used in outputs (default: the output file stem)")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--binning", type=positive_float,
                       help="work on the tomogram binned by this factor, >= 1 (default: chosen by itself, see "
                       "--voxel-size)")
    scale.add_argument("--voxel-size", type=positive_float, metavar="A",
                       help="work at this voxel size (Å), Fourier-cropping the tomogram (default: the voxel size "
                       "the model was trained at, nearest the tomogram's, moved so the particle fits its range)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--diameter", type=positive_float, metavar="A", help="particle diameter in Å")
    size.add_argument("--diameter-vox", type=positive_float, metavar="VOXELS",
                      help="particle diameter in voxels of the tomogram as stored")
    size.add_argument("--diameter-px", type=positive_float, dest="diameter_vox", action=deprecated("--diameter-vox"),
                      help=argparse.SUPPRESS)
    parser.add_argument("--invert", action="store_true", help="the tomogram has bright particles (multiply by -1)")
    parser.add_argument("--model", help="ProPicker checkpoint: its trained scale and the diameter estimate (default: shipped weights)")
    add_threads(parser)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cryopick.errors import CryopickError
    from cryopick.io.formats.relion_tomo import open_tomogram
    from cryopick.picker3d.card import load_model
    from cryopick.picker3d.predict import set_threads
    from cryopick.picker3d.prompt import make_prompt, save_prompt

    set_threads(args.threads)
    out = Path(args.output)
    if out.is_dir():
        raise CryopickError(f"{out}: is a folder; give the prompt file to write (e.g. {out / 'particle.prompt'})")
    copick = {k: getattr(args, k) for k in ("run", "object", "user_id", "session_id", "voxel_spacing", "tomo_type")
              if getattr(args, k) is not None}
    if args.copick is None and copick:
        raise CryopickError(f"--{next(iter(copick)).replace('_', '-')} selects copick picks; give --copick CONFIG")
    if args.copick is not None and (args.tomo_name or args.tomogram_kind or args.project_dir):
        raise CryopickError("--tomo-name / --tomogram-kind / --project-dir name a tomogram file; not with --copick")
    if args.copick is not None:
        if args.coords or not (args.run and args.object):
            raise CryopickError("with --copick give --run RUN and --object NAME (the examples are its picks), "
                                "not --coords")
        return _from_copick(args)
    positions = list(args.at)
    if args.coords:
        from cryopick.io.coords import read_picks

        picks = read_picks(args.coords, **({"tomograms_star": args.tomograms_star} if args.tomograms_star else {}))
        if picks.ndim != 3:
            raise CryopickError(f"{args.coords}: 2D coordinates; a 3D prompt needs x, y, z")
        if args.tomograms_star and len(picks.micrographs) > 1:
            picks = picks.for_micrograph(args.tomo_name)
        positions += picks.coords.tolist()
    if not positions:
        raise CryopickError("give at least one example with --at x,y,z or --coords FILE")
    tomogram = open_tomogram(args.tomogram, args.tomograms_star, args.tomo_name, args.tomogram_kind or "reconstructed",
                             args.project_dir)
    prompt = make_prompt(tomogram, positions, label=args.label or Path(args.output).stem,
                         binning=args.binning, voxel_size=args.voxel_size, diameter_A=args.diameter,
                         diameter_px=args.diameter_vox, invert=args.invert, model=load_model(args.model))
    if prompt.diameter is None:
        log.warning("could not estimate the particle diameter from the examples; size limits need it: "
                    "remake the prompt with --diameter (Å) or --diameter-vox")
    save_prompt(prompt, args.output)
    d = "unknown" if prompt.diameter is None else f"{prompt.diameter:.1f} working voxels" + (
        f" = {prompt.diameter * prompt.voxel_size:.0f} Å" if prompt.voxel_size else "") + (
        " (estimated: the extent of the example's segmentation; give --diameter in Å if you know it)"
        if prompt.meta.get("diameter_estimated") else " (given)")
    vs = ("unknown" if prompt.voxel_size is None else f"{prompt.voxel_size:.2f} Å") + (
        f" (binning {prompt.binning:.2f}" + (", chosen for the model's trained scale)"
                                              if prompt.meta.get("scale") == "auto" else ")"))
    log.info("%s: %d example(s) of %r, working voxel size %s, diameter %s", args.output, len(positions),
             prompt.label, vs, d)
    return 0


def _from_copick(args: argparse.Namespace) -> int:
    from cryopick.picker3d.card import load_model
    from cryopick.picker3d.copick_runs import prompt_from_copick
    from cryopick.picker3d.prompt import save_prompt

    prompt = prompt_from_copick(args.copick, args.run, args.object, user_id=args.user_id, session_id=args.session_id,
                                voxel_spacing=args.voxel_spacing, tomo_type=args.tomo_type, label=args.label,
                                at=args.at, binning=args.binning, voxel_size=args.voxel_size,
                                diameter_A=args.diameter, diameter_px=args.diameter_vox, invert=args.invert,
                                model=load_model(args.model))
    if prompt.diameter is None:
        log.warning("could not estimate the particle diameter from the examples; size limits need it: "
                    "remake the prompt with --diameter (Å) or --diameter-vox")
    save_prompt(prompt, args.output)
    log.info("%s: %d example(s) of %r from copick run %s", args.output, len(prompt.subvolumes), prompt.label, args.run)
    return 0
