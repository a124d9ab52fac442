"""Random training patches with augmentation.

Each patch is cut from a working-scale micrograph together with its label mask (1 = labelled
particle disk, 0 = not labelled) and its loss weight (0 = excluded: validation strip, padding).
Augmentations are the ones a micrograph can plausibly undergo: the 8 in-plane flips/rotations,
a small isotropic rescale (particle size varies a little with defocus and annotation), contrast
and offset changes, added Gaussian noise and a mild blur.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Augmentation strengths (set a value to 0 / 1 to disable that augmentation).

    Attributes
    ----------
    flips
        Random dihedral transform (flips and 90-degree rotations).
    scale_range
        Isotropic rescale factor drawn log-uniformly in ``[1/scale_range, scale_range]``.
    contrast
        Multiply intensities by a factor in ``[1 - contrast, 1 + contrast]``.
    offset
        Add a constant in ``[-offset, offset]`` (units of the normalised image, i.e. noise sigma).
    noise
        Add Gaussian noise with sigma drawn in ``[0, noise]``.
    blur
        Gaussian blur with sigma drawn in ``[0, blur]`` working pixels (half of the patches).
    """

    flips: bool = True
    scale_range: float = 1.15
    contrast: float = 0.2
    offset: float = 0.2
    noise: float = 0.3
    blur: float = 1.0


#: Named augmentation strengths: ``default`` (few-shot training's) and ``strong`` (domain randomisation for
#: pretraining on simulated micrographs: twice the rescale, contrast and offset range, noise up to 0.8 and
#: blur up to 2 working pixels, so the network cannot lean on the simulator's exact noise and sharpness).
AUGMENT_PRESETS = ("default", "strong")


def augment_preset(name: str) -> AugmentConfig:
    """The :class:`AugmentConfig` of a named preset (:data:`AUGMENT_PRESETS`)."""
    if name == "default":
        return AugmentConfig()
    if name == "strong":
        return AugmentConfig(scale_range=1.3, contrast=0.4, offset=0.4, noise=0.8, blur=2.0)
    raise ValueError(f"unknown augmentation preset {name!r}; choose from {', '.join(AUGMENT_PRESETS)}")


def _crop(array: np.ndarray, y: int, x: int, size: int, fill: float) -> np.ndarray:
    """``size x size`` window at top-left ``(y, x)``; out-of-image pixels get ``fill``."""
    h, w = array.shape
    out = np.full((size, size), fill, dtype=array.dtype)
    ys, ye = max(y, 0), min(y + size, h)
    xs, xe = max(x, 0), min(x + size, w)
    if ye > ys and xe > xs:
        out[ys - y : ye - y, xs - x : xe - x] = array[ys:ye, xs:xe]
    return out


def sample_patch(image: np.ndarray, target: np.ndarray, weight: np.ndarray, size: int,
                 rng: np.random.Generator, augment: AugmentConfig | None = None,
                 centre: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut one ``size x size`` patch (image, target, weight) with random augmentation.

    ``centre`` (``x, y`` working pixels) places the patch around a point; otherwise the position is
    uniform over the image. Returns float32 arrays.
    """
    aug = augment or AugmentConfig(flips=False, scale_range=1.0, contrast=0, offset=0, noise=0, blur=0)
    s = float(np.exp(rng.uniform(-np.log(aug.scale_range), np.log(aug.scale_range)))) if aug.scale_range > 1 else 1.0
    crop = max(8, int(round(size * s)))
    h, w = image.shape
    if centre is None:
        y = int(rng.integers(min(0, h - crop), max(h - crop, 0) + 1))
        x = int(rng.integers(min(0, w - crop), max(w - crop, 0) + 1))
    else:
        x = int(round(centre[0] - crop / 2 + rng.uniform(-crop / 4, crop / 4)))
        y = int(round(centre[1] - crop / 2 + rng.uniform(-crop / 4, crop / 4)))
    img = _crop(image, y, x, crop, 0.0)
    tgt = _crop(target.astype(np.float32), y, x, crop, 0.0)
    wgt = _crop(weight.astype(np.float32), y, x, crop, 0.0)
    if crop != size:
        stack = torch.from_numpy(np.stack([img, tgt, wgt]))[None]
        stack = F.interpolate(stack, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
        img, tgt, wgt = stack[0], (stack[1] > 0.5).astype(np.float32), (stack[2] > 0.999).astype(np.float32)
    if aug.flips:
        k = int(rng.integers(4))
        img, tgt, wgt = (np.rot90(a, k) for a in (img, tgt, wgt))
        if rng.random() < 0.5:
            img, tgt, wgt = (a[:, ::-1] for a in (img, tgt, wgt))
    img = np.ascontiguousarray(img, dtype=np.float32)
    if aug.blur > 0 and rng.random() < 0.5:
        from scipy.ndimage import gaussian_filter

        img = gaussian_filter(img, rng.uniform(0, aug.blur))
    if aug.contrast > 0:
        img = img * rng.uniform(1 - aug.contrast, 1 + aug.contrast)
    if aug.offset > 0:
        img = img + rng.uniform(-aug.offset, aug.offset)
    if aug.noise > 0:
        img = img + rng.normal(0, rng.uniform(0, aug.noise), img.shape).astype(np.float32)
    return (img.astype(np.float32), np.ascontiguousarray(tgt, dtype=np.float32),
            np.ascontiguousarray(wgt, dtype=np.float32))
