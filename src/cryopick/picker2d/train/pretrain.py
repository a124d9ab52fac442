"""Pretraining the default 2D backbone on the simulated corpus (:mod:`.corpus`), and shipping the weights.

The network, target painting (disks of ``target_radius_fraction`` x the particle radius at 16 working
pixels per particle), loss (class-balanced BCE), patch augmentation and weight averaging are those of
few-shot training (:mod:`.loop`); only the data differ: a pool of ``pool_size`` corpus micrographs, one
replaced by a newly simulated one every ``refresh_every`` steps, so the run sees
``pool_size + steps / refresh_every`` different micrographs. A held-out set of ``val_micrographs`` corpus
micrographs (another index range) is scored every ``val_every`` steps (best-threshold particle F1, as the
few-shot validation).

Resumable: ``checkpoint.pt`` (weights, average, optimiser, schedule, RNG states, pool indices, history)
is written atomically every ``checkpoint_every`` steps; rerunning :func:`pretrain` with the same settings
continues from it (the pool is re-simulated from its indices). ``log.jsonl`` gets one line per
validation; ``best.pt`` holds the averaged weights with the best validation F1.

>>> from cryopick.picker2d.train.pretrain import PretrainConfig, pretrain, export_pretrained
>>> pretrain("runs/pre2d", PretrainConfig(steps=1200))
>>> export_pretrained("runs/pre2d/best.pt", "src/cryopick/weights/unet2d_pretrained.pt")
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryopick.baselines.template2d import box_size
from cryopick.errors import CryopickError
from cryopick.io.atomic import make_output_dir, write_text
from cryopick.models.registry import build_model
from cryopick.models.template_prior import DEFAULT_ANGLES, rotated_bank
from cryopick.models.unet2d import load_weights_2d
from cryopick.picker2d.train.augment import AugmentConfig
from cryopick.picker2d.train.batches import batch_loss, prepare_targets, sample_batch
from cryopick.picker2d.train.config import check_number, check_shared_numbers
from cryopick.picker2d.train.corpus import HELD_OUT_KINDS, corpus_kinds, draw_settings, simulate_corpus_micrograph
from cryopick.picker2d.train.template import particle_template
from cryopick.runtime import configure_threads
from cryopick.training import WeightAverage, cosine_schedule, save_checkpoint, saved_settings, set_seeds

log = logging.getLogger(__name__)

#: Settings newer than some checkpoints (their defaults reproduce the older runs).
_ADDED_LATER = ("template_prior", "start_weights", "particle_contrast")

#: Offset of the validation micrographs' corpus indices (never reached by the training pool).
VAL_INDEX_OFFSET = 10_000_000


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (recorded in the checkpoint and the shipped weights' metadata).

    ``exclude_kinds``: shape families kept out of the corpus (default: the leave-one-out test families).
    ``working_size``: side of each corpus micrograph at the working scale (pixels).
    ``bf16``: bfloat16 autocast (off: on a shared CPU it was slower than float32 for this network).
    ``template_prior``: the network gets the template-matching input channel
    (:mod:`cryopick.models.template_prior`); each corpus micrograph's template is the aligned average of
    its own particles (as few-shot training builds one from the user's), so the network learns to use the
    channel for any particle.
    ``particle_contrast``: range of the corpus particles' contrast as a multiple of the simulator's default
    (:func:`.corpus.draw_settings`); lower values make a harder corpus.
    ``start_weights``: weights to start from instead of a random initialisation (a run's ``best.pt`` /
    ``checkpoint.pt`` or a package file, with or without the template channel; see
    :func:`cryopick.models.unet2d.load_weights_2d`).
    """

    steps: int = 1200
    seed: int = 0
    backbone: str = "unet"
    backbone_kwargs: dict = field(default_factory=dict)
    exclude_kinds: tuple = HELD_OUT_KINDS
    working_size: int = 224
    target_diameter: float = 16.0
    target_radius_fraction: float = 0.5
    pool_size: int = 48
    refresh_every: int = 4
    patch_size: int = 128
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    ema_decay: float = 0.995
    checkpoint_every: int = 50
    val_every: int = 200
    val_micrographs: int = 8
    bf16: bool = False
    num_threads: int | None = 2
    template_prior: bool = False
    start_weights: str | None = None
    particle_contrast: tuple = (0.5, 1.1)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> "PretrainConfig":
        """Raise :class:`CryopickError` naming the setting when it is out of range; returns self."""
        for name in ("steps", "pool_size", "refresh_every", "batch_size", "checkpoint_every", "val_every",
                     "val_micrographs"):
            check_number(self, name, 1, integer=True)
        check_shared_numbers(self)
        check_number(self, "working_size", 64, integer=True)
        check_number(self, "patch_size", 16, integer=True)
        if self.patch_size > self.working_size:
            raise CryopickError(f"patch_size ({self.patch_size}) must be at most working_size ({self.working_size})")
        try:
            lo, hi = (float(v) for v in self.particle_contrast)
        except (TypeError, ValueError):
            lo = hi = float("nan")
        if not 0 < lo <= hi < float("inf"):
            raise CryopickError(f"particle_contrast must be two numbers with 0 < low <= high, got {self.particle_contrast}")
        if self.start_weights is not None and not Path(self.start_weights).is_file():
            raise CryopickError(f"start_weights: {self.start_weights}: no such file")
        return self

    def model_kwargs(self) -> dict:
        """Keyword arguments of the backbone (with the template channel's box when ``template_prior``)."""
        kwargs = dict(self.backbone_kwargs)
        if self.template_prior:
            kwargs.setdefault("template_box", box_size(self.target_diameter))
        return kwargs

    def resume_key(self) -> dict:
        d = asdict(self)
        for k in ("num_threads", "checkpoint_every", "val_every"):
            d.pop(k)
        d["exclude_kinds"] = list(d["exclude_kinds"])
        d["particle_contrast"] = [float(v) for v in d["particle_contrast"]]
        return d


class _Corpus:
    """Corpus micrographs by index, at the run's settings."""

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config
        self.kinds = corpus_kinds(tuple(config.exclude_kinds))

    def micrograph(self, index: int):
        """Corpus micrograph ``index``; with ``template_prior`` its template bank is in ``meta["bank"]``."""
        c = self.config
        m = simulate_corpus_micrograph(draw_settings(index, c.seed, self.kinds, c.working_size, c.target_diameter,
                                                         tuple(c.particle_contrast)))
        if c.template_prior:
            box = box_size(c.target_diameter)
            template, _ = particle_template([m], box, max_particles=200, seed=index, include_validation=True)
            bank = np.zeros((DEFAULT_ANGLES, box, box), np.float32) if template is None \
                else rotated_bank(template, DEFAULT_ANGLES)
            m.meta["bank"] = torch.from_numpy(bank)[:, None]
        return m


def validation_micrographs(corpus: _Corpus) -> list:
    """The run's held-out corpus micrographs (indices from :data:`VAL_INDEX_OFFSET`), each validated whole."""
    val = [corpus.micrograph(VAL_INDEX_OFFSET + i) for i in range(corpus.config.val_micrographs)]
    for m in val:
        m.val_box = (0, m.shape[0], 0, m.shape[1])
    return val


def _validate(model, val_mics, radius: float, diameter: float) -> dict:
    from cryopick.picker2d.calibrate import f1_curve, score_grid, validation_picks

    def picks(mics):
        return validation_picks(model, mics, radius, int(round(2 * diameter)), False, 0.5, "mean_top", 0.5 * diameter)

    if getattr(model, "prior", None) is None:
        regions = picks(val_mics)
    else:  # each micrograph with its own template
        regions = []
        for m in val_mics:
            model.prior.bank.copy_(m.meta["bank"])
            regions.extend(picks([m]))
    p, r, f1 = f1_curve(regions, 0.5 * diameter, score_grid(regions))
    k = int(np.argmax(f1))
    return {"val_f1": round(float(f1[k]), 4), "val_precision": round(float(p[k]), 4),
            "val_recall": round(float(r[k]), 4), "val_threshold": round(float(score_grid(regions)[k]), 4)}


def pretrain(out: str | os.PathLike, config: PretrainConfig | None = None, log_every: int = 10) -> dict:
    """Run (or resume) pretraining into ``out``; returns the history (one entry per validation)."""
    config = (config or PretrainConfig()).validate()
    out = make_output_dir(out, "pretraining folder")
    configure_threads(config.num_threads)
    set_seeds(config.seed)
    corpus = _Corpus(config)
    model = build_model(config.backbone, **config.model_kwargs())
    if config.start_weights:
        load_weights_2d(model, averaged_weights(torch.load(config.start_weights, map_location="cpu", weights_only=False)))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: cosine_schedule(s, config.steps, config.warmup_steps))
    ema = WeightAverage(model, config.ema_decay)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 31337]))
    ckpt = out / "checkpoint.pt"
    radius = 0.5 * config.target_diameter * config.target_radius_fraction
    start, history, best = 0, [], -1.0
    pool_index = list(range(config.pool_size))
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved_settings(state["config"], PretrainConfig().resume_key(), _ADDED_LATER) != config.resume_key():
            raise CryopickError(f"{ckpt}: a pretraining run with other settings is there; use the same settings "
                                "or another folder")
        model.load_state_dict(state["model"])
        ema.shadow = state["ema"]
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start, history, best, pool_index = state["step"], state["history"], state["best"], state["pool_index"]
        log.info("resuming %s at step %d", out, start)
    t0 = time.perf_counter()
    pool = [corpus.micrograph(i) for i in pool_index]
    val = validation_micrographs(corpus)
    targets = prepare_targets(pool, radius)
    log.info("pool of %d and %d validation micrographs simulated in %.0f s", len(pool), len(val),
             time.perf_counter() - t0)
    model.train()
    losses, t_last, sim_seconds = [], time.perf_counter(), 0.0
    for step in range(start, config.steps):
        if step > 0 and step % config.refresh_every == 0:
            t_sim = time.perf_counter()
            index = config.pool_size + step // config.refresh_every - 1
            slot = index % config.pool_size
            pool[slot] = corpus.micrograph(index)
            pool_index[slot] = index
            targets[slot] = prepare_targets([pool[slot]], radius)[0]
            sim_seconds += time.perf_counter() - t_sim
        x, y, w, neg, index = sample_batch(pool, targets, config.patch_size, config.batch_size, rng, config.augment,
                                           with_index=True)
        response = None
        if config.template_prior:  # each patch with its own micrograph's template
            response = torch.cat([model.prior(x[i : i + 1], pool[k].meta["bank"]) for i, k in enumerate(index)])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(x, response=response) if response is not None else model(x)
        loss = batch_loss(logits, y, w, neg, 0.0)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        ema.update(model, scheduler.last_epoch)
        losses.append(float(loss.detach()))
        done = step + 1
        if done % log_every == 0:
            log.info("step %d/%d loss %.4f (%.2f s/step, simulation %.0f s)", done, config.steps,
                     float(np.mean(losses[-log_every:])), (time.perf_counter() - t_last) / log_every, sim_seconds)
            t_last = time.perf_counter()
        if done % config.val_every == 0 or done == config.steps:
            ema.swap(model)
            entry = {"step": done, "loss": round(float(np.mean(losses[-config.val_every:])), 4),
                     "lr": float(scheduler.get_last_lr()[0]), **_validate(model, val, radius, config.target_diameter),
                     "micrographs_seen": config.pool_size + done // config.refresh_every,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            if entry["val_f1"] > best:
                best = entry["val_f1"]
                save_checkpoint(out / "best.pt", {"model": model.state_dict(), "step": done, "val_f1": best,
                                                  "config": config.resume_key()})
            ema.swap(model)
            history.append(entry)
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            log.info("validation at step %d: %s", done, entry)
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(ckpt, {
                "model": model.state_dict(), "ema": ema.shadow, "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "step": done, "history": history, "best": best,
                "pool_index": list(pool_index), "config": config.resume_key()})
    ema.swap(model)
    save_checkpoint(out / "last.pt", {"model": model.state_dict(), "step": config.steps,
                                      "config": config.resume_key()})
    write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
    return {"history": history, "best_val_f1": best}


def averaged_weights(state: dict) -> dict:
    """The model weights of a saved run or package file: a ``checkpoint.pt``'s averaged (EMA) weights over
    its model, else its ``"model"`` (``best.pt`` / ``last.pt`` already hold the averaged ones)."""
    return {**state["model"], **state["ema"]} if state.get("ema") else state["model"]


def evaluate_weights(sources: list, config: PretrainConfig) -> list[dict]:
    """Validation F1 (as logged during pretraining) of each weights file on ``config``'s validation
    micrographs: package weights (float16), a run's ``best.pt`` / ``last.pt`` or ``checkpoint.pt``."""
    config = config.validate()
    val = validation_micrographs(_Corpus(config))
    radius = 0.5 * config.target_diameter * config.target_radius_fraction
    results = []
    for source in sources:
        model = build_model(config.backbone, **config.model_kwargs())
        load_weights_2d(model, averaged_weights(torch.load(source, map_location="cpu", weights_only=False)))
        model.eval()
        results.append({"source": str(source), **_validate(model, val, radius, config.target_diameter)})
    return results


def export_pretrained(source: str | os.PathLike, dest: str | os.PathLike, note: dict | None = None) -> Path:
    """Write the weights of ``source`` as a float16 state dict with metadata (``{"model": ..., "meta": ...}``),
    the format :func:`cryopick.models.unet2d.load_pretrained_2d` reads. ``source``: ``best.pt`` / ``last.pt``
    of a run (averaged weights), or a copy of its ``checkpoint.pt`` (its averaged weights are taken)."""
    state = torch.load(source, map_location="cpu", weights_only=False)
    # A template channel's bank holds the last corpus micrograph's template: not shipped (training sets the user's).
    weights = {k: (v.half() if v.is_floating_point() else v) for k, v in averaged_weights(state).items()
               if not k.startswith("prior.")}
    meta = {"step": state.get("step"), "val_f1": state.get("val_f1"), "pretrain_config": state.get("config"),
            **(note or {})}
    return save_checkpoint(dest, {"model": weights, "meta": meta})
