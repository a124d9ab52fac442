"""ProPicker-TM: template matching restricted to the segmenter's predicted mask, and the exhaustive
template-matching baseline it is compared with. Both use
:func:`cryopick.postprocess.template_matching.match_template` (FFT masked NCC over SO(3)).

The template is the prompt sub-volume (the mean of several, when given), cropped to a box of about
1.2 × the particle diameter so the matching ball covers the particle and little background.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cryopick.postprocess.template_matching import find_peaks, match_template, rotations_3d


def prompt_template(subvolumes: np.ndarray, diameter: float | None = None, margin: float = 1.2) -> np.ndarray:
    """``(n, n, n)`` template (odd ``n``): mean of ``(K, s, s, s)`` prompt sub-volumes, centre-cropped to
    ``~margin × diameter`` voxels (the whole box when ``diameter`` is ``None``)."""
    t = np.asarray(subvolumes, np.float32).reshape(-1, *np.shape(subvolumes)[-3:]).mean(0)
    size = t.shape[0]
    if diameter:
        n = int(min(size, max(9, 2 * math.ceil(margin * diameter / 2) + 1)))
        lo = size // 2 - n // 2
        t = t[lo : lo + n, lo : lo + n, lo : lo + n]
    return np.ascontiguousarray(t)


def tm_pick(volume, template: np.ndarray, *, mask: np.ndarray | None = None, angle_step: float = 30.0,
            min_score: float | None = None, min_distance: float = 4.0, progress: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Template-match ``volume`` (``(D, H, W)``, same contrast as ``template``) over rotations spaced
    ``angle_step`` degrees, inside ``mask`` (``None``: everywhere, the exhaustive baseline), and
    return peak ``x, y, z`` coordinates (voxels) with NCC scores, peaks at least ``min_distance`` apart."""
    # A writable float32 copy when needed: PyTorch warns about (and cannot share) read-only memory maps.
    volume = np.require(volume, np.float32, ["C", "W"])
    scores, _ = match_template(volume, np.require(template, np.float32, ["C", "W"]), rotations_3d(angle_step),
                               mask=mask, progress=progress)
    return find_peaks(scores, min_distance=min_distance, threshold=min_score)


def tm_in_mask(volume, prob: np.ndarray, subvolumes: np.ndarray, *, threshold: float = 0.5,
               diameter: float | None = None, angle_step: float = 30.0, min_score: float | None = 0.15,
               min_distance: float | None = None, dilate: int = 2, progress: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """ProPicker-TM on one tomogram.

    Parameters
    ----------
    volume
        ``(D, H, W)`` working-scale tomogram (as the prompts were cut from).
    prob
        ``(D, H, W)`` segmenter probabilities for this prompt.
    subvolumes
        ``(K, 37, 37, 37)`` prompt sub-volumes (the template is their mean).
    threshold, dilate
        Search mask = ``prob > threshold`` grown by ``dilate`` voxels.
    diameter
        Particle diameter in voxels (template box; default peak distance = its radius).
    angle_step
        Angular sampling in degrees (see :func:`rotations_3d`).
    min_score
        Minimum NCC of a pick.
    """
    mask = np.asarray(prob) > threshold
    if dilate:
        mask = ndimage.binary_dilation(mask, iterations=int(dilate))
    if not mask.any():
        return np.zeros((0, 3)), np.zeros(0)
    template = prompt_template(subvolumes, diameter)
    md = min_distance if min_distance is not None else (diameter / 2 if diameter else 4.0)
    return tm_pick(volume, template, mask=mask, angle_step=angle_step, min_score=min_score, min_distance=md,
                   progress=progress)
