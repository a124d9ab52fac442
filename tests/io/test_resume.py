"""The run manifest: records carry the input's size and mtime (a changed input is not finished), temporary
files of an interrupted atomic write are never taken for records and are removed, and a folder's run
lock keeps a second run out."""

from __future__ import annotations

import os

import pytest

from cryopick import CryopickError
from cryopick.io.atomic import remove_stale_temporaries
from cryopick.io.resume import RunState, input_stamp


def test_a_changed_input_is_not_done(tmp_path):
    source = tmp_path / "mic.mrc"
    source.write_bytes(b"12345")
    out = tmp_path / "mic_autopick.star"
    out.write_text("data_\n")
    state = RunState(tmp_path / "o")
    state.mark_done("mic", {"input": input_stamp(source)})
    assert state.is_done("mic", out, source=source)
    os.utime(source, ns=(0, source.stat().st_mtime_ns + 1))  # touched
    assert not state.is_done("mic", out, source=source)
    source.write_bytes(b"123456")  # rewritten
    state.mark_done("mic", {"input": input_stamp(source)})
    assert state.is_done("mic", out, source=source)
    source.unlink()
    assert not state.is_done("mic", out, source=source)
    state.mark_done("old", {"micrograph": "old"})  # a record of an earlier version: no stamp, trusted
    assert state.is_done("old", out, source=tmp_path / "anything")


def test_temporaries_of_a_killed_run_are_no_records_and_are_removed(tmp_path):
    state = RunState(tmp_path)
    state.mark_done("a", {"micrograph": "a"})
    (state.dir / ".b.k3j_x9q2.tmp.json").write_text('{"micrograph": "b"}\n')  # renamed never: killed
    (tmp_path / ".a_autopick.abcdefgh.tmp.star").write_text("data_\n")
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / ".a.zzzzzzzz.tmp.png").write_bytes(b"x")
    (tmp_path / ".cryopick-write-test-1234").write_text("")
    (tmp_path / ".hidden_but_mine").write_text("keep")
    assert [r["micrograph"] for r in state.records()] == ["a"]
    assert remove_stale_temporaries(tmp_path) == 4
    assert sorted(p.name for p in tmp_path.rglob(".*")) == [".cryopick", ".hidden_but_mine"]


def test_the_run_lock_keeps_a_second_run_out_and_dies_with_its_holder(tmp_path):
    with RunState(tmp_path).lock():
        with pytest.raises(CryopickError, match="another run is writing into this folder"):
            with RunState(tmp_path).lock():
                pass
    with RunState(tmp_path).lock():  # released
        pass
