"""2D training you can trust: a time budget that load cannot cut to one epoch (and says what it does),
thread choice, coordinates outside the image, bad options and damaged files as one-line errors,
training on a subset of an annotated folder, --coords globs, the training curve."""

import logging
import re

import numpy as np
import pytest
import torch

from cryopick import CryopickError, Picks
from cryopick.cli.main import build_parser
from cryopick.cli.main import main as cli
from cryopick.io.coords import write_picks
from cryopick.io.images import write_mrc
from cryopick.picker2d.card import load_card
from cryopick.picker2d.train import TrainConfig, WorkingScale, load_training_set, read_coordinates, train_picker
from cryopick.picker2d.train import loop as train_loop
from cryopick.picker2d.train.budget import StageBudget
from cryopick.picker2d.train.data import load_training_micrograph
from cryopick.runtime import CpuSample
from cryopick.training import BudgetClock
from tests.picker2d.test_train import TINY, training_micrographs

SCALE = WorkingScale.from_diameter(12.0, target_diameter=12.0)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def fake_clock(wall_per_tick: float, cpu_per_tick: float):
    """A BudgetClock class whose wall and CPU clocks advance by fixed amounts between ticks."""

    class FakeClock(BudgetClock):
        def __init__(self, used: float = 0.0) -> None:
            self.t = {"wall": 0.0, "cpu": 0.0}

            def wall():
                self.t["wall"] += wall_per_tick  # each tick reads each clock once
                return self.t["wall"]

            def cpu():
                self.t["cpu"] += cpu_per_tick
                return self.t["cpu"]

            super().__init__(used, wall=wall, cpu=cpu, machine=None)

    return FakeClock


def run(tmp_path, name="m", **overrides):
    config = TrainConfig(**{**TINY, "epochs": 6, "steps_per_epoch": 3, **overrides})
    return train_picker(training_micrographs(2, size=100, n=8), SCALE, tmp_path / name, config)


# -- the budget clock -----------------------------------------------------------------------------
def test_budget_clock_charges_wall_time_less_time_off_the_cpu():
    t = {"wall": 0.0, "cpu": 0.0}
    clock = BudgetClock(5.0, wall=lambda: t["wall"], cpu=lambda: t["cpu"], machine=None)
    t.update(wall=10.0, cpu=20.0)  # two busy threads on an idle machine: 10 s of wall time
    assert clock.tick() == pytest.approx(15.0)
    t.update(wall=130.0, cpu=30.0)  # a loaded machine gave us 10 s of CPU in 120 s
    assert clock.tick() == pytest.approx(25.0)


def test_budget_clock_charges_the_share_of_the_cores_others_left_free():
    """2 cores. Idle: two threads keep both busy -> wall time. One other busy process: our one thread
    has a whole core, but only half the machine's time is charged, so the loaded run is not cut to
    the epochs one thread fits in the budget. Counters unreadable: min(wall, CPU)."""
    t = {"wall": 0.0, "cpu": 0.0, "busy": 0.0, "total": 0.0, "known": True}
    clock = BudgetClock(0.0, wall=lambda: t["wall"], cpu=lambda: t["cpu"],
                        machine=lambda: (t["busy"], t["total"]) if t["known"] else None)

    def advance(wall, own, others, cores=2):
        t["wall"] += wall
        t["cpu"] += own
        t["busy"] += own + others
        t["total"] += cores * wall
        return clock.used, clock.tick()

    before, after = advance(10.0, own=19.0, others=0.0)  # idle, two threads
    assert after - before == pytest.approx(10.0)
    before, after = advance(10.0, own=10.0, others=10.0)  # one other busy process, our one thread
    assert after - before == pytest.approx(5.0)
    before, after = advance(30.0, own=20.0, others=40.0)  # two others: our thread gets 2/3 of a core
    assert after - before == pytest.approx(10.0)
    before, after = advance(10.0, own=0.5, others=0.0)  # waiting for the disk is not charged
    assert after - before == pytest.approx(0.5)
    t["known"] = False
    before, after = advance(10.0, own=10.0, others=10.0)  # the sample before or after is missing
    assert after - before == pytest.approx(10.0)
    t["known"] = True
    clock.tick()
    before, after = advance(10.0, own=10.0, others=10.0)
    assert after - before == pytest.approx(5.0)


def test_load_no_longer_cuts_training_to_one_epoch(tmp_path, monkeypatch):
    """The reported failure: the machine is so busy that wall time runs 12x faster than our CPU time.
    A wall-clock budget stopped after 1 epoch; the budget clock charges only the time we ran."""
    monkeypatch.setattr(train_loop, "BudgetClock", fake_clock(wall_per_tick=12.0, cpu_per_tick=1.0))
    card = run(tmp_path, max_minutes=1.5, min_epochs=1)  # ~9 ticks per epoch: 6 epochs = 54 charged s < 90
    assert card.training["epochs_run"] == 6 and card.training["stopped"] == "epochs"
    assert card.training["budget"]["cut_short"] is False
    assert card.training["budget"]["charged_minutes"] < card.training["budget"]["max_minutes"]


def test_budget_stop_warns_with_the_fix_and_is_recorded(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(train_loop, "BudgetClock", fake_clock(wall_per_tick=1.0, cpu_per_tick=1.0))
    caplog.set_level(logging.INFO)
    with pytest.warns(UserWarning, match=r"stopped by the time budget after \d of 6 epochs") as caught:
        card = run(tmp_path, max_minutes=0.5, min_epochs=1)  # 30 charged s, ~9 s per epoch
    message = str(caught[0].message)
    need = int(re.search(r"--max-minutes (\d+)", message.split("rerun with")[1]).group(1))
    assert need >= 1 and "--epochs" in message and "--redo" in message
    training = card.training
    assert 1 <= training["epochs_run"] < 6 and training["stopped"] == "time budget"
    assert training["epochs_requested"] == 6
    budget = load_card(tmp_path / "m").training["budget"]
    assert budget["cut_short"] is True and budget["warnings"] == [message] and budget["min_epochs"] == 1
    assert budget["estimates"][0]["epochs_that_fit"] < 6
    # Said up front (after the first steps) and again after the first epoch, with the fix.
    text = caplog.text
    assert "s per optimiser step with 1 thread" in text and "fits ~" in text
    assert "to train them all allow --max-minutes" in text


def test_minimum_epochs_are_trained_whatever_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "BudgetClock", fake_clock(wall_per_tick=100.0, cpu_per_tick=100.0))
    with pytest.warns(UserWarning, match="after 4 of 6 epochs"):
        card = run(tmp_path, max_minutes=0.1, min_epochs=4)
    assert card.training["epochs_run"] == 4


def test_no_budget_trains_every_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "BudgetClock", fake_clock(wall_per_tick=100.0, cpu_per_tick=100.0))
    card = run(tmp_path, max_minutes=None)
    assert card.training["epochs_run"] == 6 and card.training["budget"]["max_minutes"] is None


def test_stage_budget_shares_and_minimum():
    clock = BudgetClock(0.0, wall=lambda: 0.0, cpu=lambda: 0.0, machine=None)
    config = TrainConfig(epochs=10, max_minutes=10, min_epochs=3)
    first = StageBudget(config, clock, stage=0, n_stages=2, stage_start=0.0)
    assert first.limit == pytest.approx(300.0)  # half of 600 s for the first of two stages
    clock.used = 260.0
    assert first.should_stop(5, 40.0, 0.0)  # 260 + 1.15 * 40 > 300
    assert not first.should_stop(2, 40.0, 0.0)  # under the minimum of 3 epochs
    assert first.fits(5, 40.0, 0.0) == 5
    second = StageBudget(config, clock, stage=1, n_stages=2, stage_start=260.0)
    assert second.limit == pytest.approx(600.0)
    assert second.needed_minutes(0, 40.0, 0.0) == int(np.ceil((260 + 10 * 40 * 1.15) / 60))
    assert StageBudget(TrainConfig(epochs=2, min_epochs=5), clock).min_epochs == 2


def test_progress_counts_steps_within_an_epoch(tmp_path, monkeypatch):
    updates = []
    import tqdm.auto

    class Bar(tqdm.auto.tqdm):
        def update(self, n=1):
            updates.append((self.n, self.total, self.desc))
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    run(tmp_path, epochs=2, progress=True)
    assert updates[0][1] == 2 * 3  # total = epochs x steps
    assert len(updates) == 6 and "epoch 1/2" in updates[1][2] and "epoch 2/2" in updates[5][2]


# -- threads ----------------------------------------------------------------------------------------
def test_threads_follow_the_free_cores_and_are_recorded(tmp_path, monkeypatch):
    from cryopick import runtime

    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(runtime, "measure_busy_cores", lambda seconds: 1.0)
    # During the first epoch the other process finishes: the epoch's sample shows no other load.
    samples = iter([CpuSample(0.0, 0.0, 0.0, 0.0), CpuSample(10.0, 9.0, 9.0, 20.0)] + [None] * 20)
    monkeypatch.setattr(train_loop, "cpu_sample", lambda: next(samples))
    card = run(tmp_path, epochs=2, num_threads=None)
    notes = card.training["thread_choice"]
    assert notes[0] == "using 1 CPU thread: 2 cores, 1.0 busy with other processes"
    assert notes[1].startswith("after epoch 1 the load changed: using 2 CPU threads")
    assert [h["threads"] for h in card.training["history"]] == [1, 2]


# -- coordinates outside the image ------------------------------------------------------------------
def write_micrograph(path, size=96, seed=0):
    write_mrc(path, np.random.default_rng(seed).normal(0, 1, (size, size)).astype(np.float32), pixel_size=2.0)
    return path


def test_coordinates_outside_are_counted_per_file(tmp_path):
    mic = write_micrograph(tmp_path / "a.mrc")
    coords = np.array([[10, 10], [50, 50], [80, 20], [200, 10], [300, 40], [150, 150], [10, 400], [-20, 5], [99, 99]])
    picks = Picks.from_arrays("a", coords)
    scale = WorkingScale.from_diameter(12.0, target_diameter=12.0)
    with pytest.warns(UserWarning, match=r"a\.mrc: 6 of 9 coordinates lie outside the 96x96 px image and are not used"):
        mics = load_training_set([mic], picks, scale)
    assert len(mics[0].coords) == 3


def test_all_outside_is_an_error_naming_the_files_and_the_cause(tmp_path):
    mics = [write_micrograph(tmp_path / f"m{i}.mrc", seed=i) for i in range(2)]
    coords = np.array([[200.0, 300.0], [350.0, 100.0]])  # as if for a 4x larger micrograph
    picks = Picks.from_arrays(["m0", "m0", "m1", "m1"], np.concatenate([coords, coords]))
    with pytest.raises(CryopickError) as info:
        load_training_set(mics, picks, SCALE)
    message = str(info.value)
    assert "m0.mrc: 2 of 2" in message and "m1.mrc: 2 of 2" in message
    assert "convert --scale" in message and "--flip-y" in message and "\n" not in message


def test_a_micrograph_with_every_coordinate_outside_is_not_trained_as_background(tmp_path):
    mics = [write_micrograph(tmp_path / f"m{i}.mrc", seed=i) for i in range(2)]
    picks = Picks.from_arrays(["m0", "m0", "m1"], np.array([[20.0, 20.0], [60.0, 60.0], [500.0, 500.0]]))
    with pytest.warns(UserWarning, match=r"m1\.mrc: 1 of 1 coordinates .* so the micrograph is not used"):
        loaded = load_training_set(mics, picks, SCALE)
    assert [m.name for m in loaded] == ["m0"]


def test_a_diameter_that_does_not_fit_the_micrograph_is_an_error(tmp_path):
    mic = write_micrograph(tmp_path / "small.mrc", size=384)
    with pytest.raises(CryopickError, match=r"small\.mrc: a particle diameter of 5000 px does not fit this 384x384"):
        load_training_micrograph(mic, np.array([[10.0, 10.0]]), WorkingScale.from_diameter(5000.0))


# -- subsets and globs ----------------------------------------------------------------------------------
def test_coordinates_of_other_micrographs_are_skipped_with_a_note(tmp_path, caplog):
    (tmp_path / "mics").mkdir()
    mics = [write_micrograph(tmp_path / "mics" / f"m{i}.mrc", seed=i) for i in range(2)]
    for i in range(4):
        write_picks(Picks.from_arrays(f"m{i}", np.array([[20.0, 20.0], [60.0, 50.0]])),
                    tmp_path / "coords" / f"m{i}.star", "relion")
    caplog.set_level(logging.INFO)
    picks = read_coordinates(tmp_path / "coords", "relion")
    loaded = load_training_set(tmp_path / "mics", picks, SCALE)
    assert sorted(m.name for m in loaded) == ["m0", "m1"]
    assert "2 of 4 annotated micrographs are not among the micrographs given and are skipped (e.g. m2, m3)" in caplog.text
    assert len(read_coordinates(str(tmp_path / "coords" / "m[01].star"), "relion").micrographs) == 2
    with pytest.raises(CryopickError, match="matches no file"):
        read_coordinates(str(tmp_path / "coords" / "*.box"))
    with pytest.raises(CryopickError, match="its 2 micrograph name.*match no image of the 2 given"):
        load_training_set(mics, read_coordinates(str(tmp_path / "coords" / "m[23].star"), "relion"), SCALE)


# -- damaged files and bad settings ----------------------------------------------------------------
def test_bad_settings_are_one_line_errors():
    for bad, pattern in [(dict(epochs=0), r"epochs \(--epochs\) must be a whole number >= 1, got 0"),
                         (dict(lr=float("nan")), r"lr \(--lr\)"), (dict(max_minutes=-1), "max_minutes"),
                         (dict(val_fraction=1.0), "val_fraction"), (dict(target_diameter=1), "target_diameter"),
                         (dict(steps_per_epoch=2.5), "steps_per_epoch")]:
        with pytest.raises(CryopickError, match=pattern):
            TrainConfig(**bad).validate()
    TrainConfig(max_minutes=None).validate()


def test_a_damaged_checkpoint_says_how_to_start_over(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CryopickError, match=r"checkpoint.pt: the checkpoint of an unfinished run is unreadable .*"
                                            r"delete it, or rerun with --redo"):
        run(tmp_path)


def test_garbage_base_weights_are_named(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CryopickError, match=r"--checkpoint .*garbage\.pt: not usable as base weights of backbone"):
        run(tmp_path, checkpoint=str(garbage))
    with pytest.raises(CryopickError, match=r"--checkpoint .*missing\.pt: no such file"):
        run(tmp_path, checkpoint=str(tmp_path / "missing.pt"))


def test_output_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "m").write_text("x")
    with pytest.raises(CryopickError, match="is a file, not a model directory"):
        run(tmp_path)


def test_old_checkpoints_resume(tmp_path, monkeypatch):
    """A checkpoint written before the budget clock and min_epochs existed still resumes."""
    original = train_loop.save_checkpoint

    def save_then_stop(path, state):
        state = {k: v for k, v in state.items() if k not in ("budget_used", "stage_start")}
        original(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, epochs=2)
    monkeypatch.setattr(train_loop, "save_checkpoint", original)
    state = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=False)
    assert "min_epochs" not in state["config"] and "budget_used" not in state
    card = run(tmp_path, epochs=2, min_epochs=2)
    assert card.training["epochs_run"] == 2


def test_training_curve_is_written(tmp_path):
    run(tmp_path, epochs=2)
    assert (tmp_path / "m" / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the command line ----------------------------------------------------------------------------------
def _subparser(name):
    parser = build_parser()
    return next(a for a in parser._actions if hasattr(a, "choices") and a.choices and name in a.choices).choices[name]


def test_train_help_defaults_are_the_library_defaults():
    config = TrainConfig()
    helps = {a.dest: a.help for a in _subparser("train")._actions}
    for dest in ("epochs", "steps_per_epoch", "patience", "max_minutes", "min_epochs", "lr", "seed", "target_diameter",
                 "val_fraction"):
        stated = re.search(r"default:? ([0-9.]+)", helps[dest]).group(1)
        assert float(stated) == float(getattr(config, dest)), dest


@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--steps-per-epoch", "-1"), ("--lr", "nan"),
                                           ("--max-minutes", "0"), ("--threads", "0"), ("--diameter", "inf"),
                                           ("--labelled-fraction", "0"), ("--seed", "-3"), ("--min-epochs", "0")])
def test_bad_numbers_are_rejected_by_the_train_command(tmp_path, capsys, option, value):
    args = ["train", "--micrographs", str(tmp_path), "--coords", str(tmp_path), "--diameter", "10", "-o",
            str(tmp_path / "m"), option, value]
    with pytest.raises(SystemExit) as info:
        cli(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in err and "Traceback" not in err


@pytest.mark.parametrize("diameter, unit, message", [("5000", "px", "does not fit this 384x384"),
                                                      ("2", "px", "2 px wide is too small to pick"),
                                                      ("6", "A", "3 px wide is too small to pick")])
def test_train_command_diameter_that_cannot_be_right_is_one_line(tmp_path, capsys, diameter, unit, message):
    (tmp_path / "mics").mkdir()
    write_micrograph(tmp_path / "mics" / "a.mrc", size=384)  # 2 Å/px in the header
    write_picks(Picks.from_arrays("a", np.array([[100.0, 100.0]])), tmp_path / "a.star", "relion")
    rc = cli(["train", "--micrographs", str(tmp_path / "mics"), "--coords", str(tmp_path / "a.star"),
              "--diameter", diameter, "--diameter-unit", unit, "--no-progress", "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("cryopick train: error: ") and message in err[-1]
    assert not (tmp_path / "m").exists()  # no partial output


def test_demo_promises_its_epochs(monkeypatch, tmp_path):
    import cryopick.picker2d.train as train2d

    seen = {}

    def capture(*args, config=None, **kwargs):
        seen["config"] = config
        raise CryopickError("stop here")

    monkeypatch.setattr(train2d, "train_from_files", capture)
    assert cli(["demo", "-o", str(tmp_path / "demo"), "--no-progress"]) == 2
    config = seen["config"]
    assert config.max_minutes is None and config.epochs == 16 and config.patience == 16
    cli(["demo", "-o", str(tmp_path / "demo"), "--no-progress", "--max-minutes", "3", "--epochs", "4"])
    assert seen["config"].max_minutes == 3 and seen["config"].epochs == 4


def test_thread_changes_need_a_clear_change_of_load(tmp_path, monkeypatch):
    from cryopick import runtime

    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(train_loop, "cpu_sample", lambda: None)
    run_ = train_loop._Run(training_micrographs(1, size=100, n=8), SCALE, tmp_path / "m", TrainConfig(**TINY), True)
    torch.set_num_threads(2)
    for busy, expected in [(0.55, 2), (0.4, 2), (0.75, 1), (0.45, 1), (0.25, 2)]:
        monkeypatch.setattr(train_loop, "busy_other_cores", lambda before, after, b=busy: b)
        run_._recheck_threads(None, 0)
        assert torch.get_num_threads() == expected, busy


def test_the_budget_is_shared_by_the_self_training_stages(tmp_path, monkeypatch):
    monkeypatch.setattr(train_loop, "BudgetClock", fake_clock(wall_per_tick=1.0, cpu_per_tick=1.0))
    mics = training_micrographs(2, size=100, n=8)
    for m in mics:
        m.coords = m.coords[::2]
    config = TrainConfig(**{**TINY, "epochs": 6, "steps_per_epoch": 3, "labelled_fraction": 0.5, "max_minutes": 1.0,
                            "min_epochs": 1})
    with pytest.warns(UserWarning, match="stopped by the time budget") as caught:
        card = train_picker(mics, SCALE, tmp_path / "m", config)
    stages = card.training["earlier_stages"] + [card.training]
    assert card.training["stages"] == ["pu", "self-training"]
    assert [s["stopped"] for s in stages] == ["time budget", "time budget"]
    assert "stage 1/2" in str(caught[0].message) and "stage 2/2" in str(caught[1].message)
    first = card.training["earlier_stages"][0]["epochs_run"]
    assert 1 <= first < 6 and card.training["epochs_run"] - first >= 1
    assert card.training["budget"]["charged_minutes"] <= 1.1


def test_redo_replaces_only_the_training_outputs(tmp_path):
    from cryopick.picker2d.train.loop import clear_training_outputs

    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    for name in ("card.json", "model.pt", "checkpoint.pt", "training_curve.png"):
        (tmp_path / name).write_text("x")
    removed = {p.name for p in clear_training_outputs(tmp_path)}
    assert removed == {"card.json", "model.pt", "checkpoint.pt", "training_curve.png"}
    assert keep.read_text() == "mine"
