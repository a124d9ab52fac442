"""Protein-like 3D densities for the simulator, as weighted point clouds ("pseudo-atoms").

A particle class is a cloud of points in Å around its centre of mass, each with a weight in
Å³ of protein-equivalent volume. Rendering splats the points onto a grid (trilinear) and blurs
them, so a solid protein interior has density ≈ 1.0 (relative to the protein–ice contrast) at any
voxel size. The same cloud is projected for 2D micrographs and placed for 3D tomograms, so 2D and
3D particles of one class are the same object, and orientations are exact (no resampling).

Shapes are built procedurally from implicit primitives (bumpy ellipsoids and cylinders, unions
minus holes) under a point group (C1, Cn, Dn, T, O) or as helical assemblies, so classes differ
in size, aspect ratio, hollowness, symmetry and lobes. Atomic models (PDB / mmCIF) give clouds of
real atoms (weights ∝ atomic number), and any density map can be turned into a cloud.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage

from cryopick.errors import CryopickError
from cryopick.simulate import rotations

#: Procedural shape families. Each one is structurally different from the others.
SHAPE_KINDS = (
    "globular",   # multi-domain compact C1 protein
    "elongated",  # rod of domains, aspect ratio 3-5
    "shell",      # hollow ellipsoid with pores (capsid / vault-like)
    "ring",       # Cn / Dn barrel of subunits around an empty channel (proteasome / chaperonin-like)
    "cyclic",     # compact Cn oligomer
    "dihedral",   # compact Dn oligomer (e.g. beta-galactosidase is D2)
    "multilobe",  # 2-4 lobes of different sizes joined by thin linkers (ribosome-like)
    "disc",       # flat oblate particle with a knob
    "helical",    # short helical filament segment
    "cage",       # hollow T / O symmetric cage (ferritin-like)
)

#: Å³ of protein-equivalent volume per unit of atomic number (≈ 17.3 Å³ per heavy atom of mean Z 6.6).
_VOLUME_PER_ELECTRON = 2.6
_ATOMIC_NUMBER = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16, "SE": 34, "FE": 26, "MG": 12,
                  "ZN": 30, "CA": 20, "NA": 11, "K": 19, "CL": 17, "MN": 25, "CU": 29}


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
        Shape family (one of :data:`SHAPE_KINDS`, ``"atomic"`` or ``"map"``) and point group.
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
        z = np.array([_ATOMIC_NUMBER.get(e, 6) for e in elements], dtype=np.float64)
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


# -- procedural shapes ----------------------------------------------------------------------------
@dataclass
class _Part:
    """A bumpy ellipsoid (``kind='ell'``) or capped cylinder (``'cyl'``) in unit coordinates."""

    kind: str
    centre: np.ndarray
    rot: np.ndarray
    size: np.ndarray  # ellipsoid radii, or (radius, radius, half length) for a cylinder
    bump_freq: np.ndarray
    bump_phase: np.ndarray
    bump: float = 0.12

    def inside(self, p: np.ndarray) -> np.ndarray:
        q = (p - self.centre) @ self.rot  # rows: local coordinates
        if self.kind == "ell":
            r = np.sqrt(((q / self.size) ** 2).sum(1))
        else:
            radial = np.sqrt((q[:, 0] / self.size[0]) ** 2 + (q[:, 1] / self.size[1]) ** 2)
            r = np.maximum(radial, np.abs(q[:, 2]) / self.size[2])
        qn = q / self.size.max()
        noise = np.cos(qn @ self.bump_freq.T + self.bump_phase).mean(1)
        return r <= 1.0 + self.bump * noise * np.sqrt(2.0)


def _part(rng: np.random.Generator, kind: str, centre, size, rot=None, bump: float = 0.12) -> _Part:
    rot = rotations.random_rotations(1, rng)[0] if rot is None else np.asarray(rot, float)
    freq = rng.normal(0, 1, (6, 3))
    freq *= rng.uniform(2.5, 6.0, (6, 1)) / np.linalg.norm(freq, axis=1, keepdims=True)
    return _Part(kind, np.asarray(centre, float), rot, np.asarray(size, float), freq,
                 rng.uniform(0, 2 * np.pi, 6), bump)


@dataclass
class _Shape:
    positive: list
    negative: list
    ops: np.ndarray  # (n, 3, 3) symmetry operators
    symmetry: str

    def inside(self, p: np.ndarray) -> np.ndarray:
        keep = self._any(p, self.positive, np.arange(len(p)))
        if self.negative:
            cand = np.flatnonzero(keep)
            keep[cand[self._any(p, self.negative, cand)]] = False
        return keep

    def _any(self, p: np.ndarray, parts: list, index: np.ndarray) -> np.ndarray:
        """Whether each point ``p[index]`` lies in any symmetry copy of any of ``parts``."""
        hit = np.zeros(len(index), bool)
        sub = p[index]
        for op in self.ops:
            for part in parts:
                # Bounding-sphere prefilter: only points near this copy are tested exactly.
                extent = np.linalg.norm(part.size) if part.kind == "cyl" else part.size.max()
                reach = extent * (1.0 + 2.0 * part.bump) + 1e-9
                near = np.flatnonzero(~hit & (((sub - op @ part.centre) ** 2).sum(1) <= reach**2))
                if len(near):
                    hit[near[part.inside(sub[near] @ op)]] = True
        return hit

    def bound(self) -> float:
        return max(np.linalg.norm(p.centre) + p.size.max() * 1.25 for p in self.positive)


def _globular(rng):
    parts, c = [], np.zeros(3)
    for _ in range(rng.integers(3, 8)):
        parts.append(_part(rng, "ell", c, rng.uniform(0.3, 0.55, 3)))
        step = rng.normal(0, 1, 3)
        c = c + 0.38 * step / np.linalg.norm(step)
    return _Shape(parts, [], np.eye(3)[None], "C1")


def _elongated(rng):
    length = rng.uniform(3.0, 5.0)
    n = int(rng.integers(4, 9))
    bend = rng.normal(0, 0.15, 2)
    parts = []
    for t in np.linspace(-1, 1, n):
        centre = np.r_[bend * t * t * length / 2, t * length / 2]
        r = rng.uniform(0.32, 0.5)
        parts.append(_part(rng, "ell", centre, [r, r * rng.uniform(0.8, 1.2), length / n * rng.uniform(0.6, 0.9)],
                           rot=rotations.axis_angle(rng.normal(size=3), rng.normal(0, 0.2))))
    return _Shape(parts, [], np.eye(3)[None], "C1")


def _shell(rng):
    radii = rng.uniform(0.85, 1.15, 3)
    wall = rng.uniform(0.18, 0.3)
    outer = _part(rng, "ell", np.zeros(3), radii, bump=0.05)
    inner = _part(rng, "ell", np.zeros(3), radii * (1 - wall), rot=outer.rot, bump=0.03)
    pores = [_part(rng, "cyl", np.zeros(3), [0.14, 0.14, 1.4], bump=0.0) for _ in range(rng.integers(0, 5))]
    return _Shape([outer], [inner] + pores, np.eye(3)[None], "C1")


def _ring(rng):
    n = int(rng.integers(5, 10))
    rings = int(rng.choice([1, 2, 2, 4]))
    r0 = rng.uniform(0.55, 0.75)
    sub = rng.uniform(0.22, 0.32)
    height = rng.uniform(0.25, 0.4)
    parts = []
    for k in range(rings if rings == 1 else rings // 2):
        z = 0.0 if rings == 1 else (k + 0.5) * 2 * height
        parts.append(_part(rng, "ell", [r0, 0, z], [sub, sub * rng.uniform(0.8, 1.3), height],
                           rot=rotations.rotation_z(rng.uniform(0, np.pi))))
    ops = rotations.cyclic_group(n) if rings == 1 else rotations.dihedral_group(n)
    return _Shape(parts, [], ops, f"C{n}" if rings == 1 else f"D{n}")


def _cyclic(rng):
    n = int(rng.integers(2, 7))
    r0 = rng.uniform(0.3, 0.5)
    parts = [_part(rng, "ell", [r0 + rng.normal(0, 0.1), rng.normal(0, 0.1), rng.normal(0, 0.25)],
                   rng.uniform(0.25, 0.45, 3)) for _ in range(rng.integers(2, 4))]
    return _Shape(parts, [], rotations.cyclic_group(n), f"C{n}")


def _dihedral(rng):
    n = int(rng.integers(2, 5))
    parts = [_part(rng, "ell", [rng.uniform(0.2, 0.5), rng.normal(0, 0.15), rng.uniform(0.2, 0.45)],
                   rng.uniform(0.22, 0.4, 3)) for _ in range(rng.integers(2, 4))]
    return _Shape(parts, [], rotations.dihedral_group(n), f"D{n}")


def _multilobe(rng):
    n = int(rng.integers(2, 5))
    parts, centres = [], []
    direction = rng.normal(size=3)
    c = np.zeros(3)
    for i in range(n):
        r = rng.uniform(0.35, 0.75)
        if i:
            direction = direction + rng.normal(0, 0.8, 3)
            direction /= np.linalg.norm(direction)
            gap = rng.uniform(0.05, 0.35)
            c = centres[-1][0] + direction * (centres[-1][1] + r + gap)
            mid = (centres[-1][0] + c) / 2
            d = c - centres[-1][0]
            link_rot = _rotation_to(d)
            parts.append(_part(rng, "cyl", mid, [0.1, 0.1, np.linalg.norm(d) / 2], rot=link_rot, bump=0.05))
        parts.append(_part(rng, "ell", c, r * rng.uniform(0.8, 1.1, 3)))
        centres.append((c, r))
    return _Shape(parts, [], np.eye(3)[None], "C1")


def _disc(rng):
    disc = _part(rng, "ell", np.zeros(3), [1.0, rng.uniform(0.75, 1.0), rng.uniform(0.18, 0.3)],
                 rot=np.eye(3), bump=0.08)
    knob = _part(rng, "ell", [rng.normal(0, 0.2), rng.normal(0, 0.2), 0.3], rng.uniform(0.2, 0.35, 3))
    return _Shape([disc, knob], [], np.eye(3)[None], "C1")


def _helical(rng):
    n = int(rng.integers(8, 15))
    twist = rng.uniform(-2.2, 2.2)
    rise = rng.uniform(0.25, 0.4)
    radius = rng.uniform(0.25, 0.45)
    sub = rng.uniform(0.22, 0.3, 3)
    base = rotations.random_rotations(1, rng)[0]
    parts = []
    for k in range(n):
        rz = rotations.rotation_z(twist * k)
        centre = rz @ np.r_[radius, 0, 0] + np.r_[0, 0, rise * (k - (n - 1) / 2)]
        parts.append(_part(rng, "ell", centre, sub, rot=rz @ base, bump=0.0))
    return _Shape(parts, [], np.eye(3)[None], "helical")


def _cage(rng):
    octa = bool(rng.integers(0, 2))
    ops = rotations.octahedral_group() if octa else rotations.tetrahedral_group()
    d = rng.normal(size=3)
    d = 0.78 * d / np.linalg.norm(d)
    sub = rng.uniform(0.25, 0.38) * (0.8 if octa else 1.0)
    part = _part(rng, "ell", d, [sub, sub * rng.uniform(0.7, 1.1), sub * rng.uniform(0.5, 0.7)],
                 rot=_rotation_to(d) @ rotations.rotation_z(rng.uniform(0, np.pi)), bump=0.1)
    return _Shape([part], [], ops, "O" if octa else "T")


def _rotation_to(direction: np.ndarray) -> np.ndarray:
    """A rotation whose third column (local z) points along ``direction``."""
    z = np.asarray(direction, float) / np.linalg.norm(direction)
    helper = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


_BUILDERS = {"globular": _globular, "elongated": _elongated, "shell": _shell, "ring": _ring,
             "cyclic": _cyclic, "dihedral": _dihedral, "multilobe": _multilobe, "disc": _disc,
             "helical": _helical, "cage": _cage}


def procedural_class(name: str, kind: str, diameter_A: float, voxel_size: float, seed: int | np.random.Generator,
                     spacing_A: float | None = None, blur: float = 2.0, texture_amplitude: float = 0.45) -> ParticleClass:
    """Build one procedural particle class of ``kind`` scaled to ``diameter_A``.

    Parameters
    ----------
    spacing_A
        Pseudo-atom spacing in Å (jittered grid); default ``clip(0.6 * voxel_size, d / 90, d / 18)``.
    texture_amplitude
        Relative standard deviation of the internal mass variation (correlation length ~20 Å).
    """
    if kind not in _BUILDERS:
        raise CryopickError(f"unknown particle shape {kind!r}; choose one of {', '.join(SHAPE_KINDS)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = _BUILDERS[kind](rng)
    bound = shape.bound()
    # A coarse pass measures the extent, the fine pass samples at the wanted spacing.
    coarse = _sample(shape, bound, 28, rng)
    extent = np.sqrt(((coarse - coarse.mean(0)) ** 2).sum(1)).max() if len(coarse) else bound
    scale = (diameter_A / 2.0) / extent
    spacing = spacing_A or float(np.clip(0.6 * voxel_size, diameter_A / 90, diameter_A / 18))
    n = int(np.clip(np.ceil(2 * bound * scale / spacing), 16, 110))
    pts = _sample(shape, bound, n, rng) * scale
    cell = (2 * bound * scale / n) ** 3
    # Internal mass variation on ~20 Å scales (domains, clefts, solvent channels): real proteins
    # are not uniformly filled, and this texture is what makes projections look protein-like.
    texture = np.clip(1.0 + texture_amplitude * _random_field(pts, 20.0, rng, shape.ops), 0.15, None)
    cls = ParticleClass.from_points(name, pts, np.full(len(pts), cell) * texture, voxel_size,
                                    kind=kind, symmetry=shape.symmetry, blur=blur)
    # Re-scale so the measured diameter is exactly the requested one.
    factor = diameter_A / cls.diameter
    cls.points *= np.float32(factor)
    cls.weights *= np.float32(factor**3)
    cls.diameter = float(diameter_A)
    return cls


def _random_field(points: np.ndarray, length_A: float, rng: np.random.Generator,
                  ops: np.ndarray | None = None) -> np.ndarray:
    """Smooth Gaussian random field (correlation length ``length_A``, unit variance) at ``points`` (Å).

    With symmetry operators ``ops`` the field is averaged over the group (then re-normalised), so it
    has the particle's symmetry.
    """
    step = length_A / 3.0
    reach = float(np.sqrt((points**2).sum(1).max())) + 3 * length_A
    n = int(np.ceil(2 * reach / step)) + 1
    grid = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 1.5, mode="wrap")
    ops = np.eye(3)[None] if ops is None else ops
    values = np.zeros(len(points))
    for op in ops:
        values += ndimage.map_coordinates(grid, ((points @ op + reach) / step).T, order=1, mode="nearest")
    values -= values.mean()
    return values / max(float(values.std()), 1e-12)


def _sample(shape: _Shape, bound: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Jittered-grid points inside ``shape`` in the cube ``[-bound, bound]^3`` with ``n`` cells per edge."""
    step = 2 * bound / n
    axis = -bound + step * (np.arange(n) + 0.5)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    grid = grid + rng.uniform(-step / 2, step / 2, grid.shape)
    grid = grid[(grid**2).sum(1) <= bound**2]
    return grid[shape.inside(grid)]


def random_particle_classes(n: int = 10, seed: int = 0, voxel_size: float = 10.0,
                            diameter_range_A: tuple[float, float] = (100.0, 350.0),
                            kinds: tuple[str, ...] | None = None, blur: float = 2.0) -> list[ParticleClass]:
    """``n`` structurally different procedural particle classes.

    Shape families are drawn without replacement from :data:`SHAPE_KINDS` (cycling when ``n`` is
    larger), diameters are stratified log-uniformly over ``diameter_range_A`` so sizes span the
    whole range, and every class gets its own random parameters: different seeds give different
    classes. Names are ``"<kind><index>_<diameter>A"``, e.g. ``"ring03_240A"``.
    """
    if n < 1:
        raise CryopickError("the number of particle classes must be at least 1")
    lo, hi = diameter_range_A
    if not 0 < lo <= hi:
        raise CryopickError(f"bad diameter range {diameter_range_A}; give 0 < min <= max (Å)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7351]))
    kinds = tuple(kinds or SHAPE_KINDS)
    order = []
    while len(order) < n:
        order.extend(rng.permutation(kinds).tolist())
    strata = (np.arange(n) + rng.uniform(0.15, 0.85, n)) / n
    diameters = np.exp(np.log(lo) + strata * (np.log(hi) - np.log(lo)))
    rng.shuffle(diameters)
    classes = []
    for i in range(n):
        kind = order[i]
        name = f"{kind}{i:02d}_{int(round(diameters[i]))}A"
        classes.append(procedural_class(name, kind, float(diameters[i]), voxel_size,
                                        np.random.default_rng(rng.integers(2**63)), blur=blur))
    return classes


# -- atomic models --------------------------------------------------------------------------------
def read_atoms(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read atom positions (Å) and element symbols from a PDB or mmCIF file.

    PDB: fixed-column ``ATOM``/``HETATM`` records (x 31-38, y 39-46, z 47-54, element 77-78, falling
    back to the atom name). mmCIF: the ``_atom_site`` loop (``Cartn_x/y/z``, ``type_symbol``).
    Hydrogens and waters (HOH/WAT) are skipped; only the first model is read.
    """
    path = Path(path)
    if not path.exists():
        raise CryopickError(f"{path}: no such atomic model file")
    text = path.read_text(errors="replace")
    suffix = path.suffix.lower()
    if suffix in (".cif", ".mmcif") or "_atom_site." in text[:200000]:
        coords, elements = _read_mmcif(text)
    else:
        coords, elements = _read_pdb(text)
    if len(coords) == 0:
        raise CryopickError(f"{path}: no ATOM/HETATM records found; is it a PDB or mmCIF file?")
    return np.asarray(coords, dtype=np.float64), elements


def _read_pdb(text: str) -> tuple[list, list]:
    coords, elements = [], []
    for line in text.splitlines():
        record = line[:6].strip()
        if record == "ENDMDL":
            break
        if record not in ("ATOM", "HETATM") or line[17:20].strip() in ("HOH", "WAT"):
            continue
        element = line[76:78].strip().upper() if len(line) >= 78 else ""
        if not element:
            element = "".join(ch for ch in line[12:16] if ch.isalpha())[:1].upper()
        if element == "H":
            continue
        coords.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
        elements.append(element)
    return coords, elements


def _read_mmcif(text: str) -> tuple[list, list]:
    import shlex

    lines = text.splitlines()
    coords, elements = [], []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "loop_" and i + 1 < len(lines) and lines[i + 1].strip().startswith("_atom_site."):
            i += 1
            names = []
            while i < len(lines) and lines[i].strip().startswith("_atom_site."):
                names.append(lines[i].strip().split(".", 1)[1].split()[0])
                i += 1
            col = {n: k for k, n in enumerate(names)}
            for needed in ("Cartn_x", "Cartn_y", "Cartn_z"):
                if needed not in col:
                    raise CryopickError(f"mmCIF _atom_site loop lacks {needed}")
            first_model = None
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("loop_", "_", "#")):
                values = shlex.split(lines[i], posix=True)
                i += 1
                if len(values) != len(names):
                    continue
                if "pdbx_PDB_model_num" in col:
                    model = values[col["pdbx_PDB_model_num"]]
                    first_model = first_model or model
                    if model != first_model:
                        continue
                if "label_comp_id" in col and values[col["label_comp_id"]] in ("HOH", "WAT"):
                    continue
                element = values[col["type_symbol"]].upper() if "type_symbol" in col else (
                    values[col["label_atom_id"]][:1].upper() if "label_atom_id" in col else "C")
                if element in ("H", "D"):
                    continue
                coords.append(tuple(float(values[col[c]]) for c in ("Cartn_x", "Cartn_y", "Cartn_z")))
                elements.append(element)
            break
        i += 1
    return coords, elements
