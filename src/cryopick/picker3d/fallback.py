"""Answers that never make the picker worse: adapt only where the answers say the adapted picker wins.

With a handful of answers (one yes and nine no is common when the answered tomogram holds few particles
of a class) the classifier of :func:`~cryopick.picker3d.answers.adapt` can keep almost nothing. So
:func:`adapt_or_keep` estimates from the answers themselves, leaving one particle out at a time, how the
adapted picker would have decided each answered candidate, and compares that with the un-adapted picker
(the settings: map probability at or above their threshold and, when they have one, prompt similarity at
or above their minimum similarity). The adapted model replaces the settings only with at least
:data:`MIN_POSITIVES` confirmed particles besides the prompt and a leave-one-out F1 above the settings'
by more than :data:`MARGIN_FACTOR` binomial standard errors; else the class falls back to the
un-adapted picker (an unfitted model: ``pick3d --answers`` then picks it with its settings). On the
sparse sets of ``bench_answers3d.py`` (3 particles of a class in the answered tomogram) a class then never
adapts, by construction. Either way ``info["expected"]`` holds the precision and recall on the answered
candidates of the picker that will be used: what the user reads to decide whether to answer more.

Where the answers are direct truth, the answered tomogram, :func:`correct_with_answers` applies them to
whatever picker made the picks (a "no" is dropped, a missed "yes" added).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from cryopick.picker3d.answers import AdaptedModel, Answers, _balanced, _sigmoid, adapt, fit_logistic, reference_code
from cryopick.picker3d.candidates import BASE_FEATURES, CandidateSet
from cryopick.picker3d.sweep import f1_noise
from cryopick.picks import Picks

P_MAX = BASE_FEATURES.index("p_max")
#: adapt only with at least this many confirmed particles besides the prompt, and ...
MIN_POSITIVES = 3
#: ... a leave-one-out F1 above the settings' by more than this many binomial standard errors. Chosen on
#: bench_answers3d.py (10 sparse + 10 dense sets, benchmarks/answers3d.md): with 3 particles of a class in
#: the answered tomogram no class adapts (N >= 3), and on the dense sets N = 3, z = 1 kept most of the gain
#: of the answers at K = 10-20 with a third to a half of the classes below the defaults of the previous rule
#: (N = 4 had 2-3 fewer below at K = 5-10, in-sample, but loses test_answers' two-class separation).
MARGIN_FACTOR = 1.0


def _f1_pr(decide: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    tp = int((decide & (y == 1)).sum())
    n_pred, n_true = int(decide.sum()), int((y == 1).sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    return 2 * tp / max(1, n_pred + n_true), precision, recall


def unadapted_decisions(am: AdaptedModel, labelled: CandidateSet, threshold: float,
                        min_similarity: float | None, prompt_reference: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Whether the un-adapted picker (the settings) keeps each labelled candidate: its map maximum near
    the centre reaches ``threshold`` and its similarity to the prompt alone (``prompt_reference``:
    :func:`reference_code` without answers) reaches ``min_similarity`` (``None``: no check)."""
    keep = labelled.base[:, P_MAX] >= threshold
    if min_similarity is not None:
        plain = replace(am, ref_embedding=prompt_reference[0], ref_prototypes=prompt_reference[1],
                        weights=np.zeros_like(am.weights))
        sims = plain.features(labelled)[:, len(BASE_FEATURES):len(BASE_FEATURES) + 2].mean(1)
        keep &= sims >= min_similarity
    return keep


def particle_groups(coords: np.ndarray, radius: float) -> np.ndarray:
    """Group number of each labelled position: positions within ``radius`` of each other (linked in a
    chain) share one, e.g. two questions about one particle from two candidates on it."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    coords = np.asarray(coords, float).reshape(-1, 3)
    near = np.linalg.norm(coords[:, None] - coords[None], axis=2) <= radius
    return connected_components(csr_matrix(near), directed=False)[1]  # numbered in order of first position


def loo_probabilities(am: AdaptedModel, model, prompt, labelled: CandidateSet, y: np.ndarray,
                      code: np.ndarray | None, l2: float = 1.0, groups: np.ndarray | None = None) -> np.ndarray:
    """The adapted classifier's probability of each labelled candidate when fitted without it and without
    every labelled candidate of its ``groups`` entry (the same particle asked twice; default: each its
    own); a left-out positive also leaves the reference code, so that its similarity to the reference is
    not its own."""
    y = np.asarray(y, int)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    pos = np.flatnonzero(y == 1)
    xs_all = (am.features(labelled) - am.mean) / am.scale
    p = np.full(len(y), 0.5)
    for i in range(len(y)):
        rest = groups != groups[i]
        if not (y[rest] == 1).any() or not (y[rest] == 0).any():
            continue
        xs = xs_all
        if (y[~rest] == 1).any():
            ref = reference_code(model, prompt, labelled.subset(pos[rest[pos]]), code)
            fold = replace(am, ref_embedding=ref[0], ref_prototypes=ref[1])
            xs = (fold.features(labelled) - am.mean) / am.scale
        w, b = fit_logistic(xs[rest], y[rest], _balanced(y[rest]), l2)
        p[i] = float(_sigmoid(xs[i] @ w + b))
    return p


def adapt_or_keep(model, prompt, pool: CandidateSet, labelled: CandidateSet, y: np.ndarray, *, settings,
                  candidate_threshold: float, min_distance: float | None = None, code: np.ndarray | None = None,
                  l2: float = 1.0, guard: bool = True, n_examples: int = 0, min_positives: int = MIN_POSITIVES,
                  margin_factor: float = MARGIN_FACTOR, by_particle: bool = True) -> AdaptedModel:
    """:func:`~cryopick.picker3d.answers.adapt`, kept only when it beats the un-adapted picker on the answers.

    ``settings``: the :class:`~cryopick.picker3d.settings.PickSettings` the class is picked with un-adapted;
    ``n_examples``: how many of the labelled candidates are the prompts' examples (not answers).
    The adapted model replaces the settings only when the answers hold at least ``min_positives`` yes
    (confirmed positives besides the prompts' own examples) and its leave-one-out F1 on them exceeds the
    settings' F1 by more than ``margin_factor`` times the binomial noise of that estimate
    (:func:`~cryopick.picker3d.sweep.f1_noise` with the number of positives); with thinner evidence
    the class keeps its settings. Answers within one diameter of each other count as one particle (two
    candidates on one particle) and are left out together (``by_particle=False``: one candidate at a
    time, the previous estimate). ``guard=False``: always the adapted model (as before; for comparisons).
    ``info["expected"]``:
    ``picker`` (``adapted`` / ``settings``), ``precision``, ``recall``, ``f1`` of it on the ``n`` labelled
    candidates (leave-one-out for the adapted one), and the other picker's ``f1`` (``f1_adapted`` /
    ``f1_settings``); ``info["fallback"]`` says why the answers were not used."""
    y = np.asarray(y, int).reshape(-1)
    fallback = 0.5 if settings.min_similarity is None else settings.min_similarity
    am = adapt(model, prompt, pool, labelled, y, candidate_threshold=candidate_threshold, min_distance=min_distance,
               fallback_threshold=fallback, l2=l2, code=code)
    if len(y) <= n_examples:
        am.info["expected"] = {"picker": "settings", "n": int(len(y)), "n_answers": 0}
        return am
    plain_ref = reference_code(model, prompt, None, code)
    f1_s, p_s, r_s = _f1_pr(unadapted_decisions(am, labelled, settings.threshold, settings.min_similarity, plain_ref), y)
    expected = {"picker": "settings", "n": int(len(y)), "n_answers": int(len(y) - n_examples),
                "n_positive": int((y == 1).sum()), "precision": p_s,
                "recall": r_s, "f1": f1_s, "f1_settings": f1_s}
    if not am.fitted:
        am.info["expected"] = expected
        return am
    groups = particle_groups(labelled.coords, labelled.diameter if by_particle else 0.0)
    p = loo_probabilities(am, model, prompt, labelled, y, code, l2, groups)
    f1_a, p_a, r_a = _f1_pr(p >= am.threshold, y)
    n_particles = len(np.unique(groups[y == 1]))  # distinct particles confirmed, the prompt's examples included
    n_yes = n_particles - (len(prompt.positions) if n_examples else 0)
    margin = margin_factor * f1_noise(f1_a, n_particles)
    expected.update(f1_adapted=f1_a, n_yes=n_yes, margin=round(margin, 3), min_positives=min_positives)
    if not guard or (n_yes >= min_positives and f1_a > f1_s + margin):
        expected.update(picker="adapted", precision=p_a, recall=r_a, f1=f1_a)
        am.info["expected"] = expected
        return am
    am.info["fallback"] = (f"{n_yes} yes answer(s), fewer than {min_positives}" if n_yes < min_positives else
                           f"leave-one-out F1 on the answers {f1_a:.2f} not above {f1_s:.2f} of the settings "
                           f"by more than the noise {margin:.2f}")
    am.weights, am.bias, am.threshold = np.zeros_like(am.weights), 0.0, float(fallback)
    am.info["expected"] = expected
    return am


def expected_line(adapted: dict[str, AdaptedModel]) -> str:
    """One line for the user: per class, the picker the answers support and its expected precision and
    recall on the answered candidates (leave-one-out), from ``info["expected"]``; answering more is worth
    it while these are low or the answers still fall back to the settings."""
    parts = []
    for label, am in adapted.items():
        e = am.info.get("expected", {})
        if not e.get("n_answers"):
            parts.append(f"{label}: no answer yet (settings)")
            continue
        other = e.get("f1_settings" if e["picker"] == "adapted" else "f1_adapted")
        parts.append(f"{label}: {e['picker']}, precision {e['precision']:.2f} recall {e['recall']:.2f} "
                     f"({e['n_positive']} yes of {e['n']} labelled incl. the prompts" + ("" if other is None else
                     f"; F1 {e['f1']:.2f} vs {other:.2f} {'settings' if e['picker'] == 'adapted' else 'adapted'}")
                     + ")" + (f", {e['min_positives'] - e['n_yes']} more confirmed particle(s) needed to adapt"
                              if e["picker"] == "settings" and e.get("n_yes", 0) < e.get("min_positives", 0) else ""))
    return "expected from the answers (leave-one-out): " + "; ".join(parts)


def answers_as_truth(answers: Answers, labels, prompts=()) -> pd.DataFrame:
    """What the answers state about each of ``labels``: rows ``tomogram, label, x, y, z, truth`` (1: one of
    the class, 0: not one; positions in voxels of the tomogram as stored); the ``prompts``' own particles
    (clicked by the user) are one of their class."""
    parts = [pd.DataFrame({"tomogram": p.tomogram, "label": p.label, "x": p.positions[:, 0], "y": p.positions[:, 1],
                           "z": p.positions[:, 2], "truth": 1}) for p in prompts if p.label in labels]
    for label in labels:
        t = answers.targets(label)
        sub = answers.table[t >= 0]
        parts.append(pd.DataFrame({"tomogram": sub["tomogram"].to_numpy(), "label": label,
                                   "x": sub["x"].to_numpy(float), "y": sub["y"].to_numpy(float),
                                   "z": sub["z"].to_numpy(float), "truth": t[t >= 0]}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["tomogram", "label", "x", "y", "z", "truth"])


def correct_with_answers(picks: Picks, known: pd.DataFrame, tomogram: str, diameters: dict) -> Picks:
    """The picks of ``tomogram`` with the answers about it taken as truth, whatever picker made them: a pick
    within one radius of a position answered "not this class" (and of none answered "yes") is dropped, and
    a position answered "yes" with no pick of its class within one radius is added (score 1.0).
    ``known``: :func:`answers_as_truth`; ``diameters``: ``{label: diameter}`` in voxels as stored (a class
    without one is left as it is)."""
    table = picks.table
    here = known[known["tomogram"] == tomogram]
    if not len(here):
        return picks
    drop = np.zeros(len(table), bool)
    added = []
    for label, rows in here.groupby("label", sort=False):
        if not diameters.get(label):
            continue
        r = diameters[label] / 2
        pos = rows[["x", "y", "z"]].to_numpy(float)
        yes, no = pos[rows["truth"].to_numpy() == 1], pos[rows["truth"].to_numpy() == 0]
        mine = np.flatnonzero((table["label"] == label).to_numpy())
        xyz = table.iloc[mine][["x", "y", "z"]].to_numpy(float).reshape(-1, 3)

        def near(a, b):
            return (np.linalg.norm(a[:, None] - b[None], axis=2) <= r).any(1) if len(a) and len(b) else \
                np.zeros(len(a), bool)

        drop[mine[near(xyz, no) & ~near(xyz, yes)]] = True
        missing = yes[~near(yes, xyz)]
        if len(missing):
            added.append(Picks.from_arrays(tomogram, missing, score=1.0, diameter=diameters[label], label=label,
                                           pixel_size=picks.pixel_size).table)
    out = pd.concat([table[~drop]] + added, ignore_index=True) if added else table[~drop].reset_index(drop=True)
    return Picks(out, pixel_size=picks.pixel_size, ndim=3)
