"""Algorithm S1 post-processing on synthetic probability maps with known answers."""

import numpy as np
import pytest

from cryopick.evaluate.matching import match_points
from cryopick.postprocess.peaks2d import find_peaks_s1, find_peaks_simple, region_scores


def disks(shape, centres, radius, value=1.0):
    """Probability map with filled disks of ``radius`` at ``(x, y)`` centres."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    prob = np.zeros(shape, np.float32)
    for (x, y), v in zip(centres, np.broadcast_to(value, (len(centres),))):
        prob[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = v
    return prob


def test_isolated_disks_give_their_centres():
    centres = np.array([[20.0, 30.0], [70.0, 25.0], [45.0, 80.0], [100.5, 100.5]])
    prob = disks((128, 128), centres, 6)
    peaks = find_peaks_s1(prob, radius=6)
    assert len(peaks) == 4
    m = match_points(peaks.coords, centres, 1.0)
    assert m.tp == 4 and m.distances.max() < 0.6


def test_touching_disks_are_split_by_the_watershed():
    r = 6
    pairs = [[20.0, 20.0], [32.0, 20.0], [60.0, 60.0], [60.0, 71.0], [20.0, 90.0], [30.0, 96.0]]
    prob = disks((128, 128), pairs, r)
    from scipy import ndimage as ndi

    assert ndi.label(prob > 0.5)[1] == 3  # three merged blobs in the mask
    peaks = find_peaks_s1(prob, radius=r, min_distance=0)
    assert len(peaks) == 6
    m = match_points(peaks.coords, np.array(pairs), r / 2)
    assert m.tp == 6


def test_area_filter_and_second_pass():
    r = 6.0
    E = np.pi * r * r
    prob = np.zeros((120, 120), np.float32)
    prob[10:12, 10:12] = 1  # 4 px < 0.05 E: dropped by both passes
    prob[40:60, 40:60] = 1  # 400 px = 5.1 E: one seed, region too large for pass 1 ...
    assert 4 < 0.05 * E and 400 > 2.5 * E
    without = find_peaks_s1(prob, radius=r, second_pass=False)
    assert len(without) == 0
    # ... but the leftover blob is far from every pick, so the second pass adds it at its centroid.
    with_second = find_peaks_s1(prob, radius=r)
    assert len(with_second) == 1
    np.testing.assert_allclose(with_second.coords[0], [49.5, 49.5], atol=0.01)
    # Raising the area bound keeps it in the first pass.
    assert len(find_peaks_s1(prob, radius=r, second_pass=False, max_area=6.0)) == 1


def test_parameters_scale_with_radius():
    centres = np.array([[15.0, 15.0], [26.0, 15.0], [40.0, 40.0]])
    small = find_peaks_s1(disks((64, 64), centres, 5), radius=5, min_distance=0)
    big = find_peaks_s1(disks((128, 128), centres * 2, 10), radius=10, min_distance=0)
    assert len(small) == len(big) == 3
    a = small.coords[np.lexsort(small.coords.T)]
    b = big.coords[np.lexsort(big.coords.T)]
    np.testing.assert_allclose(a * 2, b, atol=1.0)


def test_scores_and_threshold():
    centres = np.array([[20.0, 20.0], [60.0, 20.0], [20.0, 60.0]])
    prob = disks((90, 90), centres, 5, value=[0.95, 0.7, 0.55])
    peaks = find_peaks_s1(prob, radius=5)
    np.testing.assert_allclose(np.sort(peaks.scores), [0.55, 0.7, 0.95], atol=1e-6)
    assert np.all(np.diff(peaks.scores) <= 0)  # sorted by decreasing score
    assert len(find_peaks_s1(prob, radius=5, min_score=0.6)) == 2
    assert len(find_peaks_s1(prob, radius=5, threshold=0.6)) == 2  # mask threshold drops the 0.55 disk


def test_duplicate_suppression_keeps_the_better_pick():
    r = 5
    centres = np.array([[20.0, 20.0], [29.0, 20.0]])
    prob = disks((50, 50), centres, r, value=[0.9, 0.6])
    assert len(find_peaks_s1(prob, radius=r, min_distance=0)) == 2
    kept = find_peaks_s1(prob, radius=r, min_distance=10)
    assert len(kept) == 1 and kept.scores[0] == pytest.approx(0.9)


def test_region_score_methods():
    labels = np.array([[1, 1, 2, 2], [1, 1, 2, 0]])
    prob = np.array([[0.2, 0.4, 0.9, 0.7], [0.6, 0.8, 0.5, 0.0]], np.float32)
    np.testing.assert_allclose(region_scores(prob, labels, 2, "mean"), [0.5, 0.7], atol=1e-6)
    np.testing.assert_allclose(region_scores(prob, labels, 2, "max"), [0.8, 0.9], atol=1e-6)
    np.testing.assert_allclose(region_scores(prob, labels, 2, "mean_top"), [0.7, 0.8], atol=1e-6)
    with pytest.raises(ValueError):
        region_scores(prob, labels, 2, "median")


def test_empty_map_and_simple_peaks():
    assert len(find_peaks_s1(np.zeros((32, 32)), radius=4)) == 0
    centres = np.array([[10.0, 10.0], [30.0, 22.0]])
    peaks = find_peaks_simple(disks((40, 40), centres, 4), radius=4)
    assert match_points(peaks.coords, centres, 1.5).tp == 2


def test_find_peaks_2d_dispatches_and_simple_peaks_honour_region_and_border():
    from cryopick.postprocess.peaks2d import find_peaks_2d

    centres = np.array([[10.0, 10.0], [30.0, 22.0], [3.0, 20.0]])
    prob = disks((40, 40), centres, 4)
    s1 = find_peaks_2d(prob, 4, method="s1")
    np.testing.assert_allclose(s1.coords, find_peaks_s1(prob, 4).coords)
    peaks = find_peaks_2d(prob, 4, method="peaks", region=(0, 0, 39, 39), border=6)
    assert match_points(peaks.coords, centres[:2], 1.5).tp == 2 and len(peaks) == 2
    assert len(peaks.edge_scores) == 1  # the centre 3 px from the edge, dropped before NMS
    assert len(find_peaks_2d(prob, 4, method="peaks", min_score=1.1)) == 0
    with pytest.raises(ValueError, match="peaks"):
        find_peaks_2d(prob, 4, method="watershed")


def _touching_and_ragged_map():
    """Touching pairs, a lone disk, a faint disk and speckle: every S1 step has something to do."""
    prob = disks((128, 128), np.array([[20.0, 20.0], [31.0, 20.0], [60.0, 60.0], [100.0, 30.0], [30.0, 100.0]]), 6)
    prob = np.maximum(prob, disks((128, 128), np.array([[95.0, 95.0]]), 5, value=0.55))
    rng = np.random.default_rng(1)
    return np.clip(prob + 0.3 * (rng.random(prob.shape) > 0.995), 0, 1).astype(np.float32)


def test_peak_finding_config_and_keywords_give_the_same_peaks():
    from cryopick.postprocess.peaks2d import PeakFinding

    prob = _touching_and_ragged_map()
    settings = dict(threshold=0.5, second_pass=False, min_circularity=0.3, score="mean", min_distances=(0.4, 0.5))
    by_keywords = find_peaks_s1(prob, 6, min_distance=3, border=4, return_labels=True, **settings)
    by_config = find_peaks_s1(prob, 6, PeakFinding(**settings), min_distance=3, border=4, return_labels=True)
    mixed = find_peaks_s1(prob, 6, PeakFinding(**{**settings, "threshold": 0.6}), min_distance=3, border=4,
                          return_labels=True, threshold=0.5)  # a keyword replaces that field of the config
    for other in (by_config, mixed):
        for name in ("coords", "scores", "areas", "labels", "edge_scores"):
            assert np.array_equal(getattr(other, name), getattr(by_keywords, name)), name
    assert len(by_keywords) >= 4
    # a changed field changes the answer (so the comparisons above can fail)
    assert 0.55 in np.round(by_keywords.scores, 2)  # the faint disk
    assert len(find_peaks_s1(prob, 6, PeakFinding(**{**settings, "threshold": 0.6}), min_distance=3,
                             border=4)) == len(by_keywords) - 1


@pytest.mark.parametrize("change, field", [
    ({"threshold": 1.5}, "threshold"), ({"min_area": -0.1}, "min_area"), ({"max_area": 0.01}, "max_area"),
    ({"distance_thresholds": (0.1, -0.2)}, "distance_thresholds"), ({"score": "median"}, "score"),
    ({"second_pass": "yes"}, "second_pass"), ({"erosion_diameter": float("nan")}, "erosion_diameter"),
])
def test_a_bad_peak_finding_value_names_the_field(change, field):
    from cryopick.errors import ConfigError
    from cryopick.postprocess.peaks2d import PeakFinding, find_peaks_2d

    with pytest.raises(ConfigError, match=rf"PeakFinding\.{field} must be .*got "):
        PeakFinding(**change)
    with pytest.raises(ValueError, match=rf"PeakFinding\.{field} must be"):
        find_peaks_s1(np.zeros((16, 16)), 4, **change)
    if field not in ("threshold", "score"):
        with pytest.raises(ValueError, match=rf"PeakFinding\.{field} must be"):
            find_peaks_2d(np.zeros((16, 16)), 4, method="s1", **change)
    with pytest.raises(TypeError, match=r"find_peaks_s1\(\) got unexpected keyword argument\(s\) 'thresold'"):
        find_peaks_s1(np.zeros((16, 16)), 4, thresold=0.5)
