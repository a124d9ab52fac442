"""Pixel-level scores as CryoFSL reports them: Dice, IoU, precision and recall of a predicted mask
against ground-truth disks (balls in 3D) of the particle diameter.

The predicted mask is either given (a segmentation thresholded by the picker) or drawn from the
picks as disks of the same diameter. A pixel belongs to a disk when its centre is within the radius
of the particle centre (``|p - c| <= r``, coordinates in pixels, x = column).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.picks import Picks


def disk_mask(coords: np.ndarray, shape: tuple[int, ...], radius: float) -> np.ndarray:
    """Boolean mask of disks (2D) or balls (3D) of ``radius`` pixels at ``coords``.

    Parameters
    ----------
    coords
        ``(N, D)`` centres in ``x, y[, z]`` pixel order.
    shape
        Image shape in array order ``(H, W)`` or ``(D, H, W)``.
    radius
        Pixels; a pixel is inside when the distance of its centre to the particle centre is ``<= radius``.
    """
    mask = np.zeros(shape, dtype=bool)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, len(shape))
    if radius <= 0 or len(coords) == 0:
        return mask
    ndim = len(shape)
    reach = int(np.ceil(radius)) + 1
    offsets = np.stack(np.meshgrid(*[np.arange(-reach, reach + 1)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    for c in coords[:, ::-1]:  # array order
        base = np.round(c).astype(np.int64)
        pts = base + offsets
        inside = np.all((pts >= 0) & (pts < np.asarray(shape)), axis=1)
        pts = pts[inside]
        d2 = np.sum((pts - c) ** 2, axis=1)
        pts = pts[d2 <= radius * radius + 1e-9]
        mask[tuple(pts.T)] = True
    return mask


def mask_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Dice, IoU, precision and recall of two boolean masks of the same shape.

    Empty conventions: both empty → all 1; only one empty → Dice/IoU 0 and the undefined ratio 1
    (nothing predicted → precision 1; nothing true → recall 1).
    """
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    tp = int(np.count_nonzero(pred & truth))
    n_pred, n_truth = int(np.count_nonzero(pred)), int(np.count_nonzero(truth))
    union = n_pred + n_truth - tp
    return dict(
        dice=2 * tp / (n_pred + n_truth) if n_pred + n_truth else 1.0,
        iou=tp / union if union else 1.0,
        precision=tp / n_pred if n_pred else 1.0,
        recall=tp / n_truth if n_truth else 1.0,
        tp_px=tp, pred_px=n_pred, truth_px=n_truth,
    )


def evaluate_pixels(
    pred: Picks | dict[str, np.ndarray],
    truth: Picks,
    shapes: dict[str, tuple[int, ...]],
    diameter: float,
    micrographs: list[str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Pixel scores per micrograph and pooled (summed pixel counts).

    Parameters
    ----------
    pred
        Picks (drawn as disks of ``diameter``) or ``{micrograph: boolean mask}``.
    truth
        Ground-truth picks (drawn as disks of ``diameter``).
    shapes
        ``{micrograph: image shape}`` in array order.
    diameter
        Pixels.
    micrographs
        Names to evaluate; default the truth's micrographs.
    """
    names = micrographs if micrographs is not None else truth.micrographs
    radius = diameter / 2.0
    rows = []
    for name in names:
        if name not in shapes:
            raise CryopickError(f"no image shape known for micrograph {name!r}; give its image")
        shape = tuple(shapes[name])
        t = disk_mask(truth.for_micrograph(name).coords, shape, radius)
        if isinstance(pred, Picks):
            p = disk_mask(pred.for_micrograph(name).coords, shape, radius)
        else:
            if name not in pred:
                raise CryopickError(f"no predicted mask for micrograph {name!r}")
            p = np.asarray(pred[name]).astype(bool)
            if p.shape != shape:
                raise CryopickError(f"predicted mask for {name!r} has shape {p.shape}, the image has {shape}")
        rows.append(dict(micrograph=name, **mask_scores(p, t)))
    table = pd.DataFrame(rows, columns=["micrograph", "dice", "iou", "precision", "recall", "tp_px", "pred_px",
                                        "truth_px"])
    tp, npred, ntruth = (int(table[c].sum()) for c in ("tp_px", "pred_px", "truth_px"))
    union = npred + ntruth - tp
    pooled = dict(
        dice=2 * tp / (npred + ntruth) if npred + ntruth else 1.0,
        iou=tp / union if union else 1.0,
        precision=tp / npred if npred else 1.0,
        recall=tp / ntruth if ntruth else 1.0,
        mean_dice=float(table["dice"].mean()) if len(table) else float("nan"),
    )
    return table, pooled
