"""pick3d as a batch: every finished tomogram in the index (across runs), empty files for no picks,
refusal of a rerun with other settings, old resume markers, bad tomograms skipped and reported; the
batch runner it shares with ``pick`` (folder lock, input stamps, stale temporaries, SIGKILL and rerun,
nothing written when no tomogram could be picked).

The segmenter is replaced by a position-faithful stand-in (probability = brightness of the voxel), so
the picks are known exactly and the tests take seconds; the real network runs in ``test_cli.py``. The
``pick3d`` subprocesses run the same stand-in through :data:`SCRIPT`.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cryopick.picker3d.pick as P
from cryopick.cli.main import main as cli
from cryopick.io.coords import read_picks
from cryopick.io.images import write_mrc

SHAPE = (32, 48, 48)  # D, H, W
CENTRES = {"t0": [(12, 14, 10), (34, 20, 20), (20, 36, 24)], "t1": [(10, 10, 12), (36, 34, 20)],
           "t2": [(12, 30, 8), (30, 12, 16), (36, 36, 24), (14, 14, 22)]}


def _tomogram(centres, seed):
    rng = np.random.default_rng(seed)
    vol = rng.normal(0, 0.3, SHAPE).astype(np.float32)
    zz, yy, xx = np.indices(SHAPE)
    for x, y, z in centres:
        vol[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= 16] = 5.0
    return vol


def fake_segment(model, volume, prompts, refine, **kw):
    import torch

    prob = np.clip(np.asarray(volume, np.float32) / 5.0, 0, 1)
    return np.stack([prob] * len(prompts)), torch.zeros(len(prompts), model.segmenter.code_dim)


@pytest.fixture
def env(tmp_path, monkeypatch):
    return make_env(tmp_path, monkeypatch)


def make_env(tmp_path, monkeypatch):
    """Three tomograms with known particles under ``tmp_path`` (the working folder), a prompt file
    ``blob.prompt`` cut from t0, and the stand-in segmenter."""
    from cryopick.picker3d.prompt import make_prompt, save_prompt

    monkeypatch.setattr(P, "segment", fake_segment)
    monkeypatch.chdir(tmp_path)
    for k, (name, centres) in enumerate(CENTRES.items()):
        write_mrc(tmp_path / "tomos" / f"{name}.mrc", _tomogram(centres, k), pixel_size=10.0)
    prompt = make_prompt(tmp_path / "tomos" / "t0.mrc", [CENTRES["t0"][0]], label="blob", diameter_px=8)
    save_prompt(prompt, tmp_path / "blob.prompt")
    return tmp_path


def pick3d(*extra, tomos=("t0", "t1"), out="out"):
    return cli(["pick3d", "--prompt", "blob.prompt", "--tomograms", *[f"tomos/{t}.mrc" for t in tomos],
                "-o", out, "--window", "32", "--no-similarity", "--no-montage", *extra])


def _n(*names):
    return sum(len(CENTRES[n]) for n in names)


def test_index_lists_every_finished_tomogram_across_runs(env):
    assert pick3d("--format", "relion5", "imod") == 0
    folder = env / "out" / "relion5" / "blob"
    geometry = {"tomo_size": SHAPE[::-1], "voxel_size": 10.0}
    picks = read_picks(folder, **geometry)
    assert sorted(picks.micrographs) == ["t0", "t1"] and len(picks) == _n("t0", "t1")
    truth = np.array(CENTRES["t1"], float)
    np.testing.assert_allclose(np.sort(picks.for_micrograph("t1").coords, 0), np.sort(truth, 0), atol=0.1)
    # convert --merge of the folder writes every pick (was: only the last tomogram's).
    assert cli(["convert", str(folder), "-o", "merged.star", "--merge", "--tomo-size", "48,48,32",
                "--voxel-size", "10"]) == 0
    assert len(read_picks("merged.star", **geometry)) == _n("t0", "t1")
    # A second run adding a third tomogram keeps the first two (skipped, untouched) in the index.
    before = (folder / "t0_autopick.star").stat().st_mtime_ns
    assert pick3d("--format", "relion5", "imod", tomos=("t1", "t2")) == 0
    assert (folder / "t0_autopick.star").stat().st_mtime_ns == before
    picks = read_picks(folder, tomograms_star=env / "out" / "relion5" / "tomograms.star")
    assert sorted(picks.micrographs) == ["t0", "t1", "t2"] and len(picks) == _n("t0", "t1", "t2")
    index = (folder / "autopick.star").read_text()
    assert "tomos/t0.mrc" in index and "relion5/blob/t2_autopick.star" in index  # paths as given / relative
    summary = json.loads((env / "out" / "summary.json").read_text())
    assert summary["n_finished"] == 3 and summary["n_picked_this_run"] == 1 and summary["n_skipped"] == 1
    assert summary["picks"] == {"blob": _n("t0", "t1", "t2")}
    # Index paths relative to a RELION project folder when one is given (here: OUT itself).
    assert pick3d("--format", "relion5", "imod", "--project-dir", "out", tomos=("t2",)) == 0
    rows = [line.split() for line in (folder / "autopick.star").read_text().splitlines() if "_autopick.star" in line]
    assert sorted(r[1] for r in rows) == [f"relion5/blob/t{k}_autopick.star" for k in range(3)]
    # evaluate reads the folder the same way.
    assert cli(["evaluate", "--picks", str(folder), "--truth", str(folder), "--tomograms-star",
                str(env / "out" / "relion5" / "tomograms.star"), "--diameter", "8", "-o", "report"]) == 0


def test_no_picks_gives_empty_valid_files_in_every_format(env):
    assert pick3d("--threshold", "1", "--format", "relion5", "relion4", "imod", "copick") == 0
    out = env / "out"
    for name in ("t0", "t1"):
        files = [out / "relion5" / "blob" / f"{name}_autopick.star", out / "relion4" / "blob" / f"{name}.star",
                 out / "imod" / "blob" / f"{name}.coords",
                 out / "copick" / "ExperimentRuns" / name / "Picks" / "cryopick_0_blob.json"]
        for f in files:
            assert f.is_file(), f
            assert len(read_picks(f, tomo_size=SHAPE[::-1], voxel_size=10.0)) == 0
    assert len(read_picks(out / "relion5" / "blob", tomo_size=SHAPE[::-1], voxel_size=10.0)) == 0
    assert "t1_autopick.star" in (out / "relion5" / "blob" / "autopick.star").read_text()


def test_rerun_with_other_settings_is_refused_unless_redo(env, capsys):
    assert pick3d("--format", "relion5", "imod") == 0
    capsys.readouterr()
    assert pick3d("--format", "relion5", "--threshold", "0.9") == 2
    err = capsys.readouterr().err
    assert "settings" in err and "--redo" in err and "Traceback" not in err
    assert pick3d("--format", "relion5", "--threshold", "0.9", "--redo") == 0
    # Files of the replaced run are gone (imod was not asked for this time), the new ones are there.
    assert not (env / "out" / "imod" / "blob" / "t0.coords").exists()
    record = json.loads((env / "out" / ".cryopick" / "t0.json").read_text())
    assert record["picks"] == {"blob": 3}
    # Another prompt is refused the same way.
    from cryopick.picker3d.prompt import make_prompt, save_prompt

    save_prompt(make_prompt(env / "tomos" / "t1.mrc", [CENTRES["t1"][0]], label="blob", diameter_px=8),
                env / "blob.prompt")
    assert pick3d("--format", "relion5", "--threshold", "0.9") == 2
    assert "prompts" in capsys.readouterr().err


def test_redo_with_the_same_settings_picks_again(env):
    assert pick3d() == 0
    star = env / "out" / "relion5" / "blob" / "t0_autopick.star"
    before = star.stat().st_mtime_ns
    assert pick3d("--redo") == 0
    assert star.stat().st_mtime_ns != before


def test_old_done_markers_count_as_finished(env):
    assert pick3d(tomos=("t0",)) == 0
    out = env / "out"
    # Turn the folder into what cryopick <= 0.1 left: .done/<name>.json markers, no records.
    for p in (out / ".cryopick").iterdir():
        p.unlink()
    (out / ".done").mkdir()
    (out / ".done" / "t0.json").write_text(json.dumps({"tomogram": "tomos/t0.mrc", "picks": {"blob": 3}}))
    star = out / "relion5" / "blob" / "t0_autopick.star"
    before = star.stat().st_mtime_ns
    assert pick3d(tomos=("t0", "t1")) == 0
    assert star.stat().st_mtime_ns == before  # resumed, not redone
    assert not (out / ".done").exists()
    assert sorted(read_picks(out / "relion5" / "blob", tomo_size=SHAPE[::-1], voxel_size=10.0).micrographs) == \
        ["t0", "t1"]


@pytest.mark.parametrize("bad", ["nan", "constant"])
def test_bad_tomogram_is_reported_and_the_others_are_picked(env, capsys, bad):
    vol = np.full(SHAPE, np.nan if bad == "nan" else 3.0, np.float32)
    write_mrc(env / "tomos" / "bad.mrc", vol, pixel_size=10.0)
    code = pick3d(tomos=("t0", "bad", "t1"))
    err = capsys.readouterr().err
    assert code == 3 and "bad.mrc" in err and "Traceback" not in err  # 3: finished with failures
    out = env / "out"
    assert not (out / ".cryopick" / "bad.json").exists() and not (out / "relion5" / "blob" / "bad_autopick.star").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [f["tomogram"] for f in summary["failed"]] == ["bad"] and summary["n_finished"] == 2
    assert len(read_picks(out / "relion5" / "blob", tomo_size=SHAPE[::-1], voxel_size=10.0)) == _n("t0", "t1")


def test_montage_per_tomogram_and_class(env):
    assert cli(["pick3d", "--prompt", "blob.prompt", "--tomograms", "tomos/t0.mrc", "-o", "out", "--window", "32",
                "--no-similarity"]) == 0
    png = env / "out" / "montage" / "t0_blob.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tomogram_picker_segments_once_and_rethresholds(env, monkeypatch):
    import cryopick
    from cryopick.picker3d.prompt import load_prompt
    from cryopick.picker3d.settings import PickSettings

    calls = []
    monkeypatch.setattr(P, "segment", lambda *a, **kw: calls.append(1) or fake_segment(*a, **kw))
    assert cryopick.TomogramPicker is P.TomogramPicker
    picker = cryopick.TomogramPicker(window=32)
    picker.set_tomogram(env / "tomos" / "t2.mrc")
    prompt = load_prompt(env / "blob.prompt")
    picks = picker.predict(prompt, PickSettings(threshold=0.5))
    assert len(picks) == 4 and picks.ndim == 3 and picks.pixel_size == 10.0
    assert set(picks.table["label"]) == {"blob"}
    assert len(picker.predict([prompt], PickSettings(threshold=1.0))) == 0
    assert len(calls) == 1 and picker.probability.shape == (1,) + SHAPE
    picker.set_tomogram(env / "tomos" / "t1.mrc")
    assert len(picker.predict([prompt], PickSettings(threshold=0.5))) == 2 and len(calls) == 2


def test_pick_tomograms_library_call(env):
    from cryopick.picker3d.batch import pick_tomograms

    summary = pick_tomograms(env / "tomos", [env / "blob.prompt"], None, None, env / "lib", ["imod"], window=32,
                             overrides={"min_similarity": None}, montage=False, progress=False)
    assert summary["n_finished"] == 3 and summary["picks"] == {"blob": _n("t0", "t1", "t2")}
    assert sorted(p.name for p in (env / "lib" / "imod" / "blob").iterdir()) == ["t0.coords", "t1.coords", "t2.coords"]


def test_run_settings_as_objects_or_keywords_pick_the_same(env):
    """pick_tomograms takes the Segmentation and Execution objects or their fields as keywords: the same picks."""
    from cryopick.distribute import Execution
    from cryopick.picker3d.batch import pick_tomograms
    from cryopick.picker3d.predict import Segmentation

    common = dict(overrides={"min_similarity": None}, montage=False, progress=False)
    pick_tomograms(env / "tomos", [env / "blob.prompt"], None, None, env / "keywords", ["imod"], window=32, stride=16,
                   batch_size=2, prefetch=0, **common)
    pick_tomograms(env / "tomos", [env / "blob.prompt"], None, None, env / "objects", ["imod"],
                   segmentation=Segmentation(window=32, stride=16, batch_size=2), execution=Execution(prefetch=0),
                   **common)
    pick_tomograms(env / "tomos", [env / "blob.prompt"], None, None, env / "mixed", ["imod"],
                   segmentation=Segmentation(window=64, stride=16, batch_size=2), window=32,
                   execution=Execution(engine="sequential"), **common)
    for name in ("t0", "t1", "t2"):
        texts = {out: (env / out / "imod" / "blob" / f"{name}.coords").read_text()
                 for out in ("keywords", "objects", "mixed")}
        assert texts["objects"] == texts["keywords"] == texts["mixed"] and texts["keywords"].strip()
    for out in ("keywords", "objects", "mixed"):  # what a rerun must match: the segmentation actually used
        run = json.loads((env / out / ".cryopick" / "run.json").read_text())
        assert (run["stride"], run["window"]) == (16, 32)


@pytest.mark.parametrize("keywords, message", [
    ({"window": 32, "stride": 0}, r"Segmentation\.stride must be a whole number >= 1, got 0"),
    ({"window": -32}, r"Segmentation\.window must be a whole number >= 1, got -32"),
    ({"batch_size": 0}, r"Segmentation\.batch_size must be a whole number >= 1, got 0"),
    ({"bf16": "on"}, r"Segmentation\.bf16 must be None, True or False, got 'on'"),
    ({"prefetch": -1}, r"Execution\.prefetch must be a whole number >= 0 or None, got -1"),
    ({"engine": "fast"}, r"Execution\.engine must be 'pipeline' or 'sequential', got 'fast'"),
])
def test_a_bad_run_setting_names_the_field_and_writes_nothing(env, keywords, message):
    from cryopick.errors import ConfigError
    from cryopick.picker3d.batch import pick_tomograms

    with pytest.raises(ConfigError, match=message):
        pick_tomograms(env / "tomos", [env / "blob.prompt"], None, None, env / "out", ["imod"], progress=False,
                       **keywords)
    with pytest.raises(TypeError, match=r"pick_tomograms\(\) got an unexpected keyword argument 'strides'"):
        pick_tomograms(env / "tomos", [env / "blob.prompt"], None, None, env / "out", ["imod"], strides=8)
    assert not (env / "out").exists()


def test_pick3d_refuses_bad_output_folder(env, capsys):
    (env / "file").write_text("x")
    assert pick3d(out="file") == 2
    assert "not a folder" in capsys.readouterr().err
    assert pick3d(out="file/sub") == 2
    err = capsys.readouterr().err
    assert "cannot create the output folder" in err and "Traceback" not in err


def test_tomogram_without_voxel_size_fails_cleanly_for_angstrom_formats(env, capsys):
    write_mrc(env / "tomos" / "nopx.mrc", _tomogram(CENTRES["t1"], 5), pixel_size=None)
    assert pick3d("--format", "imod", "relion5", tomos=("t0", "nopx")) == 3
    err = capsys.readouterr().err
    assert "nopx.mrc" in err and "voxel size" in err and "--format imod" in err
    out = env / "out"
    assert (out / "imod" / "blob" / "t0.coords").is_file() and not (out / "imod" / "blob" / "nopx.coords").exists()
    assert pick3d("--format", "imod", tomos=("nopx",), out="out_imod") == 0
    assert len(read_picks(env / "out_imod" / "imod" / "blob" / "nopx.coords")) == 2


def test_interrupted_run_indexes_what_finished_and_resumes(env, monkeypatch, capsys):
    calls = []

    def interrupt_second(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_segment(*a, **kw)

    monkeypatch.setattr(P, "segment", interrupt_second)
    assert pick3d(tomos=("t0", "t1", "t2")) == 130
    folder = env / "out" / "relion5" / "blob"
    assert read_picks(folder, tomo_size=SHAPE[::-1], voxel_size=10.0).micrographs == ["t0"]
    monkeypatch.setattr(P, "segment", fake_segment)
    assert pick3d(tomos=("t0", "t1", "t2")) == 0
    assert len(read_picks(folder, tomo_size=SHAPE[::-1], voxel_size=10.0)) == _n("t0", "t1", "t2")
    assert json.loads((env / "out" / "summary.json").read_text())["n_skipped"] == 1


# -- the batch runner (shared with `pick`): lock, stamps, temporaries, SIGKILL, nothing processed ----------
ROOT = Path(__file__).resolve().parents[2]
#: ``pick3d`` in a subprocess with the stand-in segmenter; each tomogram waits for the file named by
#: PICK3D_GATE (when set) and then PICK3D_DELAY seconds, so a test can hold or stop the run mid-way.
SCRIPT = """
import os, sys, time
import cryopick.picker3d.pick as P
from tests.picker3d.test_batch import fake_segment

def held(*a, **k):
    gate, end = os.environ.get("PICK3D_GATE"), time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.02)
    time.sleep(float(os.environ.get("PICK3D_DELAY", "0")))
    return fake_segment(*a, **k)

P.segment = held
from cryopick.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def start_pick3d(tomos, out, **env):
    args = ["pick3d", "--prompt", "blob.prompt", "--tomograms", *[f"tomos/{t}.mrc" for t in tomos], "-o", out,
            "--window", "32", "--no-similarity", "--no-montage", "--format", "relion5", "imod", "--threads", "1"]
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **env})


def more_tomograms(root, n):
    """t0..t{n-1}: the three known tomograms, then copies of their particles in other noise."""
    names = [f"t{k}" for k in range(n)]
    for k in range(3, n):
        write_mrc(root / "tomos" / f"t{k}.mrc", _tomogram(CENTRES[f"t{k % 3}"], k), pixel_size=10.0)
    return names


def picks_of(out, name):
    """(N, 4) rows x, y, z (voxels), score of one tomogram's relion5 file, sorted."""
    p = read_picks(out / "relion5" / "blob" / f"{name}_autopick.star",
                   tomograms_star=out / "relion5" / "tomograms.star")
    rows = np.column_stack([p.coords, p.scores])
    return rows[np.lexsort(rows.T[::-1])]


def outputs_exactly_once(out, names):
    """Each tomogram has its files in both formats, one record and one index row; no temporaries."""
    from cryopick.io.resume import RunState

    assert sorted(p.name for p in (out / "relion5" / "blob").glob("t*_autopick.star")) == \
        sorted(f"{n}_autopick.star" for n in names)
    assert sorted(p.stem for p in (out / "imod" / "blob").glob("*.coords")) == sorted(names)
    assert sorted(r["tomogram"] for r in RunState(out).records()) == sorted(names)
    index = (out / "relion5" / "blob" / "autopick.star").read_text()
    assert all(index.count(f"/{n}_autopick.star") == 1 for n in names)
    leftovers = [p.name for p in out.rglob(".*") if ".tmp" in p.name or p.name.startswith(".cryopick-write-test")]
    assert not leftovers, leftovers


def test_a_second_pick3d_into_the_same_folder_is_refused_naming_the_lock(env, capsys):
    first = start_pick3d(["t0", "t1"], "out", PICK3D_GATE=str(env / "go"))
    try:
        lock = env / "out" / ".cryopick" / "lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().startswith("process")) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1].decode()[-2000:]
            time.sleep(0.05)
        assert pick3d("--format", "relion5", "imod", tomos=("t0", "t1", "t2")) == 2
        err = capsys.readouterr().err.strip()
        assert "another run is writing into this folder" in err and str(Path("out") / ".cryopick" / "lock") in err
        assert f"process {first.pid} " in err and "\n" not in err and "Traceback" not in err
    finally:
        (env / "go").write_text("")
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr.decode()[-2000:]
    outputs_exactly_once(env / "out", ["t0", "t1"])  # the refused run touched nothing
    summary = json.loads((env / "out" / "summary.json").read_text())
    assert summary["n_picked_this_run"] == 2 and summary["n_tomograms"] == 2


def test_a_replaced_tomogram_is_picked_again(env):
    from cryopick.io.resume import RunState

    assert pick3d("--format", "relion5", "imod") == 0
    out = env / "out"
    t1_star = out / "relion5" / "blob" / "t1_autopick.star"
    kept = t1_star.stat().st_mtime_ns
    # A new reconstruction of t0 (other particles, other size) under the same name.
    new = np.asarray(CENTRES["t2"], float)
    write_mrc(env / "tomos" / "t0.mrc", np.ascontiguousarray(_tomogram(CENTRES["t2"], 9)[:, :, :44]), pixel_size=10.0)
    assert pick3d("--format", "relion5", "imod") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_picked_this_run"], summary["n_skipped"]) == (1, 1)
    np.testing.assert_allclose(picks_of(out, "t0")[:, :3], new[np.lexsort(new.T[::-1])], atol=0.1)
    assert t1_star.stat().st_mtime_ns == kept
    st = os.stat(env / "tomos" / "t0.mrc")
    stamp = RunState(out).record("t0")["input"]
    assert (stamp["size"], stamp["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    # Same size, touched (a rewrite in place): picked again too; unchanged files are not.
    os.utime(env / "tomos" / "t0.mrc", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert pick3d("--format", "relion5", "imod") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_picked_this_run"], summary["n_skipped"]) == (1, 1)


def test_sigkill_mid_run_then_rerun_leaves_every_output_exactly_once(env):
    names = more_tomograms(env, 8)
    run = start_pick3d(names, "out", PICK3D_DELAY="0.3")
    from cryopick.io.resume import RunState

    out = env / "out"
    deadline = time.monotonic() + 120
    while len(RunState(out).records()) < 2 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    done_before = len(RunState(out).records())
    assert 2 <= done_before < len(names), "the run was not stopped mid-way"
    # The kill may land anywhere; plant what one landing mid-write leaves: a temporary of an atomic
    # write, a write probe, and a tomogram with one of its two files and no record.
    assert RunState(out).record("t7") is None
    (out / "relion5" / "blob" / ".t7_autopick.k3Xq9_ab.tmp.star").write_text("data_\nhalf")
    (out / ".cryopick-write-test-zz1").write_text("")
    (out / "imod" / "blob" / "t7.coords").write_text("1 2 3\n")
    assert pick3d("--format", "relion5", "imod", tomos=names) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_skipped"] == done_before and summary["n_picked_this_run"] == len(names) - done_before
    outputs_exactly_once(out, names)
    assert pick3d("--format", "relion5", "imod", tomos=names, out="reference") == 0
    for name in names:
        np.testing.assert_allclose(picks_of(out, name), picks_of(env / "reference", name), atol=1e-6)
    assert (out / "imod" / "blob" / "t7.coords").read_text() == \
        (env / "reference" / "imod" / "blob" / "t7.coords").read_text()  # redone, not the planted file


def test_when_no_tomogram_can_be_picked_it_is_one_user_error_and_nothing_is_written(env, capsys):
    write_mrc(env / "tomos" / "bad.mrc", np.full(SHAPE, np.nan, np.float32), pixel_size=10.0)
    (env / "tomos" / "worse.mrc").write_bytes(b"not an MRC file" * 10)
    assert pick3d(tomos=("bad",)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cryopick pick3d: error: ") and "bad.mrc" in err and "\n" not in err  # one line
    assert not (env / "out").exists()
    assert pick3d(tomos=("bad", "worse")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "none of the 2 tomograms could be picked; the first: " in errors[0]
    assert "bad.mrc" in errors[0]
    assert not (env / "out").exists()
    (env / "empty").mkdir()  # a folder that was there stays as it was: empty
    assert pick3d(tomos=("bad",), out="empty") == 2
    assert list((env / "empty").iterdir()) == []
    # With picks of an earlier run in the folder the run is not for nothing: exit 3, the summary lists it.
    assert pick3d(tomos=("t0",)) == 0
    assert pick3d(tomos=("t0", "bad")) == 3
    summary = json.loads((env / "out" / "summary.json").read_text())
    assert [f["tomogram"] for f in summary["failed"]] == ["bad"] and summary["n_finished"] == 1
