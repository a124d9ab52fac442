"""The 3D answer loop: answers table, adapted classifier, question choice, ask3d -> answers -> pick3d."""

import numpy as np
import pandas as pd
import pytest

from cryopick.errors import CryopickError
from cryopick.picker3d.answers import AdaptedModel, Answers, adapt, fit_logistic, normalise_answer
from cryopick.picker3d.candidates import BASE_FEATURES, CandidateSet, find_candidates
from cryopick.picker3d.questions import choose_questions


@pytest.fixture(scope="module")
def model():
    from cryopick.models.promptable3d import load_propicker

    return load_propicker()


@pytest.fixture(scope="module")
def prompt():
    from cryopick.picker3d.prompt import Prompt

    rng = np.random.default_rng(0)
    return Prompt(rng.normal(size=(1, 37, 37, 37)).astype(np.float32), np.zeros((1, 3)), "t", 10.0, 1.0, 12.0, "a")


def _two_classes(model, prompt, n, seed):
    """Candidates of two classes that look the same to the un-adapted picker: the same map features and
    the same similarity to the prompt's code, told apart only by a direction orthogonal to it."""
    from cryopick.picker3d.answers import reference_code

    rng = np.random.default_rng(0)  # the classes' directions: the same in every call
    ref_e, ref_p = reference_code(model, prompt)
    ref_e = ref_e / np.linalg.norm(ref_e)

    def orth(dim, ref, k):
        basis = [ref / np.linalg.norm(ref)]
        out = []
        while len(out) < k:
            v = rng.normal(size=dim)
            for b in basis:
                v -= (v @ b) * b
            v /= np.linalg.norm(v)
            basis.append(v)
            out.append(v)
        return out

    ve, we = orth(len(ref_e), ref_e, 2)
    vp, wp = orth(len(ref_p), ref_p, 2)
    rng = np.random.default_rng(seed)  # the samples
    y = np.arange(n) % 2
    sign = np.where(y == 1, 1.0, -1.0)[:, None]
    emb = ref_e + 0.8 * sign * ve + 0.8 * (-sign) * we + 0.05 * rng.normal(size=(n, len(ref_e)))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    proto = ref_p + np.linalg.norm(ref_p) * (0.8 * sign * vp - 0.8 * sign * wp + 0.05 * rng.normal(size=(n, len(ref_p))))
    base = rng.normal(size=(n, len(BASE_FEATURES)))
    coords = np.column_stack([np.arange(n) * 20.0, np.zeros(n), np.zeros(n)])
    return CandidateSet("a", "t", coords, base, emb, proto, 12.0), y


def _auc(score, y):
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = y.sum(), len(y) - y.sum()
    return (r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def test_classifier_from_answers_separates_two_classes_the_map_confuses(model, prompt):
    pool, y_pool = _two_classes(model, prompt, 200, seed=1)
    test, y_test = _two_classes(model, prompt, 100, seed=2)
    unadapted = adapt(model, prompt, pool, pool.subset(slice(0, 0)), np.zeros(0, int), candidate_threshold=0.1)
    assert not unadapted.fitted
    assert abs(_auc(unadapted.predict(test), y_test) - 0.5) < 0.15  # the prompt's similarity cannot tell them apart
    asked = np.arange(10)  # five answers of each kind
    am = adapt(model, prompt, pool, pool.subset(asked), y_pool[asked], candidate_threshold=0.1)
    assert am.fitted and am.info["n_positive"] == 5 and am.info["n_negative"] == 5
    p = am.predict(test)
    assert _auc(p, y_test) > 0.95
    assert ((p >= am.threshold) == (y_test == 1)).mean() > 0.9


def test_adapted_model_file_round_trip_and_damage(model, prompt, tmp_path):
    pool, y = _two_classes(model, prompt, 60, seed=3)
    am = adapt(model, prompt, pool, pool.subset(np.arange(8)), y[:8], candidate_threshold=0.1)
    path = am.save(tmp_path / "a.adapted.npz")
    back = AdaptedModel.load(path)
    np.testing.assert_allclose(back.predict(pool), am.predict(pool))
    assert back.fingerprint() == am.fingerprint() and back.info["n_positive"] == am.info["n_positive"]
    (tmp_path / "bad.adapted.npz").write_bytes(b"not a zip")
    with pytest.raises(CryopickError, match="not a cryopick adapted-model file"):
        AdaptedModel.load(tmp_path / "bad.adapted.npz")
    with pytest.raises(CryopickError, match="no such adapted-model file"):
        AdaptedModel.load(tmp_path / "missing.npz")


def test_logistic_regression_balanced_and_regularised():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 1, (50, 2)), rng.normal(1, 1, (5, 2))])
    y = np.r_[np.zeros(50), np.ones(5)].astype(int)
    w = np.where(y == 1, 55 / 10, 55 / 100)
    weights, bias = fit_logistic(x, y, w, l2=1.0)
    assert weights[0] > 0 and weights[1] > 0 and abs(bias) < 1.0  # balanced: no strong prior for class 0
    w_strong, _ = fit_logistic(x, y, w, l2=100.0)
    assert np.linalg.norm(w_strong) < np.linalg.norm(weights)


def test_answers_csv_round_trip_and_targets(tmp_path):
    table = pd.DataFrame({"tomogram": ["ts0"] * 5, "label": ["a", "a", "a", "b", "b"],
                          "x": [1.5, 2, 3, 4, 5], "y": [1, 2, 3, 4, 5], "z": [0, 0, 0, 0, 0],
                          "answer": ["Yes", "n", "other:b", "yes", "a"]})
    path = Answers(table).write(tmp_path / "answers.csv")
    back = Answers.read(path)
    assert list(back.table["answer"]) == ["yes", "no", "b", "yes", "a"]
    np.testing.assert_allclose(back.coords()[:, 0], [1.5, 2, 3, 4, 5])
    # about class a: yes -> 1, no -> 0, "it is a b" -> 0, a b -> 0, "it is an a" -> 1
    assert list(back.targets("a")) == [1, 0, 0, 0, 1]
    assert list(back.targets("b")) == [0, -1, 1, 1, 0]  # an a is not a b; "not an a" says nothing about b
    assert normalise_answer("") == "" and normalise_answer("other") == "other" and normalise_answer(" Y ") == "yes"
    assert (path.stat().st_mode & 0o777) != 0o600


@pytest.mark.parametrize("text, match", [
    ("tomogram,label,x,y,answer\nts0,a,1,2,yes\n", "line 1: missing column"),
    ("tomogram,label,x,y,z,answer\nts0,a,1,2,3,yes\nts0,a,1,oops,3,no\n", "line 3: y must be a voxel number"),
    ("tomogram,label,x,y,z,answer\nts0,a,1,2,3,yes,extra,more,and,more\n", "line 2: 10 fields"),
    ("tomogram,label,x,y,z,answer\n,a,1,2,3,yes\n", "line 2: empty tomogram"),
    ("tomogram,label,x,y,z,answer\nts0,a,nan,2,3,yes\n", "line 2: x must be"),
])
def test_malformed_answers_name_the_line(tmp_path, text, match):
    path = tmp_path / "answers.csv"
    path.write_text(text)
    with pytest.raises(CryopickError, match=match):
        Answers.read(path)


def test_choose_questions_uncertain_and_diverse():
    rng = np.random.default_rng(0)
    # 100 confident candidates, and two far-apart clusters of 10 uncertain ones each
    p = np.r_[rng.uniform(0.95, 1.0, 50), rng.uniform(0.0, 0.05, 50), rng.uniform(0.45, 0.55, 20)]
    f = np.r_[rng.normal(0, 1, (100, 3)), rng.normal(10, 0.1, (10, 3)), rng.normal(-10, 0.1, (10, 3))]
    q = choose_questions(p, f, 4, pool_factor=1)
    assert len(q) == 4 and len(set(q)) == 4
    assert all(i >= 100 for i in q)  # uncertain
    assert any(i < 110 for i in q) and any(i >= 110 for i in q)  # both clusters
    np.testing.assert_array_equal(q, choose_questions(p, f, 4, pool_factor=1))  # deterministic
    exclude = np.zeros(120, bool)
    exclude[100:110] = True
    q2 = choose_questions(p, f, 3, exclude=exclude, pool_factor=1)
    assert not exclude[q2].any()


def test_find_candidates_one_per_particle():
    prob = np.zeros((40, 40, 40), np.float32)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    for c in ((10, 10, 10), (30, 28, 12)):  # x, y, z
        prob[(xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2 <= 16] = 0.9
    coords = find_candidates(prob, diameter=8.0, threshold=0.2)
    assert len(coords) == 2
    np.testing.assert_allclose(sorted(coords.tolist()), [[10, 10, 10], [30, 28, 12]], atol=1.0)
