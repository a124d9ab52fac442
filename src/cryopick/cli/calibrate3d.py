"""Calibrate ProPicker on an annotated tomogram: best-case F1 sweep, settings for pick3d.

Example:
  cryopick calibrate3d --prompt ribosome.prompt --tomogram TS_01.mrc --truth TS_01_ribo.star
Sweeps threshold x min size x max size x minimum prompt similarity (cluster mode; --no-similarity
leaves the last out) or the NCC threshold (--mode tm), prints the
best-case F1 and writes the best settings (default: <prompt>_settings.json) and the whole sweep (.csv).
Use the settings on other tomograms: cryopick pick3d ... --settings ribosome_settings.json
A pick is correct within one particle radius (--tolerance, voxels of the working scale), one-to-one.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="prompt file from `cryopick prompt`")
    parser.add_argument("--tomogram", required=True, help="annotated tomogram")
    parser.add_argument("--truth", required=True, help="ground-truth coordinates of the prompted particle")
    parser.add_argument("--truth-label", help="use only truth rows with this label (class name)")
    parser.add_argument("-o", "--output", help="settings JSON to write (default: <prompt stem>_settings.json)")
    parser.add_argument("--mode", choices=["cluster", "tm"], default="cluster")
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--tolerance", type=float, help="match distance in working voxels (default: the radius)")
    parser.add_argument("--no-similarity", dest="similarity", action="store_false",
                        help="do not sweep the minimum prompt similarity of a pick (cluster mode)")
    parser.add_argument("--refine", type=int, default=0, metavar="N",
                        help="segment as `pick3d --refine N` does (calibrate with the value you will pick with)")
    parser.add_argument("--tm-angle", type=float, default=30.0, help="ProPicker-TM angular step, degrees")
    parser.add_argument("--model", help="ProPicker checkpoint (default: shipped weights)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0 = torch's default; one thread is fastest on a shared machine)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from cryopick.io.atomic import atomic_path
    from cryopick.io.images import read_tomogram
    from cryopick.models.promptable3d import load_propicker
    from cryopick.picker3d.calibrate import calibrate_tomogram, save_settings
    from cryopick.picker3d.pick import read_truth
    from cryopick.picker3d.prompt import load_prompt

    if args.threads:
        torch.set_num_threads(args.threads)
    prompt = load_prompt(args.prompt)
    image = read_tomogram(args.tomogram)
    truth = read_truth(args.truth, image, args.truth_label)
    model = load_propicker(args.model).to(args.device)
    result, payload = calibrate_tomogram(image, truth, prompt, model, mode=args.mode,
                                         stride=args.stride, tolerance=args.tolerance, tm_angle=args.tm_angle,
                                         similarity=args.similarity, refine=args.refine)
    out = Path(args.output) if args.output else Path(args.prompt).with_name(Path(args.prompt).stem + "_settings.json")
    save_settings(out, payload["settings"], **payload["info"])
    with atomic_path(out.with_suffix(".csv")) as tmp:
        result.table.to_csv(tmp, index=False)
    b = result.best
    log.info("best-case F1 %.3f (precision %.3f, recall %.3f; %d picks, %d true) with %s", b["f1"], b["precision"],
             b["recall"], b["n_pred"], b["n_truth"], payload["settings"])
    log.info("settings written to %s (sweep: %s)", out, out.with_suffix(".csv"))
    return 0
