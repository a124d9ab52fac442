"""The batch runner both wings use (``distribute/runner.py``), on a toy batch: each input file holds a
number, its output file holds the square. Lock naming its holder, stale temporaries, input stamps,
settings fingerprint, a failing write, a full disk, nothing processed, the summary after Ctrl-C."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cryopick import CryopickError
from cryopick.distribute import Job
from cryopick.distribute.local import run_sequential
from cryopick.distribute.runner import Batch, BatchRun, check_unique


class Square(Job):
    def prepare(self, state, task):
        return int(Path(task.path).read_text())

    def finish(self, state, x, computed):
        return x * x


class Squares(Batch):
    noun = "number"

    def __init__(self, out: Path, fail_on: int | None = None, summary_on_error: bool = False):
        self.out, self.fail_on, self.summary_on_error = out, fail_on, summary_on_error
        self.replaced_records, self.discarded, self.summaries = [], [], 0

    def outputs(self, name):
        return [self.out / f"{name}.sq"]

    def write(self, outcome):
        (self.out / f"{outcome.task.key}.sq").write_text(str(outcome.result))
        if outcome.result == self.fail_on:
            raise CryopickError(f"{outcome.task.path}: {outcome.result} is not allowed")
        return {"name": outcome.task.key, "square": outcome.result}

    def discard(self, task):
        self.discarded.append(task.key)
        (self.out / f"{task.key}.sq").unlink(missing_ok=True)

    def replaced(self, records):
        self.replaced_records = sorted(r["name"] for r in records)

    def summarize(self, run):
        self.summaries += 1
        summary = {"squares": {r["name"]: r["square"] for r in run.state.records()}, **run.tally.to_dict()}
        (self.out / "summary.json").write_text(json.dumps(summary))
        return summary


def numbers(folder: Path, values: dict) -> list[tuple[str, Path]]:
    folder.mkdir(exist_ok=True)
    for name, v in values.items():
        (folder / f"{name}.txt").write_text(str(v))
    return [(name, folder / f"{name}.txt") for name in values]


def run(out: Path, inputs, batch: Batch | None = None, fingerprint=None, redo=False, execute=None) -> dict:
    batch = batch or Squares(out)
    created = not out.exists()
    out.mkdir(exist_ok=True)
    execute = execute or (lambda tasks, write: run_sequential(Square(), tasks, write))
    return BatchRun(batch, out, fingerprint or {"model": "a"}, redo=redo, created=created).run(inputs, execute,
                                                                                               progress=False)


def test_finished_inputs_are_skipped_unless_their_file_changed(tmp_path):
    inputs = numbers(tmp_path / "in", {"a": 2, "b": 3})
    out = tmp_path / "out"
    assert run(out, inputs)["squares"] == {"a": 4, "b": 9}
    record = json.loads((out / ".cryopick" / "a.json").read_text())
    st = os.stat(inputs[0][1])
    assert (record["input"]["size"], record["input"]["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    assert len(record["settings_hash"]) == 16
    (tmp_path / "in" / "b.txt").write_text("12")  # another size
    summary = run(out, inputs)
    assert (summary["n_picked"], summary["n_skipped"], summary["squares"]["b"]) == (1, 1, 144)
    (out / "a.sq").unlink()  # an output gone: done again
    assert run(out, inputs)["n_picked"] == 1


def test_other_settings_are_refused_unless_redo_which_replaces_the_outputs(tmp_path):
    inputs = numbers(tmp_path / "in", {"a": 2})
    out = tmp_path / "out"
    run(out, inputs)
    with pytest.raises(CryopickError, match=r"other model; pick into a new folder, or give --redo"):
        run(out, inputs, fingerprint={"model": "b"})
    batch = Squares(out)
    assert run(out, inputs, batch, fingerprint={"model": "b"}, redo=True)["n_picked"] == 1
    assert batch.replaced_records == ["a"]


def test_a_second_run_is_refused_naming_the_lock_and_its_holder(tmp_path):
    inputs = numbers(tmp_path / "in", {"a": 2})
    out = tmp_path / "out"
    refused = []

    def execute(tasks, write):  # a second run starts while this one holds the folder
        with pytest.raises(CryopickError) as err:
            run(out, inputs)
        refused.append(str(err.value))
        run_sequential(Square(), tasks, write)

    assert run(out, inputs, execute=execute)["n_picked"] == 1
    assert (out / ".cryopick" / "lock").read_text() == ""  # released: names nobody
    assert refused == [f"{out}: another run is writing into this folder now (it holds the lock "
                       f"{out / '.cryopick' / 'lock'}, process {os.getpid()} on {os.uname().nodename} since "
                       f"{refused[0].split(' since ')[1].split(')')[0]}); wait for it to finish or choose another "
                       "output folder"]


def test_stale_temporaries_are_removed_under_the_lock(tmp_path):
    inputs = numbers(tmp_path / "in", {"a": 2})
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    stale = [out / ".a.Ab3_x9Zq.tmp.sq", out / "sub" / ".b.12345678.tmp", out / ".cryopick-write-test-k1"]
    for p in stale:
        p.write_text("half")
    kept = out / ".hidden-but-mine"
    kept.write_text("x")
    run(out, inputs)
    assert [p for p in stale if p.exists()] == [] and kept.read_text() == "x"


def test_a_failing_write_fails_its_input_alone_and_a_full_disk_stops_the_run(tmp_path):
    inputs = numbers(tmp_path / "in", {"a": 2, "b": 3, "c": 4})
    out = tmp_path / "out"
    batch = Squares(out, fail_on=9)
    summary = run(out, inputs, batch)
    assert summary["squares"] == {"a": 4, "c": 16} and batch.discarded == ["b"]
    assert summary["failed"] == [{"input": "b", "path": str(inputs[1][1]), "error": f"{inputs[1][1]}: 9 is not allowed"}]
    assert not (out / "b.sq").exists()

    class FullDisk(Squares):
        def write(self, outcome):
            raise OSError(28, "No space left on device")

    with pytest.raises(CryopickError, match=r"cannot write the picks of b \(No space left on device\); free space"):
        run(out, inputs, FullDisk(out))


def test_nothing_processed_is_one_error_and_leaves_nothing(tmp_path):
    inputs = numbers(tmp_path / "in", {"a": 2, "b": 3})
    (tmp_path / "in" / "a.txt").write_text("x")
    (tmp_path / "in" / "b.txt").write_text("y")
    out = tmp_path / "out"
    with pytest.raises(CryopickError, match=r"^none of the 2 numbers could be picked; the first: .*a\.txt"):
        run(out, inputs)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(CryopickError, match=r"a\.txt: ValueError: invalid literal"):
        run(out, inputs[:1])
    assert list(out.iterdir()) == []


def test_ctrl_c_summarises_what_finished_when_the_batch_asks(tmp_path):
    inputs = numbers(tmp_path / "in", {"a": 2, "b": 3})
    out = tmp_path / "out"

    def interrupted(tasks, write):
        run_sequential(Square(), list(tasks)[:1], write)
        raise KeyboardInterrupt

    for summary_on_error, expected in ((False, 0), (True, 1)):
        batch = Squares(out, summary_on_error=summary_on_error)
        with pytest.raises(KeyboardInterrupt):
            run(out, inputs, batch, execute=interrupted, redo=True)
        assert batch.summaries == expected
    assert json.loads((out / "summary.json").read_text())["squares"] == {"a": 4}


def test_names_must_be_unique():
    check_unique(["a", "b"], "tomogram")
    with pytest.raises(CryopickError, match="several tomograms share the name"):
        check_unique(["a", "b", "a"], "tomogram")
