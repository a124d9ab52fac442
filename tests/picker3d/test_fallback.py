"""Answers never make the picker worse: with one yes and nine no the adapted classifier is not kept when
it does not beat the settings on the answers (leave-one-out), and the class is picked as without answers."""

import numpy as np
import pytest

from cryopick.picker3d.candidates import BASE_FEATURES, CandidateSet
from cryopick.picker3d.fallback import P_MAX, adapt_or_keep, expected_line, particle_groups
from cryopick.picker3d.settings import PickSettings
from cryopick.picker3d.sweep import f1_noise

SETTINGS = PickSettings(threshold=0.15, min_factor=0.05, max_factor=3.0, min_similarity=None)


def _candidates(model, n, seed, p_max):
    """Candidates whose codes say nothing about the class (random), with the map maximum ``p_max``."""
    rng = np.random.default_rng(seed)
    e, p = model.segmenter.embed_dim, sum(model.segmenter.widths[:-1])
    emb = rng.normal(size=(n, e))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    base = rng.uniform(0, 1, size=(n, len(BASE_FEATURES)))
    base[:, P_MAX] = p_max
    coords = np.column_stack([np.arange(n) * 20.0, np.full(n, 30.0 * seed), np.zeros(n)])  # distinct particles
    return CandidateSet("a", "t", coords, base, emb, rng.normal(size=(n, p)), 12.0)


def test_one_yes_and_nine_no_fall_back_to_the_settings(model, prompt):
    pool = _candidates(model, 80, 1, np.random.default_rng(9).uniform(0, 1, 80))
    # The prompt's example and one yes (both strong on the map), nine no (five strong, four weak).
    labelled = CandidateSet.join([_candidates(model, 2, 2, 0.9), _candidates(model, 5, 3, 0.9),
                                  _candidates(model, 4, 4, 0.05)])
    y = np.array([1, 1] + [0] * 9)
    kept = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075,
                         min_positives=0)  # the leave-one-out comparison alone
    unguarded = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075,
                              guard=False)
    # Without the guard the class is adapted to two positives and collapses: it keeps almost none of the
    # candidates the settings keep (map maximum >= their threshold) ...
    by_settings = pool.base[:, P_MAX] >= SETTINGS.threshold
    assert unguarded.fitted and (unguarded.predict(pool) >= unguarded.threshold).sum() < 0.2 * by_settings.sum()
    # ... with it, the answers do not beat the settings (leave-one-out) and the class is not adapted:
    # pick3d --answers then picks it with its settings, as without answers.
    assert not kept.fitted and "leave-one-out F1 on the answers" in kept.info["fallback"]
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
                       candidate_threshold=0.075, n_examples=1)
    e = am.info["expected"]
    assert am.fitted and e["picker"] == "adapted" and e["f1"] > e["f1_settings"]
    assert e["f1_settings"] == pytest.approx(2 * 5 / (13 + 5))
    assert "a: adapted, precision" in expected_line({"a": am})
    assert e["n_yes"] == 4  # five positives, one of them the prompt's example


def _separable(model, labels, p_max, offsets=None):
    """One candidate per label whose code says its class (positives and negatives apart), map maximum
    ``p_max`` each; ``offsets``: (N, 3) positions (default: 20 voxels apart, distinct particles)."""
    direction = np.random.default_rng(5).normal(size=model.segmenter.embed_dim)
    sets = []
    for k, label in enumerate(labels):
        c = _candidates(model, 1, 10 + k, p_max[k])
        c.embedding = c.embedding + (3.0 if label else -3.0) * direction / np.linalg.norm(direction)
        if offsets is not None:
            c.coords = np.asarray(offsets[k], float)[None]
        sets.append(c)
    return CandidateSet.join(sets), np.asarray(labels)


def test_two_yes_are_too_thin_to_replace_the_settings(model, prompt):
    """The prompt's example and two yes that the adapted model separates perfectly (leave-one-out F1 1.0,
    the settings 0.5): the previous rule (adapt when the leave-one-out F1 is higher) adapted; two confirmed
    particles are not enough evidence, the class keeps its settings."""
    labelled, y = _separable(model, [1, 1, 1] + [0] * 9, [0.9] * 12)
    pool = _candidates(model, 60, 1, 0.5)
    old = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075,
                        n_examples=1, min_positives=0, margin_factor=0.0, by_particle=False)
    assert old.fitted and old.info["expected"]["picker"] == "adapted"
    am = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075, n_examples=1)
    e = am.info["expected"]
    assert not am.fitted and e["picker"] == "settings" and e["n_yes"] == 2
    assert am.info["fallback"] == "2 yes answer(s), fewer than 3"
    assert expected_line({"a": am}).endswith("vs 1.00 adapted), 1 more confirmed particle(s) needed to adapt")
    assert e["f1_adapted"] > e["f1_settings"] == pytest.approx(2 * 3 / (12 + 3))


def test_one_particle_asked_twice_counts_once(model, prompt):
    """Four yes on two particles (two candidates 5 voxels apart on each): two confirmed particles, not four;
    leaving one candidate out left its twin in, which made the estimate look better than it is."""
    at = [(0, 0, 0), (100, 0, 0), (105, 0, 0), (200, 0, 0), (203, 4, 0)] + [(300 + 20 * k, 0, 0) for k in range(9)]
    labelled, y = _separable(model, [1] * 5 + [0] * 9, [0.9] * 14, offsets=at)
    pool = _candidates(model, 60, 1, 0.5)
    by_candidate = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075,
                                 n_examples=1, by_particle=False)
    assert by_candidate.fitted and by_candidate.info["expected"]["n_yes"] == 4
    am = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075, n_examples=1)
    assert not am.fitted and am.info["expected"]["n_yes"] == 2 and "fewer than 3" in am.info["fallback"]
    assert particle_groups(np.asarray(at, float), 12.0).tolist() == [0, 1, 1, 2, 2] + list(range(3, 12))


def test_a_gain_within_the_noise_keeps_the_settings(model, prompt):
    """Five confirmed particles and one strong negative: the settings score F1 10/11 on the answers, the
    adapted model 1.0 leave-one-out. A gain of 0.09 is within the noise of an F1 on six positives (0.14):
    the previous rule adapted, now the settings stay; with more negatives the settings' F1 drops and the
    adapted model is kept."""
    labelled, y = _separable(model, [1] * 6 + [0] * 8, [0.9] * 7 + [0.05] * 7)
    pool = _candidates(model, 60, 1, 0.5)
    old = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075,
                        n_examples=1, min_positives=0, margin_factor=0.0, by_particle=False)
    assert old.fitted
    am = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075, n_examples=1)
    e = am.info["expected"]
    assert not am.fitted and e["n_yes"] == 5
    assert e["f1_settings"] == pytest.approx(12 / 13) and e["f1_adapted"] == 1.0
    assert e["margin"] == pytest.approx(f1_noise(1.0, 6), abs=1e-3) and "by more than the noise" in am.info["fallback"]
    labelled, y = _separable(model, [1] * 6 + [0] * 8, [0.9] * 10 + [0.05] * 4)
    am = adapt_or_keep(model, prompt, pool, labelled, y, settings=SETTINGS, candidate_threshold=0.075, n_examples=1)
    assert am.fitted and am.info["expected"]["f1_settings"] == pytest.approx(12 / 16)


def test_the_answered_tomogram_keeps_what_the_user_said():
    """Whatever picker made the picks: a pick the user called "no" goes, a "yes" the picker missed is added,
    other tomograms and classes are untouched; "ribo" answers about "prot" questions count for ribo too."""
    import pandas as pd

    from cryopick.picker3d.answers import Answers
    from cryopick.picker3d.fallback import answers_as_truth, correct_with_answers
    from cryopick.picks import Picks

    picks = Picks(pd.concat([
        Picks.from_arrays("t1", np.array([[10, 10, 10], [50, 50, 50], [90, 20, 30]]), score=0.6, label="ribo").table,
        Picks.from_arrays("t1", np.array([[12, 10, 10]]), score=0.7, label="prot").table], ignore_index=True),
        pixel_size=10.0, ndim=3)
    answers = Answers(pd.DataFrame({"tomogram": ["t1", "t1", "t1", "t2"], "label": ["ribo", "ribo", "prot", "ribo"],
                                    "x": [11.0, 70.0, 90.0, 50.0], "y": [10.0, 70.0, 21.0, 50.0],
                                    "z": [12.0, 70.0, 30.0, 50.0], "answer": ["no", "yes", "ribo", "no"]}))
    known = answers_as_truth(answers, ["ribo", "prot"])
    assert known[known["label"] == "ribo"][["x", "truth"]].values.tolist() == [[11, 0], [70, 1], [90, 1], [50, 0]]
    out = correct_with_answers(picks, known, "t1", {"ribo": 12.0, "prot": 8.0}).table
    ribo = out[out["label"] == "ribo"].sort_values("x")
    # (10, 10, 10) was answered no (2.2 voxels away) and goes; (70, 70, 70) was a yes nobody picked: added with
    # score 1; (90, 20, 30) was picked and the answer on the prot question said ribo: kept as it was.
    assert ribo[["x", "y", "z", "score"]].values.tolist() == [[50, 50, 50, 0.6], [70, 70, 70, 1.0], [90, 20, 30, 0.6]]
    # prot: (12, 10, 10) is not about a prot answer ("no" was asked for ribo, and answers about another class's
    # question say nothing about prot unless they name it), (90, 21, 30) was answered "ribo": it is not a prot
    assert out[out["label"] == "prot"][["x", "y", "z"]].values.tolist() == [[12, 10, 10]]
    assert correct_with_answers(picks, known, "t3", {"ribo": 12.0}).table.equals(picks.table)
    # the prompt's own particle is a yes of its tomogram: missed by the picker, it is added
    from cryopick.picker3d.prompt import Prompt

    clicked = Prompt(np.zeros((1, 37, 37, 37), np.float32), np.array([[30.0, 40.0, 20.0]]), "t1", 10.0, 1.0, 12.0, "ribo")
    known = answers_as_truth(answers, ["ribo", "prot"], [clicked])
    out = correct_with_answers(picks, known, "t1", {"ribo": 12.0, "prot": 8.0}).table
    assert [30, 40, 20, 1.0] in out[out["label"] == "ribo"][["x", "y", "z", "score"]].values.tolist()
