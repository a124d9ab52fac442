"""Rotation sets and template rotation for template matching (2D in-plane angles, 3D SO(3)).

A rotation ``R`` (``(d, d)`` matrix) acts on coordinates in ``x, y[, z]`` order (x = column) and maps
a template to ``T_R(c + u) = T(c + R^T u)``: the object in the template turned by ``R``, about the
centre voxel ``c = shape // 2``. In 2D an angle ``a`` (degrees) is
``R = [[cos a, -sin a], [sin a, cos a]]`` in the ``(x, y)`` plane.

Rotation sampling
-----------------
- 2D: :func:`rotations_2d` — angles ``0, step, 2·step, ...`` below 360°.
- 3D: :func:`rotations_3d` — Hopf-fibration-like quasi-uniform SO(3) sampling. Directions of the
  rotated z-axis come from a Fibonacci lattice on the sphere with ``round(4π / step²)`` points (equal
  area, spacing ≈ step) and the in-plane angle ψ from a uniform grid with the same step; the matrix is
  ``R = Rz(φ) Ry(θ) Rz(ψ)``. Since the ZYZ Euler measure ``sin θ dφ dθ dψ`` is the Haar measure, a
  uniform sphere × uniform circle gives a uniform sampling of SO(3) with about ``8π² / step³``
  rotations (step in radians): 30° → ~550, 15° → ~4600.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["rotations_2d", "rotations_3d", "rotation_matrices", "rotate_template"]


# -- rotation sets -------------------------------------------------------------------------------
def rotations_2d(step_deg: float) -> np.ndarray:
    """In-plane angles ``0, step, ...`` below 360°, in degrees, shape ``(K,)``."""
    if step_deg <= 0:
        raise ValueError(f"angular step must be positive, got {step_deg}")
    n = max(1, int(round(360.0 / step_deg)))
    return np.arange(n) * (360.0 / n)


def rotations_3d(step_deg: float) -> np.ndarray:
    """Quasi-uniform sampling of SO(3) with angular spacing about ``step_deg`` (see module docstring).

    Returns
    -------
    np.ndarray
        ``(K, 3, 3)`` rotation matrices acting on ``(x, y, z)`` column vectors. The first is the
        identity (the lattice starts at the north pole and ψ at 0).
    """
    if step_deg <= 0:
        raise ValueError(f"angular step must be positive, got {step_deg}")
    step = math.radians(step_deg)
    n_dir = max(1, int(round(4 * math.pi / step**2)))
    n_psi = max(1, int(round(2 * math.pi / step)))
    # Fibonacci lattice: z evenly spaced in (-1, 1], golden-angle longitudes; point 0 at the pole.
    i = np.arange(n_dir)
    z = 1.0 - 2.0 * i / max(n_dir - 1, 1) if n_dir > 1 else np.ones(1)
    theta = np.arccos(np.clip(z, -1, 1))
    phi = (i * math.pi * (3.0 - math.sqrt(5.0))) % (2 * math.pi)
    psi = np.arange(n_psi) * (2 * math.pi / n_psi)
    # Direction i pairs theta_i with phi_i; every direction gets every psi.
    th = np.repeat(theta, n_psi)
    ph = np.repeat(phi, n_psi)
    ps = np.tile(psi, n_dir)
    return _rz(ph) @ _ry(th) @ _rz(ps)


def _rz(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, l = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, -s, o], -1), np.stack([s, c, o], -1), np.stack([o, o, l], -1)], -2)


def _ry(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, l = np.zeros_like(a), np.ones_like(a)
    return np.stack([np.stack([c, o, s], -1), np.stack([o, l, o], -1), np.stack([-s, o, c], -1)], -2)


def rotation_matrices(rotations, ndim: int) -> np.ndarray:
    """Normalise a rotation specification to ``(K, ndim, ndim)`` matrices.

    ``None`` → identity only; ``int`` K → K equally spaced in-plane angles (2D) or
    :func:`rotations_3d` with the step that gives about K rotations (3D); a 1-D array of angles in
    degrees (2D only); or an array of matrices ``(K, ndim, ndim)``.
    """
    if rotations is None:
        return np.eye(ndim)[None]
    if isinstance(rotations, (int, np.integer)):
        if rotations < 1:
            raise ValueError("number of rotations must be >= 1")
        if ndim == 2:
            return rotation_matrices(np.arange(rotations) * (360.0 / rotations), 2)
        step = math.degrees((8 * math.pi**2 / rotations) ** (1 / 3))
        return rotations_3d(step)
    arr = np.asarray(rotations, dtype=np.float64)
    if arr.ndim == 1:
        if ndim != 2:
            raise ValueError("angles are only accepted in 2D; pass (K, 3, 3) matrices in 3D")
        a = np.deg2rad(arr)
        c, s = np.cos(a), np.sin(a)
        return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    if arr.ndim == 2 and arr.shape == (ndim, ndim):
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (ndim, ndim):
        raise ValueError(f"rotations must be angles (2D) or (K, {ndim}, {ndim}) matrices, got shape {arr.shape}")
    return arr


# -- template rotation -------------------------------------------------------------------------------
def rotate_template(template, matrices, order: str = "bilinear") -> torch.Tensor:
    """Rotate ``template`` about its centre voxel (``shape // 2``) by each matrix.

    Parameters
    ----------
    template
        ``(h, w)`` or ``(d, h, w)`` array or tensor.
    matrices
        ``(K, ndim, ndim)`` rotations acting on ``(x, y[, z])``.
    order
        ``"bilinear"`` (linear interpolation, also trilinear in 3D) or ``"nearest"`` (for masks).

    Returns
    -------
    torch.Tensor
        ``(K, *template.shape)`` float32; voxels that come from outside the box are 0.
    """
    t = torch.as_tensor(np.asarray(template) if not torch.is_tensor(template) else template, dtype=torch.float32)
    ndim = t.ndim
    shape = t.shape
    mats = torch.as_tensor(np.asarray(matrices), dtype=torch.float32, device=t.device)
    centre = torch.tensor([s // 2 for s in shape[::-1]], dtype=torch.float32, device=t.device)  # x, y[, z]
    axes = [torch.arange(s, dtype=torch.float32, device=t.device) for s in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], -1)  # (..., ndim) in x, y[, z]
    u = (grid - centre).reshape(-1, ndim)  # output offsets from the centre
    src = torch.einsum("kji,nj->kni", mats, u) + centre  # R^T u + c  (row vector form: u @ R)
    size = torch.tensor([s for s in shape[::-1]], dtype=torch.float32, device=t.device)
    norm = 2.0 * src / torch.clamp(size - 1, min=1) - 1.0
    k = len(mats)
    norm = norm.reshape(k, *shape, ndim)
    inp = t[None, None].expand(k, 1, *shape)
    mode = "nearest" if order == "nearest" else "bilinear"
    out = F.grid_sample(inp, norm, mode=mode, padding_mode="zeros", align_corners=True)
    return out[:, 0]
