"""`cryopick pick --dask`: a LocalCluster of 2 worker processes gives the same picks as the local
pipeline, and a worker killed mid-run does not lose or duplicate any output."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from cryopick.io.resume import RunState
from cryopick.picker2d.batch import pick_folder
from tests.picker2d.test_pick_scale import outputs_exactly_once
from tests.picker2d.tiny_model import assert_same_picks, make_model, picks_by_name, write_micrographs

distributed = pytest.importorskip("distributed")


def test_dask_picks_equal_local_picks_and_survive_a_killed_worker(tmp_path):
    make_model(tmp_path / "model")
    names = [p.stem for p in write_micrographs(tmp_path / "mics", 16)]
    options = dict(num_threads=1, bf16=False, overlays=1, progress=False)
    pick_folder(tmp_path / "model", tmp_path / "mics", tmp_path / "local", **options)
    out = tmp_path / "dask"
    killed = []
    # One client only (the run's): the scheduler of a LocalCluster lives in this process, so the
    # killer reads which worker is busy, and its pid, from it directly.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        scheduler = cluster.scheduler

        def kill_a_busy_worker():
            deadline = time.monotonic() + 120
            while len(RunState(out).records()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            busy = [ws for ws in list(scheduler.workers.values()) if ws.processing and ws.pid]
            if busy:
                os.kill(busy[0].pid, signal.SIGKILL)
                killed.append(busy[0].address)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        summary = pick_folder(tmp_path / "model", tmp_path / "mics", out, dask=cluster.scheduler_address, **options)
        killer.join()
    assert killed, "no worker was busy when the run had written two outputs"
    assert summary["n_picked"] == 16 and summary["n_failed"] == 0
    outputs_exactly_once(out, names)
    assert_same_picks(picks_by_name(out), picks_by_name(tmp_path / "local"))
    workers = {r["worker"] for r in RunState(out).records()}
    assert len(workers) >= 2  # both workers (and the restarted one) ran tasks
    assert (out / "overlays" / "mic000.png").is_file()
