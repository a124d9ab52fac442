"""A template from the prompt and the confirmed particles, and its correlation at each candidate.

ProPicker-TM's idea with a template that improves with every yes: the prompt's sub-volume is the first
template; each confirmed positive is rotated onto it (the rotation of a search over SO(3), see
:func:`~cryopick.postprocess.rotations.rotations_3d`, with the highest normalised cross-correlation
inside a sphere of the particle's diameter) and averaged in. :func:`template_scores` then gives, at
each candidate, the highest local normalised cross-correlation of the template over the same rotations
and over shifts of up to ``shift`` voxels: one number per candidate, restricted to the map's candidates
(no full-tomogram template matching).

All positions are ``x, y, z`` voxels of the volume given (the working tomogram of the picker); the
volume and the examples must have the same contrast (they come from one kind of tomogram).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cryopick.evaluate.pixel import disk_mask
from cryopick.postprocess.rotations import rotate_template, rotations_3d
from cryopick.preprocess import cut_cube


def template_box(diameter: float) -> int:
    """Odd box edge (voxels) holding a sphere of ``diameter`` plus one voxel on each side."""
    return 2 * int(math.ceil(diameter / 2 + 1)) + 1


def sphere_mask(box: int, diameter: float) -> np.ndarray:
    """Boolean ``(box,)*3`` ball of ``diameter`` at the box centre (:func:`~cryopick.evaluate.pixel.disk_mask`)."""
    return disk_mask(np.full((1, 3), box // 2), (box,) * 3, diameter / 2)


def _normalised(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows of ``(N, V)`` zero-mean, unit-norm over the ``mask`` voxels (outside: 0)."""
    x = x * mask
    n = mask.sum()
    x = (x - (x.sum(1, keepdim=True) / n)) * mask
    return x / torch.clamp(x.norm(dim=1, keepdim=True), min=1e-8)


def _windows(volume: np.ndarray, xyz: np.ndarray, box: int, shift: int) -> torch.Tensor:
    """``(S, box**3)``: the box at ``xyz`` moved by every shift of up to ``shift`` voxels per axis."""
    big = torch.as_tensor(cut_cube(volume, xyz, box + 2 * shift))
    win = big.unfold(0, box, 1).unfold(1, box, 1).unfold(2, box, 1)  # (S1, S2, S3, box, box, box)
    return win.reshape(-1, box**3)


def rotated_templates(template: np.ndarray, rotation_step: float) -> torch.Tensor:
    """``(K, box**3)`` the template under every rotation of :func:`rotations_3d` (``rotation_step`` °)."""
    return rotate_template(template, rotations_3d(rotation_step)).reshape(-1, template.size)


def template_scores(volume: np.ndarray, coords: np.ndarray, template: np.ndarray, diameter: float, *,
                    rotation_step: float = 30.0, shift: int = 1) -> np.ndarray:
    """Highest normalised cross-correlation (inside the ball of ``diameter``) of ``template`` over
    rotations (``rotation_step``) and shifts (``shift`` voxels) at each of ``coords`` (``(N, 3)`` x, y, z)."""
    coords = np.asarray(coords, float).reshape(-1, 3)
    box = template.shape[0]
    mask = torch.as_tensor(sphere_mask(box, diameter).reshape(-1), dtype=torch.float32)
    rot = _normalised(rotated_templates(template, rotation_step), mask)
    out = np.zeros(len(coords))
    for i, c in enumerate(coords):
        out[i] = float((rot @ _normalised(_windows(volume, c, box, shift), mask).T).max())
    return out


def average_template(volume: np.ndarray, prompt_xyz: np.ndarray, positives: np.ndarray, diameter: float, *,
                     prompt_volume: np.ndarray | None = None, rotation_step: float = 30.0,
                     shift: int = 1) -> np.ndarray:
    """The prompt's sub-volume averaged with each confirmed positive rotated and shifted onto it.

    ``prompt_xyz``: the prompt particle's centre in ``prompt_volume`` (default: ``volume``);
    ``positives``: ``(M, 3)`` centres of confirmed particles in ``volume``. Each positive's box (at its
    best shift) is rotated by the inverse of the rotation that maps the current template best onto it
    (highest NCC inside the ball) and added; the template is the mean. Returns ``(box,)*3`` float32
    (:func:`template_box` of ``diameter``)."""
    box = template_box(diameter)
    ref_vol = volume if prompt_volume is None else prompt_volume
    total = cut_cube(ref_vol, np.asarray(prompt_xyz, float).reshape(3), box).astype(np.float64)
    mask = torch.as_tensor(sphere_mask(box, diameter).reshape(-1), dtype=torch.float32)
    mats = rotations_3d(rotation_step)
    n = 1
    for xyz in np.asarray(positives, float).reshape(-1, 3):
        template = (total / n).astype(np.float32)
        rot = _normalised(rotate_template(template, mats).reshape(len(mats), -1), mask)
        win = _windows(volume, xyz, box, shift)
        score = rot @ _normalised(win, mask).T  # (K, S)
        k, s = np.unravel_index(int(torch.argmax(score)), tuple(score.shape))
        cube = win[s].reshape(box, box, box).numpy()
        # the template rotated by R matches the cube: rotate the cube by R^T onto the template
        total += rotate_template(cube, mats[k].T[None])[0].numpy()
        n += 1
    return (total / n).astype(np.float32)
