"""Classic template-matching picker (the correlation workflow of RELION / EMAN2 / Scipion autopick).

Written for 2D micrographs; every function also accepts 3D tomograms (boxes become cubes, in-plane
angles become the quasi-uniform SO(3) set of :func:`rotations_3d` at ``angle_step``; use a coarse
step such as 30° on CPU).

1. Templates from annotated particles: boxes around the given centres are cut from the working-scale
   micrographs (particle ``working_diameter`` pixels wide) and averaged into ``n_templates`` class
   averages by multi-reference alignment over in-plane rotations (a few rounds of: rotate every
   reference by every angle, give each particle to its best (reference, angle), average the particles
   after undoing that rotation). With one template and random in-plane orientations the plain average
   is nearly round; the alignment restores its features.
2. Picking: FFT normalised cross-correlation of each template, at every in-plane angle
   (:func:`cryopick.postprocess.template_matching.match_template`), maximum over templates and angles.
3. Peaks at least ``min_distance`` apart; the score is the NCC (``[-1, 1]``).

Templates have the polarity of the normalised micrographs, so no contrast assumption is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from cryopick.baselines.dog import check_room
from cryopick.errors import CryopickError
from cryopick.postprocess.peaks import find_peaks
from cryopick.postprocess.rotations import rotate_template, rotation_matrices, rotations_2d, rotations_3d
from cryopick.postprocess.template_matching import _default_template_mask, match_template
from cryopick.preprocess import downsample, factor_for_diameter, normalize


@dataclass
class TemplateSet:
    """Templates at working scale.

    Attributes
    ----------
    templates
        ``(K, b, b)`` float32, particle centred on ``b // 2``.
    diameter
        Particle diameter in original pixels.
    working_diameter
        Particle diameter in template pixels.
    n_particles
        ``(K,)`` particles averaged into each template.
    """

    templates: np.ndarray
    diameter: float
    working_diameter: float
    n_particles: list = field(default_factory=list)

    def save(self, path) -> None:
        """Write an ``.npz`` (atomically)."""
        from cryopick.io.atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, templates=self.templates, diameter=self.diameter,
                         working_diameter=self.working_diameter, n_particles=np.asarray(self.n_particles))

    @classmethod
    def load(cls, path) -> "TemplateSet":
        """Read templates written by :meth:`save`; anything else is a one-line :class:`CryopickError`."""
        hint = "build one with 'cryopick baseline template --coords ... --templates FILE'"
        if not os.path.isfile(path):
            raise CryopickError(f"{path}: no such template file; {hint}")
        try:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files") or not {"templates", "diameter", "working_diameter"} <= set(z.files):
                    raise ValueError("missing arrays")
                templates = z["templates"].astype(np.float32)
                diameter, working = float(z["diameter"]), float(z["working_diameter"])
                counts = z["n_particles"].tolist() if "n_particles" in z.files else []
        except Exception as exc:  # random bytes raise anything from zipfile, pickle or numpy
            raise CryopickError(f"{path}: not a cryopick template file (.npz with templates, diameter, "
                                f"working_diameter); {hint}") from exc
        if templates.ndim not in (3, 4) or not (np.isfinite(templates).all() and diameter > 0 and working > 0):
            raise CryopickError(f"{path}: damaged template file (shape {templates.shape}, diameter {diameter:g}); {hint}")
        return cls(templates, diameter, working, counts)


def prepare(image: np.ndarray, diameter: float, working_diameter: float = 24.0) -> tuple[np.ndarray, float]:
    """Fourier-crop so the particle is ``working_diameter`` px wide and normalise robustly.

    Returns the working image and the working pixels per original pixel (``<= 1``).
    """
    image = np.asarray(image, dtype=np.float32)
    factor = factor_for_diameter(diameter, working_diameter)
    if factor > 1:
        small, frame = downsample(image, factor)
        scale = float(np.mean(frame.factors))
    else:
        small, scale = image.copy(), 1.0
    return normalize(small), scale


def box_size(working_diameter: float, padding: float = 1.3) -> int:
    """Odd box edge ``~padding × diameter`` pixels."""
    b = int(round(working_diameter * padding))
    return b + 1 - b % 2


def angle_set(angle_step: float, ndim: int) -> np.ndarray:
    """``(A, ndim, ndim)`` rotations: in-plane angles (2D) or quasi-uniform SO(3) (3D)."""
    return rotation_matrices(rotations_2d(angle_step), 2) if ndim == 2 else rotations_3d(angle_step)


def extract_boxes(image: np.ndarray, coords: np.ndarray, box: int) -> np.ndarray:
    """``(N, box, box[, box])`` patches centred on ``coords`` (``x, y[, z]`` pixels, rounded); those
    not fully inside the image are skipped."""
    half = box // 2
    ndim = image.ndim
    out = []
    for c in np.round(np.asarray(coords, dtype=np.float64).reshape(-1, ndim)).astype(int):
        idx = c[::-1]  # array order
        if all(half <= i < n - half for i, n in zip(idx, image.shape)):
            out.append(image[tuple(slice(i - half, i + half + 1) for i in idx)])
    return np.stack(out).astype(np.float32) if out else np.zeros((0,) + (box,) * ndim, np.float32)


def _ncc_at_centre(particles: torch.Tensor, refs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N, R)`` normalised correlation of each particle with each reference under ``mask``."""
    dims = tuple(range(1, particles.ndim))

    def norm(a):
        a = a * mask
        n = mask.sum()
        a = a - (a.sum(dim=dims, keepdim=True) / n) * mask
        return a / torch.sqrt((a**2).sum(dim=dims, keepdim=True)).clamp(min=1e-12)

    p = norm(particles).reshape(len(particles), -1)
    r = norm(refs).reshape(len(refs), -1)
    return p @ r.T


def align_and_average(
    particles: np.ndarray,
    n_templates: int = 1,
    angle_step: float = 10.0,
    iterations: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, list[int]]:
    """Multi-reference in-plane alignment and class averaging (see module docstring).

    Parameters
    ----------
    particles
        ``(N, b, b)`` (or ``(N, b, b, b)``) centred boxes.
    n_templates
        Number of class averages ``K``.
    angle_step
        Degrees between tested in-plane angles.
    iterations
        Alignment rounds.

    Returns
    -------
    templates : np.ndarray
        ``(K, b, b[, b])``.
    counts : list of int
        Particles in each class.
    """
    if len(particles) == 0:
        raise CryopickError("no annotated particle lies fully inside its micrograph; cannot build templates")
    n_templates = max(1, min(n_templates, len(particles)))
    x = torch.as_tensor(particles, dtype=torch.float32)
    mask = torch.as_tensor(_default_template_mask(particles.shape[1:]))
    mats = angle_set(angle_step, particles.ndim - 1)
    inverse = torch.as_tensor(np.transpose(mats, (0, 2, 1)).copy())
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_templates, len(particles))
    labels[:n_templates] = np.arange(n_templates)
    angles = np.zeros(len(particles), dtype=np.int64)
    refs = torch.stack([x[torch.as_tensor(labels == k)].mean(0) for k in range(n_templates)])
    for _ in range(iterations):
        rotated = torch.cat([rotate_template(r, mats) for r in refs])  # (K * A, b, b)
        score = _ncc_at_centre(x, rotated, mask)  # (N, K * A)
        best = score.argmax(1).numpy()
        labels, angles = best // len(mats), best % len(mats)
        new = []
        for k in range(n_templates):
            members = np.flatnonzero(labels == k)
            if len(members) == 0:  # empty class: reseed with the worst-fitting particle
                members = np.array([int(score.max(1).values.argmin())])
            aligned = torch.stack([rotate_template(x[i], inverse[angles[i]][None])[0] for i in members])
            new.append(aligned.mean(0))
        refs = torch.stack(new)
    counts = [int(np.sum(labels == k)) for k in range(n_templates)]
    return refs.numpy().astype(np.float32), counts


def build_templates(
    images: list[np.ndarray],
    coords: list[np.ndarray],
    diameter: float,
    *,
    working_diameter: float = 24.0,
    n_templates: int = 1,
    angle_step: float = 10.0,
    iterations: int = 4,
    max_particles: int = 2000,
    seed: int = 0,
) -> TemplateSet:
    """Templates from annotated particles.

    Parameters
    ----------
    images
        Micrographs (original pixels).
    coords
        Per micrograph, ``(N_i, ndim)`` particle centres ``x, y[, z]`` in original pixels.
    diameter
        Particle diameter in original pixels.
    max_particles
        Use at most this many particles (a random subset), to bound the alignment time.
    """
    if len(images) != len(coords):
        raise ValueError("one coordinate array per image")
    patches = []
    box = box_size(working_diameter)
    for image, c in zip(images, coords):
        work, scale = prepare(image, diameter, working_diameter)
        c = np.asarray(c, dtype=np.float64).reshape(-1, work.ndim)
        patches.append(extract_boxes(work, c * scale, box))
    particles = np.concatenate(patches) if patches else np.zeros((0, box, box), np.float32)
    if len(particles) > max_particles:
        particles = particles[np.random.default_rng(seed).choice(len(particles), max_particles, replace=False)]
    templates, counts = align_and_average(particles, n_templates, angle_step, iterations, seed)
    return TemplateSet(templates, float(diameter), float(working_diameter), counts)


def template_pick(
    image: np.ndarray,
    templates: TemplateSet,
    *,
    angle_step: float = 10.0,
    min_distance: float | None = None,
    threshold: float | None = 0.0,
    max_peaks: int | None = None,
    exclude_border: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick one micrograph with the templates.

    Parameters
    ----------
    image
        ``(H, W)`` micrograph (or ``(D, H, W)`` tomogram) in original pixels.
    angle_step
        Degrees between in-plane angles searched (3D: SO(3) sampling step).
    min_distance
        Original pixels between picks; default ``0.5 × diameter``.
    threshold
        Minimum NCC; ``None`` keeps every peak.
    max_peaks
        Default: twice the number of particle-sized squares in the image.
    exclude_border
        Drop picks within this many original pixels of the border; default the particle radius (a
        particle must fit inside the micrograph, as boxes must in RELION / EMAN2; CryoPPP-style
        annotations contain no particle closer to the edge).

    Returns
    -------
    coords : np.ndarray
        ``(N, ndim)`` ``x, y[, z]`` in original pixels, by decreasing score.
    scores : np.ndarray
        ``(N,)`` NCC.
    """
    border = 0.5 * templates.diameter if exclude_border is None else exclude_border
    check_room(np.shape(image), templates.diameter, border)
    work, scale = prepare(image, templates.diameter, templates.working_diameter)
    if templates.templates.ndim - 1 != work.ndim:
        raise CryopickError(f"{templates.templates.ndim - 1}D templates cannot pick a {work.ndim}D image")
    angles = angle_set(angle_step, work.ndim)
    best = None
    for t in templates.templates:
        s, _ = match_template(work, t, angles)
        best = s if best is None else np.maximum(best, s)
    min_distance = 0.5 * templates.diameter if min_distance is None else min_distance
    if max_peaks is None:
        max_peaks = int(2 * np.prod(np.asarray(image.shape) / templates.diameter)) + 1
    coords, scores = find_peaks(best, max(1.0, min_distance * scale), threshold=threshold, max_peaks=max_peaks,
                                exclude_border=int(round(border * scale)))
    return coords / scale, scores
