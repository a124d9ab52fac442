"""Training batches of the 2D picker: per-micrograph targets, random augmented patches, the loss."""

from __future__ import annotations

import numpy as np
import torch

from cryopick.picker2d.train.augment import sample_patch
from cryopick.picker2d.train.data import TrainingMicrograph, disk_target
from cryopick.picker2d.train.losses import nnpu_loss

#: Largest share of the training patches cut from the pseudo-labelled unlabelled pool (the true labels
#: keep at least the rest, however many pool micrographs there are).
POOL_SHARE = 0.5


def prepare_targets(mics: list[TrainingMicrograph], radius: float,
                    ignore_radius: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per micrograph: (target disks, loss weight with the validation strip zeroed). A micrograph of the
    unlabelled pool weighs nothing until it has pseudo-labels (one at least: a pool micrograph is never
    trained on as background only), and nothing within ``ignore_radius`` (default ``radius``) of its uncertain picks (``ignore_coords``)."""
    out = []
    for m in mics:
        target = disk_target(m.shape, m.coords if m.train_coords is None else m.train_coords, radius)
        weight = np.ones(m.shape, np.uint8)
        if m.unlabelled and (m.train_coords is None or len(m.train_coords) == 0):
            weight[:] = 0
        elif m.ignore_coords is not None and len(m.ignore_coords):
            weight[disk_target(m.shape, m.ignore_coords, ignore_radius or radius) > 0] = 0
        if m.val_box is not None:
            y0, y1, x0, x1 = m.val_box
            weight[y0:y1, x0:x1] = 0
        out.append((target, weight))
    return out


def sample_weights(mics: list[TrainingMicrograph], targets) -> np.ndarray:
    """Probability of each micrograph to give a patch: proportional to its trainable pixels (held-out
    micrographs get none), with the pseudo-labelled pool together at most :data:`POOL_SHARE`."""
    areas = np.array([float(t[1].sum()) for t in targets])
    pool = np.array([m.unlabelled for m in mics], bool)
    labelled, unlabelled = areas[~pool].sum(), areas[pool].sum()
    if unlabelled > 0 and labelled > 0 and unlabelled / (labelled + unlabelled) > POOL_SHARE:
        areas[pool] *= POOL_SHARE / (1 - POOL_SHARE) * labelled / unlabelled
    return areas / areas.sum()


def sample_batch(mics, targets, size, batch_size, rng, augment, with_index: bool = False):
    """``batch_size`` random augmented patches: ``(x, target, weight, negative)`` tensors ``(B, 1, size, size)``,
    and with ``with_index`` the index of each patch's micrograph in ``mics``."""
    areas = sample_weights(mics, targets)
    choice = rng.choice(len(mics), size=batch_size, p=areas)
    imgs, tgts, wgts, negs = [], [], [], []
    for k in choice:
        img, tgt, wgt = sample_patch(mics[k].image, targets[k][0], targets[k][1], size, rng, augment)
        imgs.append(img)
        tgts.append(tgt)
        wgts.append(wgt)
        negs.append(np.full(img.shape, float(mics[k].negative), np.float32))
    as_t = lambda xs: torch.from_numpy(np.stack(xs))[:, None]  # noqa: E731
    if with_index:
        return as_t(imgs), as_t(tgts), as_t(wgts), as_t(negs), [int(k) for k in choice]
    return as_t(imgs), as_t(tgts), as_t(wgts), as_t(negs)


def batch_loss(logits, target, weight, negative, prior):
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
