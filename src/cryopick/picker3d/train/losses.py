"""Losses of the promptable 3D picker.

Loss: binary cross-entropy plus ``dice_weight`` × soft Dice on non-empty channels, plus
``contrastive_weight`` × a supervised contrastive (InfoNCE) loss on the prompt embeddings: each prompt
comes with a second, independently drawn instance of its class, and embeddings of the same class are
pulled together, of different classes pushed apart (TomoTwin trains its encoder by metric learning
for the same purpose). Without it the segmenter first learns a generic "any particle" detector and the
FiLM conditioning stays unused for thousands of steps. The prompt encoder is trained jointly
(``freeze_encoder=False``) or kept frozen (e.g. TomoTwin; the contrastive term is then skipped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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

