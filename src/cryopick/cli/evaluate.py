"""Score picks against ground truth and compare methods: Markdown + PNG + JSON report.

Particle level: optimal one-to-one matching, per micrograph and pooled, with the rule
  radius  centre within --tolerance × radius (default 1.0; 0.5 is also reported)
  iou3d   axis-aligned boxes of the particle size overlap with IoU > 0.6 (TomoTwin / ProPicker)
  czii    centre within 0.5 × radius, F-beta with beta = 4 (CZII cryo-ET challenge)
Over the score threshold (picks with scores): precision-recall curve, AUPRC, best-case F1 and its
threshold. These sweep the scores of the picks given, so they are threshold-free only when every
candidate was written (e.g. cryopick pick --threshold 0); on picks written above a threshold the curve
stops at their recall, and the report says so (and how far each curve goes).
Pixel level (--pixel, 2D, needs --images): Dice / IoU / precision / recall of disks vs truth disks.
Several methods (--picks NAME=PATH repeated, or --methods-dir with one subdirectory or file per
method): paired Wilcoxon signed-rank tests per micrograph, rank-biserial effect size r = z/sqrt(N),
Benjamini-Hochberg adjusted p-values, recall success rate at 0.6 / 0.8.

Examples:
  cryopick evaluate --picks picks/ --truth coordinates/ --diameter 108 -o report/
  cryopick evaluate --methods-dir results/ --truth coordinates/ --diameter 108 --images mics/ -o report/
  cryopick evaluate --picks picks.star --truth truth.star --diameter 20 --rule iou3d -o report3d/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cryopick.cli._args import finite_float, positive_float
from cryopick.errors import CryopickError

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--picks", action="append", default=[], metavar="[NAME=]PATH",
                        help="picks of one method (file or directory, any format); repeat for several methods")
    parser.add_argument("--picks-format", help="format of the picks (default: guessed per path)")
    parser.add_argument("--methods-dir", help="directory with one subdirectory (or file) of picks per method")
    parser.add_argument("--truth", required=True, help="ground-truth coordinates (file or directory, any format)")
    parser.add_argument("--truth-format", help="format of the ground truth (default: guessed)")
    parser.add_argument("--diameter", type=positive_float,
                        help="particle diameter in pixels (default: the truth's diameter column)")
    parser.add_argument("--rule", choices=["radius", "iou3d", "czii"], default="radius", help="matching rule")
    parser.add_argument("--tolerance", type=positive_float, default=None,
                        help="match distance in particle radii, radius rule (default: 1)")
    parser.add_argument("--min-score", type=finite_float,
                        help="ignore picks scoring below this for the fixed-threshold scores (default: keep all; "
                             "the PR curve always uses all picks)")
    parser.add_argument("--only-picked", action="store_true",
                        help="evaluate only micrographs that some method picked (default: every truth micrograph)")
    parser.add_argument("--reference", help="method tested against all others (default: all pairs)")
    parser.add_argument("--images", help="micrographs/tomograms (directory or glob) for overlays and --pixel")
    parser.add_argument("--overlay", action="append", default=[], metavar="MICROGRAPH",
                        help="micrograph to draw picks vs truth on (repeat; default: the first two)")
    parser.add_argument("--pixel", action="store_true", help="also compute pixel-level Dice/IoU (2D, needs --images)")
    parser.add_argument("--flip-y-picks", action="store_true", help="y -> H-1-y on the picks (needs --height or --images)")
    parser.add_argument("--flip-y-truth", action="store_true", help="y -> H-1-y on the truth (needs --height or --images)")
    parser.add_argument("--height", type=positive_float, help="image height in pixels for the --flip-y options")
    parser.add_argument("--picks-scale", type=positive_float,
                        help="multiply pick coordinates by F to reach the truth's frame (e.g. 4 for picks on 4x binned data)")
    parser.add_argument("--title", default="cryopick evaluation", help="report title")
    f = parser.add_argument_group("format details (passed to the coordinate readers)")
    f.add_argument("--voxel-size", type=positive_float, metavar="A",
                   help="voxel/pixel size in Å for formats in Å (copick, RELION 5 centred coordinates)")
    f.add_argument("--tomo-size", type=_tomo_size, metavar="X,Y,Z",
                   help="tomogram size in voxels (RELION 5 centred coordinates)")
    f.add_argument("--tomograms-star", help="RELION 5 tomograms.star giving sizes and voxel sizes")
    parser.add_argument("-o", "--output", required=True, help="report directory")


def _tomo_size(text: str) -> tuple[float, float, float]:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z (three numbers), got {text!r}")
    return tuple(positive_float(v.strip()) for v in parts)  # type: ignore[return-value]


def _method_sources(args) -> dict[str, Path]:
    sources: dict[str, Path] = {}
    for item in args.picks:
        name, sep, path = item.partition("=")
        if not sep:
            path = item
            name = Path(item.rstrip("/")).name if Path(item).is_dir() else Path(item).stem
        sources[name] = Path(path)
    if args.methods_dir:
        root = Path(args.methods_dir)
        if not root.is_dir():
            raise CryopickError(f"{root}: --methods-dir must be a directory with one entry per method")
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue
            sources[entry.stem if entry.is_file() else entry.name] = entry
    if not sources:
        raise CryopickError("no picks given: use --picks PATH (repeatable) or --methods-dir DIR")
    return sources


def _match(picks, names: list[str], what: str, target: str):
    """Picks whose micrograph names match ``names`` (those that do not are dropped with a warning),
    or an error when none does and ``picks`` is not empty: scoring against micrographs that share
    nothing with the picks (or truth without its images) gives a meaningless F1, not a result."""
    import warnings

    from cryopick.io.coords import match_micrograph_names

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        matched = match_micrograph_names(picks, names, allow_unmatched=True, source=what)
    if len(picks) and not len(matched):
        own = picks.micrographs
        raise CryopickError(
            f"{what}: none of its {len(own)} micrograph name(s) (e.g. {own[0]!r}) is {target} (named like "
            f"{', '.join(repr(n) for n in names[:3]) or 'nothing'}); give files of the same micrographs, or rename "
            "one side to the other's file stems")
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    return matched


def main(args: argparse.Namespace) -> int:
    import warnings

    from cryopick.io.images import MissingPixelSizeWarning

    with warnings.catch_warnings():  # evaluation is in pixels; the pixel size is not needed
        warnings.simplefilter("ignore", MissingPixelSizeWarning)
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    import numpy as np

    from cryopick.evaluate.report import evaluate_methods, write_report
    from cryopick.io.coords import read_picks
    from cryopick.io.images import image_name, list_images, read_image
    from cryopick.picks import concat, flip_y

    opts = {}
    if args.voxel_size is not None:
        opts["voxel_size"] = args.voxel_size
    if args.tomo_size:
        opts["tomo_size"] = args.tomo_size
    if args.tomograms_star:
        opts["tomograms_star"] = args.tomograms_star
    truth = read_picks(args.truth, format=args.truth_format, **opts)
    if len(truth) == 0:
        raise CryopickError(f"{args.truth}: the ground truth holds no particle")
    image_paths = {image_name(p): p for p in list_images(args.images)} if args.images else {}
    if image_paths:
        truth = _match(truth, list(image_paths), f"--truth {args.truth}", f"an image in --images {args.images}")

    def heights() -> dict[str, float]:
        if args.height is not None:
            return {}
        if not image_paths:
            raise CryopickError("--flip-y-* needs --height H or --images (to read each image's height)")
        return {n: read_image(p).shape[-2] for n, p in image_paths.items()}

    def flip(picks, h):
        if not len(picks):
            return picks
        out = concat([flip_y(sub, args.height if args.height is not None else h[name]) for name, sub in picks.split()])
        out.meta = dict(picks.meta)  # keep what the reader learnt (e.g. the threshold the picks were written with)
        return out

    if args.flip_y_truth:
        truth = flip(truth, heights())
    methods = {}
    for name, path in _method_sources(args).items():
        picks = read_picks(path, format=args.picks_format, **opts,
                           **({"scale": args.picks_scale} if args.picks_scale else {}))
        if picks.ndim != truth.ndim:
            raise CryopickError(f"{path}: picks are {picks.ndim}D but the truth ({args.truth}) is {truth.ndim}D")
        picks = _match(picks, truth.micrographs, f"{path} ({len(picks)} picks read as {picks.meta.get('format')})",
                       f"a micrograph of the ground truth {args.truth}")
        if args.flip_y_picks:
            picks = flip(picks, heights())
        methods[name] = picks
        log.info("%s: %d picks on %d micrographs (%s)", name, len(picks), len(picks.micrographs), path)
    shapes = None
    if args.pixel:
        if not image_paths:
            raise CryopickError("--pixel needs --images (the image shapes)")
        shapes = {n: read_image(image_paths[n]).shape for n in truth.micrographs if n in image_paths}
        missing = [n for n in truth.micrographs if n not in shapes]
        if missing:
            raise CryopickError(f"--pixel: no image for {len(missing)} micrograph(s), e.g. {missing[0]}")
    names = None
    if args.only_picked:
        picked = set().union(*(set(p.micrographs) for p in methods.values()))
        names = [n for n in truth.micrographs if n in picked]
        if not names:
            raise CryopickError("--only-picked: no micrograph of the truth has picks")
    tolerance = {} if args.tolerance is None else {"tolerance": args.tolerance}
    summary = evaluate_methods(methods, truth, args.diameter, args.rule, min_score=args.min_score, shapes=shapes,
                               reference=args.reference, micrographs=names, **tolerance)
    images = {}
    chosen = args.overlay or [n for n in (names or truth.micrographs) if n in image_paths][:2]
    for name in chosen:
        if name not in image_paths:
            raise CryopickError(f"--overlay {name}: no such image among --images")
        images[name] = np.asarray(read_image(image_paths[name]).data, dtype=np.float32)
    paths = write_report(summary, args.output, images=images, methods=methods, truth=truth,
                         overlay_micrographs=chosen or None, title=args.title)
    key = "radius@%g" % summary["settings"]["tolerance"] if args.rule == "radius" else args.rule
    for name, entry in summary["methods"].items():
        p = entry["pooled"][key]
        curve = entry.get("curve")
        extra = (f"  AUPRC {curve['auprc']:.3f}  best F1 {curve['best']['f1']:.3f}  (curve ends at recall "
                 f"{curve['scope']['max_recall']:.3f})" if curve else "")
        print(f"{name:>20s}  precision {p['precision']:.3f}  recall {p['recall']:.3f}  F1 {p['f1']:.3f}{extra}")
    for name, entry in summary["methods"].items():
        scope = (entry.get("curve") or {}).get("scope")
        if scope and not scope["complete"] and scope["written_threshold"] is not None:
            log.warning("%s: %s", name, scope["note"])
    print(f"report: {paths['markdown']}")
    return 0
