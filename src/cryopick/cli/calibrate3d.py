"""Calibrate ProPicker on an annotated tomogram: best-case F1 sweep, settings for pick3d.

Example:
  cryopick calibrate3d --prompt ribosome.prompt --tomogram TS_01.mrc --truth TS_01_ribo.star
Sweeps threshold x min size x max size x minimum prompt similarity (cluster mode; --no-similarity
leaves the last out) or the NCC threshold (--mode tm), prints the
best-case F1 and writes the settings (default: <prompt>_settings.json) and the whole sweep (.csv).
With few annotated particles the F1 of each setting is noisy: the settings saved are, among those within
that noise of the best (and never below the recommended settings here), the closest to the recommended
ones; one line says how many particles were used and how sure the calibration is (also in the file).
Use the settings on other tomograms: cryopick pick3d ... --settings ribosome_settings.json
A pick is correct within one particle radius (--tolerance, in radii like `evaluate`), one-to-one.
The prompt's own example particle(s) are left out of the scoring (neither found nor false) when the
prompt was cut from this tomogram: finding the clicked particle says little, and with few annotated
particles it would decide the calibration. --include-prompt scores them; --exclude-prompt leaves them
out for another tomogram too (the prompt's positions are then taken as voxels of this tomogram).
Cluster mode also fits the answer loop's classifier with every candidate labelled by the truth (the
truth as complete yes/no answers) and saves it as <settings stem>.adapted.npz: `cryopick pick3d
--adapted FILE` picks the other tomograms of the data set with it (--no-adapted: skip it).
"""

from __future__ import annotations

import argparse
import logging

from cryopick.cli._args import add_bf16, add_threads, nonnegative_int, positive_float, positive_int

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", required=True, help="prompt file from `cryopick prompt`")
    parser.add_argument("--tomogram", required=True, help="annotated tomogram")
    parser.add_argument("--truth", required=True, help="ground-truth coordinates of the prompted particle")
    parser.add_argument("--truth-label", help="use only truth rows with this label (class name)")
    parser.add_argument("-o", "--output", help="settings JSON to write (default: <prompt stem>_settings.json)")
    parser.add_argument("--mode", choices=["cluster", "tm"], default="cluster",
                        help="sweep ProPicker-C or ProPicker-TM settings (default: cluster)")
    parser.add_argument("--stride", type=positive_int,
                        help="spacing of the network's windows, in its own voxels (the prompt's scale), as you will "
                        "pick with (default: 32)")
    parser.add_argument("--window", type=positive_int,
                        help="edge of the network's input window, in its own voxels, a multiple of 16, as you will "
                        "pick with (default: 64)")
    parser.add_argument("--tolerance", type=positive_float, metavar="RADII",
                        help="match distance as a multiple of the particle radius, like `evaluate` (default: 1)")
    parser.add_argument("--no-similarity", dest="similarity", action="store_false",
                        help="do not sweep the minimum prompt similarity of a pick (cluster mode)")
    parser.add_argument("--refine", type=nonnegative_int, metavar="N",
                        help="segment as `pick3d --refine N` does (calibrate with the value you will pick with; "
                        "default: 0)")
    parser.add_argument("--no-adapted", dest="adapted", action="store_false",
                        help="do not fit and save the classifier (<settings stem>.adapted.npz; cluster mode)")
    parser.add_argument("--tm-angle", type=positive_float,
                        help="ProPicker-TM angular step, degrees (default: 30)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--exclude-prompt", dest="exclude_prompt", action="store_const", const=True,
                        help="leave the prompt's example particle(s) out of the scoring (default when the prompt "
                        "was cut from this tomogram)")
    prompt.add_argument("--include-prompt", dest="exclude_prompt", action="store_const", const=False,
                        help="score the prompt's example particle(s) like the others")
    parser.add_argument("--model", help="ProPicker checkpoint (default: shipped weights)")
    add_bf16(parser)
    add_threads(parser)
    parser.add_argument("--device", help="torch device, e.g. cuda (default: cpu)")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cryopick.cli._args import bf16_value
    from cryopick.errors import CryopickError
    from cryopick.io.atomic import atomic_path
    from cryopick.io.images import read_tomogram
    from cryopick.picker3d.card import load_model
    from cryopick.picker3d.outputs import read_truth
    from cryopick.picker3d.predict import set_threads
    from cryopick.picker3d.prompt import load_prompt
    from cryopick.picker3d.sweep import calibrate_tomogram, save_settings

    set_threads(args.threads)
    prompt = load_prompt(args.prompt)
    out = Path(args.output) if args.output else Path(args.prompt).with_name(Path(args.prompt).stem + "_settings.json")
    if out.is_dir():
        raise CryopickError(f"{out}: is a folder; give the settings file to write (-o NAME.json)")
    image = read_tomogram(args.tomogram)
    truth = read_truth(args.truth, image, args.truth_label)
    model = load_model(args.model, args.device)
    opts = {k: v for k, v in {"stride": args.stride, "window": args.window, "tm_angle": args.tm_angle,
                              "refine": args.refine}.items() if v is not None}
    if args.tolerance is not None and prompt.diameter is None:
        raise CryopickError(f"{args.prompt}: no particle diameter, so --tolerance (radii) has no length; remake "
                            "the prompt with --diameter")
    tolerance = None if args.tolerance is None else args.tolerance * prompt.diameter / 2
    result, payload = calibrate_tomogram(image, truth, prompt, model, mode=args.mode, tolerance=tolerance,
                                         similarity=args.similarity, bf16=bf16_value(args.bf16),
                                         exclude_prompt=args.exclude_prompt,
                                         adapted=args.adapted and args.mode == "cluster", **opts)
    save_settings(out, payload["settings"], **payload["info"])
    with atomic_path(out.with_suffix(".csv")) as tmp:
        result.table.to_csv(tmp, index=False)
    b = result.best
    left_out = payload["info"]["n_truth_excluded"]
    log.info("best-case F1 %.3f (precision %.3f, recall %.3f; %d picks, %d true%s) with %s", b["f1"], b["precision"],
             b["recall"], b["n_pred"], b["n_truth"],
             f", {left_out} prompt particle(s) left out" if left_out else "", payload["settings"])
    if "calibration" in payload["info"]:
        print(payload["info"]["calibration"]["summary"])
    log.info("settings written to %s (sweep: %s)", out, out.with_suffix(".csv"))
    if "adapted" in payload:
        a = payload["adapted"].save(out.with_name(out.stem + ".adapted.npz"))
        log.info("classifier from the truth (%d yes / %d no candidates) written to %s: pick3d --adapted %s",
                 payload["adapted"].info["n_positive"], payload["adapted"].info["n_negative"], a, a)
    return 0
