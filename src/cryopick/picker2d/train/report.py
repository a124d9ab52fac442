"""What a finished 2D training run leaves next to its weights: the model card's training record and
``training_curve.png`` (training loss and validation F1 per epoch, every stage)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryopick.io.atomic import atomic_path

CURVE_NAME = "training_curve.png"


def sparse_handling(sparse: bool, pu_loss: bool, self_training: bool) -> str:
    """One sentence for the card: how unlabelled particles were treated."""
    if not sparse:
        return "balanced BCE"
    return (("nnPU (non-negative positive-unlabelled) loss with the class prior derived from labelled_fraction"
             if pu_loss else "labelled-vs-unlabelled balanced BCE")
            + ("; then self-training: a fresh network on its calibrated picks + the labels (balanced BCE)"
               if self_training else "")
            + "; thresholds from the PU-corrected F1 on held-out labels")


def plot_training_curve(path: str | os.PathLike, records: list[dict], title: str = "") -> Path:
    """Write a PNG of the training loss (left axis) and validation F1 (right axis) per epoch, stages one
    after the other (a dotted line where a stage begins; a marker at each stage's kept epoch), atomically."""
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
            ax.text(offset + 0.6, 1.0, f" {stage}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
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
