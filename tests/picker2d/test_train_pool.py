"""Self-training on the user's unannotated micrographs (the unlabelled pool): which micrographs form it,
that it never validates, its pseudo-labels, the stage that is shipped, resume, the card and the command."""

import logging
import warnings

import numpy as np
import pytest
import torch

from cryopick import CryopickError, Picks
from cryopick.cli.main import main as cli
from cryopick.io.coords import write_picks
from cryopick.io.images import write_mrc
from cryopick.picker2d.card import load_card
from cryopick.picker2d.train import TrainConfig, WorkingScale, load_training_set, train_picker
from cryopick.picker2d.train import loop as train_loop
from cryopick.picker2d.train.batches import POOL_SHARE, prepare_targets, sample_weights
from cryopick.picker2d.train.data import assign_validation, assign_validation_strips
from cryopick.picker2d.train.pool import choose_spread, shipped_stage
from cryopick.picker2d.train.pseudo import PSEUDO_NAME, load_pseudo_labels
from tests.picker2d.test_train import TINY, synthetic_micrograph, training_micrographs

SCALE = WorkingScale.from_diameter(12.0, target_diameter=12.0)
FAST = dict(TINY, epochs=2, steps_per_epoch=6)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def with_pool(n_labelled=2, n_pool=2, size=128, n=14):
    """``n_labelled`` annotated synthetic micrographs plus ``n_pool`` of the same kind without labels."""
    mics = training_micrographs(n_labelled + n_pool, size=size, n=n)
    for m in mics[n_labelled:]:
        m.coords = np.zeros((0, 2))
        m.unlabelled = True
        m.name = f"pool{m.name}"
    return mics


def write_set(folder, n, coords_for, start=0):
    """``n`` synthetic MRCs ``m{i}`` in ``folder``; RELION coordinates (in ``folder/coords``) for those in
    ``coords_for``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        image, centres = synthetic_micrograph(i, size=128, n=10)
        write_mrc(folder / f"m{i}.mrc", image, pixel_size=2.0)
        if i in coords_for:
            write_picks(Picks.from_arrays(f"m{i}", centres), folder.parent / "coords" / f"m{i}.star", "relion")
    return folder.parent / "coords"


# -- which micrographs form the pool -------------------------------------------------------------------
def test_micrographs_without_coordinates_become_the_pool_when_asked(tmp_path, caplog):
    coords = write_set(tmp_path / "mics", 4, coords_for={0, 1})
    from cryopick.picker2d.train import read_coordinates

    caplog.set_level(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a pool, an info line, not a warning
        mics = load_training_set(tmp_path / "mics", read_coordinates(coords, "relion"), SCALE, unlabelled_max=16)
    assert [(m.name, m.unlabelled) for m in mics] == [("m0", False), ("m1", False), ("m2", True), ("m3", True)]
    assert all(len(m.coords) == 0 and not m.negative for m in mics[2:])
    assert mics[2].image.shape == mics[0].image.shape  # loaded at the working scale like the others
    assert "2 micrograph(s) have no coordinates" in caplog.text and "used as unannotated micrographs" in caplog.text
    # off by default: skipped, with a warning that says how to use them
    with pytest.warns(UserWarning, match=r"no coordinates and are not used.*--unlabelled-max N"):
        none = load_training_set(tmp_path / "mics", read_coordinates(coords, "relion"), SCALE)
    assert [m.name for m in none] == ["m0", "m1"] and TrainConfig().unlabelled_max == 0


def test_explicit_unlabelled_micrographs_join_the_pool_capped(tmp_path):
    from cryopick.picker2d.train import read_coordinates

    coords = write_set(tmp_path / "mics", 2, coords_for={0, 1})
    write_set(tmp_path / "more", 6, coords_for=set(), start=10)
    write_mrc(tmp_path / "more" / "m0.mrc", synthetic_micrograph(0, size=128)[0], pixel_size=2.0)  # annotated name
    picks = read_coordinates(coords, "relion")
    with pytest.raises(CryopickError, match=r"--unlabelled .*off.*--unlabelled-max N"):
        load_training_set(tmp_path / "mics", picks, SCALE, unlabelled=tmp_path / "more")  # pool off (default)
    mics = load_training_set(tmp_path / "mics", picks, SCALE, unlabelled=tmp_path / "more", unlabelled_max=16)
    pool = [m.name for m in mics if m.unlabelled]
    assert pool == [f"m{i}" for i in range(10, 16)]  # the annotated m0 is not in the pool
    capped = load_training_set(tmp_path / "mics", picks, SCALE, unlabelled=str(tmp_path / "more" / "m1*.mrc"),
                               unlabelled_max=3, seed=4)
    chosen = [m.name for m in capped if m.unlabelled]
    assert len(chosen) == 3 and chosen == sorted(chosen)
    again = load_training_set(tmp_path / "mics", picks, SCALE, unlabelled=str(tmp_path / "more" / "m1*.mrc"),
                              unlabelled_max=3, seed=4)
    assert [m.name for m in again if m.unlabelled] == chosen  # deterministic for a seed
    with pytest.raises(CryopickError, match="no such file"):
        load_training_set(tmp_path / "mics", picks, SCALE, unlabelled=[tmp_path / "missing.mrc"], unlabelled_max=4)


def test_the_pool_is_chosen_spread_over_the_list():
    items = list(range(100))
    chosen = choose_spread(items, 10, seed=0)
    assert len(chosen) == 10 and [c // 10 for c in chosen] == list(range(10))  # one from each tenth
    assert choose_spread(items, 10, seed=0) == chosen and choose_spread(items, 10, seed=1) != chosen
    assert choose_spread(items[:5], 10) == items[:5] and choose_spread(items, 0) == []


def test_unlabelled_max_is_validated():
    for bad in (-1, 2.5, float("nan")):
        with pytest.raises(CryopickError, match=r"unlabelled_max \(--unlabelled-max\)"):
            TrainConfig(unlabelled_max=bad).validate()
    TrainConfig(unlabelled_max=0).validate()


# -- never validated on, never background --------------------------------------------------------------
def test_the_pool_is_never_held_out_for_validation():
    mics = with_pool(3, 3)
    assign_validation_strips(mics, 0.2)
    assert all(m.val_box is None for m in mics if m.unlabelled) and all(m.val_box for m in mics[:3])
    assert assign_validation(mics, 0.34) == "micrographs"
    assert all(m.val_box is None for m in mics if m.unlabelled) and sum(m.val_box is not None for m in mics) == 1


def test_the_pool_weighs_nothing_until_it_has_pseudo_labels_and_at_most_half_after():
    mics = with_pool(1, 3)
    targets = prepare_targets(mics, 3.0)
    assert all(t[1].sum() == 0 for t in targets[1:])  # not trained on as background
    p = sample_weights(mics, targets)
    assert p[0] == 1.0
    for m in mics[1:]:
        m.train_coords = np.array([[30.0, 30.0]])
    mics[3].train_coords = np.zeros((0, 2))  # no pick on it: still weighs nothing
    mics[2].ignore_coords = np.array([[60.0, 60.0]])
    targets = prepare_targets(mics, 3.0, ignore_radius=6.0)
    assert targets[3][1].sum() == 0 and targets[1][1].all()
    assert targets[2][1][60, 60] == 0 and targets[2][1][60, 67] == 1  # uncertain pick left out of the loss
    p = sample_weights(mics, targets)
    assert p[1:].sum() == pytest.approx(POOL_SHARE) and p[0] == pytest.approx(1 - POOL_SHARE)


# -- the two stages ------------------------------------------------------------------------------------
def test_shipped_stage_is_the_best_on_validation():
    rec = lambda f1: {"stage": "x", "calibration": {"f1": f1}}  # noqa: E731
    assert shipped_stage([rec(0.8), rec(0.9)], True) == 1
    assert shipped_stage([rec(0.8), rec(0.7)], True) == 0
    assert shipped_stage([rec(0.8), rec(0.8)], True) == 0  # a tie keeps the first network
    assert shipped_stage([rec(0.8), rec(0.7)], False) == 1  # sparse labels: the self-training stage, as before
    assert shipped_stage([rec(None), rec(0.7)], True) == 1


def test_pool_pseudo_labels_train_a_second_stage_and_the_card_says_so(tmp_path, monkeypatch):
    seen = {}
    original = train_loop.make_pseudo_labels

    def spy(model, mics, threshold, records, path, **kw):
        original(model, mics, threshold, records, path, **kw)
        seen["file"] = path.is_file()
        seen["pool"] = {m.name: None if m.train_coords is None else len(m.train_coords) for m in mics}

    monkeypatch.setattr(train_loop, "make_pseudo_labels", spy)
    mics = with_pool(2, 2)
    truth = {m.name: t.coords for m, t in zip(mics, training_micrographs(4, size=128, n=14))}
    card = train_picker(mics, SCALE, tmp_path / "m", TrainConfig(**dict(TINY, epochs=3, steps_per_epoch=8)))
    assert card.training["stages"] == ["bce", "self-training"]
    assert seen["file"] and seen["pool"]["mic0"] is None and seen["pool"]["mic1"] is None  # labels kept as they are
    for m in mics[2:]:  # the pool got the first network's picks as labels, nearly all of them particles
        d = np.hypot(*(m.train_coords[:, None] - truth[m.name][None]).transpose(2, 0, 1)).min(axis=1)
        assert seen["pool"][m.name] == len(m.train_coords) >= 10 and (d < 6).mean() > 0.8
    pool = load_card(tmp_path / "m").training["unlabelled_pool"]
    assert pool["names"] == ["poolmic2", "poolmic3"] and pool["n_micrographs"] == 2 and pool["used"]
    assert pool["n_pseudo_labels"] == seen["pool"]["poolmic2"] + seen["pool"]["poolmic3"]
    f1 = pool["stage_validation_f1"]
    assert len(f1) == 2 and pool["shipped_stage"] == shipped_stage([{"calibration": {"f1": f}} for f in f1], True) + 1
    assert card.calibration["f1"] == max(f1)  # never worse than stage 1 on validation
    assert card.data["n_micrographs"] == 2 and card.data["unlabelled_micrographs"] == ["poolmic2", "poolmic3"]
    assert "unannotated" in card.training["sparse_handling"]
    assert not (tmp_path / "m" / PSEUDO_NAME).exists() and not (tmp_path / "m" / "previous_stage.pt").exists()


def test_the_first_stage_is_shipped_when_self_training_validates_worse(tmp_path, monkeypatch):
    original, original_save = train_loop._Run._calibrate, train_loop.save_checkpoint
    calls, kept = {"n": 0}, {}

    def calibrate(self, model):
        calibration, threshold = original(self, model)
        calls["n"] += 1
        if calls["n"] == 2:  # the second stage validates worse
            calibration = {**calibration, "f1": calibration["f1"] - 0.5, "threshold": 0.987}
        return calibration, threshold

    def save(path, state):
        original_save(path, state)
        if path.name == "previous_stage.pt":
            kept.update({k: v.clone() for k, v in state.items()})

    monkeypatch.setattr(train_loop._Run, "_calibrate", calibrate)
    monkeypatch.setattr(train_loop, "save_checkpoint", save)
    card = train_picker(with_pool(2, 2), SCALE, tmp_path / "m", TrainConfig(**FAST))
    first = card.training["earlier_stages"][0]
    assert card.training["shipped_stage"] == 1 and card.training["unlabelled_pool"]["shipped"] == "bce"
    assert card.score_threshold == first["calibration"]["threshold"] != 0.987
    assert card.calibration == first["calibration"]
    assert (card.training["best_epoch"], card.training["best_val_f1"], card.training["stopped"]) == (
        first["best_epoch"], first["best_val_f1"], first["stopped"])  # the card describes the shipped stage
    shipped = torch.load(tmp_path / "m" / "model.pt", weights_only=True)  # the first stage's weights again
    assert kept and all(torch.equal(shipped[k], v) for k, v in kept.items())


def test_no_pool_and_sparse_labels_keep_their_stages(tmp_path):
    card = train_picker(training_micrographs(2, size=128, n=14), SCALE, tmp_path / "a", TrainConfig(**FAST))
    assert card.training["stages"] == ["bce"] and card.training["unlabelled_pool"] is None
    mics = with_pool(2, 1)
    for m in mics[:2]:
        m.coords = m.coords[::2]
    card = train_picker(mics, SCALE, tmp_path / "b", TrainConfig(**dict(FAST, labelled_fraction=0.5)))
    assert card.training["stages"] == ["pu", "self-training"] and card.training["shipped_stage"] == 2
    assert card.training["unlabelled_pool"]["n_pseudo_labels"] > 0
    off = train_picker(with_pool(2, 1), SCALE, tmp_path / "c", TrainConfig(**dict(FAST, self_training=False)))
    assert off.training["stages"] == ["bce"] and not off.training["unlabelled_pool"]["used"]


# -- resume ------------------------------------------------------------------------------------------
def test_an_interrupted_pool_stage_resumes_with_the_same_pseudo_labels(tmp_path, monkeypatch):
    config = dict(FAST, epochs=2, steps_per_epoch=4)
    reference = train_picker(with_pool(2, 2), SCALE, tmp_path / "ref", TrainConfig(**config))
    original = train_loop.save_checkpoint
    calls = {"n": 0}

    def save_then_crash(path, state):
        original(path, state)
        calls["n"] += 1
        if calls["n"] == 4:  # 2 epochs of stage 1, the stage-1 weights, then the first epoch of stage 2
            raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_picker(with_pool(2, 2), SCALE, tmp_path / "run", TrainConfig(**config))
    monkeypatch.setattr(train_loop, "save_checkpoint", original)
    run = tmp_path / "run"
    assert torch.load(run / "checkpoint.pt", weights_only=False)["stage"] == 1
    stored = with_pool(2, 2)
    load_pseudo_labels(run / PSEUDO_NAME, stored)
    with pytest.raises(CryopickError, match="another unlabelled pool"):
        train_picker(with_pool(2, 1), SCALE, run, TrainConfig(**config))
    resumed = train_picker(with_pool(2, 2), SCALE, run, TrainConfig(**config))
    assert resumed.training["unlabelled_pool"]["pseudo_labels_per_micrograph"] == {
        m.name: len(m.train_coords) for m in stored if m.unlabelled}
    ref_pool, res_pool = reference.training["unlabelled_pool"], resumed.training["unlabelled_pool"]
    assert res_pool["pseudo_labels_per_micrograph"] == ref_pool["pseudo_labels_per_micrograph"]
    assert res_pool["stage_validation_f1"] == pytest.approx(ref_pool["stage_validation_f1"])
    np.testing.assert_allclose([h["loss"] for h in resumed.training["history"]],
                               [h["loss"] for h in reference.training["history"]], rtol=1e-5)
    assert resumed.score_threshold == pytest.approx(reference.score_threshold)


def test_train_from_files_with_unlabelled_micrographs(tmp_path, caplog):
    from cryopick.picker2d.train import train_from_files

    coords = write_set(tmp_path / "mics", 3, coords_for={0, 1})
    write_set(tmp_path / "more", 2, coords_for=set(), start=10)
    caplog.set_level(logging.INFO)
    card = train_from_files(tmp_path / "mics", coords, 12.0, tmp_path / "m", coords_format="relion",
                            unlabelled=[tmp_path / "more" / "m10.mrc", tmp_path / "more" / "m11.mrc"],
                            config=TrainConfig(**dict(FAST, unlabelled_max=2, seed=1)))
    pool = card.training["unlabelled_pool"]
    assert pool["n_micrographs"] == 2 and len(set(pool["names"]) - {"m2", "m10", "m11"}) == 0 and pool["used"]
    assert pool["sources"][0].endswith(".mrc") and card.data["n_micrographs"] == 2
    assert "2 of 3 chosen (unlabelled_max 2)" in caplog.text and "+ 2 unannotated" in caplog.text
    assert card.training["config"]["unlabelled_max"] == 2


# -- the command ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "1.5", "nan", "x"])
def test_the_train_command_checks_unlabelled_max(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as info:
        cli(["train", "--micrographs", str(tmp_path), "--coords", str(tmp_path), "--diameter", "10", "-o",
             str(tmp_path / "m"), "--unlabelled-max", value])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--unlabelled-max" in err and "Traceback" not in err


def test_the_train_command_states_the_library_default():
    import re

    from tests.picker2d.test_train_trust import _subparser

    helps = {a.dest: a.help for a in _subparser("train")._actions}
    assert int(re.search(r"default (\d+)", helps["unlabelled_max"]).group(1)) == TrainConfig().unlabelled_max


def test_the_train_command_passes_the_pool_to_the_library(tmp_path, monkeypatch):
    import cryopick.picker2d.train as train2d

    seen = {}

    def capture(*args, config=None, unlabelled=None, **kwargs):
        seen.update(config=config, unlabelled=unlabelled)
        raise CryopickError("stop here")

    monkeypatch.setattr(train2d, "train_from_files", capture)
    base = ["train", "--micrographs", str(tmp_path), "--coords", str(tmp_path), "--diameter", "10", "-o",
            str(tmp_path / "m"), "--no-progress"]
    assert cli(base) == 2
    assert seen["unlabelled"] is None and seen["config"].unlabelled_max == TrainConfig().unlabelled_max
    assert cli(base + ["--unlabelled", "all/", "--unlabelled-max", "0"]) == 2
    assert seen["unlabelled"] == "all/" and seen["config"].unlabelled_max == 0
    assert cli(base + ["--unlabelled", "a.mrc", "b.mrc"]) == 2
    assert seen["unlabelled"] == ["a.mrc", "b.mrc"]
