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

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", required=True, help="folder of simulated training tomograms")
    parser.add_argument("--make-pool", type=int, default=0, metavar="N",
                        help="first simulate N training tomograms into --pool (existing ones are kept)")
    parser.add_argument("--pool-seed", type=int, default=1, help="seed of the training classes and tomograms")
    parser.add_argument("--val-pool", help="folder of held-out simulated tomograms (unseen classes)")
    parser.add_argument("--make-val-pool", type=int, default=0, metavar="N", help="simulate N held-out tomograms")
    parser.add_argument("--val-seed", type=int, default=2, help="seed of the held-out classes (must differ)")
    parser.add_argument("-o", "--output", required=True, help="output folder (checkpoints, log)")
    parser.add_argument("--model", default="propicker-small", choices=["propicker-small", "propicker-paper"])
    parser.add_argument("--init", help="start from this ProPicker checkpoint")
    parser.add_argument("--reinit", nargs="+", default=[], metavar="PREFIX",
                        help="re-initialise parameters with these name prefixes after --init "
                             "(e.g. encoder. segmenter.film segmenter.bottom_film)")
    parser.add_argument("--prototype", action="store_true",
                        help="prototype matching in the decoder (feature-space similarity to the prompt)")
    parser.add_argument("--tomotwin", help="TomoTwin .pth for the propicker-paper prompt encoder (kept frozen)")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--window", type=int, default=48, help="training window edge, voxels")
    parser.add_argument("--batch", type=int, default=2, help="windows per step")
    parser.add_argument("--prompts", type=int, default=3, help="prompts per window")
    parser.add_argument("--empty-weight", type=float, default=0.5,
                        help="loss weight of prompts absent from the window (0 = masked out, as ProPicker)")
    parser.add_argument("--contrastive-weight", type=float, default=0.5,
                        help="weight of the metric-learning loss on prompt embeddings (0 = off)")
    parser.add_argument("--ema", type=float, default=0.999, help="weight averaging decay (0 = off)")
    parser.add_argument("--freeze-bn-after", type=int, default=1000,
                        help="step from which BatchNorm uses its running statistics, as at inference (-1 = never)")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 (bf16 autocast is the default)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (the paper-size model wants a GPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--validate-every", type=int, default=500)


def main(args: argparse.Namespace) -> int:
    import torch

    from cryopick.picker3d.train.loop import TrainConfig, train
    from cryopick.picker3d.train.pool import make_pool
    from cryopick.picker3d.train.sampling import SampleConfig

    torch.set_num_threads(args.threads)
    if args.val_pool and args.val_seed == args.pool_seed:
        from cryopick.errors import CryopickError

        raise CryopickError("--val-seed must differ from --pool-seed, or the held-out classes are training classes")
    if args.make_pool:
        make_pool(args.pool, args.make_pool, seed=args.pool_seed)
    if args.val_pool and args.make_val_pool:
        make_pool(args.val_pool, args.make_val_pool, seed=args.val_seed)
    cfg = TrainConfig(
        model=args.model, model_kwargs={"prototype": True} if args.prototype else {}, init=args.init,
        reinit=tuple(args.reinit), tomotwin=args.tomotwin,
        freeze_encoder=args.model == "propicker-paper",
        steps=args.steps, lr=args.lr, empty_weight=args.empty_weight, contrastive_weight=args.contrastive_weight,
        bf16=not args.no_bf16, device=args.device, seed=args.seed, ema=args.ema,
        freeze_bn_after=None if args.freeze_bn_after < 0 else args.freeze_bn_after,
        checkpoint_every=args.checkpoint_every, validate_every=args.validate_every,
        sample=SampleConfig(window=args.window, batch=args.batch, prompts=args.prompts),
    )
    train(cfg, args.pool, args.output, val_pool_dir=args.val_pool)
    out = Path(args.output)
    log.info("checkpoints in %s (best.pt: best validation Dice on unseen classes)", out)
    return 0
