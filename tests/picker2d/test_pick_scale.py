"""Whole data sets with `cryopick pick`: the pipeline picks what the sequential loop picks; a corrupt
micrograph fails alone (exit 3); changed inputs are picked again; SIGINT / SIGKILL mid-run and a
rerun leave every output exactly once and complete; watch mode reads a slowly written file once,
after it is complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cryopick import CryopickError
from cryopick.cli.main import main as cli
from cryopick.io.images import write_mrc
from cryopick.io.resume import RunState
from cryopick.picker2d.batch import pick_folder
from tests.picker2d.tiny_model import assert_same_picks, make_model, micrograph, picks_by_name, write_micrographs

SRC = Path(__file__).resolve().parents[2] / "src"
PICK = ["--threads", "1", "--bf16", "off", "--no-progress", "--overlays", "0"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale2d")
    make_model(root / "model")
    write_micrographs(root / "mics", 8)
    pick_folder(root / "model", root / "mics", root / "reference", engine="sequential", num_threads=1, bf16=False,
                overlays=0, progress=False)
    return root


def outputs_exactly_once(out: Path, names: list[str]) -> None:
    """Every micrograph has one complete coordinate file and one record; no temporary files; the
    index lists each once."""
    stars = sorted(p.name for p in out.glob("*_autopick.star"))
    assert stars == sorted(f"{n}_autopick.star" for n in names)
    leftovers = [p.name for p in out.rglob(".*") if ".tmp" in p.name or p.name.startswith(".cryopick-write-test")]
    assert not leftovers, leftovers
    assert sorted(r["micrograph"] for r in RunState(out).records()) == sorted(names)
    index = (out / "autopick.star").read_text()
    for n in names:
        assert index.count(f"{n}_autopick.star") == 1


def test_pipeline_picks_what_the_sequential_loop_picks(ws, tmp_path):
    summary = pick_folder(ws / "model", ws / "mics", tmp_path / "p", engine="pipeline", prefetch=2, num_threads=1,
                          bf16=False, overlays=2, progress=False)
    assert summary["n_picked"] == 8 and summary["n_failed"] == 0 and summary["n_picks"] > 100
    assert_same_picks(picks_by_name(tmp_path / "p"), picks_by_name(ws / "reference"))
    assert len(list((tmp_path / "p" / "overlays").glob("*.png"))) == 2
    ppm = summary["picks_per_micrograph"]
    assert ppm["min"] <= ppm["median"] <= ppm["max"]
    record = RunState(tmp_path / "p").record("mic000")
    st = os.stat(ws / "mics" / "mic000.mrc")
    assert record["input"]["size"] == st.st_size and record["input"]["mtime_ns"] == st.st_mtime_ns
    assert len(record["model"]) == 16 and len(record["settings_hash"]) == 16


def test_corrupt_micrograph_fails_alone_with_exit_code_3(ws, tmp_path, capsys):
    mics = tmp_path / "mics"
    write_micrographs(mics, 3)
    (mics / "mic001.mrc").write_bytes((mics / "mic001.mrc").read_bytes()[:2000])  # truncated
    (mics / "zz_garbage.mrc").write_bytes(b"not an MRC file at all" * 100)
    out = tmp_path / "out"
    rc = cli(["pick", "--model", str(ws / "model"), "--micrographs", str(mics), "-o", str(out), *PICK])
    assert rc == 3
    printed = capsys.readouterr().out
    assert "failed: mic001" in printed and "failed: zz_garbage" in printed and "Traceback" not in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_failed"] == 2 and summary["n_picked"] == 2
    assert {f["input"] for f in summary["failed"]} == {"mic001", "zz_garbage"}
    assert all(f["error"] and "\n" not in f["error"] for f in summary["failed"])
    assert sorted(p.name for p in out.glob("*_autopick.star")) == ["mic000_autopick.star", "mic002_autopick.star"]
    # Fixed input: the rerun picks only it.
    write_mrc(mics / "mic001.mrc", micrograph(1), pixel_size=3.0)
    (mics / "zz_garbage.mrc").unlink()
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(mics), "-o", str(out), *PICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_picked"] == 1 and summary["n_skipped"] == 2 and summary["n_failed"] == 0


def test_changed_input_is_picked_again_and_other_settings_are_refused(ws, tmp_path):
    mics = tmp_path / "mics"
    write_micrographs(mics, 3)
    out = tmp_path / "out"
    first = pick_folder(ws / "model", mics, out, num_threads=1, bf16=False, overlays=0, progress=False)
    assert first["n_picked"] == 3
    write_mrc(mics / "mic002.mrc", micrograph(7), pixel_size=3.0)  # replaced by another exposure
    os.utime(mics / "mic002.mrc", ns=(time.time_ns(), time.time_ns() + 10**9))
    again = pick_folder(ws / "model", mics, out, num_threads=1, bf16=False, overlays=0, progress=False)
    assert again["n_picked"] == 1 and again["n_skipped"] == 2
    with pytest.raises(CryopickError, match="threshold.*--redo"):
        pick_folder(ws / "model", mics, out, threshold=0.9, num_threads=1, bf16=False, progress=False)


def test_a_second_run_into_the_same_folder_is_refused(ws, tmp_path):
    out = tmp_path / "out"
    with RunState(out).lock():
        with pytest.raises(CryopickError, match="another run is writing"):
            pick_folder(ws / "model", ws / "mics", out, num_threads=1, bf16=False, progress=False)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_resumes_with_every_output_exactly_once(ws, tmp_path, sig):
    mics = tmp_path / "mics"
    names = [p.stem for p in write_micrographs(mics, 12)]  # stopped after 3: 9 to spare, 9 to finish
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cryopick", "pick", "--model", str(ws / "model"), "--micrographs", str(mics),
           "-o", str(out), *PICK]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(RunState(out).records()) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    done_before = len(RunState(out).records())
    assert 3 <= done_before < len(names), "the run was not stopped mid-way (too fast?)"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and b"rerun to resume" in err and b"Traceback" not in err
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(mics), "-o", str(out), *PICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # records are written last and atomically: exactly the inputs finished before the stop are skipped
    assert summary["n_skipped"] == done_before and summary["n_picked"] + summary["n_skipped"] == len(names)
    outputs_exactly_once(out, names)
    reference = tmp_path / "reference"
    pick_folder(ws / "model", mics, reference, engine="sequential", num_threads=1, bf16=False, overlays=0,
                progress=False)
    assert_same_picks(picks_by_name(out), picks_by_name(reference))


def test_watch_picks_a_slowly_written_file_once_after_it_is_complete(ws, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    write_micrographs(tmp_path / "staging", 2)
    data = [(tmp_path / "staging" / f"mic{i:03d}.mrc").read_bytes() for i in range(2)]
    (incoming / "mic000.mrc").write_bytes(data[0])  # already there when the watch starts

    def slow_writer():
        time.sleep(0.3)
        with open(incoming / "mic001.mrc", "wb") as fh:
            for k in range(0, len(data[1]), len(data[1]) // 4 + 1):
                fh.write(data[1][k : k + len(data[1]) // 4 + 1])
                fh.flush()
                time.sleep(0.4)

    writer = threading.Thread(target=slow_writer)
    writer.start()
    out = tmp_path / "out"
    summary = pick_folder(ws / "model", None, out, watch=incoming, settle=1.0, watch_timeout=2.5, num_threads=1,
                          bf16=False, overlays=0, progress=False)
    writer.join()
    assert summary["n_picked"] == 2 and summary["n_failed"] == 0
    record = RunState(out).record("mic001")
    assert record["input"]["size"] == len(data[1])  # read after the last chunk
    assert_same_picks(picks_by_name(out), {k: v for k, v in picks_by_name(ws / "reference").items()
                                           if k in ("mic000", "mic001")})
    # Rerun of the watch: nothing new, both skipped; a completion marker makes a new file ready at once.
    write_micrographs(tmp_path / "staging", 1, start=2)
    (incoming / "mic002.mrc").write_bytes((tmp_path / "staging" / "mic002.mrc").read_bytes())
    (incoming / "mic002.mrc.done").write_text("")
    t0 = time.monotonic()
    again = pick_folder(ws / "model", None, out, watch=incoming, settle=30.0, watch_timeout=1.0, num_threads=1,
                        bf16=False, overlays=0, progress=False)
    assert again["n_picked"] == 1 and again["n_skipped"] == 2 and time.monotonic() - t0 < 25


def test_watch_and_cluster_options_are_checked(ws, tmp_path, capsys):
    model = str(ws / "model")
    assert cli(["pick", "--model", model, "-o", str(tmp_path / "o")]) == 2
    assert "--micrographs" in capsys.readouterr().err
    assert cli(["pick", "--model", model, "--micrographs", str(ws / "mics"), "--settle", "3", "-o",
                str(tmp_path / "o")]) == 2
    assert "--settle only applies with --watch" in capsys.readouterr().err
    assert cli(["pick", "--model", model, "--watch", str(tmp_path / "nothere"), "-o", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err
    for bad in ("--watch-timeout", "--settle", "--prefetch"):
        with pytest.raises(SystemExit):
            cli(["pick", "--model", model, "--watch", str(ws / "mics"), bad, "nan", "-o", str(tmp_path / "o")])
    assert cli(["pick", "--model", model, "--micrographs", str(ws / "mics"), "--dask", "local:x", "-o",
                str(tmp_path / "o")]) == 2
    assert "local:" in capsys.readouterr().err
    assert cli(["pick", "--model", model, "--micrographs", str(ws / "mics"), "--dask", "local:1", "--prefetch", "2",
                "-o", str(tmp_path / "o")]) == 2
    assert "apply to the local run" in capsys.readouterr().err


def test_ctrl_c_ends_a_watch_with_its_summary(ws, tmp_path):
    incoming = tmp_path / "incoming"
    write_micrographs(incoming, 2)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cryopick", "pick", "--model", str(ws / "model"), "--watch",
                             str(incoming), "--settle", "0", "-o", str(out), *PICK], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(RunState(out).records()) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b"2 picked now" in stdout
    assert json.loads((out / "summary.json").read_text())["n_picked"] == 2


def test_when_no_micrograph_can_be_picked_it_is_one_user_error_and_nothing_is_written(ws, tmp_path, capsys):
    mics = tmp_path / "mics"
    mics.mkdir()
    for name in ("a", "b"):
        (mics / f"{name}.mrc").write_bytes(b"\0" * 100)
    out = tmp_path / "out"
    assert cli(["pick", "--model", str(ws / "model"), "--micrographs", str(mics), "-o", str(out), *PICK]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error:" in line] == [line for line in err.splitlines() if line]
    assert "none of the 2 micrographs could be picked" in err and "a.mrc" in err
    assert not out.exists()


def test_run_settings_as_objects_or_keywords_pick_the_same(ws, tmp_path):
    """pick_micrographs / pick_folder take the Execution and Watch objects or their fields as keywords: the
    same run, coordinate files equal line for line (but the creation time)."""
    from cryopick.distribute import Execution
    from cryopick.picker2d.batch import Watch, pick_micrographs
    from cryopick.picker2d.pick import Picker

    picker = Picker(ws / "model", num_threads=1, bf16=False)
    common = dict(overlays=0, progress=False)
    pick_micrographs(picker, ws / "mics", tmp_path / "objects", execution=Execution(engine="sequential"),
                     watching=Watch(), **common)
    pick_micrographs(picker, ws / "mics", tmp_path / "keywords", engine="sequential", **common)
    pick_folder(ws / "model", ws / "mics", tmp_path / "folder", num_threads=1, bf16=False,
                execution=Execution(engine="pipeline", prefetch=2), **common)
    names = sorted(p.name for p in (ws / "reference").glob("*_autopick.star"))
    assert len(names) == 8
    for out in ("objects", "keywords", "folder"):
        assert sorted(p.name for p in (tmp_path / out).glob("*_autopick.star")) == names
        for name in names:
            text, reference = ((folder / name).read_text().splitlines() for folder in (tmp_path / out, ws / "reference"))
            assert [t for t in text if not t.startswith("# Created")] == \
                [t for t in reference if not t.startswith("# Created")], (out, name)


@pytest.mark.parametrize("keywords, message", [
    ({"engine": "threads"}, r"Execution\.engine must be 'pipeline' or 'sequential', got 'threads'"),
    ({"prefetch": -1}, r"Execution\.prefetch must be a whole number >= 0 or None, got -1"),
    ({"watch": "in", "watch_timeout": 0}, r"Watch\.watch_timeout must be a number > 0 or None, got 0"),
    ({"watch": "in", "settle": -5.0}, r"Watch\.settle must be a number >= 0 or None, got -5.0"),
])
def test_a_bad_run_setting_names_the_field_and_writes_nothing(ws, tmp_path, keywords, message):
    from cryopick.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        pick_folder(ws / "model", ws / "mics", tmp_path / "out", progress=False, **keywords)
    assert not (tmp_path / "out").exists()


def test_unknown_pick_keywords_are_refused(ws, tmp_path):
    from cryopick.picker2d.batch import pick_micrographs
    from cryopick.picker2d.pick import Picker

    with pytest.raises(TypeError, match=r"pick_micrographs\(\) got an unexpected keyword argument 'engin'"):
        pick_micrographs(Picker(ws / "model", num_threads=1), ws / "mics", tmp_path / "out", engin="sequential")
    assert not (tmp_path / "out").exists()
