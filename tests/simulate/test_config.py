"""The simulators' settings objects: the config form and the keyword form are one call, and a bad value is
refused when the config is made, naming the field."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cryopick.errors import ConfigError, CryopickError
from cryopick.simulate.config import MicrographSimulation, TomogramSimulation
from cryopick.simulate.micrograph import simulate_micrograph
from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram


@pytest.fixture(scope="module")
def classes():
    return random_particle_classes(n=3, seed=7, voxel_size=10.0, diameter_range_A=(80, 200))


def test_tomogram_config_and_keywords_give_the_same_tomogram(classes):
    keywords = dict(shape=(24, 48, 40), voxel_size=10.0, n_particles=5, membranes=1, gold_beads=2, snr=(0.5, 2.0),
                    tilt_range=(-50.0, 65.0), class_weights=(2.0, 1.0, 1.0), ctf_correction="none")
    by_keywords = simulate_tomogram(classes, seed=3, keep_clean=True, **keywords)
    by_config = simulate_tomogram(classes, TomogramSimulation(**keywords), seed=3, keep_clean=True)
    # a keyword replaces that field of a config
    mixed = simulate_tomogram(classes, TomogramSimulation(**{**keywords, "snr": 9.0}), seed=3, keep_clean=True,
                              snr=(0.5, 2.0))
    for other in (by_config, mixed):
        for name in ("volume", "clean", "instance_mask", "class_mask", "orientations"):
            assert np.array_equal(getattr(other, name), getattr(by_keywords, name)), name
        assert np.array_equal(other.picks.coords, by_keywords.picks.coords)
        assert other.params == by_keywords.params and repr(other.distractors) == repr(by_keywords.distractors)
    assert by_keywords.params["n_placed"] > 0 and by_keywords.volume.shape == (24, 48, 40)
    # another seed, another tomogram: the comparison above can fail
    assert not np.array_equal(simulate_tomogram(classes, TomogramSimulation(**keywords), seed=4).volume,
                              by_keywords.volume)


def test_micrograph_config_and_keywords_give_the_same_micrograph(classes):
    keywords = dict(shape=(256, 224), pixel_size=8.0, n_particles=6, dose=(20.0, 40.0), carbon_edge=True,
                    ice_crystals=1, aggregates=1, class_weights=[1, 2, 1])
    by_keywords = simulate_micrograph(classes, seed=5, keep_clean=True, **keywords)
    by_config = simulate_micrograph(classes, MicrographSimulation(**keywords), seed=5, keep_clean=True)
    for name in ("image", "clean", "mask", "distractor_mask", "orientations"):
        assert np.array_equal(getattr(by_config, name), getattr(by_keywords, name)), name
    assert by_config.params == by_keywords.params and by_config.params["carbon_edge"] is True
    assert by_config.params["n_placed"] == 6 and by_config.image.shape == (256, 224)
    assert not np.array_equal(simulate_micrograph(classes, MicrographSimulation(**keywords), seed=6).image,
                              by_keywords.image)


@pytest.mark.parametrize("cls, change, field", [
    (TomogramSimulation, {"shape": (4, 48, 48)}, "shape"),
    (TomogramSimulation, {"shape": (32, 48)}, "shape"),
    (TomogramSimulation, {"voxel_size": -10.0}, "voxel_size"),
    (TomogramSimulation, {"n_particles": -1}, "n_particles"),
    (TomogramSimulation, {"snr": (2.0, 1.0)}, "snr"),
    (TomogramSimulation, {"tilt_range": (-100.0, 60.0)}, "tilt_range"),
    (TomogramSimulation, {"crowding": 1.5}, "crowding"),
    (TomogramSimulation, {"ctf_correction": "wiener"}, "ctf_correction"),
    (TomogramSimulation, {"class_weights": (1.0, -1.0)}, "class_weights"),
    (MicrographSimulation, {"shape": (8, 8)}, "shape"),
    (MicrographSimulation, {"pixel_size": 0.0}, "pixel_size"),
    (MicrographSimulation, {"dose": float("nan")}, "dose"),
    (MicrographSimulation, {"dqe": 0.0}, "dqe"),
    (MicrographSimulation, {"ice_crystals": 1.5}, "ice_crystals"),
])
def test_a_bad_value_is_refused_naming_the_field(cls, change, field):
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{field}\b.* must be .*got "):
        cls(**change)
    # the same check when the value comes as a keyword of the simulator or replaces a field of a config
    simulate = simulate_tomogram if cls is TomogramSimulation else simulate_micrograph
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}\b"):
        simulate(None if cls is MicrographSimulation else [object()], **change)
    with pytest.raises(CryopickError, match=rf"{cls.__name__}\.{field}\b"):
        dataclasses.replace(cls(), **change)


def test_unknown_keywords_and_wrong_config_types_are_refused(classes):
    with pytest.raises(TypeError, match=r"simulate_tomogram\(\) got unexpected keyword argument\(s\) 'pixel_size'"):
        simulate_tomogram(classes, pixel_size=4.0)
    with pytest.raises(TypeError, match=r"config must be a MicrographSimulation, got TomogramSimulation"):
        simulate_micrograph(classes, TomogramSimulation())
    with pytest.raises(CryopickError, match="class_weights must have one non-negative weight per class"):
        simulate_tomogram(classes, shape=(16, 32, 32), class_weights=(1.0, 1.0))


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TomogramSimulation().shape = (8, 8, 8)
    assert MicrographSimulation(shape=[64, 64], class_weights=[1, 2]).shape == (64, 64)
