"""Train the 2D picker from a few annotated micrographs (resumable; writes a model directory).

The working scale is chosen from the particle diameter (about --target-diameter px per particle).
A strip of each micrograph is held out for validation, early stopping and the score threshold.
With only some particles annotated, give --labelled-fraction (or --particles-per-micrograph):
unlabelled pixels are then treated as positive-unlabelled (nnPU loss), not as background, and a second
network is trained on the first one's calibrated picks plus the labels (self-training; --no-self-training
skips it). The wall-time budget (--max-minutes) is shared by the stages.

Examples:
  cryopick train --micrographs mics/ --coords manual/ --diameter 108 -o model/
  cryopick train --micrographs mics/ --coords picks.star --diameter 190 --diameter-unit A --pixel-size 1.77 -o model/
  cryopick train --micrographs mics/ --coords sparse/ --diameter 108 --labelled-fraction 0.1 -o model/
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--micrographs", required=True, help="annotated micrographs: directory, glob or file")
    parser.add_argument("--coords", required=True, help="their coordinates: file or directory, any supported format")
    parser.add_argument("--coords-format", help="coordinate format (default: guessed from the extension)")
    parser.add_argument("--flip-y", action="store_true",
                        help="coordinates count y from the other edge (y -> H-1-y; e.g. CryoPPP CSV on MRC files)")
    parser.add_argument("--diameter", type=float, required=True, help="particle diameter")
    parser.add_argument("--diameter-unit", choices=["px", "A"], default="px",
                        help="unit of --diameter: pixels of the micrographs (default) or Å (needs the pixel size)")
    parser.add_argument("--pixel-size", type=float, help="Å/px of the micrographs (default: from the file headers)")
    parser.add_argument("--negatives", help="micrographs without particles (ice, carbon) to learn background from")
    parser.add_argument("--labelled-fraction", type=float, default=1.0,
                        help="fraction of the particles that are annotated (default 1: all)")
    parser.add_argument("--particles-per-micrograph", type=float,
                        help="sparse annotation: expected particles per micrograph (sets the labelled fraction)")
    parser.add_argument("--no-self-training", action="store_true",
                        help="sparse annotation: stop after the positive-unlabelled stage")
    parser.add_argument("--backbone", default="unet", help="model from the registry (default: unet)")
    parser.add_argument("--checkpoint", help="base weights for the backbone (e.g. a SAM2 checkpoint)")
    parser.add_argument("--target-diameter", type=float, default=16.0,
                        help="particle diameter at the working scale, px (sets the downsampling; default 16)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps-per-epoch", type=int, default=40)
    parser.add_argument("--patience", type=int, default=10, help="early stopping: epochs without improvement")
    parser.add_argument("--max-minutes", type=float, default=9.0, help="wall-time budget for the whole run")
    parser.add_argument("--batch-size", type=int, help="patches per step (default: 8, or 2 for large backbones)")
    parser.add_argument("--patch-size", type=int, help="training patch side in working px (default 192)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="width fraction of each micrograph held out for validation (0 = none)")
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="bfloat16 autocast")
    parser.add_argument("--min-distance", type=float,
                        help="duplicate suppression distance in micrograph px (default: one particle radius)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-o", "--output", required=True, help="model directory to write")


def main(args: argparse.Namespace) -> int:
    from cryopick.errors import CryopickError
    from cryopick.picker2d.train import TrainConfig, train_from_files

    out = Path(args.output)
    if args.overwrite and out.exists():
        shutil.rmtree(out)
    read_opts = {}
    if args.flip_y:
        from cryopick.io.images import list_images, read_micrograph

        read_opts = {"flip_y": True, "height": read_micrograph(list_images(args.micrographs)[0]).shape[0]}
    if args.labelled_fraction <= 0 or args.labelled_fraction > 1:
        raise CryopickError(f"--labelled-fraction must be in (0, 1], got {args.labelled_fraction}")
    config = TrainConfig(
        backbone=args.backbone, checkpoint=args.checkpoint, target_diameter=args.target_diameter,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, patience=args.patience,
        max_minutes=args.max_minutes, batch_size=args.batch_size, patch_size=args.patch_size, lr=args.lr,
        val_fraction=args.val_fraction, labelled_fraction=args.labelled_fraction,
        self_training=not args.no_self_training,
        bf16={"auto": None, "on": True, "off": False}[args.bf16], min_distance=args.min_distance,
        seed=args.seed, num_threads=args.threads, progress=not args.no_progress,
    )
    card = train_from_files(args.micrographs, args.coords, args.diameter, out, diameter_unit=args.diameter_unit,
                            pixel_size=args.pixel_size, coords_format=args.coords_format,
                            negatives=args.negatives, config=config,
                            particles_per_micrograph=args.particles_per_micrograph, **read_opts)
    cal = card.calibration
    f1 = cal.get("f1")
    print(f"model written to {out}: backbone {card.backbone}, working scale 1/{card.factor:.2f} "
          f"(particle {card.working_diameter:.1f} px), score threshold {card.score_threshold:.3f}"
          + (f" (validation F1 {f1:.3f}, precision {cal['precision']:.3f}, recall {cal['recall']:.3f})" if f1 else "")
          + f", {card.training['epochs_run']} epochs in {card.training['wall_seconds']:.0f} s")
    log.debug(json.dumps(card.training["history"][-3:]))
    return 0
