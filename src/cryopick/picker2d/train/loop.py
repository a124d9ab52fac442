"""Training loop of the 2D picker: backbone-agnostic, time-bounded, resumable.

One epoch is ``steps_per_epoch`` optimiser steps on random augmented patches, followed by a
validation pass over the held-out data (a strip of every micrograph, or whole micrographs; see
:func:`cryopick.picker2d.train.data.assign_validation`): the network is run on it,
post-processed with Algorithm S1, and matched to the labels -> best-threshold F1. The
weights with the best validation F1 are kept (``model.pt``), training stops early after
``patience`` epochs without improvement or when the time budget is spent (never before
``min_epochs``; see :mod:`.budget`), and a resumable checkpoint (``checkpoint.pt``: weights,
optimiser, scheduler, RNG states, history, budget used) is written atomically after every epoch.
The bar counts optimiser steps; PyTorch uses one thread per free core unless told otherwise (:mod:`cryopick.runtime`).
At the end the threshold is calibrated on the validation data; the card and ``training_curve.png`` are written.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cryopick.baselines.template2d import box_size
from cryopick.errors import CryopickError
from cryopick.io.atomic import make_output_dir
from cryopick.models.registry import build_model
from cryopick.picker2d import calibrate as cal
from cryopick.picker2d.calibrate import ValidationPicks, calibrate_postprocess, f1_curve, score_grid, validation_picks
from cryopick.picker2d.card import CARD_NAME, WEIGHTS_NAME, save_weights
from cryopick.picker2d.scale import WorkingScale
from cryopick.picker2d.train.batches import batch_loss, prepare_targets, sample_batch
from cryopick.picker2d.train.budget import ESTIMATE_AFTER_STEPS, StageBudget, close_bar
from cryopick.picker2d.train.config import TrainConfig, initial_weights
from cryopick.picker2d.train.data import TrainingMicrograph, assign_validation, assign_validation_strips, positive_prior
from cryopick.picker2d.train.pool import shipped_stage
from cryopick.picker2d.train.pseudo import PSEUDO_NAME, load_pseudo_labels, make_pseudo_labels
from cryopick.picker2d.train.report import CURVE_NAME, TEMPLATE_NAME, write_card
from cryopick.picker2d.train.template import particle_template
from cryopick.runtime import busy_other_cores, choose_threads, configure_threads, cpu_sample
from cryopick.training import BudgetClock, WeightAverage, cosine_schedule, save_checkpoint, saved_settings, set_seeds

if TYPE_CHECKING:
    from cryopick.picker2d.card import ModelCard

log = logging.getLogger(__name__)


CHECKPOINT_NAME = "checkpoint.pt"


PREVIOUS_STAGE_NAME = "previous_stage.pt"


def clear_training_outputs(output_dir: str | os.PathLike) -> list[Path]:
    """Remove what a 2D training run writes in ``output_dir`` (model, card, checkpoints, pseudo-labels,
    curve) so it can start over; any other file there is left alone. Returns the removed paths."""
    removed = []
    for name in (CARD_NAME, WEIGHTS_NAME, CHECKPOINT_NAME, PREVIOUS_STAGE_NAME, PSEUDO_NAME, CURVE_NAME, TEMPLATE_NAME):
        path = Path(output_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


# Entries a checkpoint must hold to be resumed (later versions add more, read with defaults).
_CHECKPOINT_KEYS = ("stage", "model", "optimiser", "scheduler", "rng", "torch_rng", "epoch", "best_f1", "best_epoch",
                    "history", "config")


_ADDED_LATER = ("unlabelled_max", "unlabelled_ignore_margin", "template_prior")  # settings newer than some checkpoints


def train_picker(mics: list[TrainingMicrograph], scale: WorkingScale, output_dir: str | os.PathLike,
                 config: TrainConfig | None = None, resume: bool = True, notes: list[str] | None = None) -> ModelCard:
    """Train a 2D picker on prepared micrographs and write ``model.pt`` + ``card.json``.

    Fully annotated data: one stage (balanced BCE); with an unlabelled pool (micrographs with
    ``unlabelled=True``, see :mod:`.pool`) and ``self_training``, stage 1's picks above its calibrated
    threshold label the pool for stage 2, and the stage with the better validation F1 is shipped.
    Sparse annotation (``labelled_fraction < 1``): stage 1 trains with the nnPU loss and calibrates a
    threshold; with ``self_training`` its picks above that threshold (plus the labels) become dense
    pseudo-labels for stage 2 (the pool's too), a fresh network trained with balanced BCE, validated
    and calibrated against the true sparse labels only; stage 2 is shipped.

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
    notes
        Sentences for the card's ``notes`` (e.g. sparse annotation detected); the run adds its own.

    Returns
    -------
    ModelCard
        The card written to ``output_dir/card.json``.
    """
    config = config or TrainConfig()
    run = _Run(mics, scale, Path(output_dir), config, resume, notes)
    return run.train()


def _shown(f1: float | None) -> str:
    """An F1 for the progress bar ("-" before the first validation, or without validation data)."""
    return "-" if f1 is None or f1 < 0 else f"{f1:.3f}"


class _Run:
    """State shared by the stages of one training run (see :func:`train_picker`)."""

    def __init__(self, mics, scale, out: Path, config: TrainConfig, resume: bool, notes: list[str] | None = None) -> None:
        self.t_start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.mics, self.scale, self.out, self.config = mics, scale, out, config
        config.validate()
        if not mics:
            raise CryopickError("no training micrographs given")
        if sum(len(m.coords) for m in mics) == 0:
            raise CryopickError("the training micrographs have no labelled particles; annotate at least one micrograph")
        make_output_dir(out, "model directory")
        self.thread_notes: list[str] = []
        self.notes: list[str] = list(notes or [])
        self.threads_auto = config.num_threads is None
        configure_threads(config.num_threads, log=self._thread_note)
        set_seeds(config.seed)
        if config.val_mode == "micrographs":
            self.validation_mode = assign_validation(mics, config.val_fraction, seed=config.seed)
        else:
            assign_validation_strips(mics, config.val_fraction, seed=config.seed)
            self.validation_mode = "strips"
        self.sparse = config.labelled_fraction < 1
        self.has_val = any(m.val_box is not None for m in mics)
        note = self.unsaid = cal.unmeasurable_validation(mics, self.sparse, config.val_fraction)  # clears val_box
        if note:  # nothing to measure: no early stopping, the last epoch's weights, the default threshold
            self.has_val, self.validation_mode = False, "none" if self.has_val else self.validation_mode
            self.notes.append(note)
        self.pool = [m.name for m in mics if m.unlabelled]
        self.stages = ["pu" if self.sparse and config.pu_loss else "bce"]
        self.best_of_stages = not self.sparse  # the pool's stage must earn its place on validation
        if config.self_training and (self.sparse or (self.pool and self.has_val)):
            self.stages.append("self-training")
        elif self.pool:
            log.info("the %d unannotated micrograph(s) are not used: %s", len(self.pool),
                     "no validation data to judge a self-training stage by" if config.self_training
                     else "self-training is off")
        self.radius = 0.5 * scale.working_diameter * config.target_radius_fraction
        self.context = int(round(2 * scale.working_diameter))
        self.match_tolerance = 0.5 * scale.working_diameter  # a pick is correct within one particle radius
        self.min_distance_w = (0.5 * scale.working_diameter if config.min_distance is None
                               else config.min_distance / scale.factor)
        self.rng = np.random.default_rng(config.seed)
        self.ckpt_path = out / CHECKPOINT_NAME
        self.pseudo_path = out / PSEUDO_NAME
        self.state = None
        self.template: dict | None = None
        if (out / CARD_NAME).exists() and (out / WEIGHTS_NAME).exists() and not self.ckpt_path.exists():
            raise CryopickError(f"{out}: already holds a trained model; choose another output directory or --redo")
        if self.ckpt_path.exists() and resume:
            self.state = self._read_checkpoint()
            saved = saved_settings(self.state.get("config"), TrainConfig().resume_key(), _ADDED_LATER)
            if saved != config.resume_key():
                raise CryopickError(
                    f"{self.ckpt_path}: an unfinished run with different settings is there; use the same settings "
                    "to resume, or --redo to start again"
                )
            if self.state.get("pool", []) != self.pool:
                raise CryopickError(
                    f"{self.ckpt_path}: an unfinished run with another unlabelled pool ({len(self.state.get('pool', []))} "
                    f"micrograph(s); now {len(self.pool)}) is there; give the same micrographs and --unlabelled to "
                    "resume (--unlabelled-max 0 when it had none), or --redo to start again"
                )
        self.elapsed_before = self.state.get("elapsed", 0.0) if self.state else 0.0
        # Checkpoints written before the budget clock existed hold only the wall time.
        self.clock = BudgetClock(self.state.get("budget_used", self.elapsed_before) if self.state else 0.0)

    def _thread_note(self, text: str) -> None:
        self.thread_notes.append(text)
        log.info(text)

    def _start_over(self) -> str:
        return f"to start over delete it, or rerun with --redo (replaces the model files in {self.out}) or another -o folder"

    def _read_checkpoint(self) -> dict:
        try:
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
            missing = [k for k in _CHECKPOINT_KEYS if k not in state]
            if missing:
                raise KeyError(", ".join(missing))
        except Exception as exc:  # any damage: truncated zip, random bytes, another program's file
            raise CryopickError(f"{self.ckpt_path}: the checkpoint of an unfinished run is unreadable "
                                f"({type(exc).__name__}); {self._start_over()}") from None
        return state

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def build(self):
        config = self.config
        kwargs = dict(config.backbone_kwargs)
        if config.template_prior:
            kwargs.setdefault("template_box", box_size(self.scale.working_diameter))
        try:
            model = build_model(config.backbone, checkpoint=config.checkpoint, **kwargs)
        except Exception as exc:
            if isinstance(exc, CryopickError) or not config.checkpoint:
                raise
            if isinstance(exc, FileNotFoundError):
                raise CryopickError(f"--checkpoint {config.checkpoint}: no such file; give the path of the base "
                                    "weights, or leave --checkpoint out") from None
            raise CryopickError(
                f"--checkpoint {config.checkpoint}: not usable as base weights of backbone {config.backbone!r} "
                f"({type(exc).__name__}); give a PyTorch state dict saved for this backbone, or leave --checkpoint out"
            ) from None
        self.init_used = initial_weights(model, config)
        if self.unsaid:  # said once the model is built, so that a bad --checkpoint gets its message alone
            log.warning(self.unsaid)
            self.unsaid = None
        if config.template_prior:
            self._set_template(model)
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

    def _set_template(self, model) -> None:
        """Fill the template channel's bank from the training particles (built once per run)."""
        if self.template is None:
            template, n = particle_template(self.mics, model.prior.box, seed=self.config.seed)
            self.template = {"image": template, "particles": n, "box": model.prior.box,
                             "angles": model.prior.n_angles}
            if template is not None:
                log.info("template channel: average of %d training particles, %d px box, %d rotations", n,
                         model.prior.box, model.prior.n_angles)
        if self.template["image"] is not None:
            model.prior.set_template(self.template["image"])
        else:  # no particle to build it from: no response (not pretrained weights' leftover template)
            model.prior.bank.zero_()

    def _load_weights(self, model, path: Path) -> None:
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise CryopickError(f"{path}: weights of an unfinished run are unreadable ({type(exc).__name__}); "
                                f"{self._start_over()}") from None

    def train(self) -> ModelCard:
        config = self.config
        start_stage = self.state["stage"] if self.state else 0
        records: list[dict] = list(self.state.get("stage_records", [])) if self.state else []
        if start_stage > 0 or (self.state is None and self.pseudo_path.exists() and len(self.stages) > 1):
            records = load_pseudo_labels(self.pseudo_path, self.mics) or records
            start_stage = max(start_stage, 1)
        for index in range(start_stage, len(self.stages)):
            kind = self.stages[index]
            model, optimiser, scheduler, ema = self.build()
            state = self.state if (self.state and self.state["stage"] == index) else None
            if state is None and index > 0 and config.self_training_init == "previous":
                self._load_weights(model, self.out / PREVIOUS_STAGE_NAME)
            prior = (positive_prior(self.mics, self.radius, config.labelled_fraction) if kind == "pu" else 0.0)
            fit = self._fit(index, kind, model, optimiser, scheduler, ema, prior, state, records)
            self._load_weights(model, self.out / WEIGHTS_NAME)
            calibration, threshold = self._calibrate(model)
            records.append({"stage": kind, "prior": prior, **fit, "calibration": calibration})
            if index + 1 < len(self.stages):
                if config.self_training_init == "previous" or self.best_of_stages:
                    save_checkpoint(self.out / PREVIOUS_STAGE_NAME, model.state_dict())
                margin = config.unlabelled_ignore_margin
                make_pseudo_labels(model, self.mics, threshold, records, self.pseudo_path, radius=self.radius,
                                   mask_threshold=config.mask_threshold, score_method=config.score_method,
                                   min_distance=self.min_distance_w, match_tolerance=self.match_tolerance,
                                   bf16=self.bf16, only_unlabelled=not self.sparse,
                                   ignore_below=threshold - margin if margin > 0 else None)
        shipped = shipped_stage(records, self.best_of_stages)
        if shipped != len(records) - 1:  # two stages at most: the first one's weights were kept
            self._load_weights(model, self.out / PREVIOUS_STAGE_NAME)
            save_weights(self.out, model)
            log.info("stage %d (%s) is shipped: validation F1 %.3f, stage %d's %.3f", shipped + 1,
                     records[shipped]["stage"], records[shipped]["calibration"].get("f1") or 0.0, len(records),
                     records[-1]["calibration"].get("f1") or 0.0)
        return self._finish(model, records, shipped)

    # -- one stage --
    def _fit(self, index, kind, model, optimiser, scheduler, ema, prior, state, records) -> dict:
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        config = self.config
        targets = prepare_targets(self.mics, self.radius, ignore_radius=0.5 * self.scale.working_diameter)
        history: list[dict] = []
        start_epoch, best_f1, best_epoch = 0, -1.0, -1
        stage_start = self.clock.tick()
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
            stage_start = state.get("stage_start", stage_start)
            log.info("resuming %s at stage %d, epoch %d (best validation F1 %.3f)", self.out, index + 1,
                     start_epoch + 1, best_f1)
        budget = StageBudget(config, self.clock, index, len(self.stages), stage_start)
        label = "training" if len(self.stages) == 1 else f"stage {index + 1}/{len(self.stages)} ({kind})"
        steps = config.steps_per_epoch
        bar = tqdm(total=config.epochs * steps, initial=start_epoch * steps, desc=label, unit="step",
                   disable=not config.progress)
        model.train()
        stopped, first, epoch_cost, done = "epochs", True, 0.0, start_epoch
        with logging_redirect_tqdm():
            for epoch in range(start_epoch, config.epochs):
                bar.set_description(f"{label}, epoch {epoch + 1}/{config.epochs}")
                t_epoch, load_sample = self.clock.tick(), cpu_sample() if self.threads_auto else None
                losses = []
                for step in range(steps):
                    x, y, w, neg = sample_batch(self.mics, targets, self.patch, self.batch_size, self.rng, config.augment)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                        logits = model(x)
                    loss = batch_loss(logits, y, w, neg, prior)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                    optimiser.step()
                    scheduler.step()
                    if ema is not None:
                        ema.update(model, scheduler.last_epoch)
                    losses.append(float(loss.detach()))
                    self.clock.tick()
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(losses):.3f}", best_f1=_shown(best_f1 if self.has_val else None), refresh=False)
                    if step == 0:
                        t_first, wall_first = self.clock.used, time.monotonic()
                    if first and step == min(ESTIMATE_AFTER_STEPS, steps - 1):
                        per_step = (self.clock.used - t_first) / step if step else self.clock.used - t_epoch
                        budget.announce(per_step, torch.get_num_threads(), epoch,
                                        (time.monotonic() - wall_first) / step if step else None)  # wall s/step
                bar.set_postfix_str("validating", refresh=True)
                t_val = self.clock.tick()
                if ema is not None:
                    ema.swap(model)  # validate and keep the averaged weights
                val = self._validate(model) if self.has_val else {"f1": None}
                score = val["f1"] if val["f1"] is not None else float(epoch)  # unmeasured: the newest is kept
                if score > best_f1:
                    best_f1, best_epoch = score, epoch
                    save_weights(self.out, model)
                if ema is not None:
                    ema.swap(model)  # back to the live weights for training and the checkpoint
                val_cost = self.clock.tick() - t_val
                epoch_cost = self.clock.used - t_epoch
                history.append({"epoch": epoch, "loss": float(np.mean(losses)), **val,
                                "lr": float(scheduler.get_last_lr()[0]), "seconds": round(epoch_cost, 2),
                                "threads": torch.get_num_threads()})
                save_checkpoint(self.ckpt_path, {
                    "stage": index, "stage_records": records, "ema": ema.shadow if ema is not None else None,
                    "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": self.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "epoch": epoch, "best_f1": best_f1, "best_epoch": best_epoch,
                    "history": history, "config": config.resume_key(), "elapsed": self.elapsed(), "pool": self.pool,
                    "budget_used": self.clock.tick(), "stage_start": stage_start})
                bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_f1=_shown(val["f1"]),
                               best_f1=_shown(best_f1 if self.has_val else None))
                done = epoch + 1
                reserve = 2.0 * val_cost + 2.0  # the calibration after the stage is a finer validation
                if first:
                    first = False
                    budget.after_first_epoch(done, epoch_cost, reserve)
                if self.has_val and epoch - best_epoch >= config.patience:
                    stopped = "early stopping"
                    break
                if budget.should_stop(done, epoch_cost, reserve):
                    stopped = "time budget"
                    break
                if self.threads_auto:
                    self._recheck_threads(load_sample, epoch)
        close_bar(bar, label, stopped, done, config.epochs)
        warning = None
        if stopped == "time budget":
            warning = budget.cut_short(done, epoch_cost, reserve, torch.get_num_threads())
        return {"epochs_run": len(history), "best_epoch": best_epoch, "best_val_f1": best_f1 if self.has_val else None,
                "stopped": stopped,
                "history": history, "budget_estimate": budget.estimate, "budget_warning": warning}

    def _recheck_threads(self, before, epoch: int) -> None:
        """Follow the load: one thread per core that other processes left free during the last epoch."""
        busy = busy_other_cores(before, cpu_sample())
        if busy is None:
            return
        n, reason = choose_threads(None, busy=busy)
        current = torch.get_num_threads()
        # Hysteresis: change only when a load 0.2 cores further from the rounding edge agrees.
        confirmed = choose_threads(None, busy=max(0.0, busy + (0.2 if n > current else -0.2)))[0]
        if n != current and (confirmed - current) * (n - current) > 0:
            torch.set_num_threads(n)
            self._thread_note(f"after epoch {epoch + 1} the load changed: {reason}")

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
            return {"threshold": cal.DEFAULT_THRESHOLD, "f1": None, "note": "no validation data"}, cal.DEFAULT_THRESHOLD
        config = self.config
        calibration = calibrate_postprocess(model, self.mics, self.radius, self.context, self.bf16,
                                            config.mask_threshold, config.score_method, self.min_distance_w,
                                            self.match_tolerance, config.labelled_fraction)
        # Pseudo-labels are made with S1 (make_pseudo_labels): its own threshold.
        return calibration, calibration["variants"][f"s1/tta={calibration['tta']}"]["threshold"]

    # -- card --
    def _finish(self, model, records: list[dict], shipped: int) -> ModelCard:
        card = write_card(self, model, records, shipped)
        self.ckpt_path.unlink(missing_ok=True)
        self.pseudo_path.unlink(missing_ok=True)
        (self.out / PREVIOUS_STAGE_NAME).unlink(missing_ok=True)
        return card
