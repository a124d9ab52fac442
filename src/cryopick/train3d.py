"""Training the promptable 3D picker on simulated tomograms, and fine-tuning it on annotated ones.

Data: a *pool* of simulated tomograms written to disk once (:func:`make_pool`), one folder per
tomogram with ``volume.npy`` (float16, z-scored, protein dark), ``class_mask.npy`` (int16, 0 =
background, ``c`` = class ``c - 1``) and ``picks.npz`` (centres ``x, y, z`` voxels, class index,
diameters). Every ``share`` consecutive tomograms use the same freshly drawn set of
structurally different classes (:func:`cryopick.simulate.tomogram.random_particle_classes`), so
prompts can come from another tomogram as well as from another place in the same one.

One step (:func:`sample_batch`):

1. pick ``batch`` windows (``window``³ voxels, centred near a random particle, random flips and
   90° turns about z);
2. for each window draw up to ``prompts`` classes present in it and, with probability
   ``negative_prompt_prob`` per slot, classes of the tomogram absent from it;
3. the prompt of a class is the 37³ sub-volume around a **different instance** of the class (not one
   whose centre lies in the window), from this tomogram or its sibling, randomly flipped;
4. the target of a prompt is that class's occupancy mask in the window. Channels whose target is
   empty are weighted by ``empty_weight``: 0 masks them out of the loss, as ProPicker does. The
   default 0.5 keeps half of their signal: with fully masked empty channels every window the
   network is trained on contains the prompted class, which rewards "mark whatever looks most like
   the prompt" — false positives in the many windows of a tomogram without that class.

Loss: binary cross-entropy plus ``dice_weight`` × soft Dice on non-empty channels, plus
``contrastive_weight`` × a supervised contrastive (InfoNCE) loss on the prompt embeddings: each prompt
comes with a second, independently drawn instance of its class, and embeddings of the same class are
pulled together, of different classes pushed apart (TomoTwin trains its encoder by metric learning
for the same purpose). Without it the segmenter first learns a generic "any particle" detector and the
FiLM conditioning stays unused for thousands of steps. The prompt encoder is trained jointly
(``freeze_encoder=False``) or kept frozen (e.g. TomoTwin; the contrastive term is then skipped).

Resumable: ``last.pt`` in the output folder holds the model, optimiser, step and log; every random
draw of step ``k`` comes from ``default_rng([seed, k])``, so an interrupted and resumed run gives
the same weights as an uninterrupted one (same thread count).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path, write_text
from cryopick.models.prompt_encoder import PROMPT_SIZE, zscore_windows
from cryopick.models.promptable3d import ProPicker, build_propicker_paper, build_propicker_small, load_propicker
from cryopick.predict3d import read_block

log = logging.getLogger(__name__)


# -- the pool of simulated tomograms ----------------------------------------------------------------
@dataclass
class PoolConfig:
    """How the simulated training tomograms are drawn (ranges are sampled per tomogram / class set)."""

    shape: tuple[int, int, int] = (96, 192, 192)
    classes_per_tomogram: int = 12
    share: int = 2
    voxel_size: tuple[float, float] = (9.0, 13.0)
    diameter_A: tuple[float, float] = (70.0, 350.0)
    max_diameter_px: float = 33.0
    min_diameter_px: float = 6.0
    n_particles: tuple[int, int] = (120, 200)
    snr: tuple[float, float] = (0.2, 1.5)
    defocus_um: tuple[float, float] = (2.0, 6.0)
    tilt_max: tuple[float, float] = (45.0, 70.0)
    crowding: tuple[float, float] = (0.1, 0.6)
    membranes: tuple[int, int] = (0, 3)
    gold_beads: tuple[int, int] = (0, 8)
    raw_ctf_fraction: float = 0.2


def make_pool(directory: str | os.PathLike, n_tomograms: int, seed: int = 0, config: PoolConfig | None = None,
              progress: bool = True) -> list[Path]:
    """Simulate ``n_tomograms`` training tomograms into ``directory`` (existing ones are kept).

    Class sets come from ``random_particle_classes`` seeded by ``(seed, set index)``: use different
    ``seed`` values for training and held-out pools so their classes never coincide.
    """
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    cfg = config or PoolConfig()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_text(directory / "pool.json", json.dumps({"seed": seed, "config": asdict(cfg)}, indent=1))
    paths = []
    classes, set_id = None, -1
    for i in tqdm(range(n_tomograms), desc="simulating pool", disable=not progress):
        path = directory / f"tomo_{i:04d}"
        paths.append(path)
        rng = np.random.default_rng([seed, i, 11])
        if i // cfg.share != set_id:
            set_id = i // cfg.share
            set_rng = np.random.default_rng([seed, set_id, 13])
            voxel = float(set_rng.uniform(*cfg.voxel_size))
            lo = max(cfg.diameter_A[0], cfg.min_diameter_px * voxel)
            hi = min(cfg.diameter_A[1], cfg.max_diameter_px * voxel)
            classes = None  # built lazily: skip the work when the whole set exists
        if (path / "picks.npz").exists():
            continue
        if classes is None:
            classes = random_particle_classes(cfg.classes_per_tomogram, seed=int(seed * 100_003 + set_id),
                                              voxel_size=voxel, diameter_range_A=(lo, hi))
        tilt = float(rng.uniform(*cfg.tilt_max))
        tomo = simulate_tomogram(
            classes, shape=cfg.shape, voxel_size=voxel, seed=int(rng.integers(2**31)),
            n_particles=int(rng.integers(cfg.n_particles[0], cfg.n_particles[1] + 1)),
            tilt_range=(-tilt, tilt), snr=tuple(cfg.snr), defocus_um=tuple(cfg.defocus_um),
            membranes=int(rng.integers(cfg.membranes[0], cfg.membranes[1] + 1)),
            gold_beads=int(rng.integers(cfg.gold_beads[0], cfg.gold_beads[1] + 1)),
            crowding=float(rng.uniform(*cfg.crowding)),
            ctf_correction="none" if rng.uniform() < cfg.raw_ctf_fraction else "phaseflip",
            name=path.name,
        )
        write_tomogram(path, tomo, set_id)
    return paths


def write_tomogram(path: Path, tomo, set_id: int = 0) -> None:
    """Store a simulated :class:`~cryopick.simulate.tomogram.Tomogram` in the pool layout."""
    path.mkdir(parents=True, exist_ok=True)
    names = list(tomo.class_names)
    labels = np.array([names.index(n) for n in tomo.picks.table["label"]], dtype=np.int64)
    with atomic_path(path / "volume.npy") as tmp:
        np.save(tmp, tomo.volume.astype(np.float16))
    with atomic_path(path / "class_mask.npy") as tmp:
        np.save(tmp, tomo.class_mask.astype(np.int16))
    with atomic_path(path / "picks.npz") as tmp:  # written last: marks the tomogram complete
        np.savez(tmp, coords=tomo.picks.coords, labels=labels, diameters=tomo.picks.table["diameter"].to_numpy(),
                 class_names=np.array(names), set_id=set_id, voxel_size=tomo.voxel_size)


@dataclass
class PoolTomogram:
    volume: np.ndarray      # (D, H, W) float16 memory map
    class_mask: np.ndarray  # (D, H, W) int16 memory map
    coords: np.ndarray      # (N, 3) x, y, z
    labels: np.ndarray      # (N,) class index
    n_classes: int
    set_id: int
    name: str


def load_pool(directory: str | os.PathLike) -> list[PoolTomogram]:
    directory = Path(directory)
    tomos = []
    for path in sorted(directory.glob("tomo_*")):
        if not (path / "picks.npz").exists():
            continue
        meta = np.load(path / "picks.npz")
        tomos.append(PoolTomogram(
            volume=np.load(path / "volume.npy", mmap_mode="r"),
            class_mask=np.load(path / "class_mask.npy", mmap_mode="r"),
            coords=meta["coords"], labels=meta["labels"], n_classes=len(meta["class_names"]),
            set_id=int(meta["set_id"]), name=path.name,
        ))
    if not tomos:
        raise CryopickError(f"{directory}: no simulated tomograms; create them with `cryopick train3d --make-pool`")
    return tomos


# -- sampling -----------------------------------------------------------------------------------------
@dataclass
class SampleConfig:
    window: int = 48
    batch: int = 2
    prompts: int = 3
    negative_prompt_prob: float = 0.25
    jitter: float = 0.35          # window centre offset from the chosen particle, fraction of the window
    rot90: bool = True            # random 90° turns about z (moves the tilt axis from y to x)


@dataclass
class Batch:
    """One training batch (shapes: B windows, P prompts per window, w = window edge).

    ``windows`` ``(B, 1, w, w, w)`` z-scored; ``prompts`` and ``positives`` ``(B, P, 37, 37, 37)`` raw
    (``positives``: another instance of the same class); ``targets`` ``(B, P, w, w, w)`` in {0, 1};
    ``empty`` ``(B, P)`` bool; ``class_ids`` ``(B, P)`` int64, unique per class across the pool (-1:
    the class had no instance to cut a prompt from).
    """

    windows: torch.Tensor
    prompts: torch.Tensor
    targets: torch.Tensor
    empty: torch.Tensor
    positives: torch.Tensor
    class_ids: torch.Tensor

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in
                       ("windows", "prompts", "targets", "empty", "positives", "class_ids")))


def _augment(arrays: Sequence[np.ndarray], rng: np.random.Generator, rot90: bool) -> list[np.ndarray]:
    """The same random flips (all axes) and 90° turn about z applied to every ``(D, H, W)`` array."""
    flips = [ax for ax in range(3) if rng.uniform() < 0.5]
    k = int(rng.integers(4)) if rot90 else 0
    out = []
    for a in arrays:
        if flips:
            a = np.flip(a, axis=flips)
        if k:
            a = np.rot90(a, k, axes=(1, 2))
        out.append(np.ascontiguousarray(a))
    return out


def _prompt_volume(tomo: PoolTomogram, centre: np.ndarray) -> np.ndarray:
    c = np.round(centre[::-1]).astype(int) - PROMPT_SIZE // 2  # z, y, x start
    return read_block(tomo.volume, tuple(c), (PROMPT_SIZE,) * 3)


def sample_batch(pool: list[PoolTomogram], rng: np.random.Generator, cfg: SampleConfig) -> Batch:
    """One training batch (see :class:`Batch`); deterministic for a given ``rng`` state."""
    w = cfg.window
    by_set: dict[int, list[PoolTomogram]] = {}
    for t in pool:
        by_set.setdefault(t.set_id, []).append(t)
    windows, prompts, targets, empty, positives, ids = [], [], [], [], [], []
    for _ in range(cfg.batch):
        tomo = pool[int(rng.integers(len(pool)))]
        shape = np.array(tomo.volume.shape)
        if len(tomo.coords) and rng.uniform() < 0.9:
            centre = tomo.coords[int(rng.integers(len(tomo.coords)))][::-1]  # z, y, x
            centre = centre + rng.uniform(-cfg.jitter, cfg.jitter, 3) * w
        else:
            centre = rng.uniform(0, shape)
        start = np.clip(np.round(centre - w / 2).astype(int), 0, np.maximum(shape - w, 0))
        vol = read_block(tomo.volume, tuple(start), (w, w, w))
        cmask = read_block(tomo.class_mask, tuple(start), (w, w, w)).astype(np.int16)
        counts = np.bincount(cmask.ravel().astype(np.int64), minlength=tomo.n_classes + 1)[1:]
        present = np.flatnonzero(counts > 0)
        absent = np.setdiff1d(np.arange(tomo.n_classes), present)
        chosen: list[int] = []
        order = rng.permutation(present)
        for slot in range(cfg.prompts):
            if len(absent) and (rng.uniform() < cfg.negative_prompt_prob or slot >= len(order)):
                chosen.append(int(absent[int(rng.integers(len(absent)))]))
            elif slot < len(order):
                chosen.append(int(order[slot]))
            else:
                chosen.append(int(rng.integers(tomo.n_classes)))
        vol, cmask = _augment([vol, cmask], rng, cfg.rot90)
        siblings = by_set[tomo.set_id]
        p_list, t_list, e_list, q_list, i_list = [], [], [], [], []
        for c in chosen:
            sources = []
            for sib in siblings:
                idx = np.flatnonzero(sib.labels == c)
                if sib is tomo:  # an instance whose centre is outside this window
                    inside = np.all((sib.coords[idx][:, ::-1] >= start) & (sib.coords[idx][:, ::-1] < start + w), axis=1)
                    idx = idx[~inside]
                sources += [(sib, i) for i in idx]
            if sources:
                pick = rng.permutation(len(sources))[:2]
                sib, i = sources[int(pick[0])]
                pv = _prompt_volume(sib, sib.coords[i])
                sib2, i2 = sources[int(pick[-1])]  # the same instance when it is the only one
                qv = _prompt_volume(sib2, sib2.coords[i2])
                i_list.append(tomo.set_id * 1000 + c)
            else:  # the class has no other instance: the prompt is noise, the channel is masked
                pv = qv = rng.standard_normal((PROMPT_SIZE,) * 3).astype(np.float32)
                i_list.append(-1)
            p_list.append(_augment([pv], rng, True)[0])
            q_list.append(_augment([qv], rng, True)[0])
            tgt = (cmask == c + 1).astype(np.float32)
            t_list.append(tgt)
            e_list.append(not tgt.any() or not sources)
        windows.append(vol)
        prompts.append(np.stack(p_list))
        targets.append(np.stack(t_list))
        empty.append(e_list)
        positives.append(np.stack(q_list))
        ids.append(i_list)
    x = zscore_windows(torch.from_numpy(np.stack(windows))[:, None].float())
    return Batch(x, torch.from_numpy(np.stack(prompts)), torch.from_numpy(np.stack(targets)), torch.tensor(empty),
                 torch.from_numpy(np.stack(positives)), torch.tensor(ids, dtype=torch.int64))


# -- loss ---------------------------------------------------------------------------------------------------
def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, empty: torch.Tensor,
                      empty_weight: float = 0.0, dice_weight: float = 1.0) -> torch.Tensor:
    """BCE (empty-target channels weighted by ``empty_weight``) + ``dice_weight`` × soft Dice.

    ``logits``, ``targets``: ``(B, P, D, H, W)``; ``empty``: ``(B, P)`` bool.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(2, 3, 4))
    weight = torch.where(empty, torch.full_like(bce, empty_weight), torch.ones_like(bce))
    loss = (bce * weight).sum() / weight.sum().clamp(min=1e-6)
    if dice_weight and (~empty).any():
        prob = torch.sigmoid(logits)
        inter = (prob * targets).sum(dim=(2, 3, 4))
        denom = prob.sum(dim=(2, 3, 4)) + targets.sum(dim=(2, 3, 4))
        dice = 1 - (2 * inter + 1) / (denom + 1)
        loss = loss + dice_weight * dice[~empty].mean()
    return loss


def contrastive_loss(z: torch.Tensor, ids: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised InfoNCE over unit embeddings ``z`` ``(N, d)`` with class ``ids`` ``(N,)`` (-1 ignored)."""
    keep = ids >= 0
    z, ids = z[keep].float(), ids[keep]
    if len(z) < 2:
        return z.sum() * 0
    sim = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, -1e9)
    pos = (ids[:, None] == ids[None, :]) & ~self_mask
    has = pos.any(dim=1)
    if not has.any():
        return z.sum() * 0
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    per_anchor = -(log_prob * pos).sum(dim=1) / pos.sum(dim=1).clamp(min=1)
    return per_anchor[has].mean()


# -- the training loop ------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    model: str = "propicker-small"
    model_kwargs: dict = field(default_factory=dict)
    init: str | None = None        # start from this ProPicker checkpoint
    reinit: tuple[str, ...] = ()   # parameter-name prefixes to re-initialise after loading ``init``
    tomotwin: str | None = None    # TomoTwin weights for the paper model's encoder
    freeze_encoder: bool = False
    steps: int = 20000
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
        load_propicker(cfg.init)  # validates the file
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
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


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


def validation_batches(pool: list[PoolTomogram], n: int, cfg: SampleConfig, seed: int = 12345) -> list:
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
    pool = load_pool(pool_dir)
    val = validation_batches(load_pool(val_pool_dir), n_val_batches, cfg.sample) if val_pool_dir else []
    torch.manual_seed(cfg.seed)
    model = _build(cfg).to(cfg.device)
    named = [(n, p) for n, p in model.named_parameters() if not (cfg.freeze_encoder and n.startswith("encoder."))]
    conditioning = [p for n, p in named if n.startswith("encoder.") or "film" in n]
    rest = [p for n, p in named if not (n.startswith("encoder.") or "film" in n)]
    params = conditioning + rest
    opt = torch.optim.AdamW([{"params": rest, "lr_mult": 1.0},
                             {"params": conditioning, "lr_mult": cfg.conditioning_lr_mult}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, best, history = 0, -1.0, []
    ema = copy.deepcopy(model) if cfg.ema else model
    last = out_dir / "last.pt"
    if last.exists():
        state = torch.load(last, map_location=cfg.device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if cfg.ema:
            ema.load_state_dict(state["ema"])
        step, best, history = state["step"], state["best"], state["history"]
        log.info("resuming %s at step %d", last, step)
    meta = {"train_config": _jsonable(asdict(cfg)), "pool": str(pool_dir), "n_pool": len(pool),
            "window": cfg.sample.window}
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
        if cfg.ema:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(cfg.ema).add_(pm.detach(), alpha=1 - cfg.ema)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
        step += 1
        running.append(float(loss.detach()))
        bar.update(1)
        record = None
        if step % cfg.checkpoint_every == 0 or step == end:
            record = {"step": step, "loss": float(np.mean(running)), "lr": _lr(cfg, step - 1),
                      "s_per_step": (time.time() - t0) / max(1, len(running))}
            running, t0 = [], time.time()
            if val and (step % cfg.validate_every == 0 or step == cfg.steps):
                record.update(evaluate_batches(ema, val, cfg.bf16))
                if record["val_dice"] > best:
                    best = record["val_dice"]
                    ema.save(out_dir / "best.pt",
                             meta={**meta, **record, "default_threshold": record["val_best_threshold"]})
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                ema.save(out_dir / f"snap_{step:06d}.pt", meta={**meta, **record})
            history.append(record)
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['loss']:.3f}", dice=f"{record.get('val_dice', float('nan')):.3f}")
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "best": best,
                     "history": history, "config": _jsonable(asdict(cfg))}
            if cfg.ema:
                state["ema"] = ema.state_dict()
            with atomic_path(last) as tmp:
                torch.save(state, tmp)
    bar.close()
    if step >= cfg.steps:
        ema.save(out_dir / "model.pt", meta={**meta, "steps": step, "history_tail": history[-5:]})
    return ema


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


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


# -- fine-tuning on annotated tomograms ----------------------------------------------------------------------
def occupancy_from_picks(shape: tuple[int, int, int], coords: np.ndarray, diameter: float,
                         fraction: float = 0.8) -> np.ndarray:
    """``(D, H, W)`` uint8 target: balls of ``fraction × diameter`` (voxels) at ``coords`` (x, y, z)."""
    target = np.zeros(shape, np.uint8)
    r = max(1.0, fraction * diameter / 2)
    ri = int(math.ceil(r))
    g = np.arange(-ri, ri + 1)
    ball = (g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) <= r * r
    for x, y, z in np.round(coords).astype(int):
        sl, bl = [], []
        for c, n in zip((z, y, x), shape):
            lo, hi = c - ri, c + ri + 1
            sl.append(slice(max(0, lo), min(n, hi)))
            bl.append(slice(max(0, lo) - lo, (2 * ri + 1) - (hi - min(n, hi))))
        if all(s.stop > s.start for s in sl):
            target[tuple(sl)] |= ball[tuple(bl)]
    return target


def finetune(model: ProPicker, volumes: list[np.ndarray], targets: list[np.ndarray], prompt_volumes: np.ndarray,
             out_path: str | os.PathLike, steps: int = 300, lr: float = 5e-4, window: int = 48, batch: int = 2,
             bf16: bool = True, seed: int = 0, progress: bool = True) -> ProPicker:
    """Fine-tune the segmenter (and FiLM) for one particle; prompt and encoder stay fixed.

    ``volumes``: working-scale tomograms (contrast as in training); ``targets``: matching uint8
    occupancy masks (e.g. :func:`occupancy_from_picks`); ``prompt_volumes``: ``(K, 37, 37, 37)``.
    Saves a ProPicker checkpoint to ``out_path`` whose ``meta["embedding"]`` is the fixed prompt
    embedding (mean of the ``K`` prompts, renormalised).
    """
    z = model.combine(model.embed(prompt_volumes))[None]
    params = list(model.segmenter.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-5)
    model.train()
    centres = [np.argwhere(t > 0) for t in targets]
    for step in tqdm(range(steps), desc="fine-tuning", disable=not progress):
        rng = np.random.default_rng([seed, step])
        xs, ts = [], []
        for _ in range(batch):
            i = int(rng.integers(len(volumes)))
            vol, tgt = volumes[i], targets[i]
            shape = np.array(vol.shape)
            if len(centres[i]) and rng.uniform() < 0.8:
                c = centres[i][int(rng.integers(len(centres[i])))] + rng.uniform(-0.35, 0.35, 3) * window
            else:
                c = rng.uniform(0, shape)
            start = np.clip(np.round(c - window / 2).astype(int), 0, np.maximum(shape - window, 0))
            v = read_block(vol, tuple(start), (window,) * 3)
            t = read_block(tgt, tuple(start), (window,) * 3)
            v, t = _augment([v, t], rng, True)
            xs.append(v)
            ts.append(t.astype(np.float32))
        x = zscore_windows(torch.from_numpy(np.stack(xs))[:, None].float())
        tt = torch.from_numpy(np.stack(ts))[:, None]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model.segmenter(x, z.detach())
        loss = segmentation_loss(logits, tt, torch.zeros(batch, 1, dtype=torch.bool), 1.0, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    model.meta = {**model.meta, "finetuned": True, "embedding": z[0].tolist(), "finetune_steps": steps}
    model.save(out_path)
    return model


def recommend_settings(model: ProPicker, val_pool_dir: str | os.PathLike, min_instances: int = 5,
                       stride: int = 32, similarity: bool = True, progress: bool = False) -> dict:
    """ProPicker-C settings to use without calibration, chosen on held-out classes.

    Every class of the validation pool is prompted from one tomogram of its set and picked on the
    sibling tomogram over the :func:`cryopick.calibrate3d.sweep_cluster` grid (threshold × minimum ×
    maximum size factor, × minimum prompt similarity when ``similarity``). The default is the one grid point with the best *mean* F1 over classes
    (what a user who cannot calibrate gets on average), not a per-class optimum.

    Returns
    -------
    dict
        ``default_threshold``, ``default_min_factor``, ``default_max_factor`` (``None`` = no upper
        limit), ``default_min_similarity`` (``None`` = no check), ``val_pick_default_f1_mean`` (mean F1 at those settings), ``val_pick_best_f1_mean``
        (mean best-case F1) and ``val_pick_classes``.
    """
    from cryopick.calibrate3d import sweep_cluster
    from cryopick.pick3d import PromptSimilarity, cut_prompt, flipped_views
    from cryopick.predict3d import predict_tomogram

    pool = load_pool(val_pool_dir)
    by_set: dict[int, list[PoolTomogram]] = {}
    for t in pool:
        by_set.setdefault(t.set_id, []).append(t)
    tables = []
    for tomos in by_set.values():
        if len(tomos) < 2:
            continue
        src, dst = tomos[0], tomos[1]
        diam = np.load(Path(val_pool_dir) / src.name / "picks.npz")["diameters"]
        classes, codes, diameters = [], [], []
        for c in range(src.n_classes):
            idx = np.flatnonzero(src.labels == c)
            if len(idx) == 0 or (dst.labels == c).sum() < min_instances:
                continue
            sub = cut_prompt(src.volume, src.coords[idx[0]])
            codes.append(model.combine(model.embed(flipped_views(sub[None]))))
            classes.append(c)
            diameters.append(float(diam[idx[0]]))
        if not classes:
            continue
        prob = predict_tomogram(model.segmenter, dst.volume, torch.stack(codes), stride=stride, progress=progress)
        for k, (c, d) in enumerate(zip(classes, diameters)):
            sim = PromptSimilarity(model, dst.volume, codes[k]) if similarity else None
            table = sweep_cluster(prob[k], dst.coords[dst.labels == c], d, similarity=sim).table
            tables.append(table.assign(cls=len(tables)))
    if not tables:
        raise CryopickError(f"{val_pool_dir}: no class with enough instances to recommend settings")
    import pandas as pd

    grid = ["threshold", "min_factor", "max_factor", "min_similarity"]
    allrows = pd.concat(tables, ignore_index=True)
    if "min_similarity" not in allrows:
        allrows["min_similarity"] = np.nan
    mean_f1 = allrows.groupby(grid, sort=True, dropna=False)["f1"].mean()
    threshold, min_factor, max_factor, min_similarity = mean_f1.idxmax()
    best_per_class = allrows.groupby("cls")["f1"].max()
    return {"default_threshold": float(threshold), "default_min_factor": float(min_factor),
            "default_max_factor": None if not np.isfinite(max_factor) else float(max_factor),
            "default_min_similarity": None if not np.isfinite(min_similarity) else float(min_similarity),
            "val_pick_default_f1_mean": float(mean_f1.max()), "val_pick_best_f1_mean": float(best_per_class.mean()),
            "val_pick_classes": int(len(tables))}


def export_weights(checkpoint: str | os.PathLike, out_path: str | os.PathLike, val_pool_dir: str | os.PathLike | None = None,
                   n_val_batches: int = 8, window: int = 48, min_instances: int = 5) -> ProPicker:
    """Write ``checkpoint`` as compact float16 weights; with ``val_pool_dir`` (held-out classes) first
    measure the validation metrics and the recommended picking settings (:func:`recommend_settings`)."""
    model = load_propicker(checkpoint)
    if val_pool_dir:
        cfg = SampleConfig(window=window)
        record = evaluate_batches(model, validation_batches(load_pool(val_pool_dir), n_val_batches, cfg))
        model.meta = {**model.meta, **record, **recommend_settings(model, val_pool_dir, min_instances)}
    model.save(out_path, half=True)
    return model
