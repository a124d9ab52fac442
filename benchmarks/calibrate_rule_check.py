"""Calibration rules on the simulator with 2-3 truth particles: per class, F1 on B of the defaults (nan: not on
this grid without similarity), the previous shrink rule and choose_settings with z = 1, 1.5, 2 (issue 24).

Usage: OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/calibrate_rule_check.py
"""
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.simplefilter("ignore")
import pandas as pd  # noqa: E402

from _calibration_rules import _grid_key, previous_shrink_rule  # noqa: E402
from cryopick.io.images import Image  # noqa: E402
from cryopick.picker3d.card import load_model  # noqa: E402
from cryopick.picker3d.pick import segment  # noqa: E402
from cryopick.picker3d.prompt import Prompt, cut_prompt  # noqa: E402
from cryopick.picker3d.settings import default_settings  # noqa: E402
from cryopick.picker3d.sweep import calibrate_tomogram, choose_settings, sweep_cluster  # noqa: E402
from cryopick.picks import Picks  # noqa: E402
from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram  # noqa: E402

model = load_model(None)
d0 = default_settings(model)
for cseed in range(300_000, 300_006):
    classes = random_particle_classes(3, seed=cseed, voxel_size=10.0, diameter_range_A=(100.0, 150.0))
    for aseed in (3, 4, 5):
        a = simulate_tomogram(classes, shape=(64, 96, 96), voxel_size=10.0, seed=aseed, counts=[3, 3, 4], name="a")
        b = simulate_tomogram(classes, shape=(64, 96, 96), voxel_size=10.0, seed=100, n_particles=30, name="b")
        for c in classes:
            truth = a.picks.coords[(a.picks.table["label"] == c.name).to_numpy()]
            pos = truth[np.argmax(np.min(np.minimum(truth, np.array([95, 95, 63]) - truth), axis=1))]
            prompt = Prompt(cut_prompt(a.volume, pos)[None], pos[None], "a", 10.0, 1.0, c.diameter / 10.0, c.name)
            sweep, payload = calibrate_tomogram(Image(a.volume, 10.0, Path("a.mrc")), Picks.from_arrays(
                "a", truth, pixel_size=10.0), prompt, model, similarity=False, progress=False)
            ta = sweep.table
            probs, _ = segment(model, b.volume, [prompt], [0], window=64, stride=32, bf16=False, progress=False)
            tb = sweep_cluster(probs[0], b.picks.coords[(b.picks.table["label"] == c.name).to_numpy()],
                               prompt.diameter).table
            f1b = dict(zip(_grid_key(tb), tb["f1"]))
            dk = _grid_key(pd.DataFrame([{k: getattr(d0, k) for k in ("threshold", "min_factor", "max_factor", "min_similarity")}]))[0]
            old = f1b.get(_grid_key(ta.iloc[[previous_shrink_rule(ta, d0)]])[0])
            out = [cseed, aseed, c.name, int(ta["n_truth"].iloc[0]), round(f1b.get(dk, np.nan), 3), round(old, 3)]
            for z in (1.0, 1.5, 2.0):
                row, rep = choose_settings(ta, d0, noise_factor=z)
                out.append(round(f1b.get(_grid_key(pd.DataFrame([row]))[0], np.nan), 3))
            print(*out, flush=True)
