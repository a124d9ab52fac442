"""Answers never make the picker worse: with one yes and nine no the adapted classifier is not kept when
it does not beat the settings on the answers (leave-one-out), and the class is picked as without answers."""

import numpy as np
import pytest

from cryopick.picker3d.candidates import BASE_FEATURES, CandidateSet
from cryopick.picker3d.fallback import P_MAX, adapt_or_keep, expected_line
from cryopick.picker3d.settings import PickSettings

SETTINGS = PickSettings(threshold=0.15, min_factor=0.05, max_factor=3.0, min_similarity=None)


def _candidates(model, n, seed, p_max):
    """Candidates whose codes say nothing about the class (random), with the map maximum ``p_max``."""
    rng = np.random.default_rng(seed)
    e, p = model.segmenter.embed_dim, sum(model.segmenter.widths[:-1])
    emb = rng.normal(size=(n, e))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    base = rng.uniform(0, 1, size=(n, len(BASE_FEATURES)))
    base[:, P_MAX] = p_max
    coords = np.column_stack([np.arange(n) * 20.0, np.full(n, seed), np.zeros(n)])
    return CandidateSet("a", "t", coords, base, emb, rng.normal(size=(n, p)), 12.0)


def test_one_yes_and_nine_no_fall_back_to_the_settings(model, prompt):
    pool = _candidates(model, 80, 1, np.random.default_rng(9).uniform(0, 1, 80))
    # The prompt's example and one yes (both strong on the map), nine no (five strong, four weak).
    labelled = CandidateSet.join([_candidates(model, 2, 2, 0.9), _candidates(model, 5, 3, 0.9),
                                  _candidates(model, 4, 4, 0.05)])
    y = np.array([1, 1] + [0] * 9)
    kept = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075)
    unguarded = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075,
                              guard=False)
    # Without the guard the class is adapted to two positives and collapses: it keeps almost none of the
    # candidates the settings keep (map maximum >= their threshold) ...
    by_settings = pool.base[:, P_MAX] >= SETTINGS.threshold
    assert unguarded.fitted and (unguarded.predict(pool) >= unguarded.threshold).sum() < 0.2 * by_settings.sum()
    # ... with it, the answers do not beat the settings (leave-one-out) and the class is not adapted:
    # pick3d --answers then picks it with its settings, as without answers.
    assert not kept.fitted and "leave-one-out" in kept.info["fallback"]
    e = kept.info["expected"]
    assert e["picker"] == "settings" and e["n"] == 11 and e["n_positive"] == 2
    assert (e["precision"], e["recall"]) == (pytest.approx(2 / 7), 1.0)  # the settings keep the 7 strong ones
    assert e["f1_adapted"] <= e["f1_settings"]
    line = expected_line({"a": kept})
    assert line.startswith("expected from the answers (leave-one-out): a: settings, precision 0.29 recall 1.00")


def test_answers_that_separate_the_class_are_kept(model, prompt):
    """Positives that differ from the negatives in their code: the adapted model wins leave-one-out."""
    rng = np.random.default_rng(5)
    direction = rng.normal(size=model.segmenter.embed_dim)
    sets, y = [], []
    for k, label in enumerate([1] * 5 + [0] * 8):
        c = _candidates(model, 1, 10 + k, 0.9)  # all strong on the map: the settings keep every one
        c.embedding = c.embedding + (3.0 if label else -3.0) * direction / np.linalg.norm(direction)
        sets.append(c)
        y.append(label)
    labelled, y = CandidateSet.join(sets), np.array(y)
    am = adapt_or_keep(model, prompt, _candidates(model, 60, 1, 0.5), labelled, y, settings=SETTINGS,
                       candidate_threshold=0.075)
    e = am.info["expected"]
    assert am.fitted and e["picker"] == "adapted" and e["f1"] > e["f1_settings"]
    assert e["f1_settings"] == pytest.approx(2 * 5 / (13 + 5))
    assert "a: adapted, precision" in expected_line({"a": am})
