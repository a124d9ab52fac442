"""Run the whole few-shot story on the bundled example data: train -> pick -> STAR + overlays + accuracy.

The example data are 6 EMPIAR-10017 micrographs downsampled to 1024^2 (3 annotated for training,
3 held out with their expert picks for scoring; see cryopick/data/example/PROVENANCE.md). Takes a
few minutes on 2 CPU cores and needs no download. Rerunning reuses what is finished.

The demo trains every epoch it promises (16 by default): there is no time budget unless
--max-minutes is given. After the first steps it says what an epoch costs on this machine, and
PyTorch uses one thread per free core, so a machine busy with other work is not oversubscribed.

Example:
  cryopick demo -o demo/
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

from cryopick.cli._args import add_threads, positive_float, positive_int

log = logging.getLogger(__name__)

EXAMPLE_DIAMETER_PX = 27.0  # 108 px at 4096^2, downsampled 4x
DEMO_EPOCHS = 16
DEMO_STEPS = 30


def example_dir() -> Path:
    """Folder of the bundled example data (``train/`` and ``test/``)."""
    from importlib.resources import files

    return Path(str(files("cryopick") / "data" / "example"))


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="output directory")
    parser.add_argument("--epochs", type=positive_int,
                        help=f"training epochs, all of them trained (default {DEMO_EPOCHS}, ~3 min on 2 idle cores)")
    parser.add_argument("--steps-per-epoch", type=positive_int,
                        help=f"optimiser steps per epoch (default {DEMO_STEPS})")
    parser.add_argument("--max-minutes", type=positive_float,
                        help="time budget for training in minutes, which may then stop before --epochs (after at "
                             "least 5 epochs; default: no budget, every epoch is trained)")
    add_threads(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from cryopick.evaluate.matching import match_points, precision_recall_f1
    from cryopick.io.atomic import write_text
    from cryopick.io.coords import read_picks
    from cryopick.picker2d.batch import pick_micrographs
    from cryopick.picker2d.card import CARD_NAME, load_card
    from cryopick.picker2d.pick import Picker
    from cryopick.picker2d.train import TrainConfig, train_from_files

    data = example_dir()
    out = Path(args.output)
    model_dir, picks_dir = out / "model", out / "picks"
    progress = not args.no_progress
    warnings.filterwarnings("ignore", message=".*no pixel size.*")

    # 1. Train on the three annotated micrographs (skipped when a finished model is there).
    retrained = False
    if (model_dir / CARD_NAME).exists() and not (model_dir / "checkpoint.pt").exists():
        card = load_card(model_dir)
        print(f"[1/3] reusing the trained model in {model_dir}")
    else:
        epochs, steps = args.epochs or DEMO_EPOCHS, args.steps_per_epoch or DEMO_STEPS
        budget = ("no time budget" if args.max_minutes is None else
                  f"time budget {args.max_minutes:g} min, which may stop it earlier")
        print(f"[1/3] training on {data / 'train'} (3 micrographs, particle diameter {EXAMPLE_DIAMETER_PX:g} px): "
              f"{epochs} epochs of {steps} steps from the pretrained weights, {budget}")
        config = TrainConfig(epochs=epochs, steps_per_epoch=steps, patience=epochs, max_minutes=args.max_minutes,
                             num_threads=args.threads, progress=progress)
        card = train_from_files(data / "train" / "micrographs", data / "train" / "coordinates", EXAMPLE_DIAMETER_PX,
                                model_dir, coords_format="cryoppp", config=config)
        retrained = True
    training = card.training
    print(f"      model: {card.backbone}, working scale 1/{card.factor:.2f}, calibrated threshold "
          f"{card.score_threshold:.3f}; trained {training['epochs_run']}"
          + (f" of {training['epochs_requested']}" if training.get("epochs_requested") else "")
          + f" epochs in {training['wall_seconds']:.0f} s")
    if training.get("stopped") == "time budget":
        print("      the time budget stopped training before the last epoch, so the accuracy below is that of "
              "a shorter training; for all epochs rerun without --max-minutes (or a larger one) into a new -o folder")

    # 2. Pick the three held-out micrographs (resumable).
    print(f"[2/3] picking {data / 'test' / 'micrographs'} -> {picks_dir}")
    picker = Picker(model_dir, num_threads=args.threads)
    # Picks of an earlier model in this folder are replaced by those of the model just trained.
    summary = pick_micrographs(picker, data / "test" / "micrographs", picks_dir, overlays=3, progress=progress,
                               redo=retrained)

    # 3. Score the picks against the expert annotation (one particle radius, one-to-one).
    picks = read_picks(picks_dir, format="relion")
    truth = read_picks(data / "test" / "coordinates", format="cryoppp")
    tolerance = EXAMPLE_DIAMETER_PX / 2
    rows, tp, n_pred, n_truth = [], 0, 0, 0
    for name in truth.micrographs:
        m = match_points(picks.for_micrograph(name).coords, truth.for_micrograph(name).coords, tolerance)
        tp, n_pred, n_truth = tp + m.tp, n_pred + m.n_pred, n_truth + m.n_truth
        rows.append({"micrograph": name, "picks": m.n_pred, "truth": m.n_truth, "precision": round(m.precision, 3),
                     "recall": round(m.recall, 3), "f1": round(m.f1, 3)})
    p, r, f1 = precision_recall_f1(tp, n_pred, n_truth)
    lines = [
        "# cryopick demo: accuracy on 3 held-out micrographs",
        "",
        f"A pick is correct within one particle radius ({tolerance:g} px) of a not-yet-matched expert centre.",
        f"Model: `{model_dir}` (threshold {card.score_threshold:.3f}); picks: `{picks_dir}` (RELION STAR + autopick.star).",
        "",
        "| micrograph | picks | truth | precision | recall | F1 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {x['micrograph']} | {x['picks']} | {x['truth']} | {x['precision']:.3f} | {x['recall']:.3f} | "
              f"{x['f1']:.3f} |" for x in rows]
    lines += [f"| **all** | {n_pred} | {n_truth} | {p:.3f} | {r:.3f} | **{f1:.3f}** |", "",
              "Overlays: `picks/overlays/`; score histogram: `picks/score_histogram.png`."]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    write_text(out / "report.json", json.dumps({"precision": p, "recall": r, "f1": f1, "per_micrograph": rows,
                                                 "picking": summary}, indent=2) + "\n")
    print(f"[3/3] accuracy on held-out micrographs: precision {p:.3f}, recall {r:.3f}, F1 {f1:.3f} "
          f"-> {out / 'report.md'}")
    return 0
