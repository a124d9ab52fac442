"""Core data model: picks table conversions, preprocessing, matching, NMS, image I/O."""

import numpy as np
import pytest

from cryopick import CryopickError, Picks
from cryopick import picks as P
from cryopick.evaluate.matching import match_points, precision_recall_f1
from cryopick.io.images import read_image, read_micrograph, write_mrc
from cryopick.postprocess.nms import nms_points
from cryopick.preprocess import downsample, fourier_crop, normalize


def test_picks_conversions_round_trip():
    p = Picks.from_arrays("mic", [[10.0, 20.0], [30.5, 40.25]], score=[0.9, 0.1], diameter=100, pixel_size=1.0)
    q = P.to_pixel_size(p, 4.0)
    assert q.pixel_size == 4.0
    np.testing.assert_allclose(q.coords, [[2.5, 5.0], [7.625, 10.0625]])
    np.testing.assert_allclose(q.table["diameter"], 25.0)
    back = P.to_pixel_size(q, 1.0)
    np.testing.assert_allclose(back.coords, p.coords)
    np.testing.assert_allclose(P.flip_y(P.flip_y(p, 512), 512).coords, p.coords)
    assert P.flip_y(p, 512).coords[0, 1] == 511 - 20
    np.testing.assert_allclose(P.swap_xy(p).coords, p.coords[:, ::-1])
    assert len(P.filter_score(p, 0.5)) == 1


def test_pixel_size_needed_for_conversion():
    p = Picks.from_arrays("mic", [[1.0, 2.0]])
    with pytest.raises(CryopickError, match="pixel size"):
        P.to_pixel_size(p, 2.0)


def test_nan_coordinates_rejected():
    p = Picks.from_arrays("mic", [[1.0, np.nan]])
    with pytest.raises(CryopickError, match="NaN"):
        P.check_finite(p, "picks.star")


def test_fourier_crop_preserves_mean_and_low_frequencies():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:96]
    smooth = np.sin(2 * np.pi * x / 48) + np.cos(2 * np.pi * y / 64) + 3.0
    noisy = smooth + 0.01 * rng.standard_normal(smooth.shape)
    small = fourier_crop(noisy, (64, 48))
    assert small.shape == (64, 48)
    assert abs(small.mean() - noisy.mean()) < 1e-4
    ys, xs = np.mgrid[0:64, 0:48] * 2
    expected = np.sin(2 * np.pi * xs / 48) + np.cos(2 * np.pi * ys / 64) + 3.0
    assert np.abs(small - expected).max() < 0.05


def test_downsample_frame_maps_coordinates_both_ways():
    img = np.zeros((100, 200), np.float32)
    small, frame = downsample(img, 4)
    assert small.shape == (25, 50)
    xy = np.array([[100.0, 40.0]])
    np.testing.assert_allclose(frame.to_working(xy), [[25.0, 10.0]])
    np.testing.assert_allclose(frame.to_original(frame.to_working(xy)), xy)


def test_normalize_is_robust_to_outliers():
    rng = np.random.default_rng(1)
    img = rng.normal(5, 2, (256, 256)).astype(np.float32)
    img[0, :10] = 1e6
    out = normalize(img)
    assert abs(np.median(out)) < 0.05
    assert 0.9 < out[1:].std() < 1.1
    assert out.max() <= 4.0


def test_match_points_is_optimal_one_to_one():
    truth = np.array([[0.0, 0.0], [10.0, 0.0]])
    # A greedy matcher would pair the first pick with truth 0 (distance 4) and lose the second.
    pred = np.array([[4.0, 0.0], [-3.0, 0.0]])
    m = match_points(pred, truth, tolerance=6.0)
    assert m.tp == 2 and m.fp == 0 and m.fn == 0
    m = match_points(np.array([[0.0, 0.0], [0.5, 0.0]]), truth[:1], tolerance=1.0)
    assert m.tp == 1 and m.fp == 1
    assert precision_recall_f1(0, 0, 0) == (1.0, 1.0, 1.0)
    assert match_points(np.zeros((0, 3)), truth, 5).fn == 2


def test_nms_keeps_best_of_neighbours():
    coords = np.array([[0.0, 0.0], [3.0, 0.0], [20.0, 0.0]])
    keep = nms_points(coords, np.array([0.5, 0.9, 0.1]), min_distance=5)
    assert keep.tolist() == [1, 2]


def test_mrc_round_trip_and_errors(tmp_path):
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_mrc(tmp_path / "a.mrc", data, pixel_size=1.5)
    img = read_micrograph(tmp_path / "a.mrc")
    np.testing.assert_array_equal(img.load(), data)
    assert img.pixel_size == pytest.approx(1.5)
    assert img.name == "a"
    (tmp_path / "bad.mrc").write_bytes(b"not an mrc file at all" * 10)
    with pytest.raises(CryopickError, match="bad.mrc"):
        read_image(tmp_path / "bad.mrc")
    with pytest.raises(CryopickError, match="unknown image format"):
        (tmp_path / "x.xyz").write_text("x")
        read_image(tmp_path / "x.xyz")


def test_match_pixel_size_rescales_only_when_both_known_and_different():
    import numpy as np

    from cryopick.picks import Picks, match_pixel_size

    p = Picks.from_arrays("a", np.array([[10.0, 20.0]]), diameter=8.0, pixel_size=2.0)
    assert match_pixel_size(p, 2.0001) is p
    assert match_pixel_size(p, None) is p
    q = match_pixel_size(p, 4.0)
    assert np.allclose(q.coords, [[5.0, 10.0]]) and q.pixel_size == 4.0


def test_diameter_in_pixels_is_one_conversion_for_2d_and_3d():
    import pytest

    from cryopick.errors import CryopickError
    from cryopick.preprocess import diameter_in_pixels

    assert diameter_in_pixels(217.0, "A", 2.17) == pytest.approx(100.0)
    assert diameter_in_pixels(50, "px") == 50.0
    with pytest.raises(CryopickError, match="pixel size is unknown"):
        diameter_in_pixels(217.0, "A", None)


@pytest.mark.parametrize("shape, out", [((512, 384), (77, 58)), ((301, 257), (100, 77)), ((40, 50, 61), (19, 25, 30))])
def test_fourier_crop_transforms_only_the_kept_bins_with_the_values_of_rfftn(shape, out):
    """fourier_crop skips the column FFTs of discarded bins (about 2x faster at 4096^2): same values as
    cropping the full rfftn, in every thread-count setting."""
    import scipy.fft

    from cryopick.preprocess import fft_workers

    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    spectrum = scipy.fft.rfftn(image)
    keep = [np.r_[0 : (s + 1) // 2, n - s // 2 : n] for s, n in zip(out[:-1], shape[:-1])]
    reference = scipy.fft.irfftn(spectrum[np.ix_(*keep, np.arange(out[-1] // 2 + 1))], s=out, axes=tuple(range(len(out))))
    reference = (reference * (np.prod(out) / np.prod(shape))).astype(np.float32)
    np.testing.assert_allclose(fourier_crop(image, out), reference, rtol=0, atol=1e-6)
    with fft_workers(1):
        np.testing.assert_array_equal(fourier_crop(image, out), fourier_crop(image, out))
