"""Convert particle coordinates between formats (RELION, CryoPPP, EMAN2, crYOLO, Topaz, IMOD, copick).

Conversions are explicit and applied in this order, in the input's frame: --from-pixel-size (state
the input's Å/px), --swap-xy, --flip-y (y -> H-1-y, with --height H of the input frame), --scale F or
--from-pixel-size A --to-pixel-size B, --min-score S.

Existing output files are never replaced unless --force is given. Picks from a `cryopick pick` or
`cryopick baseline` folder carry the particle diameter of their model, so box formats need no --diameter.

Examples:
  cryopick convert coordinates/ -o AutoPick/job100 --from cryoppp --to relion --flip-y --height 4096
  cryopick convert particles.txt -o box/ --to eman2 --scale 8 --diameter 180
  cryopick convert particles.star -o picks/ --to copick --tomo-size 928,928,464 --voxel-size 10
"""

from __future__ import annotations

import argparse
import logging

from cryopick.cli._args import finite_float, positive_float
from cryopick.errors import CryopickError
from cryopick.io.coords import FORMATS, read_picks, write_picks

log = logging.getLogger(__name__)


def _tomo_size(text: str) -> tuple[float, float, float]:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z (three numbers), got {text!r}")
    return tuple(positive_float(v.strip()) for v in parts)  # type: ignore[return-value]


def add_args(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(FORMATS)
    parser.add_argument("input", help="coordinate file or directory of per-micrograph files")
    parser.add_argument("-o", "--output", required=True,
                        help="output file (one file) or directory (one file per micrograph); existing files are "
                             "not replaced unless --force")
    parser.add_argument("--force", action="store_true", help="overwrite output files that exist already")
    parser.add_argument("--from", dest="from_format", metavar="FMT", help=f"input format ({names}); default: guessed")
    parser.add_argument("--to", dest="to_format", metavar="FMT", help=f"output format ({names}); default: from -o")
    g = parser.add_argument_group("frame conversions")
    g.add_argument("--flip-y", action="store_true", help="mirror rows: y -> H - 1 - y (needs --height)")
    g.add_argument("--height", type=positive_float, help="image height H in pixels of the input frame, for --flip-y")
    g.add_argument("--swap-xy", action="store_true", help="exchange x and y")
    g.add_argument("--scale", type=positive_float, metavar="F",
                   help="multiply coordinates and diameters by F > 0 (0.25 = 4x binned; default: no scaling)")
    g.add_argument("--from-pixel-size", type=positive_float, metavar="A",
                   help="Å/px of the input coordinates (default: as the input file states)")
    g.add_argument("--to-pixel-size", type=positive_float, metavar="B", help="Å/px of the output coordinates")
    g.add_argument("--min-score", type=finite_float, metavar="S",
                   help="drop picks scoring below S (default: keep all)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--split", dest="per_micrograph", action="store_true", default=True,
                       help="one output file per micrograph in the -o directory (default)")
    split.add_argument("--merge", dest="per_micrograph", action="store_false",
                       help="all micrographs in one output file")
    f = parser.add_argument_group("format details")
    f.add_argument("--diameter", type=positive_float, metavar="D",
                   help="particle diameter in pixels (for formats lacking it; default: as the picks state)")
    f.add_argument("--box-size", type=positive_float, metavar="B",
                   help="box size in pixels for EMAN2 .box / crYOLO .cbox output (default: the particle diameter)")
    f.add_argument("--tomo-size", type=_tomo_size, metavar="X,Y,Z",
                   help="tomogram size in voxels (RELION 5 centred Å coordinates)")
    f.add_argument("--voxel-size", type=positive_float, metavar="A", help="tomogram voxel size in Å (RELION 5 / copick)")
    f.add_argument("--tomograms-star", help="RELION 5 tomograms.star giving sizes and voxel sizes")
    f.add_argument("--project-dir", help="RELION project directory that index paths are relative to")
    f.add_argument("--micrograph-suffix", default=".mrc", help="extension of micrograph names in RELION output")
    f.add_argument("--object-name", help="copick pickable object name (default: the picks' label)")
    f.add_argument("--user-id", default="cryopick", help="copick user id")


def main(args: argparse.Namespace) -> int:
    if args.flip_y and args.height is None:
        raise CryopickError("--flip-y needs --height H (the image height in pixels of the input frame)")
    if args.scale is not None and (args.from_pixel_size or args.to_pixel_size):
        raise CryopickError("give either --scale or --from-pixel-size/--to-pixel-size, not both")
    if args.to_pixel_size is not None and args.from_pixel_size is None:
        log.debug("no --from-pixel-size: using the pixel size stated by the input file")
    shared = {k: v for k, v in dict(tomo_size=args.tomo_size, voxel_size=args.voxel_size,
                                    project_dir=args.project_dir, diameter=args.diameter).items() if v is not None}
    read_opts = dict(shared)
    if args.tomograms_star:
        read_opts["tomograms_star"] = args.tomograms_star
    if args.from_pixel_size is not None:
        read_opts["pixel_size"] = args.from_pixel_size
    picks = read_picks(args.input, format=args.from_format, **read_opts)
    if args.from_pixel_size is not None:  # the user's statement wins over the file's
        picks = picks._with(picks.table, pixel_size=args.from_pixel_size)
    elif picks.pixel_size is None and args.voxel_size is not None:
        picks = picks._with(picks.table, pixel_size=args.voxel_size)
    if picks.meta.get("csv_layout") == "cryoppp" and not args.flip_y:
        log.info("note: CryoPPP y counts from the top of the JPEG; add --flip-y --height H to put the picks on "
                 "the MRC frame")
    n_in = len(picks)
    shared.pop("voxel_size", None)  # now carried by picks.pixel_size (rescaled with the picks)
    write_opts = dict(shared, micrograph_suffix=args.micrograph_suffix, user_id=args.user_id,
                      flip_y=args.flip_y, height=args.height, swap_xy=args.swap_xy, scale=args.scale,
                      to_pixel_size=args.to_pixel_size, min_score=args.min_score)
    for key in ("box_size", "object_name"):
        if getattr(args, key) is not None:
            write_opts[key] = getattr(args, key)
    files = write_picks(picks, args.output, format=args.to_format, per_micrograph=args.per_micrograph,
                        overwrite=args.force, **{k: v for k, v in write_opts.items() if v is not None and v is not False})
    log.info(f"read {n_in} picks ({len(picks.micrographs)} micrographs) from {args.input}; "
             f"wrote {len(files)} file(s) to {args.output}")
    return 0
