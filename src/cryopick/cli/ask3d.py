"""Ask "is this one too?": the candidates whose answers teach the 3D picker most, as answers.csv + images.

Examples:
  cryopick ask3d --prompt ribosome.prompt --tomogram TS_01.mrc -k 10 -o questions/
  (fill the `answer` column of questions/answers.csv: yes, no, or the label of the class it is)
  cryopick ask3d --prompt ribosome.prompt --tomogram TS_01.mrc -k 10 -o questions/     # the next 10
  cryopick pick3d --prompt ribosome.prompt --tomograms tomos/ -o picks/ --answers questions/
Each round adds K questions per prompt to OUT/answers.csv (tomogram, label, x, y, z in voxels as
stored, answer, p = the current classifier's probability, image) and draws OUT/images/<label>/qNNNN.png
(three orthogonal slices through the candidate, circle = the particle's diameter). Of each round, 40 %
are the most likely candidates not asked yet (the classifier needs confirmed ones), the rest uncertain
and diverse: near the current decision boundary, spread over the candidates' features. The
answers so far adapt a small classifier, saved as OUT/<label>.adapted.npz (pick3d --adapted FILE picks
other tomograms with it). Several --prompt: one pass, and each class's positives are the others'
negatives. The first round segments the tomogram; later rounds reuse its candidates (seconds).
"""

from __future__ import annotations

import argparse
import logging

from cryopick.cli._args import add_bf16, add_threads, fraction, nonnegative_int, positive_int

log = logging.getLogger(__name__)


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", required=True, help="prompt file (repeat for several classes)")
    parser.add_argument("--tomogram", required=True, help="tomogram to ask about (MRC or OME-Zarr)")
    parser.add_argument("-k", "--questions", type=positive_int,
                        help="new questions per prompt in this round (default: 10)")
    parser.add_argument("-o", "--output", required=True,
                        help="questions folder: answers.csv, images/, <label>.adapted.npz (reruns continue it)")
    parser.add_argument("--answers", action="append", default=[],
                        help="more answers.csv files or folders to learn from; only their rows about this tomogram "
                        "count here (pick3d --answers uses all) (default: only OUT/answers.csv)")
    parser.add_argument("--settings", action="append", default=[],
                        help="calibration JSON from `cryopick calibrate3d` (one, or one per --prompt; default: the "
                        "model's recommended settings)")
    parser.add_argument("--candidate-threshold", type=fraction,
                        help="probability threshold of the candidates, 0-1 (default: half the settings' threshold)")
    parser.add_argument("--seed", type=nonnegative_int, help="breaks ties between equally useful questions (default: 0)")
    parser.add_argument("--stride", type=positive_int, help="window spacing in working voxels (default: 32)")
    parser.add_argument("--window", type=positive_int, help="window edge in working voxels, a multiple of 16 (default: 64)")
    parser.add_argument("--batch", type=positive_int, help="windows per forward pass (default: 4)")
    parser.add_argument("--no-images", dest="montage", action="store_false", help="do not draw the question images")
    parser.add_argument("--model", help="ProPicker checkpoint (default: the shipped propicker-small weights)")
    add_bf16(parser)
    add_threads(parser)
    parser.add_argument("--device", help="torch device, e.g. cuda (default: cpu)")


def main(args: argparse.Namespace) -> int:
    from cryopick.cli._args import bf16_value
    from cryopick.picker3d.predict import set_threads
    from cryopick.picker3d.questions import ask_tomogram

    set_threads(args.threads)
    options = {k: v for k, v in {"k": args.questions, "candidate_threshold": args.candidate_threshold,
                                 "seed": args.seed, "stride": args.stride, "window": args.window,
                                 "batch_size": args.batch}.items() if v is not None}
    summary = ask_tomogram(args.prompt, args.tomogram, output_dir=args.output, answers=args.answers,
                           model=args.model, settings=args.settings or None, montage=args.montage,
                           bf16=bf16_value(args.bf16), device=args.device, **options)
    log.info("%s: %d new question(s) (%d of %d answered so far: %s); adapted in %.1f s, round %.1f s",
             summary["answers_csv"], summary["n_new"], summary["n_answered"], summary["n_questions"],
             "; ".join(f"{label} {counts}" for label, counts in summary["answers"].items()),
             summary["seconds_round"], summary["seconds"])
    print(summary["expected"])
    return 0
