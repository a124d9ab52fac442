"""calibrate3d with few annotated particles: the settings shrink toward the recommended ones
(``choose_settings``), never score below them, and say how many particles they rest on."""

import numpy as np
import pandas as pd
import pytest

from cryopick.picker3d.settings import PickSettings
from cryopick.picker3d.sweep import calibration_summary, choose_settings, f1_noise

DEFAULTS = PickSettings(threshold=0.15, min_factor=0.05, max_factor=3.0, min_similarity=0.8)


def sweep(rows, n_truth):
    table = pd.DataFrame(rows, columns=["threshold", "min_factor", "max_factor", "min_similarity", "f1"])
    table["n_truth"] = n_truth
    return table


GRID = [  # the defaults, a neighbour, and the extreme setting that finds exactly the annotated particles
    (0.15, 0.05, 3.0, 0.8, 0.50),
    (0.20, 0.05, 3.0, 0.8, 0.80),
    (0.15, 0.05, 3.0, 0.9, 0.75),
    (0.60, 0.5, 1.2, 0.9, 1.00),
    (0.10, 0.0, np.inf, np.nan, 0.20),
]


def test_f1_noise_shrinks_with_the_number_of_particles():
    assert f1_noise(1.0, 2) == pytest.approx(np.sqrt(0.75 * 0.25 / 2))
    assert f1_noise(0.8, 2) > f1_noise(0.8, 10) > f1_noise(0.8, 100)


def test_two_particles_keep_the_defaults_unless_a_setting_beats_them_beyond_the_noise():
    row, report = choose_settings(sweep(GRID, 2), DEFAULTS)
    # On 2 particles the defaults' 0.5 and the best 1.0 differ by less than twice the noise of the difference
    # (0.47): the defaults stay. The previous rule took the nearest row within the noise of the best (threshold
    # 0.2, F1 0.8), the rule before it the extreme best (threshold 0.6, similarity 0.9, sizes 0.5-1.2x); both
    # scored below the defaults on other tomograms of the simulator.
    assert report["kept_defaults"] and (row["threshold"], row["min_similarity"]) == (0.15, 0.8)
    assert report["n_truth"] == 2 and report["f1_best"] == 1.0 and report["f1_chosen"] == 0.5
    assert report["f1_noise"] == pytest.approx(2 * f1_noise(1.0, 2), abs=1e-3) and report["steps_from_defaults"] == 0
    line = calibration_summary(report)
    assert "2 annotated particle(s)" in line and "kept the recommended settings" in line and "annotate more" in line


def test_three_particles_move_only_when_the_defaults_miss_them_all():
    # The defaults find none of 3, a setting one step away all 3 without a false pick: the difference (1.0)
    # exceeds twice its noise (0.65), so it is saved; finding 2 of 3 (F1 0.67 at best) would not be enough.
    rows = [(0.15, 0.05, 3.0, 0.8, 0.0), (0.2, 0.05, 3.0, 0.8, 1.0), (0.3, 0.05, 3.0, 0.8, 0.67)]
    row, report = choose_settings(sweep(rows, 3), DEFAULTS)
    assert not report["kept_defaults"] and row["threshold"] == 0.2 and report["f1_chosen"] == 1.0
    assert report["f1_noise"] == pytest.approx(2 * np.hypot(f1_noise(0.0, 3), f1_noise(1.0, 3)), abs=1e-3)
    row, report = choose_settings(sweep(rows[:1] + rows[2:], 3), DEFAULTS)
    assert report["kept_defaults"] and report["f1_chosen"] == 0.0


def test_defaults_kept_when_within_the_noise():
    rows = [r if r[0] != 0.6 else (0.6, 0.5, 1.2, 0.9, 0.7) for r in GRID if r[4] != 0.8 and r[4] != 0.75]
    row, report = choose_settings(sweep(rows, 2), DEFAULTS)
    assert report["kept_defaults"] and (row["threshold"], row["min_factor"], row["max_factor"]) == (0.15, 0.05, 3.0)
    assert "kept the recommended settings" in calibration_summary(report)


def test_many_particles_choose_the_best_and_never_below_the_defaults():
    row, report = choose_settings(sweep(GRID, 400), DEFAULTS)
    assert row["threshold"] == 0.6 and report["f1_noise"] < 0.06
    # A near setting scoring below the defaults is never chosen, however large the noise.
    rows = [(0.15, 0.05, 3.0, 0.8, 0.5), (0.20, 0.05, 3.0, 0.8, 0.45), (0.9, 0.5, 1.2, 0.9, 0.7)]
    row, report = choose_settings(sweep(rows, 1), DEFAULTS, noise_factor=5)
    assert report["kept_defaults"] and report["f1_chosen"] == 0.5


def test_sweep_without_similarity_compares_the_swept_knobs_only():
    rows = [(0.15, 0.05, 3.0, np.nan, 0.6), (0.5, 0.05, 3.0, np.nan, 0.65)]
    row, report = choose_settings(sweep(rows, 3), DEFAULTS)
    assert report["kept_defaults"] and row["threshold"] == 0.15


def test_two_or_three_particles_calibrate_no_worse_than_the_defaults_on_another_tomogram():
    """The shipped weights on the project simulator: calibrate on a tomogram holding 3 or 4 particles of a
    class (the prompt's own left out: 2 or 3 truth particles), then score the saved settings and the
    recommended ones on another tomogram of the same classes (no similarity sweep, to stay fast). The
    previous rule (the nearest setting within the noise of the best) fails here: for shell01_103A it saved
    settings with F1 0.35 on the other tomogram, where the recommended ones score 0.43."""
    from pathlib import Path

    from cryopick.io.images import Image
    from cryopick.picker3d.card import load_model
    from cryopick.picker3d.pick import segment
    from cryopick.picker3d.prompt import Prompt, cut_prompt
    from cryopick.picker3d.settings import default_settings
    from cryopick.picker3d.sweep import calibrate_tomogram, sweep_cluster
    from cryopick.picks import Picks
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    classes = random_particle_classes(3, seed=300_000, voxel_size=10.0, diameter_range_A=(100.0, 150.0))
    a = simulate_tomogram(classes, shape=(64, 96, 96), voxel_size=10.0, seed=3, counts=[3, 3, 4], name="a")
    b = simulate_tomogram(classes, shape=(64, 96, 96), voxel_size=10.0, seed=100, n_particles=30, name="b")
    model = load_model(None)
    d0 = default_settings(model)
    n_truth = []
    for c in classes:
        truth = a.picks.coords[(a.picks.table["label"] == c.name).to_numpy()]
        pos = truth[np.argmax(np.min(np.minimum(truth, np.array([95, 95, 63]) - truth), axis=1))]
        prompt = Prompt(cut_prompt(a.volume, pos)[None], pos[None], "a", 10.0, 1.0, c.diameter / 10.0, c.name)
        _, payload = calibrate_tomogram(Image(a.volume, 10.0, Path("a.mrc")), Picks.from_arrays("a", truth,
                                        pixel_size=10.0), prompt, model, similarity=False, progress=False)
        report, chosen = payload["info"]["calibration"], payload["settings"]
        n_truth.append(report["n_truth"])
        assert report["f1_chosen"] >= report["f1_defaults"]
        probs, _ = segment(model, b.volume, [prompt], [0], window=64, stride=32, bf16=False, progress=False)
        truth_b = b.picks.coords[(b.picks.table["label"] == c.name).to_numpy()]
        table = sweep_cluster(probs[0], truth_b, prompt.diameter, thresholds=sorted({d0.threshold, chosen["threshold"]}),
                              min_factors=sorted({d0.min_factor, chosen["min_factor"]}),
                              max_factors=sorted({d0.max_factor or np.inf, chosen["max_factor"] or np.inf})).table

        def f1_b(s):
            row = table[np.isclose(table["threshold"], s["threshold"]) & np.isclose(table["min_factor"], s["min_factor"])
                        & np.isclose(table["max_factor"], s["max_factor"] or np.inf)]
            return float(row["f1"].iloc[0])

        assert f1_b(chosen) >= f1_b(vars(d0)) - 1e-9, (c.name, chosen, f1_b(chosen), f1_b(vars(d0)))
    assert sorted(n_truth) == [2, 2, 3]
