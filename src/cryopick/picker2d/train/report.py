"""What a finished 2D training run leaves next to its weights: the model card (:func:`write_card`) and
``training_curve.png`` (training loss and validation F1 per epoch, every stage)."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cryopick.io.atomic import atomic_path

CURVE_NAME = "training_curve.png"
TEMPLATE_NAME = "template.png"


def write_card(run, model, records: list[dict], shipped: int):
    """Write ``card.json`` (and the trainable weights of a backbone with base weights) and the training
    curve of a finished run (``run``: :class:`cryopick.picker2d.train.loop._Run`); stage ``shipped``'s
    weights are in ``model``, its threshold and calibration go in the card. Returns the card."""
    import torch

    from cryopick.picker2d.card import ModelCard, save_card, save_weights
    from cryopick.picker2d.train.budget import budget_record
    from cryopick.picker2d.train.data import summarise
    from cryopick.picker2d.train.pool import pool_record

    config, scale, out = run.config, run.scale, run.out
    ship = records[shipped]
    n_pseudo = sum(len(m.train_coords) for m in run.mics if m.train_coords is not None)
    template = run.template if run.template and run.template["image"] is not None else None  # the channel's, if built
    card = ModelCard(
        backbone=config.backbone,
        backbone_kwargs=dict(getattr(model, "config", None) or config.backbone_kwargs),
        backbone_checkpoint=config.checkpoint,
        factor=scale.factor,
        diameter=scale.diameter,
        pixel_size=scale.pixel_size,
        target_radius_fraction=config.target_radius_fraction,
        normalisation={"method": "fourier_crop+median_mad", "clip_sigma": 4.0},
        score_threshold=ship["calibration"].get("threshold", 0.5),
        mask_threshold=config.mask_threshold,
        min_distance=config.min_distance,
        score_method=config.score_method,
        peak_method=ship["calibration"].get("peak_method", "s1"),
        tta=ship["calibration"].get("tta", "none"),
        calibration=ship["calibration"],
        training={
            "config": {**asdict(config), "patch_size": run.patch, "batch_size": run.batch_size,
                       "bf16": bool(run.bf16)},
            "epochs_run": sum(r["epochs_run"] for r in records), "epochs_requested": config.epochs,
            # the shipped stage's (the last one unless the unlabelled pool's stage lost on validation)
            "best_epoch": ship["best_epoch"], "best_val_f1": ship["best_val_f1"], "stopped": ship["stopped"],
            "validation": run.validation_mode, "init": run.init_used, "stages": [r["stage"] for r in records],
            "shipped_stage": shipped + 1,
            "wall_seconds": round(run.elapsed(), 1),
            "cpu_seconds_this_session": round(time.process_time() - run.cpu_start, 1),
            "budget": budget_record(config, run.clock, run.elapsed(), records),
            "torch_threads": torch.get_num_threads(), "thread_choice": run.thread_notes,
            "positive_prior": records[0]["prior"],
            "sparse_handling": sparse_handling(run.sparse, config.pu_loss, len(run.stages) > 1,
                                               pool=len(run.pool) if len(run.stages) > 1 else 0),
            "n_pseudo_labels": n_pseudo if len(run.stages) > 1 else None,
            "unlabelled_pool": pool_record(run.mics, records, shipped),
            "template_prior": ({k: v for k, v in template.items() if k != "image"} | {"image": TEMPLATE_NAME}
                               if template else None),
            "history": records[-1]["history"],
            "earlier_stages": records[:-1],
        },
        data=summarise(run.mics),
        notes=card_notes(run.notes, records),
    )
    if config.checkpoint:
        save_weights(out, model, trainable_only=True)
    if template:
        from cryopick.io.images import write_png

        try:  # what the template channel looks for, enlarged for a person to look at
            write_png(out / TEMPLATE_NAME, np.kron(template["image"], np.ones((8, 8), np.float32)))
        except Exception as exc:
            warnings.warn(f"{out / TEMPLATE_NAME}: not written ({type(exc).__name__}: {exc})", stacklevel=2)
    try:
        why = {"epochs": "all done", "early stopping": "early stopping", "time budget": "stopped by the time budget"}
        title = f"{out.name}: {config.backbone}; " + "; ".join(
            f"{r['stage'] + ': ' if len(records) > 1 else ''}{r['epochs_run']} of {config.epochs} epochs "
            f"({why.get(r['stopped'], r['stopped'])})" for r in records)
        plot_training_curve(out / CURVE_NAME, records, title=title, shipped=shipped)
    except Exception as exc:  # a plot must not cost the trained model
        warnings.warn(f"{out / CURVE_NAME}: not written ({type(exc).__name__}: {exc})", stacklevel=2)
    save_card(out, card)
    return card


def card_notes(notes: list[str], records: list[dict]) -> list[str]:
    """``card.notes``: the run's notes (they say when no threshold could be calibrated), then any stage's
    budget warning, each once."""
    out = list(notes)
    for text in (r.get("budget_warning") for r in records):
        if text and text not in out:
            out.append(str(text))
    return out


def sparse_handling(sparse: bool, pu_loss: bool, self_training: bool, pool: int = 0) -> str:
    """One sentence for the card: how unlabelled particles (and unannotated micrographs) were treated."""
    on_pool = (f"; then self-training: a second network on the labels + the first one's calibrated picks on "
               f"{pool} unannotated micrograph(s), the stage with the better validation F1 shipped") if pool else ""
    if not sparse:
        return "balanced BCE" + on_pool
    return (("nnPU (non-negative positive-unlabelled) loss with the class prior derived from labelled_fraction"
             if pu_loss else "labelled-vs-unlabelled balanced BCE")
            + ("; then self-training: a fresh network on its calibrated picks + the labels (balanced BCE)"
               + (f", {pool} unannotated micrograph(s) included" if pool else "")
               if self_training else "")
            + "; thresholds from the PU-corrected F1 on held-out labels")


def plot_training_curve(path: str | os.PathLike, records: list[dict], title: str = "",
                        shipped: int | None = None) -> Path:
    """Write a PNG of the training loss (left axis) and validation F1 (right axis) per epoch, stages one
    after the other (a dotted line where a stage begins, "shipped" after the shipped stage's name; a
    marker at each stage's kept epoch), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax_f1 = ax.twinx()
    offset = 0
    for k, record in enumerate(records):
        history = record.get("history", [])
        x = offset + np.arange(1, len(history) + 1)
        loss = [h.get("loss", np.nan) for h in history]
        f1 = [np.nan if h.get("f1") is None else h["f1"] for h in history]
        stage = record.get("stage", "")
        ax.plot(x, loss, color="tab:blue", marker=".", label="training loss" if k == 0 else None)
        ax_f1.plot(x, f1, color="tab:orange", marker=".", label="validation F1" if k == 0 else None)
        best = [i for i, h in enumerate(history) if h.get("epoch") == record.get("best_epoch")]
        if best and np.isfinite(f1[best[0]]):
            ax_f1.plot([x[best[0]]], [f1[best[0]]], "*", color="tab:red", markersize=12,
                       label="kept weights" if k == 0 else None)
        if len(records) > 1:
            ax.axvline(offset + 0.5, color="grey", linestyle=":")
            ax.text(offset + 0.6, 1.0, f" {stage}" + (" (shipped)" if k == shipped else ""), transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        offset += len(history)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    ax_f1.set_ylabel("validation F1 (best threshold)", color="tab:orange")
    ax_f1.set_ylim(0, 1.02)
    handles = ax.get_legend_handles_labels()[0] + ax_f1.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, loc="center right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
