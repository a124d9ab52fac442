"""The particle template of the template-matching input channel (``TrainConfig.template_prior``).

The template is the rotationally aligned average of the user's annotated particles at the working scale
(:func:`cryopick.baselines.template2d.align_and_average`): boxes of ``box`` working pixels around the
labelled centres of the *training* part of the annotated micrographs (never the validation data, so the
calibration stays honest), at most ``max_particles`` of them. The box side is
:func:`cryopick.baselines.template2d.box_size` of the working diameter (odd, ~1.3 diameters).
"""

from __future__ import annotations

import logging

import numpy as np

from cryopick.baselines.template2d import align_and_average, extract_boxes
from cryopick.picker2d.train.data import TrainingMicrograph

log = logging.getLogger(__name__)


def particle_template(mics: list[TrainingMicrograph], box: int, max_particles: int = 1000,
                      angle_step: float = 10.0, seed: int = 0,
                      include_validation: bool = False) -> tuple[np.ndarray | None, int]:
    """``((box, box) float32 template or None, particles used)`` from the labelled particles outside the
    validation data (all of them with ``include_validation``: pretraining's per-micrograph templates).
    ``None`` when no labelled particle box lies fully inside its micrograph."""
    patches = []
    for m in mics:
        if m.negative or m.unlabelled or not len(m.coords):
            continue
        coords = m.coords if include_validation else m.coords[~m.in_val(m.coords)]
        if len(coords):
            patches.append(extract_boxes(m.image, coords, box))
    particles = np.concatenate(patches) if patches else np.zeros((0, box, box), np.float32)
    if len(particles) == 0:
        if include_validation:
            return None, 0
        log.warning("no labelled particle box lies inside its micrograph: the template channel stays empty")
        return None, 0
    rng = np.random.default_rng(seed)
    if len(particles) > max_particles:
        particles = particles[rng.choice(len(particles), max_particles, replace=False)]
    template, _ = align_and_average(particles, 1, angle_step, iterations=4, seed=seed)
    return template[0], int(len(particles))
