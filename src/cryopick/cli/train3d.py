"""Train the promptable 3D picker (ProPicker) on simulated tomograms; resumes from OUT/last.pt.

Example:
  cryopick train3d --make-pool 80 --pool pool/ --val-pool val/ -o runs/propicker --steps 10000
The classes of --val-pool (drawn with --val-seed) are never seen in training. Outputs: OUT/best.pt
(best validation Dice), OUT/model.pt (final), OUT/last.pt (resume state), OUT/log.jsonl.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cryopick.cli._args import (
    add_bf16,
    add_threads,
    fraction,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

log = logging.getLogger(__name__)


def _step_or_never(text: str) -> int:
    """A step number >= 0, or ``never`` (-1 is accepted for ``never`` too)."""
    if text.strip().lower() in ("never", "-1"):
        return -1
    return nonnegative_int(text)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", required=True, help="folder of simulated training tomograms")
    parser.add_argument("--make-pool", type=nonnegative_int, default=0, metavar="N",
                        help="first simulate N training tomograms into --pool (existing ones are kept; default: 0)")
    parser.add_argument("--pool-seed", type=nonnegative_int, default=1,
                        help="seed of the training classes and tomograms (default: 1)")
    parser.add_argument("--val-pool", help="folder of held-out simulated tomograms (unseen classes)")
    parser.add_argument("--make-val-pool", type=nonnegative_int, default=0, metavar="N",
                        help="simulate N held-out tomograms (default: 0)")
    parser.add_argument("--val-seed", type=nonnegative_int, default=2,
                        help="seed of the held-out classes, must differ from --pool-seed (default: 2)")
    parser.add_argument("-o", "--output", required=True, help="output folder (checkpoints, log)")
    parser.add_argument("--model", choices=["propicker-small", "propicker-paper"],
                        help="network size (default: propicker-small)")
    parser.add_argument("--init", help="start from this ProPicker checkpoint")
    parser.add_argument("--reinit", nargs="+", default=[], metavar="PREFIX",
                        help="re-initialise parameters with these name prefixes after --init "
                             "(e.g. encoder. segmenter.film segmenter.bottom_film)")
    parser.add_argument("--prototype", action="store_true",
                        help="prototype matching in the decoder (feature-space similarity to the prompt)")
    parser.add_argument("--tomotwin", help="TomoTwin .pth for the propicker-paper prompt encoder (kept frozen)")
    parser.add_argument("--steps", type=positive_int, help="optimiser steps (default: 10000)")
    parser.add_argument("--lr", type=positive_float, help="peak learning rate (default: 2e-3)")
    parser.add_argument("--window", type=positive_int,
                        help="training window edge, voxels, a multiple of 16 (default: 48)")
    parser.add_argument("--batch", type=positive_int, help="windows per step (default: 2)")
    parser.add_argument("--prompts", type=positive_int, help="prompts per window (default: 3)")
    parser.add_argument("--empty-weight", type=nonnegative_float,
                        help="loss weight of prompts absent from the window (0 = masked out, as ProPicker; "
                        "default: 0.5)")
    parser.add_argument("--contrastive-weight", type=nonnegative_float,
                        help="weight of the metric-learning loss on prompt embeddings (0 = off; default: 0.5)")
    parser.add_argument("--ema", type=fraction, help="weight averaging decay, below 1 (0 = off; default: 0.999)")
    parser.add_argument("--freeze-bn-after", type=_step_or_never, metavar="STEP",
                        help="step from which BatchNorm uses its running statistics, as at inference "
                             "(never or -1 = never; default: 1000)")
    add_bf16(parser)
    add_threads(parser)
    parser.add_argument("--device", help="torch device, e.g. cuda (the paper-size model wants a GPU; default: cpu)")
    parser.add_argument("--seed", type=nonnegative_int, help="random seed (default: 0)")
    parser.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints (default: 100)")
    parser.add_argument("--validate-every", type=positive_int, help="steps between validations (default: 500)")


def main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cryopick.cli._args import bf16_value
    from cryopick.errors import CryopickError
    from cryopick.picker3d.card import resolve_device
    from cryopick.picker3d.predict import resolve_bf16, set_threads
    from cryopick.picker3d.train.corpus import make_corpus
    from cryopick.picker3d.train.loop import TrainConfig, train
    from cryopick.picker3d.train.sampling import SampleConfig

    set_threads(args.threads)
    if args.val_pool and args.val_seed == args.pool_seed:
        raise CryopickError("--val-seed must differ from --pool-seed, or the held-out classes are training classes")
    if args.ema is not None and args.ema >= 1:
        raise CryopickError(f"--ema must be below 1 (0 = off), got {args.ema:g}: a decay of 1 never updates the "
                            "averaged weights")
    device = resolve_device(args.device)
    given = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    model = args.model or TrainConfig.model
    sample = replace(SampleConfig(), **given(window=args.window, batch=args.batch, prompts=args.prompts))
    cfg = TrainConfig(
        model=model, model_kwargs={"prototype": True} if args.prototype else {}, init=args.init,
        reinit=tuple(args.reinit), tomotwin=args.tomotwin, freeze_encoder=model == "propicker-paper",
        bf16=resolve_bf16(bf16_value(args.bf16), device), device=device, sample=sample,
        **given(steps=args.steps, lr=args.lr, empty_weight=args.empty_weight,
                contrastive_weight=args.contrastive_weight, seed=args.seed, ema=args.ema,
                checkpoint_every=args.checkpoint_every, validate_every=args.validate_every),
        **({} if args.freeze_bn_after is None else
           {"freeze_bn_after": None if args.freeze_bn_after < 0 else args.freeze_bn_after}),
    )
    if args.make_pool:
        make_corpus(args.pool, args.make_pool, seed=args.pool_seed)
    if args.val_pool and args.make_val_pool:
        make_corpus(args.val_pool, args.make_val_pool, seed=args.val_seed)
    train(cfg, args.pool, args.output, val_pool_dir=args.val_pool)
    out = Path(args.output)
    log.info("checkpoints in %s (best.pt: best validation Dice on unseen classes)", out)
    return 0
