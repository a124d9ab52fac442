"""Protein-like 3D densities for the simulator, as weighted point clouds ("pseudo-atoms").

A particle class is a cloud of points in Å around its centre of mass, each with a weight in
Å³ of protein-equivalent volume. Rendering splats the points onto a grid (trilinear) and blurs
them, so a solid protein interior has density ≈ 1.0 (relative to the protein–ice contrast) at any
voxel size. The same cloud is projected for 2D micrographs and placed for 3D tomograms, so 2D and
3D particles of one class are the same object, and orientations are exact (no resampling).

Where clouds come from: procedural shapes (:mod:`cryopick.simulate.shapes`: implicit primitives
under a point group or as helical assemblies, so classes differ in size, aspect ratio, hollowness,
symmetry and lobes), atomic models (PDB / mmCIF, :mod:`cryopick.simulate.atoms`; weights ∝ atomic
number) and any density map (:meth:`ParticleClass.from_density`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage

from cryopick.errors import CryopickError
from cryopick.simulate.atoms import atomic_numbers, read_atoms

#: Å³ of protein-equivalent volume per unit of atomic number (≈ 17.3 Å³ per heavy atom of mean Z 6.6).
_VOLUME_PER_ELECTRON = 2.6


# -- particle classes -----------------------------------------------------------------------------
@dataclass
class ParticleClass:
    """One kind of particle.

    Attributes
    ----------
    name
        Class name, used as the ``label`` of picks.
    points
        ``(N, 3)`` float32 pseudo-atom positions ``x, y, z`` in Å, centred on the centre of mass.
    weights
        ``(N,)`` float32 weights in Å³ of protein-equivalent volume.
    diameter
        Diameter in Å: twice the largest distance of a point from the centre.
    voxel_size
        Å per voxel of :attr:`density`.
    kind, symmetry
        Shape family (one of :data:`cryopick.simulate.shapes.SHAPE_KINDS`, ``"atomic"`` or ``"map"``) and point group.
    blur
        Gaussian blur (σ, Å) applied when rendering, the intrinsic resolution of the model.
    """

    name: str
    points: np.ndarray
    weights: np.ndarray
    diameter: float
    voxel_size: float
    kind: str = "globular"
    symmetry: str = "C1"
    blur: float = 2.0
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"ParticleClass({self.name!r}, kind={self.kind}, symmetry={self.symmetry}, "
                f"diameter={self.diameter:.1f} Å, {len(self.points)} points, voxel_size={self.voxel_size:g} Å)")

    @cached_property
    def density(self) -> np.ndarray:
        """Cubic float32 ``(n, n, n)`` density at :attr:`voxel_size`, centre at index ``n // 2``."""
        return self.render(self.voxel_size)

    @property
    def radius_px(self) -> float:
        """Radius in voxels of :attr:`voxel_size`."""
        return self.diameter / 2.0 / self.voxel_size

    def box_size(self, voxel_size: float) -> int:
        """Edge of a cube that holds the particle in any orientation, with a blur margin."""
        return int(math.ceil(self.diameter / voxel_size + 2 * (3 * self._sigma(voxel_size) + 2)))

    def render(self, voxel_size: float, rotation: np.ndarray | None = None,
               offset: np.ndarray | None = None, box: int | None = None) -> np.ndarray:
        """Render the rotated, shifted particle into a cube ``(box, box, box)`` ``[z][y][x]``.

        Parameters
        ----------
        voxel_size
            Å per voxel.
        rotation
            ``(3, 3)`` matrix applied to the points (``None`` = identity).
        offset
            Sub-voxel position ``x, y, z`` of the centre in voxels relative to index ``box // 2``.
        box
            Cube edge in voxels (default :meth:`box_size`).
        """
        box = box or self.box_size(voxel_size)
        pts, w = self._points_for(voxel_size, 3)
        if rotation is not None:
            pts = pts @ np.asarray(rotation, dtype=np.float32).T
        pts = pts / voxel_size + box // 2
        if offset is not None:
            pts = pts + np.asarray(offset, dtype=np.float32)
        grid = splat(pts, w / voxel_size**3, (box, box, box))
        return ndimage.gaussian_filter(grid, self._sigma(voxel_size), mode="constant", truncate=3.0)

    def project(self, pixel_size: float, rotation: np.ndarray | None = None,
                offset: np.ndarray | None = None, box: int | None = None) -> np.ndarray:
        """Projection along z of the rotated particle, ``(box, box)`` ``[y][x]``, in Å·density.

        The value is the projected thickness of protein (Å) through each pixel.
        """
        box = box or self.box_size(pixel_size)
        pts, w = self._points_for(pixel_size, 2)
        if rotation is not None:
            pts = pts @ np.asarray(rotation, dtype=np.float32)[:2].T  # only x, y are needed
        else:
            pts = pts[:, :2]
        xy = pts / pixel_size + box // 2
        if offset is not None:
            xy = xy + np.asarray(offset, dtype=np.float32)[:2]
        grid = splat(xy, w / pixel_size**2, (box, box))
        return ndimage.gaussian_filter(grid, self._sigma(pixel_size), mode="constant", truncate=3.0)

    @cached_property
    def spacing(self) -> float:
        """Typical distance between points, Å (cube root of the mean weight, 1.5 Å for atoms)."""
        return float(np.cbrt(self.weights.mean())) if self.kind != "atomic" else 1.5

    def _sigma(self, voxel_size: float) -> float:
        """Render blur in voxels: the model's resolution, but never finer than its point spacing."""
        return float(max(self.blur, 0.6 * self.spacing, 0.5 * voxel_size) / voxel_size)

    # Rendering at a coarse voxel size does not need every point: keep about 12 points per voxel
    # of the particle's volume (3D) or 8 per pixel of its projected area (2D) — a fixed
    # pseudo-random subset, weights rescaled — which keeps simulation fast without visible change
    # after the blur.
    def _subset(self, voxel_size: float, ndim: int = 3) -> np.ndarray:
        if ndim == 3:
            wanted = 12 * float(self.weights.sum()) / voxel_size**3
        else:
            wanted = 8 * np.pi * (self.diameter / 2 / voxel_size) ** 2
        keep = int(min(len(self.points), max(2000, wanted)))
        if keep == len(self.points):
            return np.arange(keep)
        return np.random.default_rng(0).permutation(len(self.points))[:keep]

    def _points_for(self, voxel_size: float, ndim: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Points (Å) and weights to render at ``voxel_size`` in ``ndim`` dimensions (cached)."""
        cache = self.meta.setdefault("_render_cache", {})
        key = (round(float(voxel_size), 6), ndim, len(self.points))
        if key not in cache:
            idx = self._subset(voxel_size, ndim)
            w = self.weights[idx]
            w = (w * (self.weights.sum() / max(w.sum(), 1e-12))).astype(np.float32)
            cache[key] = (np.ascontiguousarray(self.points[idx]), w)
        return cache[key]

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_points(cls, name: str, points: np.ndarray, weights: np.ndarray, voxel_size: float,
                    kind: str = "map", symmetry: str = "C1", blur: float = 2.0, meta: dict | None = None) -> "ParticleClass":
        """Centre a weighted cloud (Å) on its centre of mass and measure its diameter."""
        points = np.asarray(points, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        if len(points) == 0:
            raise CryopickError(f"particle class {name!r} has no points / atoms")
        centre = (points * weights[:, None]).sum(0) / weights.sum()
        points = points - centre
        diameter = 2.0 * float(np.sqrt((points**2).sum(1).max()))
        return cls(name=name, points=points.astype(np.float32), weights=weights.astype(np.float32),
                   diameter=diameter, voxel_size=float(voxel_size), kind=kind, symmetry=symmetry,
                   blur=blur, meta=dict(meta or {}))

    @classmethod
    def from_density(cls, name: str, volume: np.ndarray, voxel_size: float, threshold: float | None = None,
                     blur: float | None = None) -> "ParticleClass":
        """A class from a density map ``[z][y][x]`` (e.g. an MRC map), voxels above ``threshold``.

        The threshold defaults to 10% of the maximum; weights are normalised so the mean density
        above the threshold is 1.
        """
        volume = np.asarray(volume, dtype=np.float32)
        threshold = 0.1 * float(volume.max()) if threshold is None else threshold
        zyx = np.argwhere(volume > threshold)
        if len(zyx) == 0:
            raise CryopickError(f"density for class {name!r} has no voxel above {threshold:g}")
        values = volume[tuple(zyx.T)]
        weights = values / values.mean() * voxel_size**3
        points = (zyx[:, ::-1] - (np.asarray(volume.shape[::-1]) - 1) / 2.0) * voxel_size
        return cls.from_points(name, points, weights, voxel_size, kind="map",
                               blur=voxel_size / 2 if blur is None else blur)

    @classmethod
    def from_atoms(cls, name: str, path: str | os.PathLike, voxel_size: float, blur: float = 1.5) -> "ParticleClass":
        """A class from a PDB or mmCIF atomic model (hydrogens and waters ignored)."""
        coords, elements = read_atoms(path)
        z = atomic_numbers(elements)
        return cls.from_points(name, coords, z * _VOLUME_PER_ELECTRON, voxel_size, kind="atomic",
                               blur=blur, meta={"source": str(path), "n_atoms": len(coords)})


def splat(points: np.ndarray, weights: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear (bilinear in 2D) splatting of weighted points onto a grid.

    Parameters
    ----------
    points
        ``(N, ndim)`` coordinates ``x, y[, z]`` in pixels (array index of pixel centres).
    weights
        ``(N,)`` weights.
    shape
        Grid shape in numpy order ``([z,] y, x)``.

    Returns
    -------
    float32 array of ``shape``; points (partly) outside contribute only inside.
    """
    ndim = len(shape)
    pts = np.asarray(points, dtype=np.float32)[:, :ndim][:, ::-1]  # -> numpy axis order
    # Work on a grid padded by one voxel and clip indices into it: points outside land in the
    # padding, which is cropped away (no per-point bounds mask needed).
    padded = np.asarray(shape) + 2
    base = np.floor(pts)
    frac = pts - base
    base = np.clip(base.astype(np.int64) + 1, 0, padded - 2)
    strides = np.array([int(np.prod(padded[i + 1:])) for i in range(ndim)], dtype=np.int64)
    flat = base @ strides
    w = np.asarray(weights, dtype=np.float32)
    out = np.zeros(int(np.prod(padded)), dtype=np.float64)
    for corner in range(1 << ndim):
        cw = w.copy()
        offset = 0
        for i in range(ndim):
            if (corner >> (ndim - 1 - i)) & 1:
                cw *= frac[:, i]
                offset += strides[i]
            else:
                cw *= 1.0 - frac[:, i]
        out += np.bincount(flat + offset, weights=cw, minlength=out.size)
    inner = tuple(slice(1, n + 1) for n in shape)
    return np.ascontiguousarray(out.reshape(padded)[inner], dtype=np.float32)
