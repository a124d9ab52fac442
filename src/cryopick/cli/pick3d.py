"""Pick every instance of the prompted particle(s) in tomograms (ProPicker).

Examples:
  cryopick pick3d --prompt ribosome.prompt --tomograms tomos/ -o picks/
  cryopick pick3d --prompt ribosome.prompt --prompt apoferritin.prompt --tomograms tomos/ -o picks/ --mode tm
  cryopick pick3d --prompt ribosome.prompt --tomograms tomos/ -o picks/ --settings ribosome_calibrated.json
Outputs per format and class: picks/relion5/<label>/<tomogram>.star (+ autopick.star), picks/imod/<label>/
<tomogram>.coords, picks/copick/ExperimentRuns/<tomogram>/Picks/..., picks/relion3/<label>/<tomogram>.star.
Coordinates are voxels of each tomogram as stored. Finished tomograms are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

FORMATS = ("relion5", "relion3", "copick", "imod")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", required=True, help="prompt file (repeat for several classes)")
    parser.add_argument("--tomograms", required=True, nargs="+", help="tomogram files, a folder, or a glob")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--mode", choices=["cluster", "tm"], help="ProPicker-C (default) or ProPicker-TM")
    parser.add_argument("--stride", type=int, default=32, help="window spacing in voxels (64 = no overlap)")
    parser.add_argument("--window", type=int, default=64, help="window edge in voxels")
    parser.add_argument("--settings", action="append", default=[],
                        help="calibration JSON from `cryopick calibrate3d` (one, or one per --prompt)")
    parser.add_argument("--threshold", type=float,
                        help="probability threshold (overrides settings; default: the model's recommended value)")
    parser.add_argument("--min-size", type=float, help="minimum component size, working voxels")
    parser.add_argument("--max-size", type=float, help="maximum component size, working voxels")
    parser.add_argument("--min-factor", type=float,
                        help="minimum component size as a multiple of the particle's sphere volume "
                        "(default: the model's recommended value)")
    parser.add_argument("--max-factor", type=float,
                        help="maximum component size as a multiple of the particle's sphere volume "
                        "(default: the model's recommended value)")
    parser.add_argument("--min-similarity", type=float,
                        help="drop components whose sub-volume's similarity to the prompt (cosine, -1..1) is "
                        "below this (cluster mode; default: the model's recommended value)")
    parser.add_argument("--no-similarity", action="store_true", help="no prompt-similarity check of the components")
    parser.add_argument("--min-distance", type=float, help="NMS distance, working voxels (default: radius)")
    parser.add_argument("--tm-threshold", type=float, help="minimum NCC of a ProPicker-TM pick")
    parser.add_argument("--tm-angle", type=float, help="ProPicker-TM angular step, degrees (default 30)")
    parser.add_argument("--refine", type=int, metavar="N",
                        help="segment twice: the second time prompted with the prompt plus the N first-pass picks "
                        "most similar to it (self-prompting; twice the time; 0 = off; default: the settings file's)")
    parser.add_argument("--format", nargs="+", default=["relion5"], choices=FORMATS, help="output formats")
    parser.add_argument("--model", help="ProPicker checkpoint (default: the shipped propicker-small weights)")
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--no-bf16", action="store_true", help="float32 inference (bf16 is the default)")
    parser.add_argument("--save-maps", action="store_true", help="also write probability maps (MRC) to OUT/maps")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0 = torch's default; one thread is fastest on a shared machine)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--overwrite", action="store_true", help="redo tomograms that are already finished")


def main(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace
    from pathlib import Path

    import torch

    from cryopick.errors import CryopickError
    from cryopick.io.atomic import write_text
    from cryopick.io.images import list_images, read_tomogram
    from cryopick.models.promptable3d import load_propicker
    from cryopick.picker3d.card import PickSettings, default_settings
    from cryopick.picker3d.pick import pick_tomogram, write_picks3d
    from cryopick.picker3d.prompt import load_prompt

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = [load_prompt(p) for p in args.prompt]
    labels = [p.label for p in prompts]
    if len(set(labels)) != len(labels):
        raise CryopickError(f"prompts share a label ({labels}); give distinct --label values when making them")
    if len(args.settings) not in (0, 1, len(prompts)):
        raise CryopickError("give one --settings file, or one per --prompt in the same order")
    model = load_propicker(args.model).to(args.device)
    base = [PickSettings.load(s) for s in args.settings] or [default_settings(model)]
    if len(base) == 1:
        base = base * len(prompts)
    overrides = {k: v for k, v in {"mode": args.mode, "threshold": args.threshold, "min_size": args.min_size,
                                   "max_size": args.max_size, "min_factor": args.min_factor,
                                   "max_factor": args.max_factor, "min_distance": args.min_distance,
                                   "tm_threshold": args.tm_threshold, "tm_angle": args.tm_angle}.items()
                 if v is not None}
    if args.min_similarity is not None and args.no_similarity:
        raise CryopickError("give either --min-similarity or --no-similarity")
    if args.min_similarity is not None:
        overrides["min_similarity"] = args.min_similarity
    settings = [replace(s, **overrides, **({"min_similarity": None} if args.no_similarity else {})) for s in base]
    paths = list_images(args.tomograms[0] if len(args.tomograms) == 1 else args.tomograms)
    out = Path(args.output)
    done_dir = out / ".done"
    for path in paths:
        image = read_tomogram(path)
        marker = done_dir / f"{image.name}.json"
        if marker.exists() and not args.overwrite:
            log.info("%s: already picked (%s); skipping", image.name, marker)
            continue
        picks = pick_tomogram(image, prompts, model, settings, stride=args.stride, window=args.window,
                              batch_size=args.batch, bf16=not args.no_bf16,
                              save_maps=out / "maps" if args.save_maps else None, refine=args.refine)
        write_picks3d(picks, out, args.format, tomo_shape=image.shape)
        counts = picks.table["label"].value_counts().to_dict()
        write_text(marker, json.dumps({"tomogram": str(path), "picks": counts}) + "\n")
        log.info("%s: %s", image.name, ", ".join(f"{counts.get(l, 0)} {l}" for l in labels))
    return 0
