"""`cryopick pick3d --dask`: one task per tomogram x prompt set on a LocalCluster of 2 worker processes
gives the same picks as the local run, resumes a local run's folder, isolates a bad tomogram, writes
copick picks from the client, survives a worker killed mid-run; a bad --dask value is one line.

The real network (shipped weights) on the small tomograms of test_batch: the stand-in segmenter of the
other tests is a monkeypatch, which does not reach worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from cryopick.cli.main import main as cli
from cryopick.io.coords import read_picks
from cryopick.io.images import write_mrc
from cryopick.io.resume import RunState
from tests.picker3d.test_batch import CENTRES, _tomogram

distributed = pytest.importorskip("distributed")

# Low threshold and wide size limits: the shipped weights find a few blobs in these tiny tomograms.
PICK = ["--window", "32", "--no-similarity", "--threshold", "0.1", "--min-factor", "0", "--max-factor", "100",
        "--threads", "1", "--bf16", "off"]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as c:
        yield c


@pytest.fixture
def env(tmp_path, monkeypatch):
    from cryopick.picker3d.prompt import make_prompt, save_prompt

    monkeypatch.chdir(tmp_path)
    for k, (name, centres) in enumerate(CENTRES.items()):
        write_mrc(tmp_path / "tomos" / f"{name}.mrc", _tomogram(centres, k), pixel_size=10.0)
    save_prompt(make_prompt(tmp_path / "tomos" / "t0.mrc", [CENTRES["t0"][0]], label="blob", diameter_px=8),
                tmp_path / "blob.prompt")
    return tmp_path


def pick3d(tomos, out, *extra):
    return cli(["pick3d", "--prompt", "blob.prompt", "--tomograms", *[f"tomos/{t}" for t in tomos], "-o", out,
                "--format", "relion4", *PICK, *extra])


def picks_of(folder) -> dict:
    """{tomogram: (N, 4) rows x, y, z, score sorted} from a relion4 output folder."""
    out = {}
    for f in sorted((folder / "relion4" / "blob").glob("*.star")):
        p = read_picks(f)
        rows = np.column_stack([p.coords, p.scores]) if len(p) else np.zeros((0, 4))
        out[f.stem] = rows[np.lexsort(rows.T[::-1])]
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].shape == b[name].shape, name
        np.testing.assert_allclose(a[name][:, :3], b[name][:, :3], atol=0.01)  # voxels
        np.testing.assert_allclose(a[name][:, 3], b[name][:, 3], atol=1e-4)  # scores


def test_dask_picks_equal_local_picks_resume_a_local_run_and_isolate_a_bad_tomogram(env, cluster, capsys):
    assert pick3d(["t0.mrc", "t1.mrc", "t2.mrc"], "local") == 0
    local = picks_of(env / "local")
    assert sum(len(v) for v in local.values()) > 0  # the comparison is not about empty files only
    # A local run picks t0 and is "interrupted"; the Dask run resumes it and meets a corrupt tomogram.
    assert pick3d(["t0.mrc"], "out") == 0
    (env / "tomos" / "bad.mrc").write_bytes(b"not an MRC file" * 10)
    capsys.readouterr()
    code = pick3d(["t0.mrc", "t1.mrc", "t2.mrc", "bad.mrc"], "out", "--dask", cluster.scheduler_address)
    err = capsys.readouterr().err
    assert code == 3 and "bad" in err and "Traceback" not in err
    summary = json.loads((env / "out" / "summary.json").read_text())
    assert (summary["n_picked_this_run"], summary["n_skipped"], summary["n_finished"]) == (2, 1, 3)
    assert [f["tomogram"] for f in summary["failed"]] == ["bad"]
    assert_same(picks_of(env / "out"), local)
    records = {n: RunState(env / "out").record(n) for n in ("t0", "t1", "t2")}
    assert records["t0"].get("worker") is None  # picked by the local run, kept
    workers = {records[n]["worker"] for n in ("t1", "t2")}
    assert all(w.rsplit(":", 1)[-1].isdigit() for w in workers)  # host:pid of a worker process
    assert {n: r["picks"]["blob"] for n, r in records.items()} == {n: len(v) for n, v in local.items()}
    for name in ("t1", "t2"):  # montages drawn on the workers, written here
        assert (env / "out" / "montage" / f"{name}_blob.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((env / "out").rglob("*.tmp*"))
    # Rerun on Dask after removing the bad file: nothing left to do.
    (env / "tomos" / "bad.mrc").unlink()
    assert pick3d(["t0.mrc", "t1.mrc", "t2.mrc"], "out", "--dask", cluster.scheduler_address) == 0
    assert json.loads((env / "out" / "summary.json").read_text())["n_skipped"] == 3


def test_copick_runs_as_dask_tasks(env, cluster):
    copick = pytest.importorskip("copick")
    from tests.io.test_copick import make_project

    config = make_project(env / "project", {f"TS_0{k}": _tomogram(c, k) for k, c in enumerate(CENTRES.values())})
    args = ["pick3d", "--prompt", "blob.prompt", "--copick", str(config), "--no-montage", "--session-id", "1", *PICK]
    assert cli([*args, "-o", "local", "--format", "relion4"]) == 0
    assert cli([*args, "-o", "dask", "--format", "relion4", "--dask", cluster.scheduler_address, "--redo"]) == 0
    assert_same(picks_of(env / "dask"), picks_of(env / "local"))
    root = copick.from_file(str(config))
    for run in ("TS_00", "TS_01", "TS_02"):
        sets = root.get_run(run).get_picks(object_name="blob")
        assert [(s.user_id, s.session_id) for s in sets] == [("cryopick", "1")]  # replaced, not added
        np.testing.assert_allclose(np.sort(sets[0].numpy()[0], 0), np.sort(picks_of(env / "dask")[run][:, :3] * 10, 0),
                                   atol=1e-3)


@pytest.mark.parametrize("value", ["nonsense", "local:0", "local:x"])
def test_bad_dask_value_is_one_line(env, capsys, value):
    assert pick3d(["t0.mrc"], "out", "--dask", value) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cryopick pick3d: error: --dask") and "\n" not in err and "Traceback" not in err
    assert not (env / "out").exists()  # checked before the model is loaded or anything is written


def test_dask_refuses_what_it_cannot_do(env, capsys):
    assert pick3d(["t0.mrc"], "out", "--cluster-config", "site.yaml") == 2
    assert "--cluster-config only applies with --cluster" in capsys.readouterr().err
    assert pick3d(["t0.mrc"], "out", "--dask", "local:2", "--save-maps") == 2
    assert "--save-maps" in capsys.readouterr().err
    assert pick3d(["t0.mrc"], "out", "--dask", "local:x", "--adapted", "x.adapted.npz") == 2
    assert "--dask local:x" in capsys.readouterr().err  # checked before the classifiers are loaded


def test_adapted_classifier_travels_with_the_tasks(env, cluster):
    from cryopick.models.promptable3d import load_propicker
    from cryopick.picker3d.answers import adapt
    from cryopick.picker3d.prompt import load_prompt
    from tests.picker3d.test_answers import _two_classes

    model, prompt = load_propicker(), load_prompt(env / "blob.prompt")
    pool, y = _two_classes(model, prompt, 40, seed=3)
    adapted = adapt(model, prompt, pool, pool.subset(np.arange(8)), y[:8], candidate_threshold=0.05)
    replace(adapted, threshold=0.0).save(env / "a.adapted.npz")  # every candidate, scored by the classifier
    tomos = ["t0.mrc", "t1.mrc", "t2.mrc"]
    assert pick3d(tomos, "local", "--adapted", "a.adapted.npz", "--no-montage") == 0
    assert pick3d(tomos, "plain", "--no-montage") == 0
    local = picks_of(env / "local")
    assert sum(len(v) for v in local.values()) > 0
    assert not all(len(local[n]) == len(v) and np.allclose(local[n], v) for n, v in picks_of(env / "plain").items())
    assert pick3d(tomos, "dask", "--adapted", "a.adapted.npz", "--no-montage", "--dask", cluster.scheduler_address) == 0
    summary = json.loads((env / "dask" / "summary.json").read_text())
    assert summary["adapted"]["blob"]["n_positive"] == 4 and summary["n_picked_this_run"] == 3
    assert_same(picks_of(env / "dask"), local)  # the classifier was used on the workers


def test_a_worker_killed_mid_run_has_its_tomogram_picked_again_elsewhere(env, cluster):
    from tests.picker3d.test_batch import more_tomograms, outputs_exactly_once

    names = more_tomograms(env, 6)
    tomos = [f"{n}.mrc" for n in names]
    fmt = ["--format", "relion5", "imod", "--no-montage"]
    assert pick3d(tomos, "local", *fmt) == 0
    out, killed = env / "dask", {}
    # The LocalCluster's scheduler lives in this process, so the killer reads which worker is busy, on
    # which tomogram, and its pid, from it directly (its nanny then starts a new worker).
    scheduler = cluster.scheduler

    def kill_a_busy_worker():
        deadline = time.monotonic() + 300
        while not RunState(out).records() and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = [ws for ws in list(scheduler.workers.values()) if ws.processing and ws.pid]
        if busy:
            key = next(iter(busy[0].processing)).key  # cryopick-<run>-<tomogram>
            os.kill(busy[0].pid, signal.SIGKILL)
            killed.update(pid=busy[0].pid, tomogram=key.split("-", 2)[2])

    killer = threading.Thread(target=kill_a_busy_worker)
    killer.start()
    code = pick3d(tomos, "dask", *fmt, "--dask", cluster.scheduler_address)
    killer.join()
    assert killed, "no worker was busy when the run had written its first output"
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_picked_this_run"] == len(names) and summary["failed"] == []
    outputs_exactly_once(out, names)
    for name in names:
        assert (out / "imod" / "blob" / f"{name}.coords").read_text() == \
            (env / "local" / "imod" / "blob" / f"{name}.coords").read_text(), name
    records = {n: RunState(out).record(n) for n in names}
    again = records[killed["tomogram"]]["worker"]
    assert not again.endswith(f":{killed['pid']}")  # the killed worker's tomogram was picked by another
