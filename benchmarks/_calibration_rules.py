"""Calibration rules compared by ``bench_answers3d.py`` (issue 24): the settings chosen on tomogram A's sweep
by each rule, scored on B by a look-up in B's sweep of the same grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: calibration: noise factors of choose_settings compared (the first is the library default)
NOISE_FACTORS = (2.0, 1.0, 1.5, 3.0)


def _grid_key(table) -> list[tuple]:
    from cryopick.picker3d.sweep import _knob_values

    return [tuple(np.round(v, 3)) for v in _knob_values(table).to_numpy()]


def calibration_rows(folder: Path, prompts, rows: dict, model) -> None:
    """Settings chosen on A's sweep (the best F1; the previous shrink rule; :func:`choose_settings` with each
    of ``NOISE_FACTORS``), scored on B by a look-up in B's sweep of the same grid (``sweep_b_*.csv``)."""
    from cryopick.picker3d.settings import default_settings
    from cryopick.picker3d.sweep import KNOBS, choose_settings

    defaults = default_settings(model)
    default_key = _grid_key(pd.DataFrame([{k: getattr(defaults, k) for k in KNOBS}]))[0]
    for k, p in enumerate(prompts):
        a_path, b_path = folder / f"sweep_a_{k:02d}.csv", folder / f"sweep_b_{k:02d}.csv"
        if not b_path.is_file():
            continue
        ta, tb = pd.read_csv(a_path), pd.read_csv(b_path)
        f1_b = dict(zip(_grid_key(tb), tb["f1"]))
        best = ta.sort_values(["f1", "threshold"], ascending=[False, True], kind="stable").iloc[[0]]
        r = rows[p.label]
        old = ta.iloc[[previous_shrink_rule(ta, defaults)]]
        r.update({"default_lookup": f1_b.get(default_key, np.nan),
                  "calibrated_best": f1_b.get(_grid_key(best)[0], np.nan),
                  "calibrated_shrunk_old": f1_b.get(_grid_key(old)[0], np.nan)})
        for z in NOISE_FACTORS:
            row, report = choose_settings(ta, defaults, noise_factor=z)
            tag = "" if z == NOISE_FACTORS[0] else f"_z{z:g}"
            r.update({"n_truth_A": report["n_truth"], f"calibrated_new{tag}": f1_b.get(_grid_key(pd.DataFrame([row]))[0], np.nan),
                      f"new_kept_defaults{tag}": report["kept_defaults"], f"new_steps{tag}": report["steps_from_defaults"]})


def previous_shrink_rule(table, defaults) -> int:
    """The row the previous ``choose_settings`` (issue 24, first session) chose: among the rows within the
    noise of the best F1 and not below the defaults', the fewest grid steps from the defaults."""
    from cryopick.picker3d.sweep import KNOBS, _knob_values, f1_noise

    knobs = _knob_values(table)
    swept = [k for k in KNOBS if k in table and table[k].notna().any()] or ["threshold"]
    want = _knob_values(pd.DataFrame([{k: getattr(defaults, k) for k in KNOBS}])).iloc[0]
    is_default, steps = np.ones(len(table), bool), np.zeros(len(table))
    for k in swept:
        grid = np.unique(knobs[k].to_numpy())
        is_default &= np.isclose(knobs[k].to_numpy(), want[k]) | (knobs[k].to_numpy() == want[k])
        steps += np.abs(np.searchsorted(grid, knobs[k].to_numpy()) - np.searchsorted(grid, want[k]))
    f1 = table["f1"].to_numpy(float)
    best, f1_default = float(f1.max()), float(f1[is_default].max()) if is_default.any() else -np.inf
    ok = (f1 >= best - f1_noise(best, int(table["n_truth"].iloc[0])) - 1e-9) & (f1 >= f1_default - 1e-9)
    order = np.lexsort((knobs["threshold"].to_numpy(), -f1, steps))
    return int(next(j for j in order if ok[j]))
