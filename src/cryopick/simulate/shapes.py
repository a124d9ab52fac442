"""Procedural protein-like particle classes for the simulator.

Shapes are built from implicit primitives (bumpy ellipsoids and capped cylinders, unions minus
holes) under a point group (C1, Cn, Dn, T, O) or as helical assemblies, sampled on a jittered grid
into a :class:`~cryopick.simulate.densities.ParticleClass` point cloud with ~20 Å internal mass
texture. :func:`random_particle_classes` draws structurally different classes that span a diameter
range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cryopick.errors import CryopickError
from cryopick.simulate import rotations
from cryopick.simulate.densities import ParticleClass

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
