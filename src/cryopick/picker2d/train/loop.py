"""Training loop of the 2D picker: backbone-agnostic, time-bounded, resumable.

One epoch is ``steps_per_epoch`` optimiser steps on random augmented patches, followed by a
validation pass over the held-out data (a strip of every micrograph, or whole micrographs; see
:func:`cryopick.picker2d.train.data.assign_validation`): the network is run on it,
post-processed with Algorithm S1, and matched to the labels -> best-threshold F1. The
weights with the best validation F1 are kept (``model.pt``), training stops early after
``patience`` epochs without improvement or when the time budget is spent, and a resumable
checkpoint (``checkpoint.pt``: weights, optimiser, scheduler, RNG states, history) is written
atomically after every epoch. At the end the score threshold is calibrated on the validation strips
and the model card is written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path
from cryopick.models.registry import build_model
from cryopick.picker2d.calibrate import ValidationPicks, calibrate_threshold, f1_curve, score_grid, validation_picks
from cryopick.picker2d.card import CARD_NAME, WEIGHTS_NAME, ModelCard, save_card, save_weights
from cryopick.picker2d.scale import WorkingScale
from cryopick.picker2d.train.augment import sample_patch
from cryopick.picker2d.train.config import TrainConfig
from cryopick.picker2d.train.data import (
    TrainingMicrograph,
    assign_validation,
    assign_validation_strips,
    disk_target,
    positive_prior,
    summarise,
)
from cryopick.picker2d.train.losses import nnpu_loss
from cryopick.postprocess.peaks2d import find_peaks_s1
from cryopick.training import WeightAverage, cosine_schedule, save_checkpoint, set_seeds

log = logging.getLogger(__name__)


CHECKPOINT_NAME = "checkpoint.pt"


PSEUDO_NAME = "pseudo_labels.npz"


PREVIOUS_STAGE_NAME = "previous_stage.pt"


def _prepare_targets(mics: list[TrainingMicrograph], radius: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per micrograph: (target disks, loss weight with the validation strip zeroed)."""
    out = []
    for m in mics:
        target = disk_target(m.shape, m.coords if m.train_coords is None else m.train_coords, radius)
        weight = np.ones(m.shape, np.uint8)
        if m.val_box is not None:
            y0, y1, x0, x1 = m.val_box
            weight[y0:y1, x0:x1] = 0
        out.append((target, weight))
    return out


def _batch(mics, targets, size, batch_size, rng, augment):
    # Area-proportional sampling over the trainable pixels (held-out micrographs get none).
    areas = np.array([float(t[1].sum()) for t in targets])
    choice = rng.choice(len(mics), size=batch_size, p=areas / areas.sum())
    imgs, tgts, wgts, negs = [], [], [], []
    for k in choice:
        img, tgt, wgt = sample_patch(mics[k].image, targets[k][0], targets[k][1], size, rng, augment)
        imgs.append(img)
        tgts.append(tgt)
        wgts.append(wgt)
        negs.append(np.full(img.shape, float(mics[k].negative), np.float32))
    as_t = lambda xs: torch.from_numpy(np.stack(xs))[:, None]  # noqa: E731
    return as_t(imgs), as_t(tgts), as_t(wgts), as_t(negs)


def _loss(logits, target, weight, negative, prior):
    """nnPU/balanced BCE on micrographs with particles; plain BCE on known-negative micrographs."""
    import torch.nn.functional as F

    pos_w = weight * (1 - negative)
    loss = nnpu_loss(logits, target, pos_w, prior) if pos_w.sum() > 0 else logits.sum() * 0
    neg_w = weight * negative
    if neg_w.sum() > 0:
        bce = F.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits, dtype=torch.float32),
                                                 reduction="none")
        frac = float(neg_w.sum() / weight.sum().clamp_min(1))
        loss = (1 - frac) * loss + frac * 0.5 * (bce * neg_w).sum() / neg_w.sum()
    return loss


def train_picker(mics: list[TrainingMicrograph], scale: WorkingScale, output_dir: str | os.PathLike,
                 config: TrainConfig | None = None, resume: bool = True) -> ModelCard:
    """Train a 2D picker on prepared micrographs and write ``model.pt`` + ``card.json``.

    Fully annotated data: one stage (balanced BCE). Sparse annotation (``labelled_fraction < 1``):
    stage 1 trains with the nnPU loss and calibrates a threshold; with ``self_training`` its picks
    above that threshold (plus the labels) become dense pseudo-labels for stage 2, a fresh network
    trained with balanced BCE, validated and calibrated against the true sparse labels only.

    Parameters
    ----------
    mics
        Micrographs at the working scale of ``scale`` with their labels (see
        :func:`cryopick.picker2d.train.data.load_training_micrograph`). Validation data are assigned here.
    scale
        Working scale (factor, diameter in original pixels, pixel size).
    output_dir
        Model directory. An unfinished run there (``checkpoint.pt``) is resumed when ``resume``.
    config
        Training settings.

    Returns
    -------
    ModelCard
        The card written to ``output_dir/card.json``.
    """
    config = config or TrainConfig()
    run = _Run(mics, scale, Path(output_dir), config, resume)
    return run.train()


class _Run:
    """State shared by the stages of one training run (see :func:`train_picker`)."""

    def __init__(self, mics, scale, out: Path, config: TrainConfig, resume: bool) -> None:
        self.t_start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.mics, self.scale, self.out, self.config = mics, scale, out, config
        out.mkdir(parents=True, exist_ok=True)
        if not mics:
            raise CryopickError("no training micrographs given")
        if sum(len(m.coords) for m in mics) == 0:
            raise CryopickError("the training micrographs have no labelled particles; annotate at least one micrograph")
        if not 0 < config.labelled_fraction <= 1:
            raise CryopickError(f"labelled fraction must be in (0, 1], got {config.labelled_fraction}")
        if config.self_training_init not in ("fresh", "previous"):
            raise CryopickError(f"self_training_init must be 'fresh' or 'previous', got {config.self_training_init!r}")
        if config.val_mode not in ("strips", "micrographs"):
            raise CryopickError(f"val_mode must be 'strips' or 'micrographs', got {config.val_mode!r}")
        if config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        set_seeds(config.seed)
        if config.val_mode == "micrographs":
            self.validation_mode = assign_validation(mics, config.val_fraction, seed=config.seed)
        else:
            assign_validation_strips(mics, config.val_fraction, seed=config.seed)
            self.validation_mode = "strips"
        self.sparse = config.labelled_fraction < 1
        self.stages = ["pu" if self.sparse and config.pu_loss else "bce"]
        if self.sparse and config.self_training:
            self.stages.append("self-training")
        self.radius = 0.5 * scale.working_diameter * config.target_radius_fraction
        self.context = int(round(2 * scale.working_diameter))
        self.match_tolerance = 0.5 * scale.working_diameter  # a pick is correct within one particle radius
        self.min_distance_w = (0.5 * scale.working_diameter if config.min_distance is None
                               else config.min_distance / scale.factor)
        self.has_val = any(m.val_box is not None for m in mics)
        self.rng = np.random.default_rng(config.seed)
        self.ckpt_path = out / CHECKPOINT_NAME
        self.pseudo_path = out / PSEUDO_NAME
        self.state = None
        if (out / CARD_NAME).exists() and (out / WEIGHTS_NAME).exists() and not self.ckpt_path.exists():
            raise CryopickError(f"{out}: already holds a trained model; choose another output directory or --overwrite")
        if self.ckpt_path.exists() and resume:
            self.state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
            if self.state.get("config") != config.resume_key():
                raise CryopickError(
                    f"{self.ckpt_path}: an unfinished run with different settings is there; use the same settings "
                    "to resume, or --overwrite to start again"
                )
        self.elapsed_before = self.state.get("elapsed", 0.0) if self.state else 0.0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def build(self):
        config = self.config
        model = build_model(config.backbone, checkpoint=config.checkpoint, **config.backbone_kwargs)
        preferred = getattr(model, "preferred_size", None)
        patch = int(config.patch_size or preferred or 192)
        multiple = int(getattr(model, "input_multiple", 1) or 1)
        self.patch = int(math.ceil(patch / multiple) * multiple)
        self.batch_size = int(config.batch_size or (2 if preferred and preferred >= 512 else 8))
        params = (list(model.trainable_parameters()) if hasattr(model, "trainable_parameters")
                  else list(model.parameters()))
        optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        total = config.epochs * config.steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: cosine_schedule(s, total, config.warmup_steps))
        if config.bf16 is None:
            from cryopick.picker2d.predict import bf16_is_faster

            self.bf16 = bf16_is_faster(model)
        else:
            self.bf16 = bool(config.bf16)
        ema = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
        return model, optimiser, scheduler, ema

    def train(self) -> ModelCard:
        config = self.config
        start_stage = self.state["stage"] if self.state else 0
        records: list[dict] = list(self.state.get("stage_records", [])) if self.state else []
        if start_stage > 0 or (self.state is None and self.pseudo_path.exists() and len(self.stages) > 1):
            records = self._load_pseudo_labels() or records
            start_stage = max(start_stage, 1)
        for index in range(start_stage, len(self.stages)):
            kind = self.stages[index]
            model, optimiser, scheduler, ema = self.build()
            state = self.state if (self.state and self.state["stage"] == index) else None
            if state is None and index > 0 and config.self_training_init == "previous":
                model.load_state_dict(torch.load(self.out / PREVIOUS_STAGE_NAME, map_location="cpu",
                                                 weights_only=True))
            prior = (positive_prior(self.mics, self.radius, config.labelled_fraction) if kind == "pu" else 0.0)
            fit = self._fit(index, kind, model, optimiser, scheduler, ema, prior, state, records)
            model.load_state_dict(torch.load(self.out / WEIGHTS_NAME, map_location="cpu", weights_only=True))
            calibration, threshold = self._calibrate(model)
            records.append({"stage": kind, "prior": prior, **fit, "calibration": calibration})
            if index + 1 < len(self.stages):
                if config.self_training_init == "previous":
                    save_checkpoint(self.out / PREVIOUS_STAGE_NAME, model.state_dict())
                self._make_pseudo_labels(model, threshold, records)
        return self._finish(model, records)

    # -- one stage --
    def _fit(self, index, kind, model, optimiser, scheduler, ema, prior, state, records) -> dict:
        config = self.config
        targets = _prepare_targets(self.mics, self.radius)
        history: list[dict] = []
        start_epoch, best_f1, best_epoch = 0, -1.0, -1
        if state is not None:
            model.load_state_dict(state["model"])
            if ema is not None:
                ema.shadow = state["ema"]
            optimiser.load_state_dict(state["optimiser"])
            scheduler.load_state_dict(state["scheduler"])
            self.rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            start_epoch, best_f1, best_epoch = state["epoch"] + 1, state["best_f1"], state["best_epoch"]
            history = state["history"]
            log.info("resuming %s at stage %d, epoch %d (best validation F1 %.3f)", self.out, index + 1,
                     start_epoch, best_f1)

        from tqdm.auto import tqdm

        budget = config.max_minutes * 60
        label = "training" if len(self.stages) == 1 else f"stage {index + 1}/{len(self.stages)} ({kind})"
        bar = tqdm(range(start_epoch, config.epochs), desc=label, unit="epoch", disable=not config.progress,
                   initial=start_epoch, total=config.epochs)
        model.train()
        stopped = "epochs"
        for epoch in bar:
            t_epoch = time.perf_counter()
            losses = []
            for _ in range(config.steps_per_epoch):
                x, y, w, neg = _batch(self.mics, targets, self.patch, self.batch_size, self.rng, config.augment)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    logits = model(x)
                loss = _loss(logits, y, w, neg, prior)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model, scheduler.last_epoch)
                losses.append(float(loss.detach()))
            if ema is not None:
                ema.swap(model)  # validate and keep the averaged weights
            val = self._validate(model) if self.has_val else {"f1": None}
            score = val["f1"] if val["f1"] is not None else -float(np.mean(losses))
            if score > best_f1:
                best_f1, best_epoch = score, epoch
                save_weights(self.out, model)
            if ema is not None:
                ema.swap(model)  # back to the live weights for training and the checkpoint
            epoch_seconds = time.perf_counter() - t_epoch
            history.append({"epoch": epoch, "loss": float(np.mean(losses)), **val,
                            "lr": float(scheduler.get_last_lr()[0]), "seconds": round(epoch_seconds, 2)})
            save_checkpoint(self.ckpt_path, {
                "stage": index, "stage_records": records, "ema": ema.shadow if ema is not None else None,
                "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "epoch": epoch, "best_f1": best_f1, "best_epoch": best_epoch,
                "history": history, "config": config.resume_key(), "elapsed": self.elapsed()})
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_f1="-" if val["f1"] is None else f"{val['f1']:.3f}",
                            best=f"{best_f1:.3f}")
            if epoch - best_epoch >= config.patience:
                stopped = "early stopping"
                break
            # Leave room for the remaining stages: each later stage gets an equal share of what is left.
            stages_left = len(self.stages) - index
            stage_budget = (budget - self.elapsed()) / stages_left + (time.perf_counter() - t_epoch)
            if 1.5 * epoch_seconds > stage_budget - 20 or self.elapsed() + 1.5 * epoch_seconds > budget - 20:
                stopped = "time budget"
                break
        bar.close()
        return {"epochs_run": len(history), "best_epoch": best_epoch, "best_val_f1": best_f1, "stopped": stopped,
                "history": history}

    def _validation_regions(self, model) -> list[ValidationPicks]:
        config = self.config
        return validation_picks(model, self.mics, self.radius, self.context, self.bf16, config.mask_threshold,
                                config.score_method, self.min_distance_w)

    def _validate(self, model) -> dict:
        regions = self._validation_regions(model)
        grid = score_grid(regions)
        p, r, f1 = f1_curve(regions, self.match_tolerance, grid, self.config.labelled_fraction)
        k = int(np.argmax(f1))
        return {"f1": float(f1[k]), "precision": float(p[k]), "recall": float(r[k]), "threshold": float(grid[k])}

    def _calibrate(self, model) -> tuple[dict, float]:
        if not self.has_val:
            return {"note": "no validation data; default threshold"}, 0.5
        regions = self._validation_regions(model)
        calibration = calibrate_threshold(regions, self.match_tolerance, self.config.labelled_fraction,
                                          grid=score_grid(regions, fine=True))
        return calibration, calibration["threshold"]

    # -- self-training --
    def _make_pseudo_labels(self, model, threshold: float, records: list[dict]) -> None:
        """Picks above ``threshold`` on every training micrograph, plus the labels, become the
        training targets of the next stage (validation keeps the true labels)."""
        from cryopick.picker2d.predict import predict_probability

        model.eval()
        coords = {}
        for m in self.mics:
            if m.negative:
                continue
            prob = predict_probability(model, m.image, bf16=self.bf16)
            peaks = find_peaks_s1(prob, self.radius, threshold=self.config.mask_threshold,
                                  score=self.config.score_method, min_distance=self.min_distance_w,
                                  min_score=threshold)
            pseudo = peaks.coords
            if len(pseudo) and len(m.coords):
                from scipy.spatial import cKDTree

                d, _ = cKDTree(m.coords).query(pseudo)
                pseudo = pseudo[d > self.match_tolerance / 2]
            coords[m.name] = np.concatenate([m.coords, pseudo.reshape(-1, 2)])
        with atomic_path(self.pseudo_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, records=json.dumps(records, default=float), **{f"mic:{k}": v for k, v in coords.items()})
        self._apply_pseudo(coords)

    def _apply_pseudo(self, coords: dict) -> None:
        for m in self.mics:
            if m.name in coords:
                m.train_coords = coords[m.name]

    def _load_pseudo_labels(self) -> list[dict] | None:
        if not self.pseudo_path.exists():
            return None
        with np.load(self.pseudo_path, allow_pickle=False) as data:
            coords = {k[4:]: data[k] for k in data.files if k.startswith("mic:")}
            records = json.loads(str(data["records"]))
        self._apply_pseudo(coords)
        return records

    # -- card --
    def _finish(self, model, records: list[dict]) -> ModelCard:
        config, scale = self.config, self.scale
        last = records[-1]
        n_pseudo = sum(len(m.train_coords) for m in self.mics if m.train_coords is not None)
        handling = ("balanced BCE" if not self.sparse else
                    ("nnPU (non-negative positive-unlabelled) loss with the class prior derived from "
                     "labelled_fraction" if config.pu_loss else "labelled-vs-unlabelled balanced BCE")
                    + ("; then self-training: a fresh network on its calibrated picks + the labels "
                       "(balanced BCE)" if len(self.stages) > 1 else "")
                    + "; thresholds from the PU-corrected F1 on held-out labels")
        card = ModelCard(
            backbone=config.backbone,
            backbone_kwargs=dict(getattr(model, "config", None) or config.backbone_kwargs),
            backbone_checkpoint=config.checkpoint,
            factor=scale.factor,
            diameter=scale.diameter,
            pixel_size=scale.pixel_size,
            target_radius_fraction=config.target_radius_fraction,
            normalisation={"method": "fourier_crop+median_mad", "clip_sigma": 4.0},
            score_threshold=last["calibration"].get("threshold", 0.5),
            mask_threshold=config.mask_threshold,
            min_distance=config.min_distance,
            score_method=config.score_method,
            calibration=last["calibration"],
            training={
                "config": {**asdict(config), "patch_size": self.patch, "batch_size": self.batch_size,
                           "bf16": bool(self.bf16)},
                "epochs_run": sum(r["epochs_run"] for r in records), "best_epoch": last["best_epoch"],
                "best_val_f1": last["best_val_f1"], "stopped": last["stopped"],
                "validation": self.validation_mode, "stages": [r["stage"] for r in records],
                "wall_seconds": round(self.elapsed(), 1),
                "cpu_seconds_this_session": round(time.process_time() - self.cpu_start, 1),
                "torch_threads": torch.get_num_threads(), "positive_prior": records[0]["prior"],
                "sparse_handling": handling,
                "n_pseudo_labels": n_pseudo if len(self.stages) > 1 else None,
                "history": last["history"],
                "earlier_stages": records[:-1],
            },
            data=summarise(self.mics),
        )
        if config.checkpoint:
            save_weights(self.out, model, trainable_only=True)
        save_card(self.out, card)
        self.ckpt_path.unlink(missing_ok=True)
        self.pseudo_path.unlink(missing_ok=True)
        (self.out / PREVIOUS_STAGE_NAME).unlink(missing_ok=True)
        return card

