"""The 3D answer loop: answers table, adapted classifier, question choice, ask3d -> answers -> pick3d."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryopick.errors import CryopickError
from cryopick.picker3d.answers import AdaptedModel, Answers, adapt, fit_logistic, normalise_answer
from cryopick.picker3d.candidates import BASE_FEATURES, CandidateSet, find_candidates
from cryopick.picker3d.questions import choose_questions


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
    q = choose_questions(p, f, 4, pool_factor=1, exploit=0.0)
    assert len(q) == 4 and len(set(q)) == 4
    assert all(i >= 100 for i in q)  # uncertain
    assert any(i < 110 for i in q) and any(i >= 110 for i in q)  # both clusters
    np.testing.assert_array_equal(q, choose_questions(p, f, 4, pool_factor=1, exploit=0.0))  # deterministic
    exclude = np.zeros(120, bool)
    exclude[100:110] = True
    q2 = choose_questions(p, f, 3, exclude=exclude, pool_factor=1, exploit=0.0)
    assert not exclude[q2].any()


def test_choose_questions_asks_the_most_likely_ones_too():
    """By default 40 % of a round are the most probable candidates not asked yet (confirmed positives
    for the classifier and the reference code), the rest uncertain and diverse."""
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(0.95, 0.99, 50), rng.uniform(0.0, 0.05, 50), rng.uniform(0.45, 0.55, 20)]
    f = np.r_[rng.normal(0, 1, (100, 3)), rng.normal(10, 0.1, (10, 3)), rng.normal(-10, 0.1, (10, 3))]
    q = choose_questions(p, f, 5, pool_factor=1)
    top = np.argsort(-p)[:2]
    assert len(set(q)) == 5 and set(q[:2]) == set(top) and all(i >= 100 for i in q[2:])
    exclude = np.zeros(120, bool)
    exclude[top] = True  # asked already: the next most probable ones
    q2 = choose_questions(p, f, 5, exclude=exclude, pool_factor=1)
    assert not exclude[q2].any() and set(q2[:2]) == set(np.argsort(-np.where(exclude, 0, p))[:2])


def test_find_candidates_one_per_particle():
    prob = np.zeros((40, 40, 40), np.float32)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    for c in ((10, 10, 10), (30, 28, 12)):  # x, y, z
        prob[(xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2 <= 16] = 0.9
    coords = find_candidates(prob, diameter=8.0, threshold=0.2)
    assert len(coords) == 2
    np.testing.assert_allclose(sorted(coords.tolist()), [[10, 10, 10], [30, 28, 12]], atol=1.0)


# -- the command-line loop -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from cryopick.io.coords import write_picks
    from cryopick.io.images import write_mrc
    from cryopick.simulate.tomogram import random_particle_classes, simulate_tomogram

    root = tmp_path_factory.mktemp("ask3d")
    classes = random_particle_classes(2, seed=424242, voxel_size=10.0, diameter_range_A=(150.0, 220.0))
    tomos = []
    for k in range(2):
        t = simulate_tomogram(classes, shape=(48, 80, 80), voxel_size=10.0, seed=k, n_particles=16, snr=3.0,
                              membranes=0, gold_beads=0, name=f"ts{k}")
        write_mrc(root / "tomos" / f"ts{k}.mrc", t.volume, pixel_size=10.0)
        tomos.append(t)
    write_picks(tomos[0].picks._with(tomos[0].picks.table[tomos[0].picks.table["label"] == classes[0].name]),
                root / "truth0.coords", "imod")
    return root, classes, tomos


def _answer_from_truth(csv, tomo, target, radius):
    table = Answers.read(csv)
    truth, names = tomo.picks.coords, tomo.picks.table["label"].to_numpy()
    for i, row in table.table.iterrows():
        if row["answer"]:
            continue
        d = np.linalg.norm(truth - np.array([row.x, row.y, row.z]), axis=1)
        j = int(d.argmin())
        table.table.loc[i, "answer"] = ("yes" if names[j] == target else "no") if d[j] <= radius else "no"
    table.write(csv)
    return table


def test_cli_ask3d_answers_pick3d_loop(sim, tmp_path, capsys):
    from cryopick.cli.main import main as cli
    from cryopick.io.coords import read_picks

    root, classes, tomos = sim
    truth0 = read_picks(root / "truth0.coords").coords
    prompt = tmp_path / "target.prompt"
    assert cli(["prompt", "--tomogram", str(root / "tomos" / "ts0.mrc"), "--at", ",".join(map(str, truth0[0])),
                "--diameter", f"{classes[0].diameter:.0f}", "--label", "target", "-o", str(prompt),
                "--threads", "1"]) == 0
    q = tmp_path / "questions"
    ask = ["ask3d", "--prompt", str(prompt), "--tomogram", str(root / "tomos" / "ts0.mrc"), "-k", "4", "-o", str(q),
           "--threads", "1"]
    assert cli(ask) == 0
    # other log handlers (e.g. one a library installed) may write to stdout too: find the line
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("expected from the answers")]
    assert len(said) == 1 and said[0].startswith("expected from the answers (leave-one-out): target: no answer yet")
    first = Answers.read(q / "answers.csv")
    assert len(first) == 4 and (first.table["answer"] == "").all() and (first.table["label"] == "target").all()
    assert all((q / img).is_file() for img in first.table["image"])
    assert (q / ".cryopick" / "candidates.npz").is_file()
    radius = classes[0].diameter / 10.0 / 2
    _answer_from_truth(q / "answers.csv", tomos[0], classes[0].name, radius)
    with pytest.MonkeyPatch.context() as mp:  # the next round reuses the candidates: no segmentation
        mp.setattr("cryopick.picker3d.pick.segment", lambda *a, **k: pytest.fail("segmented again"))
        assert cli(ask) == 0  # 4 new questions, none asked before
    second = Answers.read(q / "answers.csv")
    assert len(second) == 8 and (second.table["answer"][4:] == "").all()
    pairs = second.coords()
    assert min(np.linalg.norm(pairs[i] - pairs[j]) for i in range(8) for j in range(i)) > 0
    table = _answer_from_truth(q / "answers.csv", tomos[0], classes[0].name, radius)
    if not {"yes", "no"} <= set(table.table["answer"]):  # the simulated user must have said both
        pytest.skip("questions gave only one kind of answer on this tiny tomogram")
    out = tmp_path / "picks"
    assert cli(["pick3d", "--prompt", str(prompt), "--tomograms", str(root / "tomos"), "-o", str(out),
                "--answers", str(q), "--format", "imod", "--threads", "1"]) == 0
    said = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("expected from the answers")]
    line = said[-1]  # pick3d's (the rounds of ask3d above said theirs)
    # Two yes besides the prompt are too few to replace the settings (fallback.MIN_POSITIVES): the class is
    # picked with its settings, and the user reads so with the numbers the answers give.
    n_yes = int((table.table["answer"] == "yes").sum())
    assert n_yes < 3 and line.startswith("expected from the answers (leave-one-out): target: settings, precision")
    assert f"{n_yes + 1} yes of" in line
    assert not (out / "adapted" / "target.adapted.npz").exists()
    assert len(read_picks(out / "imod" / "target" / "ts1.coords")) > 0
    # On the answered tomogram the answers are the truth: every yes is picked, no pick sits on a no.
    picks0 = read_picks(out / "imod" / "target" / "ts0.coords").coords
    yes = table.coords()[(table.table["answer"] == "yes").to_numpy()]
    no = table.coords()[(table.table["answer"] == "no").to_numpy()]
    dist = np.linalg.norm(picks0[:, None] - yes[None], axis=2)
    assert (dist.min(0) <= radius + 0.5).all()  # each yes has a pick
    on_no = np.linalg.norm(picks0[:, None] - no[None], axis=2).min(1) < radius - 0.5
    assert (dist[on_no].min(1) <= radius + 0.5).all() if on_no.any() else True  # a pick on a no only where a yes is


def test_pick3d_answers_errors(sim, tmp_path, capsys):
    from cryopick.cli.main import main as cli

    root, classes, _ = sim
    prompt = tmp_path / "p.prompt"
    assert cli(["prompt", "--tomogram", str(root / "tomos" / "ts0.mrc"), "--at", "40,40,24", "--diameter", "180",
                "--label", "p", "-o", str(prompt), "--threads", "1"]) == 0
    csv = tmp_path / "answers.csv"
    csv.write_text("tomogram,label,x,y,z,answer\nelsewhere,p,1,2,3,yes\n")
    code = cli(["pick3d", "--prompt", str(prompt), "--tomograms", str(root / "tomos"), "-o", str(tmp_path / "o"),
                "--answers", str(csv), "--threads", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "'elsewhere'" in err and "--tomograms" in err and "Traceback" not in err
    csv.write_text("tomogram,label,x,y,z,answer\nts0,p,1,2,3,\n")
    code = cli(["pick3d", "--prompt", str(prompt), "--tomograms", str(root / "tomos"), "-o", str(tmp_path / "o"),
                "--answers", str(csv), "--threads", "1"])
    assert code != 0 and "no answered question yet" in capsys.readouterr().err
    code = cli(["pick3d", "--prompt", str(prompt), "--tomograms", str(root / "tomos"), "-o", str(tmp_path / "o"),
                "--adapted", str(tmp_path / "none.adapted.npz"), "--threads", "1"])
    assert code != 0 and "no such adapted-model file" in capsys.readouterr().err
    for bad in (["--tomogram", str(tmp_path / "missing.mrc")],
                ["--tomogram", str(root / "tomos" / "ts0.mrc"), "--answers", str(tmp_path / "answers.csv"),
                 "--settings", str(tmp_path / "nothing.json")]):
        code = cli(["ask3d", "--prompt", str(prompt), *bad, "-o", str(tmp_path / "q_bad"), "--threads", "1"])
        err = capsys.readouterr().err
        assert code != 0 and err.count("\n") == 1 and "Traceback" not in err
        assert not (tmp_path / "q_bad").exists()  # nothing created for a run that cannot start
    with pytest.raises(SystemExit) as exit_:
        cli(["ask3d", "--prompt", str(prompt), "--tomogram", str(root / "tomos" / "ts0.mrc"), "-k", "0",
             "-o", str(tmp_path / "q")])
    assert exit_.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_answers_separate_two_simulated_classes_the_unadapted_picker_confuses(sim):
    """End to end with the shipped network on simulated tomograms: the un-adapted picker (similarity
    to the prompt) prefers the other class; 8 questions answered from the truth of ts0 make the
    adapted classifier pick the prompted class in ts1 (which gave no answer)."""
    from scipy.stats import rankdata

    from cryopick.io.images import Image
    from cryopick.picker3d.prompt import Prompt, cut_prompt
    from cryopick.picker3d.questions import AnswerSession

    _, classes, tomos = sim
    target, d = classes[0].name, classes[0].diameter / 10.0
    at = tomos[0].picks.coords[(tomos[0].picks.table["label"] == target).to_numpy()][0]
    prompt = Prompt(cut_prompt(tomos[0].volume, at)[None], at[None], "ts0", 10.0, 1.0, d, "target")
    session = AnswerSession([prompt], progress=False)
    names = [session.add_tomogram(Image(t.volume, 10.0, Path(f"{t.name}.mrc"))) for t in tomos]

    def kind(tomo, coords):  # 1 = the prompted class, 2 = the other class, 0 = background
        dist = np.linalg.norm(coords[:, None] - tomo.picks.coords[None], axis=2)
        same = tomo.picks.table["label"].to_numpy()[dist.argmin(1)] == target
        return np.where(dist.min(1) <= d / 2, np.where(same, 1, 2), 0)

    pool = session.pools[(names[1], "target")]
    truth = kind(tomos[1], pool.coords)
    particles = truth > 0
    assert (truth == 1).sum() >= 4 and (truth == 2).sum() >= 4

    def auc(score):
        y, r = truth[particles] == 1, rankdata(score[particles])
        return (r[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum())

    unadapted = session.adapt()["target"]
    kept = unadapted.predict(pool) >= unadapted.threshold
    assert auc(unadapted.predict(pool)) < 0.3 and (truth[kept] == 1).sum() <= (truth[kept] == 2).sum()
    questions = session.ask(8, tomogram=names[0])
    questions.table["answer"] = [("no", "yes", "other")[k] for k in kind(tomos[0], questions.coords())]
    adapted = session.adapt(questions)["target"]
    p = adapted.predict(pool)
    kept = p >= adapted.threshold
    assert auc(p) > 0.8
    assert (truth[kept] == 1).sum() >= 0.75 * (truth == 1).sum() and (truth[kept] == 1).mean() >= 0.6


def test_later_rounds_with_two_prompts_never_segment_again(sim, monkeypatch):
    """An answer about one class labels the other too; its features there are measured in the first
    pass, so a round from the cached candidates (no map) does not segment the tomogram again."""
    from cryopick.io.images import Image
    from cryopick.picker3d.prompt import Prompt, cut_prompt
    from cryopick.picker3d.questions import AnswerSession
    from cryopick.picker3d.settings import PickSettings

    def work_prompts(session, name):
        return np.concatenate([session.frames[name][0].to_working(q.positions) for q in session.prompts])

    _, classes, tomos = sim
    t = tomos[0]
    prompts = []
    for c, label in zip(classes, ("a", "b")):
        at = t.picks.coords[(t.picks.table["label"] == c.name).to_numpy()][0]
        prompts.append(Prompt(cut_prompt(t.volume, at)[None], at[None], "ts0", 10.0, 1.0, c.diameter / 10, label))
    image = Image(t.volume, 10.0, Path("ts0.mrc"))
    settings = [PickSettings(threshold=0.9), PickSettings(threshold=0.1)]  # b's map: more candidates than a's
    first = AnswerSession(prompts, settings=settings, progress=False)
    name = first.add_tomogram(image)
    questions = first.ask(3, tomogram=name)
    questions.table["answer"] = ["yes", "no", "b", "no", "yes", "a"][: len(questions)]
    # and a question about a position only b's map found (a's features there: measured in the first pass)
    a_at = np.concatenate([first.pools[(name, "a")].coords, work_prompts(first, name)])
    b_at = first.pools[(name, "b")].coords
    only_b = b_at[np.linalg.norm(b_at[:, None] - a_at[None], axis=2).min(1) > 2]
    assert len(only_b)
    extra = questions.table.iloc[:1].assign(label="b", answer="no", x=only_b[0][0], y=only_b[0][1], z=only_b[0][2])
    questions.table = pd.concat([questions.table, extra], ignore_index=True)
    later = AnswerSession(prompts, model=first.model, settings=settings, progress=False)
    monkeypatch.setattr("cryopick.picker3d.pick.segment", lambda *a, **k: pytest.fail("segmented again"))
    later.add_tomogram(image, pools=first.saved_pools(name))
    adapted = later.adapt(questions)
    assert not later.measured and set(adapted) == {"a", "b"}
    for label in "ab":  # each class learned from both classes' answers
        assert adapted[label].info["n_positive"] + adapted[label].info["n_negative"] > 3 + 1
