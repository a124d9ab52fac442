"""Fine-tune ProPicker for one particle on a few annotated tomograms (prompt and encoder stay fixed).

Example:
  cryopick finetune3d --tomograms TS_01.mrc TS_02.mrc --coords TS_01.star TS_02.star \
      --prompt ribosome.prompt -o ribosome_finetuned.pt --steps 300
then: cryopick pick3d --model ribosome_finetuned.pt --prompt ribosome.prompt --tomograms tomos/ -o picks/
Targets are balls of 0.8 x the prompt's diameter at the annotated centres (voxels as stored).
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tomograms", nargs="+", required=True, help="annotated tomograms")
    parser.add_argument("--coords", nargs="+", required=True,
                        help="coordinate files: one per tomogram (same order), or one file naming all tomograms")
    parser.add_argument("--prompt", required=True, help="prompt file from `cryopick prompt`")
    parser.add_argument("-o", "--output", required=True, help="fine-tuned ProPicker checkpoint to write (.pt)")
    parser.add_argument("--label", help="use only coordinate rows with this label (class name)")
    parser.add_argument("--model", help="starting checkpoint (default: shipped weights)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--window", type=int, default=48)
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0 = torch's default; one thread is fastest on a shared machine)")


def main(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from cryopick.errors import CryopickError
    from cryopick.io.images import read_tomogram
    from cryopick.models.promptable3d import load_propicker
    from cryopick.picker3d.pick import read_truth
    from cryopick.picker3d.prompt import load_prompt
    from cryopick.picker3d.scale import working_tomogram
    from cryopick.picker3d.train.finetune import finetune, occupancy_from_picks

    if args.threads:
        torch.set_num_threads(args.threads)
    prompt = load_prompt(args.prompt)
    if prompt.diameter is None:
        raise CryopickError(f"{args.prompt}: no particle diameter; remake the prompt with --diameter")
    if len(args.coords) not in (1, len(args.tomograms)):
        raise CryopickError("give one --coords file per tomogram, or one file covering all of them")
    volumes, targets = [], []
    for i, path in enumerate(args.tomograms):
        image = read_tomogram(path)
        truth = read_truth(args.coords[i] if len(args.coords) > 1 else args.coords[0], image, args.label)
        if len(truth) == 0:
            raise CryopickError(f"no annotated particles for tomogram {image.name}")
        work = working_tomogram(image, binning=prompt.binning, voxel_size=prompt.voxel_size, invert=prompt.invert)
        vol = np.asarray(work.volume, dtype=np.float32)
        volumes.append(vol)
        targets.append(occupancy_from_picks(vol.shape, work.to_working(truth.coords), prompt.diameter))
        log.info("%s: %d annotated particles", image.name, len(truth))
    finetune(load_propicker(args.model), volumes, targets, prompt.subvolumes, args.output, steps=args.steps,
             lr=args.lr, window=args.window, bf16=not args.no_bf16)
    log.info("fine-tuned checkpoint written to %s", args.output)
    return 0
