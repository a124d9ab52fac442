"""Rotations for the simulator: uniform sampling on SO(3), point-group operators, Euler angles.

Conventions
-----------
Rotation matrices act on column vectors of ``(x, y, z)`` coordinates (x = column / fast axis,
z = section / beam axis): ``p_rotated = R @ p``. Euler angles follow RELION's ZYZ convention
(``rot``, ``tilt``, ``psi`` in degrees) as written by :func:`matrix_to_euler_zyz`.
"""

from __future__ import annotations

import numpy as np


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` rotation matrices drawn uniformly (Haar measure) on SO(3).

    Uses normalised 4D Gaussian vectors as unit quaternions, which are uniform on S^3.
    """
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return quaternion_to_matrix(q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """``(n, 4)`` unit quaternions ``(w, x, y, z)`` -> ``(n, 3, 3)`` rotation matrices."""
    q = np.atleast_2d(np.asarray(q, dtype=np.float64))
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )


def axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about ``axis`` (need not be normalised), ``(3, 3)``."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    half = angle / 2.0
    return quaternion_to_matrix(np.r_[np.cos(half), np.sin(half) * axis][None])[0]


def rotation_z(angle: float) -> np.ndarray:
    return axis_angle(np.array([0.0, 0.0, 1.0]), angle)


def cyclic_group(n: int) -> np.ndarray:
    """``(n, 3, 3)`` operators of the cyclic group Cn about z."""
    return np.stack([rotation_z(2 * np.pi * k / n) for k in range(n)])


def dihedral_group(n: int) -> np.ndarray:
    """``(2n, 3, 3)`` operators of the dihedral group Dn (n-fold about z, 2-folds in the xy plane)."""
    cn = cyclic_group(n)
    flip = axis_angle(np.array([1.0, 0.0, 0.0]), np.pi)
    return np.concatenate([cn, np.einsum("ij,njk->nik", flip, cn)])


def tetrahedral_group() -> np.ndarray:
    """``(12, 3, 3)`` rotations of the tetrahedral group T."""
    ops = [np.eye(3)]
    for axis in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        ops.append(axis_angle(np.array(axis, float), np.pi))
    for axis in ([1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]):
        for k in (1, 2):
            ops.append(axis_angle(np.array(axis, float), 2 * np.pi * k / 3))
    return np.stack(ops)


def octahedral_group() -> np.ndarray:
    """``(24, 3, 3)`` rotations of the octahedral group O (T plus the 4-fold-generated cosets)."""
    t = tetrahedral_group()
    four = axis_angle(np.array([0.0, 0.0, 1.0]), np.pi / 2)
    return np.concatenate([t, np.einsum("ij,njk->nik", four, t)])


def matrix_to_euler_zyz(matrices: np.ndarray) -> np.ndarray:
    """``(n, 3, 3)`` rotation matrices -> ``(n, 3)`` ZYZ Euler angles ``rot, tilt, psi`` in degrees.

    ``R = Rz(psi) @ Ry(tilt) @ Rz(rot)`` (RELION's convention for the matrix that rotates the
    reference into the particle's orientation is the transpose; the angles are reported for ``R``).
    """
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    tilt = np.arccos(np.clip(m[:, 2, 2], -1.0, 1.0))
    sin_tilt = np.sin(tilt)
    regular = sin_tilt > 1e-6
    rot = np.where(regular, np.arctan2(m[:, 2, 1], -m[:, 2, 0]), 0.0)
    psi = np.where(regular, np.arctan2(m[:, 1, 2], m[:, 0, 2]), np.arctan2(m[:, 1, 0], m[:, 0, 0]))
    return np.degrees(np.stack([rot, tilt, psi], axis=1))


def euler_zyz_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Inverse of :func:`matrix_to_euler_zyz`: ``(n, 3)`` degrees -> ``(n, 3, 3)``."""
    a = np.radians(np.atleast_2d(np.asarray(angles, dtype=np.float64)))
    out = []
    for rot, tilt, psi in a:
        rz1 = rotation_z(rot)
        ry = axis_angle(np.array([0.0, 1.0, 0.0]), tilt)
        rz2 = rotation_z(psi)
        out.append(rz2 @ ry @ rz1)
    return np.stack(out)
