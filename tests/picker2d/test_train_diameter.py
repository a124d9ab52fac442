"""A diameter that does not fit the annotated particles is said, with the likely value (issue 27 item 2)."""

from __future__ import annotations

import warnings

import pytest

from cryopick.picker2d.train import TrainConfig, train_from_files
from cryopick.picks import Picks, concat
from tests.picker2d.test_train_sparse import _write_set


@pytest.fixture
def captured(monkeypatch):
    seen = {}

    def fake(mics, scale, output_dir, config, resume=True, notes=None):
        seen.update(config=config, notes=notes)

    monkeypatch.setattr("cryopick.picker2d.train.train_picker", fake)
    return seen


def _train(tmp_path, coords, diameter, caplog):
    with caplog.at_level("WARNING"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_from_files(tmp_path / "mics", coords, diameter, tmp_path / "model",
                         config=TrainConfig(progress=False), detect_sparse=False)
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def _picks_without_diameter(truth):
    return concat([Picks.from_arrays(name, xy) for name, xy in truth.items()])


def test_a_diameter_four_times_the_coordinate_files_is_named(tmp_path, captured, caplog):
    _write_set(tmp_path)  # CryoPPP CSV: Diameter 12
    said = _train(tmp_path, tmp_path / "coords", 48.0, caplog)
    column = [s for s in said if "Diameter column" in s]
    assert column == [f"--diameter 48 (48 px) does not match the Diameter column of {tmp_path / 'coords'}: 12 px; "
                      "check the value and its unit (--diameter-unit), or the coordinates' pixel size"]
    assert column[0] in captured["notes"]


@pytest.mark.parametrize("given, word", [(40.0, "large"), (5.0, "small")])
def test_the_particles_own_size_is_estimated_and_a_wrong_diameter_warned(tmp_path, captured, caplog, given, word):
    truth = _write_set(tmp_path)  # bright discs of 12 px
    said = _train(tmp_path, _picks_without_diameter(truth), given, caplog)
    assert len(said) == 1, said
    prefix = f"--diameter {given:g} ({given:.0f} px) looks too {word}: the annotated particles are about "
    assert said[0].startswith(prefix), said
    likely = float(said[0][len(prefix):].split()[0])
    assert 9 <= likely <= 17, said  # 12 px particles
    assert said[0].endswith("px across (radial profile of their average); check the value and its unit "
                            "(--diameter-unit)")
    assert said == captured["notes"]


def test_a_right_diameter_is_not_warned_about(tmp_path, captured, caplog):
    _write_set(tmp_path)
    assert _train(tmp_path, tmp_path / "coords", 12.0, caplog) == []
    assert captured["notes"] == []


def test_a_few_clicks_are_held_to_a_wider_margin(tmp_path, captured, caplog):
    """From 15 clicks the profile is noisy: 1.7x is not said, 3.3x still is."""
    truth = _write_set(tmp_path, clicks=5)
    few = {name: xy[:5] for name, xy in truth.items()}
    assert _train(tmp_path, _picks_without_diameter(few), 20.0, caplog) == []
    caplog.clear()
    said = _train(tmp_path, _picks_without_diameter(few), 40.0, caplog)
    assert len(said) == 1 and said[0].startswith("--diameter 40 (40 px) looks too large: the annotated particles are "
                                                 "about "), said



def test_a_centre_in_the_last_half_pixel_is_in_the_edge_pixel():
    """A centre at y = 99.6 on a 100-row working image rounds to row 100: the size check crashed on it
    ('boolean index did not match', EMPIAR-10146's training set after the working-scale resampling).
    It is averaged as the edge pixel; a centre outside the image is left out."""
    from types import SimpleNamespace

    import numpy as np

    from cryopick.picker2d.train.sizecheck import radial_profile

    image = np.zeros((100, 120), np.float32)
    image[95:, 45:56] = 1.0  # a bright patch at the bottom edge around x = 50
    edge = SimpleNamespace(negative=False, unlabelled=False, image=image,
                           coords=np.array([[50.0, 99.6], [119.7, 3.0], [300.0, 50.0]]))
    profile, n = radial_profile([edge], 10)
    assert n == 2  # the two edge centres; (300, 50) is outside
    inside = SimpleNamespace(negative=False, unlabelled=False, image=image, coords=np.array([[50.0, 99.0], [119.0, 3.0]]))
    np.testing.assert_allclose(profile, radial_profile([inside], 10)[0])


def _fringed(seed, n=60, size=400, radius=6.0):
    """Particles of diameter 12 px ringed by defocus-like fringes out to 4 diameters (raw micrographs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.normal(0, 0.3, (size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(60, size - 60, (n, 2))
    for x, y in centres:
        r = np.hypot(xx - x, yy - y)
        image += (r <= radius) * 1.0 - ((r > 8) & (r <= 11)) * 0.6 + ((r > 18) & (r <= 22)) * 0.3 \
            - ((r > 30) & (r <= 34)) * 0.25
    return image, centres


def test_fringes_far_beyond_the_particle_do_not_make_a_right_diameter_wrong(caplog):
    """Raw micrographs (EMPIAR-10146: 61 px apoferritin) ring their particles with fringes: the outermost
    ring alone said 'looks too small: about 217 px' for the right diameter. The strongest ring bounds the
    size from below, so the right diameter is not warned about, while one 4x too small still is."""
    from types import SimpleNamespace

    from cryopick.picker2d.train.sizecheck import check_diameter, estimate_diameter

    mics = [SimpleNamespace(negative=False, unlabelled=False, image=img, coords=c)
            for img, c in (_fringed(s) for s in range(3))]
    (smallest, largest), unsettled = estimate_diameter(mics, 12.0)
    assert not unsettled and smallest <= 16 and largest >= 40, (smallest, largest)  # the fringes reach 34 px out
    with caplog.at_level("WARNING"):
        assert check_diameter(mics, 12.0, 1.0, 12.0) == []
        said = check_diameter(mics, 12.0, 1.0, 3.0)
    assert len(said) == 1 and said[0].startswith("--diameter 3 (3 px) looks too small"), said
