"""Training the promptable 3D picker on simulated tomograms (:func:`train`).

Resumable: ``last.pt`` in the output folder holds the model, optimiser, step and log; every random
draw of step ``k`` comes from ``default_rng([seed, k])``, so an interrupted and resumed run gives
the same weights as an uninterrupted one (same thread count).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from cryopick.errors import CryopickError
from cryopick.io.jsonutil import dumps
from cryopick.models.promptable3d import ProPicker, build_propicker_paper, build_propicker_small, load_propicker
from cryopick.picker3d.card import load_model
from cryopick.picker3d.predict import check_window
from cryopick.picker3d.train.corpus import CorpusTomogram, corpus_scale, load_corpus
from cryopick.picker3d.train.finetune import recommend_settings
from cryopick.picker3d.train.losses import contrastive_loss, segmentation_loss
from cryopick.picker3d.train.sampling import Batch, SampleConfig, sample_batch
from cryopick.training import WeightAverage, cosine_schedule, save_checkpoint

log = logging.getLogger(__name__)


# -- the training loop ------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    model: str = "propicker-small"
    model_kwargs: dict = field(default_factory=dict)
    init: str | None = None        # start from this ProPicker checkpoint
    reinit: tuple[str, ...] = ()   # parameter-name prefixes to re-initialise after loading ``init``
    tomotwin: str | None = None    # TomoTwin weights for the paper model's encoder
    freeze_encoder: bool = False
    steps: int = 10000
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 1e-5
    empty_weight: float = 0.5
    dice_weight: float = 1.0
    contrastive_weight: float = 0.5
    conditioning_lr_mult: float = 2.0  # learning-rate factor of the prompt encoder and FiLM layers
    ema: float = 0.999             # exponential moving average of the weights (0 = off); validated and saved
    freeze_bn_after: int | None = 1000  # from this step on, BatchNorm layers use (and keep) their running
                                        # statistics, as at inference (None = never)
    snapshot_every: int = 1000     # also keep snap_<step>.pt (averaged weights) every this many steps
    bf16: bool = True
    device: str = "cpu"
    seed: int = 0
    checkpoint_every: int = 100
    validate_every: int = 500
    sample: SampleConfig = field(default_factory=SampleConfig)


def _build(cfg: TrainConfig) -> ProPicker:
    if cfg.init:  # warm start; model_kwargs may change the architecture (see load_compatible)
        load_model(cfg.init)  # validates the file (one-line error for a damaged or foreign one)
        payload = torch.load(cfg.init, map_location="cpu", weights_only=True)
        model = _build(TrainConfig(model=payload["name"], model_kwargs={**payload["config"], **cfg.model_kwargs}))
        load_compatible(model, payload["state_dict"], skip=cfg.reinit)
        return model
    if cfg.model == "propicker-paper":
        return build_propicker_paper(tomotwin=cfg.tomotwin, **cfg.model_kwargs)
    if cfg.model == "propicker-small":
        return build_propicker_small(**cfg.model_kwargs)
    raise CryopickError(f"unknown 3D model {cfg.model!r}; use propicker-small or propicker-paper")


def load_compatible(model: torch.nn.Module, state: dict, skip: Sequence[str] = ()) -> None:
    """Copy ``state`` into ``model`` where it fits, so a grown network starts as the old one.

    Same-shape tensors are copied; convolutions that gained input channels get the old weights on
    the old channels and zeros on the new ones; new 1³ skip projections (a block whose input grew)
    start as the identity on the old channels. Names starting with a ``skip`` prefix keep their
    fresh initialisation. Anything else that does not fit raises ``ValueError``.
    """
    own = model.state_dict()
    for name, new in own.items():
        if any(name.startswith(p) for p in skip):
            continue
        old = state.get(name)
        if old is None:
            if name.endswith("skip.weight"):
                eye = torch.zeros_like(new)
                for i in range(new.shape[0]):
                    eye[i, i] = 1.0
                own[name] = eye
            elif name.endswith("skip.bias"):
                own[name] = torch.zeros_like(new)
            else:
                raise ValueError(f"{name}: not in the initial checkpoint")
            continue
        old = old.float() if old.is_floating_point() else old
        if old.shape == new.shape:
            own[name] = old
        elif old.ndim == new.ndim >= 2 and old.shape[0] == new.shape[0] and old.shape[2:] == new.shape[2:] \
                and old.shape[1] < new.shape[1]:
            grown = torch.zeros_like(new)
            grown[:, : old.shape[1]] = old
            own[name] = grown
        else:
            raise ValueError(f"{name}: shape {tuple(old.shape)} does not fit {tuple(new.shape)}")
    model.load_state_dict(own)


def _lr(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * cosine_schedule(step, cfg.steps, cfg.warmup, floor=0.05)


def train_step(model: ProPicker, batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    """Loss of one batch (prompts encoded here, so the encoder learns unless frozen)."""
    batch = batch.to(cfg.device)
    b, p = batch.prompts.shape[:2]
    flat = batch.prompts.reshape(b * p, *batch.prompts.shape[2:])
    contrast = cfg.contrastive_weight > 0 and not cfg.freeze_encoder
    if contrast:
        flat = torch.cat([flat, batch.positives.reshape(b * p, *batch.positives.shape[2:])])
    with torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
        if cfg.freeze_encoder:
            with torch.no_grad():
                z_all = model.encoder(model.encoder.prepare(flat))
        else:
            z_all = model.encoder(model.encoder.prepare(flat))
        z = z_all[: b * p].float()
        if model.segmenter.prototype:
            z = torch.cat([z, model.prototypes(batch.prompts.reshape(b * p, *batch.prompts.shape[2:])).float()], 1)
        logits = model.segmenter(batch.windows, z.view(b, p, -1))
    loss = segmentation_loss(logits, batch.targets, batch.empty, cfg.empty_weight, cfg.dice_weight)
    if contrast:
        ids = batch.class_ids.reshape(-1)
        loss = loss + cfg.contrastive_weight * contrastive_loss(z_all.float(), torch.cat([ids, ids]))
    return loss


def validation_batches(pool: list[CorpusTomogram], n: int, cfg: SampleConfig, seed: int = 12345) -> list:
    """``n`` fixed batches from a held-out pool (same every call)."""
    return [sample_batch(pool, np.random.default_rng([seed, i]), cfg) for i in range(n)]


@torch.no_grad()
def evaluate_batches(model: ProPicker, batches: list[Batch], bf16: bool = True) -> dict:
    """Validation metrics over non-empty channels: loss, Dice at 0.5 (``val_dice``), the same Dice when
    each channel is given the prompt of another class present in the window (``val_dice_wrong``; equal
    to ``val_dice`` when the prompt is ignored), and the false-positive voxel rate on empty channels."""
    model.eval()
    dices, wrong, losses, fp = [], [], [], []

    def dice(logits, targets):
        pred = (logits > 0).float()
        inter = (pred * targets).sum(dim=(2, 3, 4))
        return 2 * inter / (pred.sum(dim=(2, 3, 4)) + targets.sum(dim=(2, 3, 4))).clamp(min=1), pred

    grid = torch.arange(0.1, 0.951, 0.05)
    best_inter = torch.zeros(len(grid))
    best_denom = torch.zeros(len(grid))
    device = next(model.parameters()).device
    for batch in batches:
        batch = batch.to(device)
        b, p = batch.prompts.shape[:2]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            z = model.embed(batch.prompts.reshape(b * p, *batch.prompts.shape[2:])).float().view(b, p, -1)
            logits = model.segmenter(batch.windows, z).float()
            rolled = model.segmenter(batch.windows, z.roll(1, dims=1)).float() if p > 1 else None
        losses.append(float(segmentation_loss(logits, batch.targets, batch.empty, 1.0, 1.0)))
        d, pred = dice(logits, batch.targets)
        prob = torch.sigmoid(logits)[~batch.empty].cpu()  # (n, w, w, w) channels with a target
        tgt = batch.targets[~batch.empty].cpu()
        for i, t in enumerate(grid):
            on = (prob > t).float()
            best_inter[i] += (on * tgt).sum()
            best_denom[i] += on.sum() + tgt.sum()
        dices += d[~batch.empty].tolist()  # .tolist() also moves to the CPU
        fp += pred.mean(dim=(2, 3, 4))[batch.empty].tolist()
        if rolled is not None:
            dw, _ = dice(rolled, batch.targets)
            other = batch.class_ids.roll(1, dims=1) != batch.class_ids
            wrong += dw[~batch.empty & other].tolist()
    model.train()
    nan = float("nan")
    pooled = 2 * best_inter / best_denom.clamp(min=1)
    k = int(pooled.argmax())
    return {"val_loss": float(np.mean(losses)), "val_dice": float(np.mean(dices)) if dices else nan,
            "val_best_threshold": round(float(grid[k]), 2), "val_pooled_dice_best": float(pooled[k]),
            "val_dice_wrong": float(np.mean(wrong)) if wrong else nan,
            "val_empty_fp": float(np.mean(fp)) if fp else nan}


def train(cfg: TrainConfig, pool_dir: str | os.PathLike, out_dir: str | os.PathLike,
          val_pool_dir: str | os.PathLike | None = None, n_val_batches: int = 8,
          stop_after: int | None = None, progress: bool = True) -> ProPicker:
    """Train (or resume) into ``out_dir``: ``last.pt`` (resumable state), ``best.pt`` (best validation
    Dice, a ProPicker checkpoint), ``snap_<step>.pt`` snapshots, ``model.pt`` (final ProPicker
    checkpoint), ``log.jsonl``. With ``cfg.ema`` the saved, validated and returned weights are the
    exponential moving average of the trained ones (steadier on small, noisy batches).

    ``stop_after``: stop after this many steps in this call (for tests and time-sliced runs).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = load_corpus(pool_dir)
    val = validation_batches(load_corpus(val_pool_dir), n_val_batches, cfg.sample) if val_pool_dir else []
    torch.manual_seed(cfg.seed)
    model = _build(cfg).to(cfg.device)
    check_window(model, cfg.sample.window)
    named = [(n, p) for n, p in model.named_parameters() if not (cfg.freeze_encoder and n.startswith("encoder."))]
    conditioning = [p for n, p in named if n.startswith("encoder.") or "film" in n]
    rest = [p for n, p in named if not (n.startswith("encoder.") or "film" in n)]
    params = conditioning + rest
    opt = torch.optim.AdamW([{"params": rest, "lr_mult": 1.0},
                             {"params": conditioning, "lr_mult": cfg.conditioning_lr_mult}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, best, history = 0, -1.0, []
    ema = WeightAverage(model, cfg.ema, ramp=False, buffers=False) if cfg.ema else None
    last = out_dir / "last.pt"
    if last.exists():
        state = torch.load(last, map_location=cfg.device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, best, history = state["step"], state["best"], state["history"]
        log.info("resuming %s at step %d", last, step)
    meta = {"train_config": json.loads(dumps(cfg, strict=False)), "pool": str(pool_dir), "n_pool": len(pool),
            "window": cfg.sample.window, **corpus_scale(pool_dir)}
    model.train()
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", disable=not progress)
    running, t0 = [], time.time()
    log_path = out_dir / "log.jsonl"
    while step < end:
        if cfg.freeze_bn_after is not None and step >= cfg.freeze_bn_after:
            _freeze_batchnorm(model)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step) * g.get("lr_mult", 1.0)
        batch = sample_batch(pool, np.random.default_rng([cfg.seed, step]), cfg.sample)
        loss = train_step(model, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        step += 1
        running.append(float(loss.detach()))
        bar.update(1)
        record = None
        if step % cfg.checkpoint_every == 0 or step == end:
            record = {"step": step, "loss": float(np.mean(running)), "lr": _lr(cfg, step - 1),
                      "s_per_step": (time.time() - t0) / max(1, len(running))}
            running, t0 = [], time.time()
            with _averaged(model, ema):
                if val and (step % cfg.validate_every == 0 or step == cfg.steps):
                    record.update(evaluate_batches(model, val, cfg.bf16))
                    model.train()
                    if record["val_dice"] > best:
                        best = record["val_dice"]
                        model.save(out_dir / "best.pt",
                                   meta={**meta, **record, "default_threshold": record["val_best_threshold"]})
                if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                    model.save(out_dir / f"snap_{step:06d}.pt", meta={**meta, **record})
            history.append(record)
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}", dice=f"{record.get('val_dice', float('nan')):.3f}")
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "best": best,
                     "history": history, "config": json.loads(dumps(cfg, strict=False))}
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_checkpoint(last, state)
    bar.close()
    if ema is not None:
        ema.swap(model)  # the averaged weights are the result
    if step >= cfg.steps:
        model.save(out_dir / "model.pt", meta={**meta, "steps": step, "history_tail": history[-5:]})
    return model


@contextlib.contextmanager
def _averaged(model: torch.nn.Module, ema: WeightAverage | None):
    """Within the block ``model`` holds the averaged weights (if any); the live ones after it."""
    if ema is not None:
        ema.swap(model)
    try:
        yield model
    finally:
        if ema is not None:
            ema.swap(model)


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    """Put BatchNorm layers in eval mode: normalise with the running statistics and stop updating them.

    The prompt encoder needs batch statistics early on (see :class:`SmallPromptEncoder`), but a
    network trained only with them depends on the composition of its training batches: at inference
    (one prompt, running statistics) its codes are off-distribution. Training the rest with frozen
    statistics removes the mismatch.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def export_weights(checkpoint: str | os.PathLike, out_path: str | os.PathLike, val_pool_dir: str | os.PathLike | None = None,
                   n_val_batches: int = 8, window: int = 48, min_instances: int = 5) -> ProPicker:
    """Write ``checkpoint`` as compact float16 weights; with ``val_pool_dir`` (held-out classes) first
    measure the validation metrics and the recommended picking settings (:func:`recommend_settings`)."""
    model = load_propicker(checkpoint)
    if val_pool_dir:
        cfg = SampleConfig(window=window)
        record = evaluate_batches(model, validation_batches(load_corpus(val_pool_dir), n_val_batches, cfg))
        model.meta = {**model.meta, **record, **recommend_settings(model, val_pool_dir, min_instances)}
    model.save(out_path, half=True)
    return model

