"""Simulated cryo-ET tomograms with ground truth: picks, instance and class occupancy masks.

Image model (a reconstructed, binned tomogram)
----------------------------------------------
1. The scattering potential is built in a ``(D, H, W)`` volume (numpy ``[z][y][x]``; z is the
   beam direction at zero tilt): particles of several classes at uniformly random orientations,
   non-overlapping, from sparse to touching (``crowding``), plus distractors that are **not**
   picks: lipid vesicles (bilayer shells) and gold fiducials (very dense small spheres).
   Protein density is 1.0 (relative to ice), gold 3.0.
   Gold is an amplitude object: it is dark at every frequency (no CTF oscillation).
2. The potential is filtered in Fourier space by the 3D CTF ``CTF(|k|)`` (phase flipped by default,
   as in most cryo-ET pipelines) and by the missing wedge of a single-axis tilt series about the
   y axis: a 3D frequency with components ``(kx, kz)`` is measured iff the plane of some tilt
   ``theta`` in ``tilt_range`` contains it (``kz / kx = -tan(theta)``).
3. Gaussian noise, also missing the wedge (it is reconstructed from the noisy tilt images), is
   added at the requested SNR, then the volume is normalised to zero mean and unit variance.
   Signal and noise both pass the sinc of binning by voxel averaging.

Contrast: like real reconstructions, **protein is dark** (negative values) on brighter ice; gold is
darkest. Multiply by -1 for tools (e.g. TomoTwin) that want bright particles.

SNR definition: mean squared deviation of the noiseless filtered signal from its median, over the
particle occupancy mask, divided by the noise variance.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.fft

from cryopick.config import configure
from cryopick.errors import CryopickError
from cryopick.picks import Picks
from cryopick.simulate import ctf as ctf_mod
from cryopick.simulate import rotations
from cryopick.simulate.config import TomogramSimulation
from cryopick.simulate.densities import ParticleClass
from cryopick.simulate.placement import PlacementWarning, fitting_weights, shortfall_message
from cryopick.simulate.shapes import random_particle_classes

__all__ = ["ParticleClass", "Tomogram", "TomogramSimulation", "random_particle_classes", "simulate_tomogram",
           "missing_wedge_mask"]


GOLD_DENSITY = 3.0


@dataclass
class Tomogram:
    """A simulated tomogram and its ground truth.

    Attributes
    ----------
    volume
        float32 ``(D, H, W)``, zero mean, unit variance; protein dark (negative contrast).
    picks
        ``Picks`` (ndim 3): ``x, y, z`` particle centres in voxels, ``diameter`` in voxels,
        ``label`` = class name.
    instance_mask
        int32 ``(D, H, W)``: 0 background, ``k`` = particle ``k - 1`` (row of :attr:`picks`),
        voxels where that particle's density exceeds ``mask_threshold`` of its maximum.
    class_mask
        int16 ``(D, H, W)``: 0 background, ``c`` = ``class_names[c - 1]``.
    class_names
        Names of all classes given (also those with no particle placed).
    voxel_size
        Å per voxel.
    orientations
        ``(N, 3, 3)`` rotation applied to each particle's class model.
    distractors
        One dict per vesicle / gold bead: ``kind``, ``centre`` (x, y, z voxels), ``radius`` (voxels).
    params
        The parameters drawn for this tomogram (snr, defocus, ...).
    clean
        The noiseless filtered volume (same scaling as :attr:`volume`) when requested, else None.
    """

    volume: np.ndarray
    picks: Picks
    instance_mask: np.ndarray
    class_mask: np.ndarray
    class_names: list[str]
    voxel_size: float
    orientations: np.ndarray
    distractors: list[dict] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    clean: np.ndarray | None = None
    name: str = "tomogram"


def _draw(value: float | Sequence[float], rng: np.random.Generator) -> float:
    """A scalar, or a value drawn uniformly from a ``(low, high)`` range."""
    if np.ndim(value) == 0:
        return float(value)
    lo, hi = value
    return float(rng.uniform(lo, hi))


def simulate_tomogram(classes: Sequence[ParticleClass], config: TomogramSimulation | None = None, *, seed: int = 0,
                      name: str = "tomogram", keep_clean: bool = False, **options) -> Tomogram:
    """Simulate one tomogram; deterministic for a given ``seed`` and settings.

    ``classes``: particle classes (e.g. from :func:`random_particle_classes`), any voxel size; ``config``: a
    :class:`~cryopick.simulate.config.TomogramSimulation` (shape, voxel size, number of particles, tilt range,
    SNR, defocus, distractors, optics ...); its fields may also be given as keywords (``shape=(64, 96, 96)``),
    which replace those of ``config``. ``keep_clean``: also return the noiseless filtered volume in
    :attr:`Tomogram.clean`. The steps: :func:`_draw_conditions`, :func:`_place_distractors`,
    :func:`_place_particles`, :func:`_render_potential`, :func:`_form_volume`.
    """
    cfg = configure(TomogramSimulation, config, options, "simulate_tomogram")
    if not classes:
        raise CryopickError("give at least one particle class")
    ss = np.random.SeedSequence([int(seed), 31337])
    rng_place, rng_noise, rng_params = (np.random.default_rng(s) for s in ss.spawn(3))
    snr_value, defocus_A = _draw(cfg.snr, rng_params), _draw(cfg.defocus_um, rng_params) * 1e4
    layout = _Layout(cfg.shape)
    distractors = _place_distractors(layout, cfg, rng_place)
    centres, labels = _place_particles(layout, classes, cfg, rng_place, name)
    rots = rotations.random_rotations(len(centres), rng_place)
    potential, instance, class_mask, gold = _render_potential(classes, centres, labels, rots, distractors, cfg)
    volume, clean, power = _form_volume(potential, gold, instance, cfg, snr_value, defocus_A, rng_noise, keep_clean)

    vs = cfg.voxel_size
    coords = np.array(centres, dtype=np.float64).reshape(-1, 3)
    picks = Picks.from_arrays(name, coords, diameter=np.array([classes[c].diameter / vs for c in labels]),
                              label=[classes[c].name for c in labels], pixel_size=vs)
    params = dict(snr=snr_value, defocus_um=defocus_A / 1e4, tilt_range=tuple(cfg.tilt_range), seed=int(seed),
                  voxel_size=vs, n_requested=int(cfg.n_particles), n_placed=len(centres),
                  crowding=cfg.crowding, ctf_correction=cfg.ctf_correction, signal_power=power)
    return Tomogram(volume=volume, picks=picks, instance_mask=instance, class_mask=class_mask,
                    class_names=[c.name for c in classes], voxel_size=float(vs),
                    orientations=rots.reshape(-1, 3, 3), distractors=distractors, params=params,
                    clean=clean, name=name)


def _place_distractors(layout: _Layout, cfg: TomogramSimulation, rng: np.random.Generator) -> list[dict]:
    """Vesicles, then gold beads, where they fit (a distractor that finds no room is left out)."""
    placed = [_place_vesicle(layout, cfg.voxel_size, rng) for _ in range(int(cfg.membranes))]
    placed += [_place_bead(layout, cfg.voxel_size, rng) for _ in range(int(cfg.gold_beads))]
    return [d for d in placed if d]


def _place_particles(layout: _Layout, classes: Sequence[ParticleClass], cfg: TomogramSimulation,
                     rng: np.random.Generator, name: str) -> tuple[list[np.ndarray], list[int]]:
    """Centres (``x, y, z`` voxels) and class indices of non-overlapping particles, scattered or touching
    (``crowding``); warns when fewer than ``n_particles`` fit."""
    shape, n_particles = cfg.shape, cfg.n_particles
    radii = np.array([c.diameter / 2.0 / cfg.voxel_size for c in classes])
    weights = np.ones(len(classes)) if cfg.class_weights is None else np.asarray(cfg.class_weights, float)
    if len(weights) != len(classes):
        raise CryopickError("class_weights must have one non-negative weight per class")
    counts = cfg.counts
    if counts is not None:
        quota = np.asarray(counts, int)
        if len(quota) != len(classes):
            raise CryopickError(f"counts must have one non-negative number per class ({len(classes)}), got {len(quota)}")
        n_particles, weights = int(quota.sum()), np.maximum(quota, 1e-9).astype(float)
    weights = fitting_weights(radii, weights / weights.sum(), shape, [c.name for c in classes], name, "tomogram")
    if counts is not None:  # the classes too large for the tomogram are left out of the quota too
        quota = np.where(weights > 0, quota, 0)
        n_particles = int(quota.sum())
    gap = cfg.min_gap_A / cfg.voxel_size
    centres, labels = [], []
    attempts = 0
    while len(centres) < n_particles and attempts < cfg.max_attempts_per_particle * max(n_particles, 1):
        attempts += 1
        if counts is not None:  # draw among the classes whose quota is not reached yet
            left = quota - np.bincount(np.asarray(labels, int), minlength=len(classes))
            c = int(rng.choice(len(classes), p=left / left.sum()))
        else:
            c = int(rng.choice(len(classes), p=weights))
        r = radii[c]
        if centres and rng.uniform() < cfg.crowding:
            j = int(rng.integers(len(centres)))
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            d = layout.particle_r[j] + r + gap + rng.uniform(0.0, 0.15) * r
            pos = layout.particle_c[j] + u * d
        else:
            pos = np.array([rng.uniform(r, n - 1 - r) for n in shape[::-1]])
        if layout.free(pos, r, gap):
            layout.add_particle(pos, r)
            centres.append(pos)
            labels.append(c)
    if len(centres) < n_particles:
        warnings.warn(shortfall_message(name, len(centres), n_particles, radii[labels], shape, "tomogram"),
                      PlacementWarning, stacklevel=3)
    return centres, labels


def _render_potential(classes, centres, labels, rots, distractors, cfg: TomogramSimulation):
    """The scattering potential (particles and vesicles), the instance and class masks, and the gold beads'
    density apart (``None`` without beads: gold is an amplitude object, filtered differently)."""
    shape, vs = cfg.shape, cfg.voxel_size
    potential = np.zeros(shape, np.float32)
    instance = np.zeros(shape, np.int32)
    class_mask = np.zeros(shape, np.int16)
    for k, (pos, c, rot) in enumerate(zip(centres, labels, rots)):
        cls = classes[c]
        box = cls.box_size(vs)
        ipos = np.round(pos).astype(int)
        local = cls.render(vs, rotation=rot, offset=pos - ipos, box=box)
        dst, src = _overlap(ipos, box, shape)
        if dst is None:
            continue
        piece = local[src]
        potential[dst] += piece
        occupied = (piece > cfg.mask_threshold * local.max()) & (instance[dst] == 0)
        instance[dst][occupied] = k + 1
        class_mask[dst][occupied] = c + 1
    gold = np.zeros(shape, np.float32) if any(d["kind"] == "gold" for d in distractors) else None
    for d in distractors:
        _render_distractor(gold if d["kind"] == "gold" else potential, d, vs)
    return potential, instance, class_mask, gold


def _form_volume(potential, gold, instance, cfg: TomogramSimulation, snr_value: float, defocus_A: float,
                 rng_noise: np.random.Generator, keep_clean: bool):
    """CTF, missing wedge and binning filter of the potential, noise at the SNR, then z-scoring:
    ``(volume, clean or None, signal power)``."""
    shape = cfg.shape
    wedge = _wedge_and_binning(shape, cfg.tilt_range)
    signal = _filtered_signal(potential, gold, cfg, defocus_A, wedge)
    reference = float(np.median(signal))
    inside = instance > 0
    power = float(np.mean((signal[inside] - reference) ** 2)) if inside.any() else float(np.var(signal))
    if np.isfinite(snr_value) and snr_value > 0:
        # White Gaussian noise drawn directly in Fourier space (saves a transform), minus the wedge.
        half = (shape[0], shape[1], shape[2] // 2 + 1)
        spec = rng_noise.standard_normal(half, dtype=np.float32) + 1j * rng_noise.standard_normal(half, dtype=np.float32)
        spec *= wedge
        noise = scipy.fft.irfftn(spec, s=shape, workers=1).astype(np.float32)
        del spec
        noise *= np.float32(math.sqrt(power / snr_value) / max(float(noise.std()), 1e-12))
        volume = signal + noise
        del noise
    else:
        volume = signal.copy()
    mean, std = float(volume.mean()), float(volume.std()) or 1.0
    volume = ((volume - mean) / std).astype(np.float32)
    clean = ((signal - mean) / std).astype(np.float32) if keep_clean else None
    return volume, clean, power


def _wedge_and_binning(shape, tilt_range) -> np.ndarray:
    """The missing wedge times the sinc of binning by voxel averaging (both signal and noise pass it)."""
    fz, fy, fx = ctf_mod.frequency_grid(shape, 1.0)
    return missing_wedge_mask(shape, tilt_range) * (np.sinc(fz) * np.sinc(fy) * np.sinc(fx)).astype(np.float32)


def _filtered_signal(potential, gold, cfg: TomogramSimulation, defocus_A: float, wedge: np.ndarray) -> np.ndarray:
    """The noiseless reconstruction: protein through CTF (phase-flipped or raw), wedge and binning; gold dark at
    every frequency (amplitude contrast, B-factor envelope), also missing the wedge."""
    shape, vs = cfg.shape, cfg.voxel_size
    spectrum = scipy.fft.rfftn(potential, workers=1)
    transfer = wedge
    if defocus_A > 0:
        ctf = ctf_mod.ctf_3d(shape, vs, defocus_A, cfg.voltage_kv, cfg.cs_mm, cfg.amplitude_contrast, cfg.bfactor)
        transfer = transfer * (ctf_mod.phase_flip(ctf) if cfg.ctf_correction == "phaseflip" else ctf)
    else:
        transfer = -transfer  # no CTF: still dark protein
    spectrum *= transfer
    if gold is not None:
        kz, ky, kx = ctf_mod.frequency_grid(shape, vs)
        envelope = np.exp(-cfg.bfactor * (kx * kx + ky * ky + kz * kz) / 4.0)
        spectrum -= scipy.fft.rfftn(gold, workers=1) * (wedge * envelope)
    return scipy.fft.irfftn(spectrum, s=shape, workers=1).astype(np.float32)


def missing_wedge_mask(shape: tuple[int, int, int], tilt_range: tuple[float, float] = (-60.0, 60.0)) -> np.ndarray:
    """Boolean ``rfftn``-layout mask of the frequencies a single-axis tilt series (axis y) measures.

    A frequency ``(kz, ky, kx)`` lies in the plane of tilt ``theta`` when ``kz / kx = -tan(theta)``;
    it is measured if that ``theta`` (taken modulo 180°) is inside ``tilt_range`` (degrees).
    The ``ky`` axis (``kx = kz = 0``) is always measured.
    """
    lo, hi = sorted(float(t) for t in tilt_range)
    if hi - lo >= 180.0:
        return np.ones((shape[0], shape[1], shape[2] // 2 + 1), bool)
    kz = np.fft.fftfreq(shape[0]).reshape(-1, 1, 1)
    kx = np.fft.rfftfreq(shape[2]).reshape(1, 1, -1)
    phi = np.arctan2(kz, kx)  # direction of (kx, kz), in (-pi, pi]
    phi = np.where(phi > np.pi / 2, phi - np.pi, phi)
    phi = np.where(phi <= -np.pi / 2, phi + np.pi, phi)
    theta = np.degrees(-phi)
    tol = 1e-6
    ok = ((theta >= lo - tol) & (theta <= hi + tol)) | ((kz == 0) & (kx == 0))
    # 90° is the same plane as -90°.
    if hi >= 90.0 - tol or lo <= -90.0 + tol:
        ok |= np.isclose(np.abs(theta), 90.0)
    return np.broadcast_to(ok, (shape[0], shape[1], shape[2] // 2 + 1)).copy()


# -- placement ------------------------------------------------------------------------------------
class _Layout:
    """Occupied space: particle and bead spheres, vesicle shells (voxel units, ``x, y, z`` order)."""

    def __init__(self, shape):
        self.shape = shape
        self.particle_c = np.zeros((0, 3))
        self.particle_r = np.zeros(0)
        self.shells: list[tuple[np.ndarray, float, float]] = []  # centre, inner, outer radius

    def inside_volume(self, pos, r) -> bool:
        upper = np.asarray(self.shape[::-1], float) - 1
        return bool(np.all(pos >= r) and np.all(pos <= upper - r))

    def free(self, pos, r, gap=0.0) -> bool:
        if not self.inside_volume(pos, r):
            return False
        if len(self.particle_r):
            d = np.sqrt(((self.particle_c - pos) ** 2).sum(1))
            if np.any(d < self.particle_r + r + gap):
                return False
        for centre, inner, outer in self.shells:
            d = float(np.linalg.norm(centre - pos))
            if not (d + r + gap <= inner or d - r - gap >= outer):
                return False
        return True

    def add_particle(self, pos, r):
        self.particle_c = np.vstack([self.particle_c, pos])
        self.particle_r = np.r_[self.particle_r, r]


def _place_vesicle(layout: _Layout, voxel_size: float, rng: np.random.Generator, tries: int = 50):
    half_thickness = 30.0 / voxel_size  # bilayer (~40 Å) plus margin
    r_max = max(250.0, 0.45 * min(layout.shape[1:]) * voxel_size)
    for _ in range(tries):
        radius = rng.uniform(200.0, r_max) / voxel_size
        centre = np.array([rng.uniform(0, n - 1) for n in layout.shape[::-1]])
        inner, outer = radius - half_thickness, radius + half_thickness
        ok = True
        for c, i, o in layout.shells:
            d = float(np.linalg.norm(c - centre))
            ok &= d >= o + outer or d + outer <= i or d + o <= inner  # disjoint or nested in a lumen
        if ok:
            layout.shells.append((centre, inner, outer))
            axes = rng.uniform(0.85, 1.15, 3)
            return dict(kind="vesicle", centre=centre, radius=radius, axes=axes / np.cbrt(np.prod(axes)))
    return None


def _place_bead(layout: _Layout, voxel_size: float, rng: np.random.Generator, tries: int = 100):
    for _ in range(tries):
        radius = rng.uniform(25.0, 50.0) / voxel_size
        pos = np.array([rng.uniform(radius, n - 1 - radius) for n in layout.shape[::-1]])
        if rng.uniform() < 0.7:  # fiducials mostly sit on the ice surfaces
            pos[2] = radius + rng.uniform(0, 2) if rng.uniform() < 0.5 else layout.shape[0] - 1 - radius - rng.uniform(0, 2)
        if layout.free(pos, radius, 1.0):
            layout.add_particle(pos, radius)  # occupied like a particle, but never a pick
            return dict(kind="gold", centre=pos, radius=radius)
    return None


def _overlap(ipos: np.ndarray, box: int, shape: tuple[int, int, int]):
    """Slices of the volume (dst) and of a ``box``-cube centred at ``ipos`` (x, y, z) (src) that overlap."""
    dst, src = [], []
    for axis, n in enumerate(shape):
        start = int(ipos[2 - axis]) - box // 2
        lo, hi = max(start, 0), min(start + box, n)
        if hi <= lo:
            return None, None
        dst.append(slice(lo, hi))
        src.append(slice(lo - start, hi - start))
    return tuple(dst), tuple(src)


def _render_distractor(potential: np.ndarray, d: dict, voxel_size: float) -> None:
    centre = np.asarray(d["centre"], float)
    if d["kind"] == "gold":
        reach = d["radius"] + 3
    else:
        reach = d["radius"] * float(np.max(d["axes"])) + 50.0 / voxel_size
    box = int(2 * math.ceil(reach) + 1)
    dst, _ = _overlap(np.round(centre).astype(int), box, potential.shape)
    if dst is None:
        return
    z, y, x = np.ogrid[dst[0], dst[1], dst[2]]
    if d["kind"] == "gold":
        r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
        potential[dst] += (GOLD_DENSITY * 0.5 * (1 - np.tanh((r - d["radius"]) / 0.5))).astype(np.float32)
        return
    a = d["axes"]
    r = np.sqrt(((x - centre[0]) / a[0]) ** 2 + ((y - centre[1]) / a[1]) ** 2 + ((z - centre[2]) / a[2]) ** 2)
    potential[dst] += _bilayer_profile((r - d["radius"]) * voxel_size, voxel_size).astype(np.float32)


def _bilayer_profile(distance_A: np.ndarray, voxel_size: float) -> np.ndarray:
    """Density across a lipid bilayer at signed distance (Å) from its mid-plane.

    Two head-group layers (~10 Å thick, protein-like density, 38 Å apart) and a slightly
    under-dense hydrocarbon core; Gaussians widened to the voxel size keep the projected mass.
    """
    s = math.sqrt(4.0**2 + (0.5 * voxel_size) ** 2)
    head = 10.0 / (s * math.sqrt(2 * math.pi))
    st = math.sqrt(8.0**2 + (0.5 * voxel_size) ** 2)
    tail = -0.1 * 20.0 / (st * math.sqrt(2 * math.pi))
    g = lambda mu, sig: np.exp(-((distance_A - mu) ** 2) / (2 * sig * sig))
    return head * (g(-19.0, s) + g(19.0, s)) + tail * g(0.0, st)
