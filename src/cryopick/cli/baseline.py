"""Pick with a training-free baseline: Difference of Gaussians or classic template matching.

  dog       band-pass blob detector tuned to the particle diameter (no training)
  template  templates averaged from annotated particles (--coords), FFT normalised cross-correlation
            over in-plane angles, peaks at least --min-distance apart (RELION/EMAN2/Scipion style)

The threshold is --threshold, or, when annotations are given (--coords), the best-F1 threshold on
the annotated micrographs. Every pick keeps its score (figure of merit), so thresholds can be changed
later (cryopick convert --min-score). Reruns resume: finished micrographs are not picked again.

Examples:
  cryopick baseline dog --micrographs mics/ --diameter 108 -o picks_dog/
  cryopick baseline template --micrographs mics/ --coords train_coords/ --diameter 108 -o picks_tm/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import warnings
from pathlib import Path

from cryopick.cli._args import finite_float, nonnegative_float, positive_float, positive_int
from cryopick.errors import CryopickError

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=["dog", "template"], help="baseline picker")
    parser.add_argument("--micrographs", required=True, nargs="+",
                        help="micrograph files, a directory or a glob pattern")
    parser.add_argument("--diameter", type=positive_float, required=True,
                        help="particle diameter in pixels of the micrographs")
    parser.add_argument("-o", "--output", required=True, help="output directory for the picks")
    parser.add_argument("--format", default="relion", help="output coordinate format (default relion STAR)")
    parser.add_argument("--coords", help="annotations (file or directory, any format): template source and "
                                         "threshold calibration")
    parser.add_argument("--coords-format", help="format of --coords (default: guessed)")
    parser.add_argument("--coords-flip-y", action="store_true",
                        help="the annotations count y from the other edge (e.g. CryoPPP CSV vs MRC): y -> H-1-y")
    parser.add_argument("--threshold", type=finite_float,
                        help="minimum score (DoG: robust σ of the band-passed image; template: NCC); default: "
                             "calibrated on --coords, else DoG 1.0 / template 0.3")
    parser.add_argument("--min-distance", type=positive_float,
                        help="pixels between picks (default 0.5 × diameter)")
    parser.add_argument("--working-diameter", type=positive_float, default=None,
                        help="particle diameter in pixels after Fourier-crop downsampling (default 24)")
    parser.add_argument("--exclude-border", type=nonnegative_float,
                        help="drop picks this close to the edge in pixels (default: the particle radius)")
    g = parser.add_argument_group("dog")
    g.add_argument("--polarity", choices=["dark", "bright"], default=None, help="particle contrast (default dark)")
    g.add_argument("--sigma-ratio", type=_ratio, default=None, help="σ2/σ1 of the two Gaussians, > 1 (default 1.6)")
    g = parser.add_argument_group("template")
    g.add_argument("--templates", help="templates .npz to use (or to write, when --coords is given)")
    g.add_argument("--n-templates", type=positive_int, default=None, help="class averages to build (default 1)")
    g.add_argument("--angle-step", type=_angle, default=None,
                   help="in-plane angular step in degrees, 0 < step <= 360 (default 10)")
    g.add_argument("--max-particles", type=positive_int, default=None,
                   help="annotated particles used for templates (default 2000)")


def _ratio(text: str) -> float:
    value = positive_float(text)
    if value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be > 1, got {text}")
    return value


def _angle(text: str) -> float:
    value = positive_float(text)
    if value > 360.0:
        raise argparse.ArgumentTypeError(f"must be at most 360 degrees, got {text}")
    return value


def _given(**options) -> dict:
    """The options the user gave (the library's defaults stand for the others)."""
    return {k: v for k, v in options.items() if v is not None}


def main(args: argparse.Namespace) -> int:
    from cryopick.baselines.dog import dog_pick
    from cryopick.baselines.pipeline import PARTIAL_DIR, BaselineRun, calibrate_score_threshold, load_image, pick_all
    from cryopick.baselines.template2d import TemplateSet, build_templates, template_pick
    from cryopick.io.atomic import write_text
    from cryopick.io.coords import format_module, read_picks, write_picks
    from cryopick.io.images import image_name, list_images
    from cryopick.io.names import match_micrograph_names
    from cryopick.picks import concat, flip_y

    module = format_module(args.format)
    if 2 not in getattr(module, "NDIM", (2,)):
        raise CryopickError(f"--format {args.format}: holds 3D picks only; choose relion, cryolo, eman2, topaz, "
                            "cryoppp or imod")
    paths = list_images(args.micrographs if len(args.micrographs) > 1 else args.micrographs[0])
    out = Path(args.output)
    truth = None
    if args.coords:
        truth = read_picks(args.coords, format=args.coords_format)
        truth = match_micrograph_names(truth, [image_name(p) for p in paths], allow_unmatched=True,
                                       source=args.coords)
        if args.coords_flip_y:
            heights = {image_name(p): load_image(p, header_only=True).shape[-2] for p in paths}
            truth = concat([flip_y(sub, heights[name]) for name, sub in truth.split()])
        if len(truth) == 0:
            raise CryopickError(f"{args.coords}: no annotated particle on the given micrographs")
    common = dict(min_distance=args.min_distance, threshold=None, exclude_border=args.exclude_border)
    if args.method == "dog":
        dog_opts = _given(working_diameter=args.working_diameter, sigma_ratio=args.sigma_ratio,
                          polarity=args.polarity)

        def picker(image):
            return dog_pick(image, args.diameter, **dog_opts, **common)
        default_threshold = 1.0
        tag = "dog_" + "_".join(f"{k}{v}" for k, v in sorted({**dog_opts, **common}.items()) if v is not None)
    else:
        if truth is not None:
            by_name = {image_name(p): p for p in paths}
            names = [n for n in truth.micrographs if n in by_name]
            images = [load_image(by_name[n]) for n in names]
            templates = build_templates(images, [truth.for_micrograph(n).coords for n in names], args.diameter,
                                        **_given(working_diameter=args.working_diameter, n_templates=args.n_templates,
                                                 angle_step=args.angle_step, max_particles=args.max_particles))
            template_path = Path(args.templates) if args.templates else out / "templates.npz"
            templates.save(template_path)
            log.info("templates from %d particles on %d micrographs -> %s", sum(templates.n_particles), len(names),
                     template_path)
        elif args.templates:
            templates = TemplateSet.load(args.templates)
        else:
            raise CryopickError("the template picker needs annotated particles (--coords) or --templates FILE")
        angle = _given(angle_step=args.angle_step)

        def picker(image):
            return template_pick(image, templates, **angle, **common)
        default_threshold = 0.3
        digest = hashlib.sha1(templates.templates.tobytes()).hexdigest()[:10]  # new templates -> pick again
        tag = f"template_{digest}_" + "_".join(f"{k}{v}" for k, v in sorted({**angle, **common}.items())
                                               if v is not None)
    picks = pick_all(paths, picker, args.diameter, cache_dir=out / PARTIAL_DIR / tag, load=load_image)
    calibration = None
    if args.threshold is not None:
        threshold = args.threshold
    elif truth is not None:
        calibration = calibrate_score_threshold(picks, truth, args.diameter)
        threshold = calibration["threshold"]
        log.info("threshold %.4g calibrated on %d annotated micrographs (F1 %.3f, precision %.3f, recall %.3f)",
                 threshold, len(calibration["micrographs"]), calibration["f1"], calibration["precision"],
                 calibration["recall"])
    else:
        threshold = default_threshold
    run = BaselineRun(picks, threshold, calibration)
    final = run.thresholded()
    if len(final) == 0:
        scores = picks.scores
        found = (f"the {len(picks)} peaks found score {scores.min():.3g} to {scores.max():.3g}" if len(picks)
                 else "no peak was found at all")
        warnings.warn(f"{args.method}: no pick scores at least {threshold:.4g} on {len(paths)} micrograph(s); {found}; "
                      "check --diameter (pixels of the micrographs) and --polarity, or lower --threshold",
                      stacklevel=1)
    write_picks(final, out, args.format)
    write_text(out / "baseline.json", json.dumps(dict(method=args.method, threshold=threshold, calibration=calibration,
                                                      n_picks=int(len(final)), n_micrographs=len(paths),
                                                      settings={k: v for k, v in vars(args).items()
                                                                if not k.startswith("_")}), indent=1, default=str))
    log.info("%d picks on %d micrographs (threshold %.4g) -> %s", len(final), len(paths), threshold, out)
    return 0
