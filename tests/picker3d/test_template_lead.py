"""The template lead: a rotated copy of the prompt particle is found and averaged in the right orientation."""

import numpy as np

from cryopick.picker3d.template_lead import average_template, sphere_mask, template_box, template_scores
from cryopick.postprocess.rotations import rotate_template, rotations_3d


def _particle(box: int) -> np.ndarray:
    """An asymmetric density: three blobs of different sizes at different distances from the centre."""
    r = np.arange(box) - box // 2
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    out = np.zeros((box,) * 3, np.float32)
    for (x, y, z), s in (((3, 0, 0), 1.6), ((0, -3, 1), 1.2), ((-1, 1, -3), 0.9)):
        out += np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * s**2))
    return out


def _volume(seed: int = 0):
    d = 12.0
    box = template_box(d)
    particle = _particle(box)
    mats = rotations_3d(45.0)
    rot = mats[17]  # one of the searched rotations
    turned = rotate_template(particle, rot[None])[0].numpy()
    vol = np.random.default_rng(seed).normal(0, 0.05, (48, 48, 96)).astype(np.float32)
    h = box // 2
    vol[24 - h:24 + h + 1, 24 - h:24 + h + 1, 24 - h:24 + h + 1] += particle  # prompt at x, y, z = 24, 24, 24
    vol[24 - h:24 + h + 1, 24 - h:24 + h + 1, 72 - h:72 + h + 1] += turned  # the rotated copy at x = 72
    return vol, particle, d


def test_a_rotated_copy_scores_high_and_background_low():
    vol, particle, d = _volume()
    tpl = average_template(vol, np.array([24, 24, 24]), np.zeros((0, 3)), d, rotation_step=45.0)
    scores = template_scores(vol, np.array([[72, 24, 24], [48, 24, 24], [72, 24, 10]]), tpl, d, rotation_step=45.0)
    assert scores[0] > 0.9 and scores[1] < 0.5 and scores[2] < 0.5


def test_the_confirmed_copy_is_rotated_back_before_it_is_averaged():
    vol, particle, d = _volume()
    mask = sphere_mask(particle.shape[0], d)
    tpl = average_template(vol, np.array([24, 24, 24]), np.array([[72, 24, 24]]), d, rotation_step=45.0)
    # averaged in its own orientation the copy would blur the template; rotated back it reinforces it
    corr = np.corrcoef(tpl[mask], particle[mask])[0, 1]
    h = particle.shape[0] // 2
    naive = (vol[24 - h:25 + h, 24 - h:25 + h, 24 - h:25 + h] + vol[24 - h:25 + h, 24 - h:25 + h, 72 - h:73 + h]) / 2
    assert corr > 0.95 > np.corrcoef(naive[mask], particle[mask])[0, 1]
