"""Padding bands at micrograph edges (valid_region) and the region/border filter of find_peaks_s1."""

import numpy as np
import pytest

from cryopick.postprocess.edges import inside_region, valid_region
from cryopick.postprocess.peaks2d import find_peaks_s1


def noise(h=200, w=260, seed=0):
    return np.random.default_rng(seed).normal(10, 2, (h, w)).astype(np.float32)


def test_no_band_is_the_whole_image():
    assert valid_region(noise()) == (0, 0, 259, 199)
    # A smooth but isotropic image (a low-passed one) has no bands either.
    from scipy.ndimage import gaussian_filter

    assert valid_region(gaussian_filter(noise(), 2)) == (0, 0, 259, 199)


def test_streaks_constant_and_zero_bands():
    img = noise()
    img[:, :25] = img[:, 25:26]  # left: each row repeats column 25 (edge replication)
    img[:12, :] = img[12:13, :]  # top: each column repeats row 12
    img[-30:, :] = 10.0  # bottom: constant fill
    img[:, -7:] = 0.0  # right: zeros
    assert valid_region(img) == (25, 12, 252, 169)


def test_an_odd_outer_line_does_not_hide_a_band_and_a_lone_flat_line_makes_none():
    img = noise()
    img[:, 1:20] = img[:, 20:21]  # streaks, but column 0 is a different (sharpened) line
    img[:, 0] = noise(seed=3)[:, 0]
    img[:, 40] = img[:, 41]  # one repeated column well inside the image
    x0, y0, x1, y1 = valid_region(img)
    assert x0 == 20 and (y0, x1, y1) == (0, 259, 199)


def test_blurred_streak_band_like_the_example_micrographs():
    from scipy.ndimage import gaussian_filter

    img = noise(300, 300)
    img[:, :30] = img[:, 30:31]
    img = gaussian_filter(img, 1.5)  # denoised micrographs: the band edge is soft
    x0 = valid_region(img)[0]
    assert 27 <= x0 <= 33


def test_inside_region_margin():
    coords = np.array([[5.0, 50.0], [20.0, 50.0], [50.0, 50.0], [95.0, 95.0]])
    np.testing.assert_array_equal(inside_region(coords, (10, 10, 99, 99), 0), [False, True, True, True])
    np.testing.assert_array_equal(inside_region(coords, (10, 10, 99, 99), 10), [False, True, True, False])


def disk_map(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    prob = np.zeros(shape, np.float32)
    for x, y, v in centres:
        prob[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = v
    return prob


def test_edge_picks_are_dropped_before_duplicate_suppression():
    # A strong blob at the edge would suppress its weaker neighbour inside; dropped first, it cannot.
    prob = disk_map((100, 100), [(3, 50, 1.0), (12, 50, 0.8), (60, 60, 0.9)], 4)
    everything = find_peaks_s1(prob, 4, min_distance=10, second_pass=False)
    assert len(everything) == 2  # the interior neighbour was suppressed by the edge blob
    peaks = find_peaks_s1(prob, 4, min_distance=10, second_pass=False, border=4)
    assert len(peaks) == 2 and peaks.coords[:, 0].min() > 8
    assert len(peaks.edge_scores) == 1 and peaks.edge_scores[0] == pytest.approx(1.0)
    in_region = find_peaks_s1(prob, 4, min_distance=10, second_pass=False, region=(30, 0, 99, 99))
    assert len(in_region) == 1 and in_region.coords[0, 0] == pytest.approx(60, abs=0.5)
