"""Simulated single-particle cryo-EM micrographs with ground truth.

Image model (weak-phase approximation, energy-filtered, counting detector)
--------------------------------------------------------------------------
1. Projected potential, in Å of protein-equivalent thickness: particles (projections of 3D class
   models at uniformly random orientations, non-overlapping discs from sparse to touching),
   aggregates (clumps of small protein fragments), ice crystals (thick, sharp-edged ice
   contamination), amorphous carbon outside the hole beyond a curved carbon edge, and the
   vitreous ice's own structural noise (which gives the Thon rings of real power spectra).
2. Phase ``phi = phase_per_A * projection``; image ``I = A(x) * (1 + 2 * CTF (x) phi)`` with the 2D
   CTF (defocus, astigmatism, amplitude contrast, B-factor envelope) and the detector MTF, where the
   amplitude ``A(x) = exp(-t(x) / mfp)`` falls with ice thickness (gradient), carbon and crystals.
3. Shot noise: ``counts ~ Poisson(dose * dqe * pixel_size^2 * I)`` (the detector's DQE lowers the
   effective dose).

Contrast: protein is **dark** on a bright background (underfocus, as in raw micrographs). The image
is returned in electron counts per pixel (float32). Picks are the particles only: aggregates,
crystals and carbon are never labelled.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.fft
from scipy import ndimage

from cryopick.errors import CryopickError
from cryopick.picks import Picks
from cryopick.simulate import ctf as ctf_mod
from cryopick.simulate import rotations
from cryopick.simulate.densities import ParticleClass
from cryopick.simulate.placement import PlacementWarning, fitting_weights, shortfall_message
from cryopick.simulate.shapes import procedural_class, random_particle_classes

__all__ = ["Micrograph", "simulate_micrograph"]


#: Inelastic mean free path of vitreous ice at 300 kV, Å (energy-filtered imaging).
ICE_MFP_A = 3800.0
#: Phase shift per Å of protein over ice at 300 kV: sigma (6.5e-4 rad/(V Å)) x ~2 V contrast.
PHASE_PER_A = 1.3e-3


@dataclass
class Micrograph:
    """A simulated micrograph and its ground truth.

    Attributes
    ----------
    image
        float32 ``(H, W)``, electron counts per pixel; protein dark.
    picks
        ``Picks`` (ndim 2): ``x, y`` particle centres in pixels, ``diameter`` in pixels, ``label``
        = class name.
    pixel_size
        Å per pixel.
    mask
        int32 ``(H, W)``: 0 background, ``k`` = particle ``k - 1``: pixels where its projection
        exceeds ``mask_threshold`` of its maximum.
    distractor_mask
        uint8 ``(H, W)``: 1 aggregate, 2 ice crystal, 3 carbon.
    params
        Drawn parameters (defocus, astigmatism, dose, ...).
    """

    image: np.ndarray
    picks: Picks
    pixel_size: float
    mask: np.ndarray
    distractor_mask: np.ndarray
    class_names: list[str]
    orientations: np.ndarray
    params: dict = field(default_factory=dict)
    clean: np.ndarray | None = None
    name: str = "micrograph"


def _draw(value, rng: np.random.Generator) -> float:
    if np.ndim(value) == 0:
        return float(value)
    lo, hi = value
    return float(rng.uniform(lo, hi))


def simulate_micrograph(
    classes: Sequence[ParticleClass] | None = None,
    shape: tuple[int, int] = (1024, 1024),
    pixel_size: float = 2.0,
    seed: int = 0,
    n_particles: int = 200,
    dose: float | tuple[float, float] = 30.0,
    defocus_um: float | tuple[float, float] = (1.0, 2.5),
    astigmatism_um: float | tuple[float, float] = (0.0, 0.1),
    ice_thickness_A: float | tuple[float, float] = (300.0, 600.0),
    ice_gradient: float | tuple[float, float] = (0.0, 0.5),
    ice_noise: float = 1.0,
    clutter_A: float = 25.0,
    dqe: float = 0.5,
    carbon_edge: bool = False,
    ice_crystals: int = 0,
    aggregates: int = 0,
    crowding: float = 0.3,
    class_weights: Sequence[float] | None = None,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor: float = 60.0,
    phase_per_A: float = PHASE_PER_A,
    mask_threshold: float = 0.2,
    name: str = "micrograph",
    keep_clean: bool = False,
    max_attempts_per_particle: int = 100,
) -> Micrograph:
    """Simulate one micrograph; deterministic for a given ``seed`` and arguments.

    Parameters
    ----------
    classes
        Particle classes; ``None`` draws one procedural class of 150–250 Å for this seed.
    shape
        ``(H, W)`` pixels.
    pixel_size
        Å per pixel.
    n_particles
        Wanted number of particles. Particles never overlap, so fewer fit when they would cover more
        than about half of the free area (random packing jams there); a
        :class:`~cryopick.simulate.placement.PlacementWarning` then says how many were placed and why,
        and ``params["n_placed"]`` holds the number.
    dose
        Electron dose in e⁻/Å² (sets the shot noise), or a ``(low, high)`` range.
    defocus_um, astigmatism_um
        Mean defocus (positive = underfocus) and defocus difference ``du - dv`` in µm, or ranges;
        the astigmatism angle is uniform.
    ice_thickness_A, ice_gradient
        Mean ice thickness (Å) and its relative linear change across the image (0.5 = ±25%).
    ice_noise
        Scale of the vitreous ice's structural (phase) noise; 0 removes the Thon rings of the ice.
    clutter_A
        Standard deviation (Å of protein-equivalent thickness) of background clutter on 10-40 Å
        scales: small contaminants, buffer components and ice surface roughness, the blob-like
        background of real micrographs. 0 disables it.
    dqe
        Detector quantum efficiency: the shot noise is that of ``dose * dqe`` electrons (counts are
        returned at that effective dose).
    carbon_edge
        Put a curved edge of the support film's hole across the image; the carbon side has no particles.
    ice_crystals, aggregates
        Numbers of those distractors.
    crowding
        Probability in [0, 1] that a particle is placed touching an existing one.
    bfactor
        CTF envelope B-factor, Å².
    phase_per_A
        Phase shift (rad) per Å of projected protein over ice.
    keep_clean
        Also return the noiseless expected image in :attr:`Micrograph.clean`.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 16:
        raise CryopickError(f"micrograph shape must be 2 sizes >= 16 pixels, got {shape}")
    ss = np.random.SeedSequence([int(seed), 4242])
    rng_place, rng_noise, rng_params, rng_shapes = (np.random.default_rng(s) for s in ss.spawn(4))
    if classes is None:
        classes = random_particle_classes(1, seed=int(seed), voxel_size=pixel_size, diameter_range_A=(150.0, 250.0))
    classes = list(classes)
    if not classes:
        raise CryopickError("give at least one particle class")
    H, W = shape
    params = dict(
        dose=_draw(dose, rng_params),
        defocus_um=_draw(defocus_um, rng_params),
        astigmatism_um=_draw(astigmatism_um, rng_params),
        astigmatism_angle=float(rng_params.uniform(0, 180)),
        ice_thickness_A=_draw(ice_thickness_A, rng_params),
        ice_gradient=_draw(ice_gradient, rng_params),
        seed=int(seed), pixel_size=pixel_size,
    )

    thickness = _ice_thickness(shape, pixel_size, params["ice_thickness_A"], params["ice_gradient"], rng_params)
    projection = np.zeros(shape, np.float32)    # Å of protein-equivalent material
    absorption = np.zeros(shape, np.float32)    # extra amplitude loss (exponent) of carbon / crystals
    distractor = np.zeros(shape, np.uint8)
    blocked = np.zeros(shape, bool)             # where particles must not sit

    if carbon_edge:
        carbon = _carbon_region(shape, pixel_size, rng_shapes)
        thick_c = rng_shapes.uniform(150.0, 300.0)
        grain = _correlated_noise(shape, pixel_size, 8.0, rng_noise)
        projection += carbon * (1.8 * thick_c * (1.0 + 0.25 * grain)).astype(np.float32)
        absorption += carbon * np.float32(thick_c / 1500.0)
        distractor[carbon > 0.5] = 3
        blocked |= ndimage.binary_dilation(carbon > 0.05, iterations=2)

    layout_c, layout_r = [], []
    for _ in range(int(ice_crystals)):
        _add_ice_crystal(projection, absorption, distractor, blocked, layout_c, layout_r, pixel_size, rng_shapes)
    fragments = None
    for _ in range(int(aggregates)):
        if fragments is None:
            fragments = [procedural_class(f"fragment{i}", "globular", float(rng_shapes.uniform(60, 140)), pixel_size,
                                          rng_shapes, spacing_A=max(pixel_size, 3.0)) for i in range(3)]
        _add_aggregate(projection, distractor, blocked, layout_c, layout_r, fragments, pixel_size, rng_shapes)

    # -- particles --------------------------------------------------------------------------------
    radii = np.array([c.diameter / 2.0 / pixel_size for c in classes])
    weights = np.ones(len(classes)) if class_weights is None else np.asarray(class_weights, float)
    if len(weights) != len(classes) or (weights < 0).any() or weights.sum() <= 0:
        raise CryopickError("class_weights must have one non-negative weight per class")
    weights = weights / weights.sum()
    weights = fitting_weights(radii, weights, shape, [c.name for c in classes], name)
    n_fixed = len(layout_c)  # distractor discs
    centres, labels = [], []
    attempts = 0
    while len(centres) < n_particles and attempts < max_attempts_per_particle * max(n_particles, 1):
        attempts += 1
        c = int(rng_place.choice(len(classes), p=weights))
        r = radii[c]
        if centres and rng_place.uniform() < crowding:
            j = n_fixed + int(rng_place.integers(len(centres)))
            angle = rng_place.uniform(0, 2 * np.pi)
            pos = np.asarray(layout_c[j]) + (layout_r[j] + r + rng_place.uniform(0, 0.1) * r) * np.r_[np.cos(angle), np.sin(angle)]
        else:
            pos = np.array([rng_place.uniform(r, W - 1 - r), rng_place.uniform(r, H - 1 - r)])
        if not (r <= pos[0] <= W - 1 - r and r <= pos[1] <= H - 1 - r):
            continue
        if blocked[int(round(pos[1])), int(round(pos[0]))]:
            continue
        if layout_c:
            d = np.sqrt(((np.asarray(layout_c) - pos) ** 2).sum(1))
            if np.any(d < np.asarray(layout_r) + r):
                continue
        layout_c.append(pos)
        layout_r.append(r)
        centres.append(pos)
        labels.append(c)
    if len(centres) < n_particles:
        warnings.warn(shortfall_message(name, len(centres), n_particles, radii[labels], shape,
                                        blocked_share=float(blocked.mean())),
                      PlacementWarning, stacklevel=2)
    rots = rotations.random_rotations(len(centres), rng_place)
    mask = np.zeros(shape, np.int32)
    for k, (pos, c, rot) in enumerate(zip(centres, labels, rots)):
        cls = classes[c]
        box = cls.box_size(pixel_size)
        ipos = np.round(pos).astype(int)
        local = cls.project(pixel_size, rotation=rot, offset=np.r_[pos - ipos, 0.0], box=box)
        dst, src = _overlap2d(ipos, box, shape)
        if dst is None:
            continue
        piece = local[src]
        projection[dst] += piece
        own = (piece > mask_threshold * local.max()) & (mask[dst] == 0)
        mask[dst][own] = k + 1

    # -- image formation --------------------------------------------------------------------------
    # Structural noise of vitreous ice: white phase noise whose variance grows with thickness
    # (scaled so that 500 Å of ice gives clear Thon rings at 30 e/Å², as in real data).
    if clutter_A > 0:
        clutter = sum(_correlated_noise(shape, pixel_size, length, rng_noise) for length in (6.0, 12.0, 24.0))
        projection += np.float32(clutter_A / math.sqrt(3.0)) * clutter * np.sqrt(thickness / 500.0).astype(np.float32)
    if ice_noise > 0:
        ice = rng_noise.standard_normal(shape, dtype=np.float32)
        ice *= np.float32(ice_noise * 25.0 * (2.0 / pixel_size)) * np.sqrt(thickness / 500.0).astype(np.float32)
        projection += ice
    phase = projection * np.float32(phase_per_A)
    phase -= np.float32(phase.mean())
    defocus_A = params["defocus_um"] * 1e4
    astig_A = params["astigmatism_um"] * 1e4
    # Pad by reflection before filtering so the CTF's delocalisation does not wrap objects near
    # one border onto the opposite one.
    pad = int(min(max(H, W) // 4, max(16, math.ceil(_delocalisation_A(defocus_A + abs(astig_A), pixel_size, voltage_kv) / pixel_size))))
    padded = np.pad(phase, pad, mode="reflect")
    pshape = padded.shape
    ctf = ctf_mod.ctf_2d(pshape, pixel_size, defocus_A + astig_A / 2, defocus_A - astig_A / 2,
                         params["astigmatism_angle"], voltage_kv, cs_mm, amplitude_contrast, 0.0, bfactor)
    ky, kx = ctf_mod.frequency_grid(pshape, pixel_size)
    mtf = np.sinc(kx * pixel_size) * np.sinc(ky * pixel_size)  # pixel-integrating detector
    contrast = scipy.fft.irfftn(scipy.fft.rfftn(padded, workers=1) * (ctf * mtf), s=pshape, workers=1)
    contrast = contrast[pad:pad + H, pad:pad + W]
    amplitude = np.exp(-thickness / ICE_MFP_A - absorption)
    expected = (params["dose"] * dqe * pixel_size**2) * amplitude * np.clip(1.0 + 2.0 * contrast, 0.05, None)
    image = rng_noise.poisson(expected).astype(np.float32)

    coords = np.array(centres, dtype=np.float64).reshape(-1, 2)
    picks = Picks.from_arrays(name, coords, diameter=np.array([classes[c].diameter / pixel_size for c in labels]),
                              label=[classes[c].name for c in labels], pixel_size=pixel_size)
    params.update(n_requested=int(n_particles), n_placed=len(centres), crowding=crowding,
                  carbon_edge=bool(carbon_edge), ice_crystals=int(ice_crystals), aggregates=int(aggregates))
    return Micrograph(image=image, picks=picks, pixel_size=float(pixel_size), mask=mask,
                      distractor_mask=distractor, class_names=[c.name for c in classes],
                      orientations=rots.reshape(-1, 3, 3), params=params,
                      clean=expected.astype(np.float32) if keep_clean else None, name=name)


def _delocalisation_A(defocus_A: float, pixel_size: float, voltage_kv: float) -> float:
    """How far (Å) the CTF spreads a point's signal up to Nyquist: ``lambda * defocus * k_max``."""
    return ctf_mod.electron_wavelength(voltage_kv) * defocus_A * 0.5 / pixel_size


# -- background and distractors -------------------------------------------------------------------
def _ice_thickness(shape, pixel_size, mean_A, gradient, rng) -> np.ndarray:
    """Ice thickness map (Å): a linear ramp of relative size ``gradient`` plus gentle undulation."""
    H, W = shape
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((x - W / 2) * np.cos(angle) + (y - H / 2) * np.sin(angle)) / max(H, W)
    wobble = _correlated_noise(shape, pixel_size, 1500.0, rng)
    t = mean_A * (1.0 + gradient * ramp + 0.05 * wobble)
    return np.clip(t, 0.2 * mean_A, None).astype(np.float32)


def _correlated_noise(shape, pixel_size, length_A, rng) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ``length_A`` (periodic)."""
    white = rng.standard_normal(shape).astype(np.float32)
    sigma = max(length_A / pixel_size, 0.5)
    ky, kx = ctf_mod.frequency_grid(shape, 1.0)
    gauss = np.exp(-2.0 * (np.pi * sigma) ** 2 * (kx * kx + ky * ky))
    field_ = scipy.fft.irfftn(scipy.fft.rfftn(white, workers=1) * gauss, s=shape, workers=1)
    # Normalise by the field's theoretical std (Parseval over the full grid), not the sample std:
    # a correlation length longer than the image must give a gentle ramp, not amplified round-off.
    fy, fx = ctf_mod.frequency_grid(shape, 1.0, rfft=False)
    expected_std = math.sqrt(float(np.mean(np.exp(-4.0 * (np.pi * sigma) ** 2 * (fx * fx + fy * fy)))))
    return (field_ / max(expected_std, 1e-12)).astype(np.float32)


def _carbon_region(shape, pixel_size, rng) -> np.ndarray:
    """Soft ``[0, 1]`` map of the carbon film outside a circular hole whose edge crosses the image."""
    H, W = shape
    hole_radius = rng.uniform(5000.0, 10000.0) / pixel_size  # 1-2 µm holes
    angle = rng.uniform(0, 2 * np.pi)
    edge_at = rng.uniform(0.55, 0.9) * 0.5 * min(H, W)  # distance of the edge from the image centre
    direction = np.r_[np.cos(angle), np.sin(angle)]
    centre = np.r_[W / 2, H / 2] - direction * (hole_radius - edge_at)
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    r = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2)
    return (0.5 * (1 + np.tanh((r - hole_radius) / 1.5))).astype(np.float32)


def _add_ice_crystal(projection, absorption, distractor, blocked, layout_c, layout_r, pixel_size, rng) -> None:
    """A thick, sharp-edged polygonal ice contaminant (hexagonal-ish), dark in the image."""
    H, W = projection.shape
    radius = rng.uniform(80.0, 400.0) / pixel_size
    centre = np.r_[rng.uniform(0, W), rng.uniform(0, H)]
    n = int(rng.integers(6, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    verts = centre + (radius * rng.uniform(0.75, 1.0, n))[:, None] * np.c_[np.cos(angles), np.sin(angles)]
    from skimage.draw import polygon

    rr, cc = polygon(verts[:, 1], verts[:, 0], shape=(H, W))
    inside = np.zeros((H, W), np.float32)
    inside[rr, cc] = 1.0
    inside = ndimage.gaussian_filter(inside, 2.0)
    thickness = rng.uniform(400.0, 1200.0)
    projection += inside * np.float32(1.7 * thickness)  # ice over vacuum has ~1.7x the protein/ice contrast
    absorption += inside * np.float32(thickness / 1200.0)  # Bragg scattering out of the aperture
    distractor[inside > 0.5] = 2
    blocked |= inside > 0.05
    layout_c.append(centre)
    layout_r.append(radius)


def _add_aggregate(projection, distractor, blocked, layout_c, layout_r, fragments, pixel_size, rng) -> None:
    """A clump of denatured-protein fragments (not a particle)."""
    H, W = projection.shape
    spread = rng.uniform(60.0, 200.0) / pixel_size
    centre = np.r_[rng.uniform(0, W), rng.uniform(0, H)]
    local_mask = np.zeros((H, W), bool)
    for _ in range(int(rng.integers(8, 30))):
        frag = fragments[int(rng.integers(len(fragments)))]
        pos = centre + rng.normal(0, spread / 2, 2)
        ipos = np.round(pos).astype(int)
        box = frag.box_size(pixel_size)
        piece = frag.project(pixel_size, rotation=rotations.random_rotations(1, rng)[0],
                             offset=np.r_[pos - ipos, 0.0], box=box)
        dst, src = _overlap2d(ipos, box, (H, W))
        if dst is None:
            continue
        projection[dst] += piece[src]
        local_mask[dst] |= piece[src] > 0.2 * piece.max()
    distractor[local_mask] = 1
    blocked |= local_mask
    layout_c.append(centre)
    layout_r.append(spread)


def _overlap2d(ipos: np.ndarray, box: int, shape: tuple[int, int]):
    """Slices of the image (dst) and of a ``box``-square centred at ``ipos`` (x, y) (src) that overlap."""
    dst, src = [], []
    for axis, n in enumerate(shape):
        start = int(ipos[1 - axis]) - box // 2
        lo, hi = max(start, 0), min(start + box, n)
        if hi <= lo:
            return None, None
        dst.append(slice(lo, hi))
        src.append(slice(lo - start, hi - start))
    return tuple(dst), tuple(src)
