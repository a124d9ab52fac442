"""Per-pixel losses for the 2D picker.

Fully annotated micrographs: class-balanced BCE (each class weighs half, as CryoFSL's
``pos_weight = #neg / #pos``).

Sparsely annotated micrographs: unlabelled pixels are *not* negatives, so the negative part of the
risk is estimated with the non-negative positive-unlabelled (nnPU) estimator of Kiryo et al.
(NeurIPS 2017). With ``pi`` the expected fraction of particle pixels among the unlabelled ones and
``l(z, y)`` the logistic loss,

    R_neg = (E_U[l(z, 0)] - pi E_P[l(z, 0)]) / (1 - pi),    clipped at 0,
    R     = 0.5 E_P[l(z, 1)] + 0.5 R_neg,

i.e. the unlabelled pixels are treated as a mixture of negatives and unlabelled particles and the
particle part is subtracted using the labelled ones. When the clipped term goes negative (the net
over-fits the unlabelled set), its gradient is reversed as in nnPU (``gamma = 1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    return (values * weights).sum() / total.clamp_min(1e-6)


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE over the pixels with ``weight > 0``.

    Shapes ``(B, 1, H, W)``; ``target`` in {0, 1}. A batch without positives (negative
    micrographs) is plain BCE on the negatives.
    """
    logits = logits.float()
    pos = target * weight
    neg = (1 - target) * weight
    loss_pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    loss_neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    if pos.sum() == 0:
        return _weighted_mean(loss_neg, neg)
    return 0.5 * _weighted_mean(loss_pos, pos) + 0.5 * _weighted_mean(loss_neg, neg)


def nnpu_loss(logits: torch.Tensor, labelled: torch.Tensor, weight: torch.Tensor, prior: float) -> torch.Tensor:
    """Balanced non-negative PU risk (see module docstring).

    Parameters
    ----------
    logits
        ``(B, 1, H, W)`` network output.
    labelled
        ``(B, 1, H, W)`` 1 on labelled particle pixels, 0 on unlabelled pixels.
    weight
        ``(B, 1, H, W)`` 0 where the pixel is excluded (validation strip, padding).
    prior
        Expected fraction of particle pixels among the unlabelled pixels, in ``[0, 1)``.
        ``0`` reduces to :func:`balanced_bce`.
    """
    if prior <= 0:
        return balanced_bce(logits, labelled, weight)
    logits = logits.float()
    pos = labelled * weight
    unl = (1 - labelled) * weight
    loss_pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    loss_neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    if pos.sum() == 0:
        # No labelled particle in this batch: the unlabelled negative risk alone, down-weighted by
        # the fraction of negatives it contains.
        return (1 - prior) * _weighted_mean(loss_neg, unl)
    r_pos = _weighted_mean(loss_pos, pos)
    r_neg = (_weighted_mean(loss_neg, unl) - prior * _weighted_mean(loss_neg, pos)) / (1 - prior)
    if r_neg.item() < 0:
        # nnPU: step against the negative part of the estimate instead of following it.
        return -r_neg
    return 0.5 * r_pos + 0.5 * r_neg
