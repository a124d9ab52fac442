"""Pretrain the default 2D U-Net on the simulated corpus and (``--export``) ship it as package weights.

    # the shipped weights (src/cryopick/weights/unet2d_pretrained.md has the exact run)
    OMP_NUM_THREADS=2 nice -n 5 python benchmarks/pretrain2d.py -o benchmarks/results/pretrain2d --steps 600 --val-every 100
    python benchmarks/pretrain2d.py -o benchmarks/results/pretrain2d --export src/cryopick/weights/unet2d_pretrained.pt

    # with the template-matching input channel, warm-started from the shipped weights
    OMP_NUM_THREADS=2 nice -n 5 python benchmarks/pretrain2d.py -o /work/pretrain2d_template --template-prior \
        --start-weights src/cryopick/weights/unet2d_pretrained.pt --steps 1200 --pool-size 96 --val-micrographs 24
    python benchmarks/pretrain2d.py -o /work/pretrain2d_template --export src/cryopick/weights/unet2d_pretrained_template.pt

    # domain randomisation and a harder corpus (particles at 0.25-0.8x the simulator's contrast)
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/pretrain2d.py -o /work/pretrain2d_strong --augment strong \
        --steps 4000 --val-every 250 --pool-size 96 --val-micrographs 24 --threads 1 [--particle-contrast 0.25 0.8]

    # validation F1 of weights on a run's validation micrographs (same --pool-size/--val-micrographs/--seed)
    python benchmarks/pretrain2d.py --evaluate shipped old.pt --pool-size 96 --val-micrographs 24

Rerunning the first command resumes from ``<out>/checkpoint.pt``. The log goes to the terminal and to
``<out>/pretrain.log``; ``<out>/log.jsonl`` has one line per validation.
See :mod:`cryopick.picker2d.train.pretrain` and :mod:`cryopick.picker2d.train.corpus`.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from _bench import json_object
    from cryopick.picker2d.train.augment import AUGMENT_PRESETS, augment_preset
    from cryopick.picker2d.train.pretrain import PretrainConfig, export_pretrained, pretrain

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default="benchmarks/results/pretrain2d")
    ap.add_argument("--steps", type=int, default=PretrainConfig.steps)
    ap.add_argument("--seed", type=int, default=PretrainConfig.seed)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-every", type=int, default=PretrainConfig.val_every)
    ap.add_argument("--pool-size", type=int, default=PretrainConfig.pool_size)
    ap.add_argument("--val-micrographs", type=int, default=PretrainConfig.val_micrographs)
    ap.add_argument("--template-prior", action="store_true",
                    help="pretrain the network with the template-matching input channel (PretrainConfig.template_prior)")
    ap.add_argument("--augment", default="default", choices=AUGMENT_PRESETS,
                    help="patch augmentation preset (augment.augment_preset; 'strong' = domain randomisation)")
    ap.add_argument("--particle-contrast", type=float, nargs=2, default=PretrainConfig.particle_contrast,
                    metavar=("LOW", "HIGH"), help="corpus particle contrast range, x the simulator's default "
                    "(lower = harder corpus; also selects the validation micrographs of --evaluate)")
    ap.add_argument("--backbone-kwargs", type=json_object, default={}, metavar="JSON",
                    help="keyword arguments of the unet (PretrainConfig.backbone_kwargs), e.g. '{\"depth\": 4}'")
    ap.add_argument("--start-weights", default=None,
                    help="start from these weights (a run's best.pt / checkpoint.pt or a package file)")
    ap.add_argument("--export", default=None, help="write <out>/best.pt (or --source) as float16 package weights here")
    ap.add_argument("--source", default=None, help="checkpoint to export (default <out>/best.pt)")
    ap.add_argument("--evaluate", nargs="+", default=None, metavar="WEIGHTS",
                    help="print the validation F1 of these weights (package .pt files, run best.pt/last.pt, or "
                         "'shipped') on the validation micrographs of the settings given (--pool-size, "
                         "--val-micrographs, --seed)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.export:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        path = export_pretrained(args.source or out / "best.pt", args.export, note={"commit": commit})
        print(f"wrote {path}")
        return 0
    if args.evaluate:
        return evaluate(args)
    config = PretrainConfig(steps=args.steps, seed=args.seed, num_threads=args.threads, val_every=args.val_every,
                            pool_size=args.pool_size, val_micrographs=args.val_micrographs,
                            template_prior=args.template_prior, start_weights=args.start_weights,
                            particle_contrast=tuple(args.particle_contrast), backbone_kwargs=args.backbone_kwargs,
                            augment=augment_preset(args.augment)).validate()
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "pretrain.log")])
    result = pretrain(out, config)
    print(f"best validation F1 {result['best_val_f1']}")
    return 0


def evaluate(args) -> int:
    import torch

    from cryopick.models.unet2d import PRETRAINED_2D
    from cryopick.picker2d.train.pretrain import PretrainConfig, evaluate_weights

    torch.set_num_threads(args.threads)
    from cryopick.models.unet2d import PRETRAINED_2D_TEMPLATE

    config = PretrainConfig(seed=args.seed, pool_size=args.pool_size, val_micrographs=args.val_micrographs,
                            backbone_kwargs=args.backbone_kwargs,
                            template_prior=args.template_prior, particle_contrast=tuple(args.particle_contrast))
    shipped = PRETRAINED_2D_TEMPLATE if args.template_prior and PRETRAINED_2D_TEMPLATE.is_file() else PRETRAINED_2D
    sources = [shipped if s == "shipped" else s for s in args.evaluate]
    for name, result in zip(args.evaluate, evaluate_weights(sources, config)):
        print(name, {k: v for k, v in result.items() if k != "source"}, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
