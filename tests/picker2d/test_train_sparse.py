"""Sparse annotation found by itself (issue 27 item 1): a few clicks on micrographs full of particles are
trained as positive-unlabelled, and a validation metric that cannot be measured neither stops training early
nor sets the threshold."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from cryopick.io.images import write_mrc
from cryopick.picker2d.calibrate import DEFAULT_THRESHOLD
from cryopick.picker2d.train import TrainConfig, WorkingScale, train_from_files, train_picker
from cryopick.picker2d.train import loop as train_loop
from cryopick.picker2d.train.data import assign_validation_strips
from cryopick.picker2d.train.sparse import detect_sparse_annotation
from tests.picker2d.test_train import TINY, synthetic_micrograph, training_micrographs


def _write_set(folder, n=3, clicks=None, seed=0, size=192, particles=40):
    """``n`` synthetic micrographs (MRC) and their coordinates (all, or the first ``clicks``) as CryoPPP CSV."""
    (folder / "mics").mkdir(parents=True)
    (folder / "coords").mkdir()
    truth = {}
    for i in range(n):
        image, centres = synthetic_micrograph(seed + i, size=size, n=particles)
        write_mrc(folder / "mics" / f"m{i}.mrc", image, pixel_size=2.0)
        truth[f"m{i}"] = centres
        keep = centres if clicks is None else centres[:clicks]
        rows = "\n".join(f"{x:.2f},{y:.2f},12" for x, y in keep)
        (folder / "coords" / f"m{i}.csv").write_text("X-Coordinate,Y-Coordinate,Diameter\n" + rows + "\n")
    return truth


def test_the_rule_tells_a_few_clicks_from_a_complete_annotation():
    mics = training_micrographs(3, size=192, n=40)
    full = detect_sparse_annotation(mics, 12.0)
    assert not full.sparse
    assert 0.6 * 40 <= full.per_micrograph <= 1.5 * 40, full.counts
    for m in mics:
        m.coords = m.coords[:4]
    few = detect_sparse_annotation(mics, 12.0)
    assert few.sparse and few.annotated == 4
    assert 0.6 * 40 <= few.per_micrograph <= 1.5 * 40, few.counts
    assert few.message() == (f"sparse annotation detected: ~{few.per_micrograph:.0f} particles per micrograph, "
                             "4 annotated → positive-unlabelled training")


def test_dark_particles_are_counted_like_bright_ones():
    mics = training_micrographs(3, size=192, n=40)
    for m in mics:
        m.image = -m.image
        m.coords = m.coords[:4]
    found = detect_sparse_annotation(mics, 12.0)
    assert found.sparse and 0.6 * 40 <= found.per_micrograph <= 1.5 * 40, found.counts


@pytest.fixture
def captured(monkeypatch):
    """train_from_files up to the training call: the config and notes it would train with."""
    seen = {}

    def fake(mics, scale, output_dir, config, resume=True, notes=None):
        seen.update(config=config, notes=notes, mics=mics)
        return None

    monkeypatch.setattr("cryopick.picker2d.train.train_picker", fake)
    return seen


def test_train_from_files_switches_to_positive_unlabelled_and_says_so(tmp_path, captured, caplog):
    _write_set(tmp_path, clicks=5)
    with caplog.at_level("INFO"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_from_files(tmp_path / "mics", tmp_path / "coords", 12.0, tmp_path / "model",
                         config=TrainConfig(target_diameter=12.0, progress=False))
    config, notes = captured["config"], captured["notes"]
    # ~40 per micrograph estimated, 5 annotated: the labelled fraction is about 5/40
    assert 5 / 60 <= config.labelled_fraction <= 5 / 24, config.labelled_fraction
    assert notes and notes[0].startswith("sparse annotation detected: ~")
    assert "5 annotated → positive-unlabelled training" in notes[0]
    assert any(r.getMessage().startswith("sparse annotation detected: ~") for r in caplog.records)


def test_complete_annotation_and_the_off_switch_train_as_complete(tmp_path, captured):
    _write_set(tmp_path / "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_from_files(tmp_path / "full" / "mics", tmp_path / "full" / "coords", 12.0, tmp_path / "m1",
                         config=TrainConfig(target_diameter=12.0, progress=False))
    assert captured["config"].labelled_fraction == 1.0 and captured["notes"] == []
    _write_set(tmp_path / "few", clicks=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_from_files(tmp_path / "few" / "mics", tmp_path / "few" / "coords", 12.0, tmp_path / "m2",
                         config=TrainConfig(target_diameter=12.0, progress=False), detect_sparse=False)
    assert captured["config"].labelled_fraction == 1.0 and captured["notes"] == []


def test_a_validation_strip_without_labels_neither_stops_early_nor_calibrates(tmp_path):
    """Two clicks per micrograph, none in the held-out strips: F1 there is not a measurement. Before the fix
    every epoch scored 0.000, training stopped after ``patience`` epochs and shipped epoch 0."""
    mics = training_micrographs(2)
    assign_validation_strips(mics, 0.2, seed=0)  # the strips training will hold out (same seed)
    for m in mics:
        m.coords = m.coords[~m.in_val(m.coords, margin=-6.0)][:2]  # clicks outside them (and their context)
        assert len(m.coords) == 2
    scale = WorkingScale.from_diameter(12.0, pixel_size=2.0, target_diameter=12.0)
    config = TrainConfig(**dict(TINY, epochs=4, patience=1, self_training=False, val_fraction=0.2))
    card = train_picker(mics, scale, tmp_path / "model", config)
    t = card.training
    assert t["epochs_run"] == 4 and t["stopped"] == "epochs" and t["best_epoch"] == 3
    assert t["best_val_f1"] is None and all(h["f1"] is None for h in t["history"])
    assert card.score_threshold == DEFAULT_THRESHOLD and card.calibration["f1"] is None
    assert all(m.val_box is None for m in mics)  # the few labels all train
    saved = json.loads((tmp_path / "model" / "card.json").read_text())
    assert saved["notes"] and saved["notes"][0].startswith("validation cannot be measured: ")
    assert "no early stopping" in saved["notes"][0] and "default score threshold 0.5" in saved["notes"][0]


def test_sparse_labels_need_ten_held_out_to_validate(tmp_path):
    """With a labelled fraction below 1, a handful of held-out labels estimates precision at chance."""
    mics = training_micrographs(2)
    scale = WorkingScale.from_diameter(12.0, pixel_size=2.0, target_diameter=12.0)
    config = TrainConfig(**dict(TINY, epochs=2, patience=1, self_training=False, labelled_fraction=0.5,
                                val_fraction=0.05))
    run = train_loop._Run(mics, scale, tmp_path / "model", config, resume=False)
    assert not run.has_val and run.validation_mode == "none"
    assert "at least 10 needed with sparse labels" in run.notes[0]
    mics = training_micrographs(2)
    run = train_loop._Run(mics, scale, tmp_path / "model2", TrainConfig(**dict(config.__dict__, labelled_fraction=1.0)),
                          resume=False)
    assert run.has_val and not run.notes  # complete labels: one held-out label measures F1


def _simulated_set(root, seeds, n_particles=70):
    """Simulated micrographs (one 150 Å dihedral particle at 3 Å/px: 50 px) as MRC files; their truth."""
    from cryopick.simulate.micrograph import simulate_micrograph
    from cryopick.simulate.shapes import procedural_class

    cls = procedural_class("test", "dihedral", 150.0, 3.0, 101)
    root.mkdir(parents=True)
    truth = {}
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = simulate_micrograph([cls], shape=(640, 640), pixel_size=3.0, seed=seed, n_particles=n_particles,
                                    crowding=0.3, dose=20.0)
        write_mrc(root / f"s{seed}.mrc", m.image, pixel_size=3.0)
        truth[f"s{seed}"] = m.picks.coords
    return truth


def _f1_on(model_dir, folder, truth, diameter):
    from cryopick.evaluate.matching import match_points
    from cryopick.picker2d.pick import Picker

    picker = Picker(model_dir, num_threads=1)
    tp = n_pred = n_truth = 0
    for name, xy in truth.items():
        picker.set_image(folder / f"{name}.mrc", name=name)
        picks = picker.predict().coords
        tp += match_points(picks, xy, 0.5 * diameter).tp
        n_pred, n_truth = n_pred + len(picks), n_truth + len(xy)
    return 2 * tp / max(n_pred + n_truth, 1)


@pytest.mark.slow
def test_five_clicks_on_three_micrographs_train_nearly_as_well_as_full_annotation(tmp_path):
    """The app's most common path (issue 27): 5 clicks on each of 3 micrographs full of particles, nothing
    else said. Trained by itself as positive-unlabelled, it must reach 0.8 of full annotation's F1 on
    held-out simulated micrographs."""
    from cryopick.picks import Picks, concat

    train = _simulated_set(tmp_path / "train", (700, 701, 702))
    test = _simulated_set(tmp_path / "test", (710, 711))
    rng = np.random.default_rng(0)
    clicks = {n: xy[rng.choice(len(xy), 5, replace=False)] for n, xy in train.items()}
    settings = dict(epochs=8, steps_per_epoch=20, batch_size=4, patch_size=96, max_minutes=None, num_threads=1,
                    progress=False, bf16=False, seed=0)
    f1 = {}
    for kind, coords in (("full", train), ("clicks", clicks)):
        picks = concat([Picks.from_arrays(n, xy, diameter=50.0) for n, xy in coords.items()])
        card = train_from_files(tmp_path / "train", picks, 50.0, tmp_path / kind, config=TrainConfig(**settings))
        f1[kind] = _f1_on(tmp_path / kind, tmp_path / "test", test, 50.0)
        if kind == "clicks":
            assert any(n.startswith("sparse annotation detected: ~") for n in card.notes), (card.notes, f1)
            assert card.training["config"]["labelled_fraction"] < 0.2
        else:
            assert not any("sparse" in n for n in card.notes), card.notes
    assert f1["full"] > 0.6, f1
    assert f1["clicks"] >= 0.8 * f1["full"], f1


def test_the_train_command_turns_detection_off_and_prints_the_card_notes(tmp_path, monkeypatch, capsys):
    import cryopick.picker2d.train as train2d
    from cryopick.cli.main import main as cli
    from cryopick.picker2d.card import ModelCard

    seen = {}

    def capture(*args, detect_sparse=True, **kwargs):
        seen["detect_sparse"] = detect_sparse
        return ModelCard(diameter=12.0, training={"epochs_run": 1, "wall_seconds": 1.0, "stopped": "epochs", "history": []},
                         notes=["sparse annotation detected: ~40 particles per micrograph, 5 annotated → "
                                "positive-unlabelled training"])

    monkeypatch.setattr(train2d, "train_from_files", capture)
    base = ["train", "--micrographs", str(tmp_path), "--coords", str(tmp_path), "--diameter", "10", "-o",
            str(tmp_path / "m"), "--no-progress"]
    assert cli(base) == 0 and seen["detect_sparse"] is True
    assert ("note: sparse annotation detected: ~40 particles per micrograph, 5 annotated → positive-unlabelled "
            "training") in capsys.readouterr().out.splitlines()
    assert cli(base + ["--no-sparse-detection"]) == 0 and seen["detect_sparse"] is False
