"""Template matching: exact position and rotation recovery in 2D and 3D, mask == unmasked inside the mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cryopick.postprocess.peaks import find_peaks
from cryopick.postprocess.rotations import rotate_template, rotation_matrices, rotations_2d, rotations_3d
from cryopick.postprocess.template_matching import match_template

torch.set_num_threads(1)


def _template_2d() -> np.ndarray:
    t = np.zeros((21, 21), np.float32)  # an asymmetric "F" shape
    t[5:16, 8:11] = 1
    t[5:8, 11:17] = 1
    t[10:12, 11:15] = 1
    return t


def _template_3d() -> np.ndarray:
    t = np.zeros((15, 15, 15), np.float32)  # three orthogonal arms of different lengths
    t[3:12, 6:9, 6:9] = 1
    t[3:6, 6:9, 9:13] = 1
    t[9:12, 2:6, 6:9] = 1
    return t


def _rotate_scipy(t: np.ndarray, matrix_xyz: np.ndarray) -> np.ndarray:
    """Independent rotation (scipy, array order) with the documented convention T_R(c+u) = T(c + R^T u)."""
    perm = np.eye(t.ndim)[::-1]  # xyz <-> array order
    r = perm @ matrix_xyz @ perm
    c = np.array([s // 2 for s in t.shape], float)
    return ndimage.affine_transform(t, r.T, offset=c - r.T @ c, order=1)


def test_rotation_sets():
    a = rotations_2d(10)
    assert len(a) == 36 and a[0] == 0 and a[-1] == pytest.approx(350)
    r = rotations_3d(30)
    assert np.allclose(r[0], np.eye(3))
    assert np.allclose(np.einsum("kij,kil->kjl", r, r), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(r), 1)
    # ~8 pi^2 / step^3 rotations
    assert abs(len(r) - 8 * np.pi**2 / np.radians(30) ** 3) < 0.1 * len(r)
    # quasi-uniform: every random rotation is within ~step of a sampled one
    rng = np.random.default_rng(0)
    q = rng.normal(size=(200, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    rand = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    tr = np.einsum("aji,bji->ab", rand, r)
    nearest = np.degrees(np.arccos(np.clip((tr.max(1) - 1) / 2, -1, 1)))
    assert nearest.max() < 30


def test_rotate_template_matches_independent_rotation():
    t = _template_2d()
    m = rotation_matrices([30.0], 2)
    ours = rotate_template(t, m)[0].numpy()
    assert np.abs(ours - _rotate_scipy(t, m[0])).max() < 1e-5
    t3 = _template_3d()
    m3 = rotations_3d(30)[[77]]
    assert np.abs(rotate_template(t3, m3)[0].numpy() - _rotate_scipy(t3, m3[0])).max() < 1e-5


def test_2d_finds_position_and_angle():
    rng = np.random.default_rng(1)
    t = _template_2d()
    angles = rotations_2d(10)
    k = 7  # 70 degrees
    placed = _rotate_scipy(t, rotation_matrices(angles, 2)[k])
    vol = rng.normal(0, 0.3, (96, 120)).astype(np.float32)
    vol[60 - 10 : 60 + 11, 35 - 10 : 35 + 11] += placed
    scores, index = match_template(vol, t, angles)
    peak = np.unravel_index(np.argmax(scores), scores.shape)
    assert peak == (60, 35)
    assert index[peak] == k
    assert 0.5 < scores[peak] <= 1.0
    assert scores.min() >= -1.0 - 1e-5
    # a noise-free copy gives NCC 1 at the true pose
    clean = np.zeros((64, 64), np.float32)
    clean[20:41, 30:51] = t
    s, i = match_template(clean, t, angles)
    assert s[30, 40] == pytest.approx(1.0, abs=1e-4) and i[30, 40] == 0


def test_3d_finds_position_and_rotation():
    rng = np.random.default_rng(2)
    t = _template_3d()
    rots = rotations_3d(30)
    k = 123
    vol = rng.normal(0, 0.3, (32, 36, 34)).astype(np.float32)
    vol[16 - 7 : 16 + 8, 20 - 7 : 20 + 8, 15 - 7 : 15 + 8] += _rotate_scipy(t, rots[k])
    scores, index = match_template(vol, t, rots)
    peak = np.unravel_index(np.argmax(scores), scores.shape)
    assert peak == (16, 20, 15)
    assert index[peak] == k


@pytest.mark.parametrize("ndim", [2, 3])
def test_mask_equals_unmasked_inside(ndim):
    rng = np.random.default_rng(3)
    if ndim == 2:
        t, vol, rot = _template_2d(), rng.normal(size=(70, 90)).astype(np.float32), 12
        mask = np.zeros(vol.shape, bool)
        mask[10:30, 5:25] = True
        mask[50:60, 70:85] = True
    else:
        t, vol, rot = _template_3d(), rng.normal(size=(28, 30, 26)).astype(np.float32), rotations_3d(45)
        mask = np.zeros(vol.shape, bool)
        mask[3:10, 20:29, 2:9] = True
    full_s, full_i = match_template(vol, t, rot)
    s, i = match_template(vol, t, rot, mask=mask, tile=8)
    assert np.abs(s[mask] - full_s[mask]).max() < 1e-5
    assert (i[mask] == full_i[mask]).all()
    assert np.isneginf(s[~mask]).all() and (i[~mask] == -1).all()
    # tiling without a mask is also exact
    s2, _ = match_template(vol, t, rot, tile=11)
    assert np.abs(s2 - full_s).max() < 1e-5


def test_custom_template_mask_is_rotated():
    rng = np.random.default_rng(4)
    t = _template_2d()
    tm = (ndimage.binary_dilation(t > 0, iterations=2)).astype(np.float32)
    angles = rotations_2d(15)
    vol = rng.normal(0, 0.2, (64, 64)).astype(np.float32)
    vol[30 - 10 : 30 + 11, 25 - 10 : 25 + 11] += _rotate_scipy(t, rotation_matrices(angles, 2)[4])
    s, i = match_template(vol, t, angles, template_mask=tm)
    peak = np.unravel_index(np.argmax(s), s.shape)
    assert peak == (30, 25) and i[peak] == 4
    mask = np.zeros(vol.shape, bool)
    mask[20:40, 15:35] = True
    sm, im = match_template(vol, t, angles, template_mask=tm, mask=mask, tile=9)
    assert np.abs(sm[mask] - s[mask]).max() < 1e-5


def test_find_peaks_min_distance_and_order():
    s = np.zeros((50, 50), np.float32)
    s[10, 10], s[10, 14], s[40, 30] = 0.9, 0.8, 0.7
    coords, scores = find_peaks(s, min_distance=6)
    assert coords.tolist() == [[10, 10], [30, 40]]
    assert scores.tolist() == pytest.approx([0.9, 0.7])
    coords, _ = find_peaks(s, min_distance=3, threshold=0.75)
    assert coords.tolist() == [[10, 10], [14, 10]]


@pytest.mark.parametrize("ndim", [2, 3])
def test_score_is_masked_pearson_correlation(ndim):
    """Brute force: at every tested position the score is the Pearson correlation, under the
    template mask, of the (rotated) template and the image patch centred there."""
    rng = np.random.default_rng(6)
    shape, tshape = ((40, 44), (9, 9)) if ndim == 2 else ((20, 22, 18), (7, 7, 7))
    vol = rng.normal(size=shape).astype(np.float32) + 5.0
    t = rng.normal(size=tshape).astype(np.float32)
    grids = np.meshgrid(*[np.arange(n) - n // 2 for n in tshape], indexing="ij")
    radius = 3.2 if ndim == 2 else 2.9  # a ball that fits in the box: rotations map it onto itself
    sphere = (sum(g**2 for g in grids) <= radius**2).astype(np.float32)
    rot = rotation_matrices([30.0], 2) if ndim == 2 else rotations_3d(60)[[5]]
    s, _ = match_template(vol, t, rot, template_mask=sphere)
    rt = rotate_template(t, rot)[0].numpy()
    m = sphere > 0
    for _ in range(5):
        c = [int(rng.integers(n // 2, size - n // 2)) for n, size in zip(tshape, shape)]
        patch = vol[tuple(slice(ci - n // 2, ci - n // 2 + n) for ci, n in zip(c, tshape))]
        expected = np.corrcoef(patch[m], rt[m])[0, 1]
        assert s[tuple(c)] == pytest.approx(expected, abs=1e-4)
    # a non-invariant mask is rotated with the template: scores use the rotated mask
    half = sphere.copy()
    half[(slice(None),) * (ndim - 1) + (slice(0, tshape[-1] // 2),)] = 0
    s_half, _ = match_template(vol, t, rot, template_mask=half)
    rm = rotate_template(half, rot, order="nearest")[0].numpy() > 0.5
    c = tuple(n // 2 + 3 for n in shape)
    patch = vol[tuple(slice(ci - n // 2, ci - n // 2 + n) for ci, n in zip(c, tshape))]
    assert s_half[c] == pytest.approx(np.corrcoef(patch[rm], rt[rm])[0, 1], abs=1e-4)


def test_split_modules_are_re_exported():
    """template_matching was split into rotations and peaks; the old import path still works."""
    from cryopick.postprocess import peaks, rotations, template_matching

    assert template_matching.find_peaks is peaks.find_peaks
    assert template_matching.rotations_3d is rotations.rotations_3d
    assert template_matching.rotate_template is rotations.rotate_template


def test_template_search_config_and_keywords_give_the_same_scores():
    from cryopick.postprocess.template_matching import TemplateSearch

    rng = np.random.default_rng(3)
    vol = rng.standard_normal((20, 24, 22)).astype(np.float32)
    t = rng.standard_normal((7, 7, 7)).astype(np.float32)
    mask = np.zeros(vol.shape, bool)
    mask[4:12, 3:20, 6:10] = True
    rot = rotations_3d(90)
    settings = dict(tile=8, batch_size=3, fill_value=-2.0, memory_mb=1.0)
    by_keywords = match_template(vol, t, rot, mask=mask, **settings)
    by_config = match_template(vol, t, rot, mask, None, TemplateSearch(**settings))
    mixed = match_template(vol, t, rot, mask=mask, config=TemplateSearch(**{**settings, "fill_value": 5.0}),
                           fill_value=-2.0)  # a keyword replaces that field of the config
    for other in (by_config, mixed):
        assert np.array_equal(other[0], by_keywords[0]) and np.array_equal(other[1], by_keywords[1])
    assert (by_keywords[0][~mask] == -2.0).all() and (by_keywords[1][mask] >= 0).all()
    assert (match_template(vol, t, rot, mask=mask, config=TemplateSearch(fill_value=5.0))[0][~mask] == 5.0).all()


@pytest.mark.parametrize("change, field", [
    ({"batch_size": 0}, "batch_size"), ({"tile": -4}, "tile"), ({"tile": (8, 0)}, "tile"),
    ({"memory_mb": 0.0}, "memory_mb"), ({"fill_value": "low"}, "fill_value"),
])
def test_a_bad_template_search_value_names_the_field(change, field):
    from cryopick.errors import ConfigError
    from cryopick.postprocess.template_matching import TemplateSearch

    with pytest.raises(ConfigError, match=rf"TemplateSearch\.{field} must be .*got "):
        TemplateSearch(**change)
    with pytest.raises(ValueError, match=rf"TemplateSearch\.{field} must be"):
        match_template(np.zeros((16, 16)), np.ones((5, 5)), **change)
    with pytest.raises(TypeError, match=r"match_template\(\) got unexpected keyword argument\(s\) 'tiles'"):
        match_template(np.zeros((16, 16)), np.ones((5, 5)), tiles=4)
