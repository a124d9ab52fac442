"""Probability maps of a 2D picker: tiled inference with overlap, bf16 when faster, folded batch norm.

:func:`predict_probability` takes a working-scale image (``(H, W)`` float, normalised) and returns the
particle probability map of the same shape, values in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch


# -- network inference ----------------------------------------------------------------------
def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape
    if (h, w) == (height, width):
        return image
    mode = "reflect" if height - h < h and width - w < w else "constant"
    return np.pad(image, ((0, height - h), (0, width - w)), mode=mode)


def _ceil_to(n: int, multiple: int) -> int:
    return int(-(-n // multiple) * multiple)


@torch.inference_mode()
def predict_probability(model: torch.nn.Module, image: np.ndarray, tile: int | None = None,
                        margin: int = 32, bf16: bool = False) -> np.ndarray:
    """Particle probability for every pixel of a working-scale image.

    Parameters
    ----------
    model
        A ``picker2d`` backbone (see :mod:`cryopick.models.registry`), in eval mode.
    image
        ``(H, W)`` float32 normalised working image.
    tile
        Largest square the network sees at once (pixels). Default: the model's ``preferred_size``
        or 1024. Larger images are processed in overlapping tiles whose outer ``margin`` pixels
        (at most a quarter of the tile) are discarded, so tiles join without seams and memory
        stays bounded.
    bf16
        Run under bfloat16 autocast (faster on CPUs with bf16 support).

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 in [0, 1].
    """
    image = np.asarray(image, np.float32)
    h, w = image.shape
    multiple = int(getattr(model, "input_multiple", 1) or 1)
    preferred = getattr(model, "preferred_size", None)
    tile = int(tile or preferred or 1024)
    fixed = preferred is not None  # such models want exactly preferred x preferred inputs

    def run(patch: np.ndarray) -> np.ndarray:
        ph, pw = patch.shape
        th, tw = (tile, tile) if fixed else (_ceil_to(ph, multiple), _ceil_to(pw, multiple))
        x = torch.from_numpy(np.ascontiguousarray(_pad_to(patch, th, tw)))[None, None]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        return torch.sigmoid(logits.float())[0, 0, :ph, :pw].numpy()

    if h <= tile and w <= tile:
        return run(image)
    margin = min(int(margin), tile // 4)  # small fixed-size backbones still make progress
    out = np.zeros((h, w), np.float32)
    step = tile - 2 * margin
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            ys, xs = max(y0 - margin, 0), max(x0 - margin, 0)
            ye, xe = min(ys + tile, h), min(xs + tile, w)
            ys, xs = max(ye - tile, 0), max(xe - tile, 0)
            prob = run(image[ys:ye, xs:xe])
            cy0, cx0 = y0, x0
            cy1, cx1 = min(y0 + step, h), min(x0 + step, w)
            out[cy0:cy1, cx0:cx1] = prob[cy0 - ys : cy1 - ys, cx0 - xs : cx1 - xs]
    return out


def bf16_is_faster(model: torch.nn.Module | None = None) -> bool:
    """Whether bfloat16 autocast should be used on this CPU: only when it has native bf16
    arithmetic (AVX512-BF16 or AMX), where it roughly halves U-Net time; elsewhere emulated bf16
    is slower than float32. (A timing probe was too noisy on shared machines.) ``model`` is unused
    and kept for API compatibility."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every ``Conv2d`` directly followed by ``BatchNorm2d`` inside an ``nn.Sequential`` into
    one convolution (eval-mode statistics; in place). Same outputs, about half the CPU time for
    the U-Net. Backbones without that pattern are returned unchanged."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Sequential):
            for i in range(len(module) - 1):
                conv, bn = module[i], module[i + 1]
                if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, bn)
                    module[i + 1] = torch.nn.Identity()
    return model

