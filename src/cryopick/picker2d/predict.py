"""Probability maps of a 2D picker: tiled inference with overlap, bf16 when faster, folded batch norm,
optional test-time augmentation.

:func:`predict_probability` takes a working-scale image (``(H, W)`` float, normalised) and returns the
particle probability map of the same shape, values in [0, 1]. With ``tta`` it is the average of the
maps of flipped / rotated copies of the image, each mapped back to the image's frame
(:data:`TTA_MODES`).
"""

from __future__ import annotations

import numpy as np
import torch

from cryopick.runtime import cpu_has_native_bf16


# -- network inference ----------------------------------------------------------------------
def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = image.shape
    if (h, w) == (height, width):
        return image
    mode = "reflect" if height - h < h and width - w < w else "constant"
    return np.pad(image, ((0, height - h), (0, width - w)), mode=mode)


def _ceil_to(n: int, multiple: int) -> int:
    return int(-(-n // multiple) * multiple)


# -- test-time augmentation -----------------------------------------------------------------
#: Test-time augmentation modes -> the transforms averaged, each ``(k, flip)``: rotate by ``k`` x 90
#: degrees after flipping left-right when ``flip``. ``"none"``: the image alone; ``"flips"``: the
#: four flips (identity, left-right, up-down, both = 180 degrees); ``"d4"``: all 8 symmetries of the
#: square (flips and 90-degree rotations). Network time grows with the number of transforms.
TTA_MODES: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((k, f) for f in (False, True) for k in range(4)),
}
DEFAULT_TTA = "none"


def check_tta(tta: str | None) -> str:
    """``tta`` as a known mode name (``None`` -> :data:`DEFAULT_TTA`); ``ValueError`` otherwise."""
    tta = DEFAULT_TTA if tta is None else tta
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; use one of {', '.join(TTA_MODES)}")
    return tta


def _forward(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = image[:, ::-1] if flip else image
    return np.ascontiguousarray(np.rot90(out, k))


def _inverse(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(image, -k)
    return out[:, ::-1] if flip else out


@torch.inference_mode()
def predict_probability(model: torch.nn.Module, image: np.ndarray, tile: int | None = None,
                        margin: int = 32, bf16: bool = False, tta: str | None = None) -> np.ndarray:
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
    tta
        Test-time augmentation (:data:`TTA_MODES`; default :data:`DEFAULT_TTA`): the mean of the
        maps of the transformed images, each transformed back.

    Returns
    -------
    np.ndarray
        ``(H, W)`` float32 in [0, 1].
    """
    image = np.asarray(image, np.float32)
    transforms = TTA_MODES[check_tta(tta)]
    if len(transforms) > 1:
        total = np.zeros(image.shape, np.float32)
        for k, flip in transforms:
            total += _inverse(_predict_one(model, _forward(image, k, flip), tile, margin, bf16), k, flip)
        return total / np.float32(len(transforms))
    return _predict_one(model, image, tile, margin, bf16)


def _predict_one(model: torch.nn.Module, image: np.ndarray, tile: int | None, margin: int, bf16: bool) -> np.ndarray:
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
    return cpu_has_native_bf16()


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

