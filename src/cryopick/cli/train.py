"""Train the 2D picker from a few annotated micrographs (resumable; writes a model directory).

The working scale is chosen from the particle diameter (about --target-diameter px per particle).
A strip of each micrograph is held out for validation, early stopping and the score threshold.
With only some particles annotated, give --labelled-fraction (or --particles-per-micrograph); without
either, far fewer annotated particles than a blob count at the diameter finds is detected as sparse
annotation, said in one line, and trained the same way (--no-sparse-detection: trained as complete):
unlabelled pixels are then treated as positive-unlabelled (nnPU loss), not as background, and a second
network is trained on the first one's calibrated picks plus the labels (self-training; --no-self-training
skips it). With --unlabelled-max N (default 0: off), up to N micrographs without coordinates, and those
given with --unlabelled, are used unannotated for self-training: the first network's calibrated picks
become their labels, a second network trains on labels + picks, and the stage with the better
validation F1 is kept. The time budget (--max-minutes) is shared by the stages; it is charged as wall
time less the share of the cores other processes took (load stretches the run, not cuts it), never
stops before --min-epochs, and the run
says up front how many epochs fit and warns (with the fix) when the budget cuts training short.
PyTorch uses one thread per free core (--threads to choose). Writes model.pt, card.json and
training_curve.png.

Examples:
  cryopick train --micrographs mics/ --coords manual/ --diameter 108 -o model/
  cryopick train --micrographs mics/ --coords picks.star --diameter 190 --diameter-unit A --pixel-size 1.77 -o model/
  cryopick train --micrographs mics/ --coords sparse/ --diameter 108 --labelled-fraction 0.1 -o model/
  cryopick train --micrographs mics/ --coords manual/ --unlabelled 'all_mics/*.mrc' --diameter 108 -o model/
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cryopick.cli._args import (
    add_bf16,
    add_threads,
    bf16_value,
    fraction,
    nonnegative_float,
    nonnegative_int,
    open_fraction,
    positive_float,
    positive_int,
)

log = logging.getLogger(__name__)

# Options passed to TrainConfig when given (argparse dest -> TrainConfig field); None = the library default.
CONFIG_OPTIONS = ("backbone", "checkpoint", "init", "target_diameter", "epochs", "steps_per_epoch", "patience", "max_minutes",
                  "min_epochs", "batch_size", "patch_size", "lr", "val_fraction", "labelled_fraction", "min_distance",
                  "seed", "unlabelled_max", "template_prior")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--micrographs", required=True,
                        help="annotated micrographs: directory, glob or file; those without coordinates are used "
                             "unannotated for self-training (see --unlabelled)")
    parser.add_argument("--coords", required=True,
                        help="their coordinates: file, directory or glob, any supported format; coordinates of "
                             "micrographs not in --micrographs are skipped")
    parser.add_argument("--coords-format", help="coordinate format (default: guessed from the extension)")
    parser.add_argument("--flip-y", action="store_true",
                        help="coordinates count y from the other edge (y -> H-1-y; e.g. CryoPPP CSV on MRC files)")
    parser.add_argument("--diameter", type=positive_float, required=True, help="particle diameter (unit: --diameter-unit)")
    parser.add_argument("--diameter-unit", choices=["px", "A"], default="px",
                        help="unit of --diameter: pixels of the micrographs (default) or Å (needs the pixel size)")
    parser.add_argument("--pixel-size", type=positive_float,
                        help="Å/px of the micrographs (default: from the file headers)")
    parser.add_argument("--negatives", help="micrographs without particles (ice, carbon) to learn background from")
    parser.add_argument("--labelled-fraction", type=open_fraction,
                        help="fraction of the particles that are annotated, in (0, 1] (default 1: all)")
    parser.add_argument("--particles-per-micrograph", type=positive_float,
                        help="sparse annotation: expected particles per micrograph (sets the labelled fraction)")
    parser.add_argument("--no-sparse-detection", action="store_true",
                        help="do not estimate how many particles the annotated micrographs hold (by default, when "
                             "far more than annotated and neither option above is given, training treats the "
                             "annotation as sparse: positive-unlabelled loss, PU-corrected threshold)")
    parser.add_argument("--unlabelled", nargs="+", metavar="DIR|GLOB|FILE",
                        help="unannotated micrographs of the same data set for self-training: the first network's "
                             "calibrated picks become their labels for a second one (with the --micrographs "
                             "without coordinates; needs --unlabelled-max N)")
    parser.add_argument("--unlabelled-max", type=nonnegative_int,
                        help="most unannotated micrographs used for self-training, chosen spread over the list "
                             "(default 0 = off: it measured no gain for twice the training time)")
    parser.add_argument("--no-self-training", action="store_true",
                        help="no second stage: sparse annotation stops after the positive-unlabelled stage, and "
                             "unannotated micrographs are not used")
    parser.add_argument("--backbone", help="model from the registry (default: unet)")
    parser.add_argument("--checkpoint", help="base weights for the backbone (e.g. a SAM2 checkpoint; default: none)")
    parser.add_argument("--init", choices=["pretrained", "random"],
                        help="starting weights of the unet backbone: 'pretrained' (shipped in the package, pretrained on "
                             "simulated micrographs) or 'random' (default: pretrained)")
    parser.add_argument("--template-prior", action=argparse.BooleanOptionalAction, default=None,
                        help="also feed the unet the template-matching response to the average of the annotated "
                             "particles, as a second input channel (default: off)")
    parser.add_argument("--target-diameter", type=positive_float,
                        help="particle diameter at the working scale, working px, >= 4 (sets the downsampling; "
                             "default 16)")
    parser.add_argument("--epochs", type=positive_int, help="training epochs (default 30)")
    parser.add_argument("--steps-per-epoch", type=positive_int,
                        help="optimiser steps per epoch, each on --batch-size patches (default 40)")
    parser.add_argument("--patience", type=positive_int,
                        help="early stopping: epochs without a better validation F1 (default 10)")
    parser.add_argument("--max-minutes", type=positive_float,
                        help="time budget for the run in minutes: wall time less the share of the cores "
                             "other processes took (default 9)")
    parser.add_argument("--min-epochs", type=positive_int,
                        help="epochs trained whatever the time budget (default 5, at most --epochs)")
    parser.add_argument("--batch-size", type=positive_int, help="patches per step (default: 8, or 2 for large backbones)")
    parser.add_argument("--patch-size", type=positive_int,
                        help="training patch side in working px, >= 16 (default: 192, or the backbone's size)")
    parser.add_argument("--lr", type=positive_float,
                        help="peak learning rate of AdamW, cosine-decayed to 1/100 of it (default 0.002)")
    parser.add_argument("--val-fraction", type=fraction,
                        help="width fraction of each micrograph held out for validation, in [0, 1) "
                             "(0 = none; default 0.2)")
    add_bf16(parser)
    parser.add_argument("--min-distance", type=nonnegative_float,
                        help="duplicate suppression distance in micrograph px (default: one particle radius)")
    parser.add_argument("--seed", type=nonnegative_int, help="random seed of initialisation and sampling (default 0)")
    add_threads(parser)
    parser.add_argument("--redo", "--overwrite", dest="redo", action="store_true",
                        help="start over: replace the model, card and checkpoints in the output folder (other files "
                             "there are kept); also to start over from a damaged checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-o", "--output", required=True, help="model directory to write")


def config_from_args(args: argparse.Namespace):
    """TrainConfig from the parsed options; options not given keep the library defaults."""
    from cryopick.picker2d.train import TrainConfig

    given = {k: getattr(args, k) for k in CONFIG_OPTIONS if getattr(args, k, None) is not None}
    return TrainConfig(**given, self_training=not args.no_self_training, bf16=bf16_value(args.bf16),
                       num_threads=args.threads, progress=not args.no_progress).validate()


def summary_line(card, out) -> str:
    """One line about the trained model: scale, threshold, validation scores, epochs and why it stopped."""
    cal, training = card.calibration, card.training
    f1 = cal.get("f1")
    requested = training.get("epochs_requested")
    epochs = f"{training['epochs_run']}" + (f" of {requested}" if requested else "")
    return (f"model written to {out}: backbone {card.backbone}, working scale 1/{card.factor:.2f} "
            f"(particle {card.working_diameter:.1f} px), score threshold {card.score_threshold:.3f}"
            + (f" (validation F1 {f1:.3f}, precision {cal['precision']:.3f}, recall {cal['recall']:.3f})" if f1 else "")
            + f"; {epochs} epochs in {training['wall_seconds']:.0f} s (stopped: {training['stopped']})"
            + _pool_note(training.get("unlabelled_pool")))


def _pool_note(pool: dict | None) -> str:
    if not pool:
        return ""
    if not pool.get("used"):
        return f"; {pool['n_micrographs']} unannotated micrographs not used"
    f1 = ", ".join(f"{f:.3f}" if f is not None else "-" for f in pool["stage_validation_f1"])
    return (f"; self-training on {pool['n_micrographs']} unannotated micrographs ({pool['n_pseudo_labels']} "
            f"pseudo-labels), stage {pool['shipped_stage']} shipped (validation F1 per stage: {f1})")


def _one_or_list(values: list[str] | None):
    """``--unlabelled`` as given: one directory or glob, or a list of files."""
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def main(args: argparse.Namespace) -> int:
    from cryopick.picker2d.train import train_from_files

    out = Path(args.output)
    config = config_from_args(args)
    read_opts = {}
    if args.flip_y:
        from cryopick.io.images import list_images, read_micrograph

        read_opts = {"flip_y": True, "height": read_micrograph(list_images(args.micrographs)[0]).shape[0]}
    card = train_from_files(args.micrographs, args.coords, args.diameter, out, diameter_unit=args.diameter_unit,
                            pixel_size=args.pixel_size, coords_format=args.coords_format,
                            negatives=args.negatives, config=config,
                            particles_per_micrograph=args.particles_per_micrograph, redo=args.redo,
                            unlabelled=_one_or_list(args.unlabelled), detect_sparse=not args.no_sparse_detection,
                            **read_opts)
    print(summary_line(card, out))
    for note in card.notes:
        print(f"note: {note}")
    log.debug(json.dumps(card.training["history"][-3:]))
    return 0
