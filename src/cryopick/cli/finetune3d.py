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

from cryopick.cli._args import add_bf16, add_threads, positive_float, positive_int

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tomograms", nargs="+", required=True, help="annotated tomograms")
    parser.add_argument("--coords", nargs="+", required=True,
                        help="coordinate files: one per tomogram (same order), or one file naming all tomograms")
    parser.add_argument("--prompt", required=True, help="prompt file from `cryopick prompt`")
    parser.add_argument("-o", "--output", required=True, help="fine-tuned ProPicker checkpoint to write (.pt)")
    parser.add_argument("--label", help="use only coordinate rows with this label (class name)")
    parser.add_argument("--model", help="starting checkpoint (default: shipped weights)")
    parser.add_argument("--steps", type=positive_int, help="optimiser steps (default: 300)")
    parser.add_argument("--lr", type=positive_float, help="learning rate (default: 5e-4)")
    parser.add_argument("--window", type=positive_int,
                        help="training window edge in working voxels, a multiple of 16 (default: 48)")
    add_bf16(parser)
    add_threads(parser)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from cryopick.cli._args import bf16_value
    from cryopick.errors import CryopickError
    from cryopick.io.images import read_tomogram
    from cryopick.picker3d.card import load_model
    from cryopick.picker3d.outputs import read_truth
    from cryopick.picker3d.predict import resolve_bf16, set_threads
    from cryopick.picker3d.prompt import load_prompt
    from cryopick.picker3d.scale import check_tomogram, working_tomogram
    from cryopick.picker3d.train.finetune import finetune, occupancy_from_picks

    set_threads(args.threads)
    if Path(args.output).is_dir():
        raise CryopickError(f"{args.output}: is a folder; give the checkpoint file to write (-o NAME.pt)")
    model = load_model(args.model)
    opts = {k: v for k, v in {"steps": args.steps, "lr": args.lr, "window": args.window}.items() if v is not None}
    prompt = load_prompt(args.prompt)
    if prompt.diameter is None:
        raise CryopickError(f"{args.prompt}: no particle diameter; remake the prompt with --diameter")
    if len(args.coords) not in (1, len(args.tomograms)):
        raise CryopickError("give one --coords file per tomogram, or one file covering all of them")
    volumes, targets = [], []
    for i, path in enumerate(args.tomograms):
        image = read_tomogram(path)
        check_tomogram(image)
        truth = read_truth(args.coords[i] if len(args.coords) > 1 else args.coords[0], image, args.label)
        if len(truth) == 0:
            raise CryopickError(f"no annotated particles for tomogram {image.name}")
        work = working_tomogram(image, binning=prompt.binning, voxel_size=prompt.voxel_size, invert=prompt.invert)
        vol = np.asarray(work.volume, dtype=np.float32)
        volumes.append(vol)
        targets.append(occupancy_from_picks(vol.shape, work.to_working(truth.coords), prompt.diameter))
        log.info("%s: %d annotated particles", image.name, len(truth))
    finetune(model, volumes, targets, prompt.subvolumes, args.output, bf16=resolve_bf16(bf16_value(args.bf16)),
             **opts)
    log.info("fine-tuned checkpoint written to %s", args.output)
    return 0
