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

from cryopick.config import configure
from cryopick.errors import CryopickError
from cryopick.picks import Picks
from cryopick.simulate import ctf as ctf_mod
from cryopick.simulate import rotations
from cryopick.simulate.config import PHASE_PER_A, MicrographSimulation
from cryopick.simulate.densities import ParticleClass
from cryopick.simulate.placement import PlacementWarning, fitting_weights, shortfall_message
from cryopick.simulate.shapes import procedural_class, random_particle_classes

__all__ = ["Micrograph", "MicrographSimulation", "PHASE_PER_A", "simulate_micrograph"]


#: Inelastic mean free path of vitreous ice at 300 kV, Å (energy-filtered imaging).
ICE_MFP_A = 3800.0


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


def simulate_micrograph(classes: Sequence[ParticleClass] | None = None, config: MicrographSimulation | None = None, *,
                        seed: int = 0, name: str = "micrograph", keep_clean: bool = False, **options) -> Micrograph:
    """Simulate one micrograph; deterministic for a given ``seed`` and settings.

    ``classes``: particle classes (``None``: one procedural class of 150–250 Å drawn for this seed);
    ``config``: a :class:`~cryopick.simulate.config.MicrographSimulation` (shape, pixel size, number of
    particles, dose, defocus, ice, distractors, optics ...); its fields may also be given as keywords
    (``dose=60.0``), which replace those of ``config``. ``keep_clean``: also return the noiseless expected
    image in :attr:`Micrograph.clean`. The steps: :func:`_draw_conditions`, :func:`_background`,
    :func:`_place_particles`, :func:`_project_particles`, :func:`_form_image`.
    """
    cfg = configure(MicrographSimulation, config, options, "simulate_micrograph")
    ss = np.random.SeedSequence([int(seed), 4242])
    rng_place, rng_noise, rng_params, rng_shapes = (np.random.default_rng(s) for s in ss.spawn(4))
    if classes is None:
        classes = random_particle_classes(1, seed=int(seed), voxel_size=cfg.pixel_size,
                                          diameter_range_A=(150.0, 250.0))
    classes = list(classes)
    if not classes:
        raise CryopickError("give at least one particle class")
    params = _draw_conditions(cfg, seed, rng_params)
    scene = _background(cfg, params, rng_params, rng_shapes, rng_noise)
    centres, labels = _place_particles(scene, classes, cfg, rng_place, name)
    rots = rotations.random_rotations(len(centres), rng_place)
    mask = _project_particles(scene.projection, classes, centres, labels, rots, cfg)
    image, expected = _form_image(scene, cfg, params, rng_noise)

    ps = cfg.pixel_size
    coords = np.array(centres, dtype=np.float64).reshape(-1, 2)
    picks = Picks.from_arrays(name, coords, diameter=np.array([classes[c].diameter / ps for c in labels]),
                              label=[classes[c].name for c in labels], pixel_size=ps)
    params.update(n_requested=int(cfg.n_particles), n_placed=len(centres), crowding=cfg.crowding,
                  carbon_edge=bool(cfg.carbon_edge), ice_crystals=int(cfg.ice_crystals),
                  aggregates=int(cfg.aggregates))
    return Micrograph(image=image, picks=picks, pixel_size=float(ps), mask=mask,
                      distractor_mask=scene.distractor, class_names=[c.name for c in classes],
                      orientations=rots.reshape(-1, 3, 3), params=params,
                      clean=expected.astype(np.float32) if keep_clean else None, name=name)


def _draw_conditions(cfg: MicrographSimulation, seed: int, rng: np.random.Generator) -> dict:
    """The imaging conditions of this micrograph, drawn from the ranges of ``cfg`` (its ``params``)."""
    return dict(
        dose=_draw(cfg.dose, rng),
        defocus_um=_draw(cfg.defocus_um, rng),
        astigmatism_um=_draw(cfg.astigmatism_um, rng),
        astigmatism_angle=float(rng.uniform(0, 180)),
        ice_thickness_A=_draw(cfg.ice_thickness_A, rng),
        ice_gradient=_draw(cfg.ice_gradient, rng),
        seed=int(seed), pixel_size=cfg.pixel_size,
    )


@dataclass
class _Scene:
    """The micrograph before particles: ice thickness (Å), projected material (Å of protein-equivalent
    thickness), extra amplitude loss of carbon / crystals, the distractor labels, where particles must not
    sit, and the occupied discs (centres ``x, y``, radii; distractors first)."""

    thickness: np.ndarray
    projection: np.ndarray
    absorption: np.ndarray
    distractor: np.ndarray
    blocked: np.ndarray
    layout_c: list = field(default_factory=list)
    layout_r: list = field(default_factory=list)


def _background(cfg: MicrographSimulation, params: dict, rng_params, rng_shapes, rng_noise) -> _Scene:
    """Ice, then the carbon edge, ice crystals and aggregates (all never picks)."""
    shape, ps = cfg.shape, cfg.pixel_size
    thickness = _ice_thickness(shape, ps, params["ice_thickness_A"], params["ice_gradient"], rng_params)
    scene = _Scene(thickness, np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.uint8),
                   np.zeros(shape, bool))
    if cfg.carbon_edge:
        carbon = _carbon_region(shape, ps, rng_shapes)
        thick_c = rng_shapes.uniform(150.0, 300.0)
        grain = _correlated_noise(shape, ps, 8.0, rng_noise)
        scene.projection += carbon * (1.8 * thick_c * (1.0 + 0.25 * grain)).astype(np.float32)
        scene.absorption += carbon * np.float32(thick_c / 1500.0)
        scene.distractor[carbon > 0.5] = 3
        scene.blocked |= ndimage.binary_dilation(carbon > 0.05, iterations=2)
    for _ in range(int(cfg.ice_crystals)):
        _add_ice_crystal(scene.projection, scene.absorption, scene.distractor, scene.blocked, scene.layout_c,
                         scene.layout_r, ps, rng_shapes)
    fragments = None
    for _ in range(int(cfg.aggregates)):
        if fragments is None:
            fragments = [procedural_class(f"fragment{i}", "globular", float(rng_shapes.uniform(60, 140)), ps,
                                          rng_shapes, spacing_A=max(ps, 3.0)) for i in range(3)]
        _add_aggregate(scene.projection, scene.distractor, scene.blocked, scene.layout_c, scene.layout_r, fragments,
                       ps, rng_shapes)
    return scene


def _place_particles(scene: _Scene, classes: list[ParticleClass], cfg: MicrographSimulation,
                     rng: np.random.Generator, name: str) -> tuple[list[np.ndarray], list[int]]:
    """Centres (``x, y`` pixels) and class indices of particles as non-overlapping discs, off the blocked
    area, scattered or touching (``crowding``); warns when fewer than ``n_particles`` fit."""
    (H, W), n_particles = cfg.shape, cfg.n_particles
    layout_c, layout_r, blocked = scene.layout_c, scene.layout_r, scene.blocked
    radii = np.array([c.diameter / 2.0 / cfg.pixel_size for c in classes])
    weights = np.ones(len(classes)) if cfg.class_weights is None else np.asarray(cfg.class_weights, float)
    if len(weights) != len(classes):
        raise CryopickError("class_weights must have one non-negative weight per class")
    weights = fitting_weights(radii, weights / weights.sum(), cfg.shape, [c.name for c in classes], name)
    n_fixed = len(layout_c)  # distractor discs
    centres, labels = [], []
    attempts = 0
    while len(centres) < n_particles and attempts < cfg.max_attempts_per_particle * max(n_particles, 1):
        attempts += 1
        c = int(rng.choice(len(classes), p=weights))
        r = radii[c]
        if centres and rng.uniform() < cfg.crowding:
            j = n_fixed + int(rng.integers(len(centres)))
            angle = rng.uniform(0, 2 * np.pi)
            pos = np.asarray(layout_c[j]) + (layout_r[j] + r + rng.uniform(0, 0.1) * r) * np.r_[np.cos(angle), np.sin(angle)]
        else:
            pos = np.array([rng.uniform(r, W - 1 - r), rng.uniform(r, H - 1 - r)])
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
        warnings.warn(shortfall_message(name, len(centres), n_particles, radii[labels], cfg.shape,
                                        blocked_share=float(blocked.mean())),
                      PlacementWarning, stacklevel=3)
    return centres, labels


def _project_particles(projection, classes, centres, labels, rots, cfg: MicrographSimulation) -> np.ndarray:
    """Add each particle's projection; returns the instance mask (0 background, ``k`` = particle ``k - 1``)."""
    shape, ps = cfg.shape, cfg.pixel_size
    mask = np.zeros(shape, np.int32)
    for k, (pos, c, rot) in enumerate(zip(centres, labels, rots)):
        cls = classes[c]
        box = cls.box_size(ps)
        ipos = np.round(pos).astype(int)
        local = cls.project(ps, rotation=rot, offset=np.r_[pos - ipos, 0.0], box=box)
        dst, src = _overlap2d(ipos, box, shape)
        if dst is None:
            continue
        piece = local[src]
        projection[dst] += piece
        own = (piece > cfg.mask_threshold * local.max()) & (mask[dst] == 0)
        mask[dst][own] = k + 1
    return mask


def _form_image(scene: _Scene, cfg: MicrographSimulation, params: dict, rng_noise) -> tuple[np.ndarray, np.ndarray]:
    """Ice noise and clutter, phase, CTF and detector MTF (on a reflection-padded copy, so delocalised signal
    does not wrap around), amplitude loss, then shot noise: ``(image in counts, expected counts)``."""
    (H, W), ps = cfg.shape, cfg.pixel_size
    projection, thickness = scene.projection, scene.thickness
    # Structural noise of vitreous ice: white phase noise whose variance grows with thickness
    # (scaled so that 500 Å of ice gives clear Thon rings at 30 e/Å², as in real data).
    if cfg.clutter_A > 0:
        clutter = sum(_correlated_noise(cfg.shape, ps, length, rng_noise) for length in (6.0, 12.0, 24.0))
        projection += np.float32(cfg.clutter_A / math.sqrt(3.0)) * clutter * np.sqrt(thickness / 500.0).astype(np.float32)
    if cfg.ice_noise > 0:
        ice = rng_noise.standard_normal(cfg.shape, dtype=np.float32)
        ice *= np.float32(cfg.ice_noise * 25.0 * (2.0 / ps)) * np.sqrt(thickness / 500.0).astype(np.float32)
        projection += ice
    phase = projection * np.float32(cfg.phase_per_A)
    phase -= np.float32(phase.mean())
    defocus_A = params["defocus_um"] * 1e4
    astig_A = params["astigmatism_um"] * 1e4
    reach = _delocalisation_A(defocus_A + abs(astig_A), ps, cfg.voltage_kv) / ps
    pad = int(min(max(H, W) // 4, max(16, math.ceil(reach))))
    padded = np.pad(phase, pad, mode="reflect")
    pshape = padded.shape
    ctf = ctf_mod.ctf_2d(pshape, ps, defocus_A + astig_A / 2, defocus_A - astig_A / 2, params["astigmatism_angle"],
                         cfg.voltage_kv, cfg.cs_mm, cfg.amplitude_contrast, 0.0, cfg.bfactor)
    ky, kx = ctf_mod.frequency_grid(pshape, ps)
    mtf = np.sinc(kx * ps) * np.sinc(ky * ps)  # pixel-integrating detector
    contrast = scipy.fft.irfftn(scipy.fft.rfftn(padded, workers=1) * (ctf * mtf), s=pshape, workers=1)
    contrast = contrast[pad:pad + H, pad:pad + W]
    amplitude = np.exp(-thickness / ICE_MFP_A - scene.absorption)
    expected = (params["dose"] * cfg.dqe * ps**2) * amplitude * np.clip(1.0 + 2.0 * contrast, 0.05, None)
    return rng_noise.poisson(expected).astype(np.float32), expected


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
