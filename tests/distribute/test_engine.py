"""The distribution engine on its own: the local pipeline overlaps and bounds its queues, isolates
failures and stops on a writer error; workers load a job's state once; Dask is optional; SLURM site
files are checked (no SLURM here: only the configuration and the job script are tested)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from cryopick import CryopickError
from cryopick.distribute import Job, Task, run
from cryopick.distribute.cluster import load_cluster_config
from cryopick.distribute.dask_engine import parse_address, worker_state
from cryopick.distribute.local import run_local, run_sequential
from cryopick.distribute.summary import RunTally, spread
from cryopick.distribute.watch import watch_folder


class Square(Job):
    """prepare sleeps (I/O), compute squares, finish adds one; input "bad" fails in prepare."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.live = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.setups = 0

    def setup(self):
        self.setups += 1
        return "state"

    def prepare(self, state, task):
        if task.key == "bad":
            raise ValueError("cannot read bad")
        time.sleep(self.delay)
        with self.lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
        return int(task.path)

    def compute(self, state, x):
        time.sleep(self.delay)
        return x * x

    def finish(self, state, x, y):
        with self.lock:
            self.live -= 1
        return y + 1


def tasks(n: int, bad_at: int | None = None):
    for i in range(n):
        yield Task("bad" if i == bad_at else f"t{i}", str(i))


def test_pipeline_results_match_sequential_and_failures_stay_alone():
    got, ref = {}, {}
    run_local(Square(), tasks(20, bad_at=5), lambda o: got.__setitem__(o.task.key, (o.result, o.error)), prefetch=3)
    run_sequential(Square(), tasks(20, bad_at=5), lambda o: ref.__setitem__(o.task.key, (o.result, o.error)))
    assert got == ref and len(got) == 20
    assert got["t3"] == (10, None) and got["bad"][0] is None and "ValueError: cannot read bad" in got["bad"][1]


def test_pipeline_overlaps_and_keeps_memory_bounded():
    job = Square(delay=0.05)
    t0 = time.perf_counter()
    run_local(job, tasks(20), lambda o: None, prefetch=2, depth=2)
    pipelined = time.perf_counter() - t0
    assert pipelined < 20 * 2 * 0.05 * 0.8  # prepare and compute overlap
    # items alive between prepare and finish: at most the queues + one per stage
    assert job.peak <= 2 + 2 + 2 + 1 + 1
    assert job.setups == 1


def test_writer_error_stops_the_pipeline_and_is_raised():
    seen = []

    def on_result(outcome):
        seen.append(outcome.task.key)
        if len(seen) == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_local(Square(), tasks(1000), on_result, prefetch=2)
    assert len(seen) == 3


def test_lazy_task_source_is_consumed_while_results_flow():
    arrived = []
    first_result = threading.Event()

    def slow_source():
        yield Task("a", "1")
        assert first_result.wait(5), "the first result did not arrive while the source was waiting"
        yield Task("b", "2")

    def on_result(o):
        arrived.append(o.task.key)
        first_result.set()

    run_local(Square(), slow_source(), on_result)
    assert arrived == ["a", "b"]


def test_worker_state_is_loaded_once_per_cache_key():
    job = Square()
    assert worker_state(job) == "state" and worker_state(job) == "state"
    assert job.setups == 1


def test_tally_counts_and_spread():
    tally = RunTally()
    from cryopick.distribute.engine import Outcome

    tally.add(Outcome(Task("a", "a.mrc"), result=1))
    tally.add(Outcome(Task("b", "b.mrc"), error="b.mrc: truncated"))
    assert tally.exit_code == 3 and tally.to_dict()["failed"] == [{"input": "b", "path": "b.mrc",
                                                                   "error": "b.mrc: truncated"}]
    assert spread([3, 1, 10]) == {"min": 1, "median": 3.0, "max": 10, "mean": pytest.approx(14 / 3)}


def test_dask_address_parsing_and_missing_dask(monkeypatch):
    assert parse_address("local") == ("local", None) and parse_address("local:3") == ("local", 3)
    assert parse_address("tcp://10.0.0.1:8786") == ("tcp://10.0.0.1:8786", None)
    for bad in ("local:0", "local:two", "10.0.0.1:8786"):
        with pytest.raises(CryopickError):
            parse_address(bad)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(CryopickError, match=r"pip install 'cryopick\[dask\]'"):
        run(Square(), tasks(2), lambda o: None, dask="local:1")


def test_slurm_site_file_is_checked(tmp_path):
    good = tmp_path / "site.yaml"
    good.write_text("queue: short\naccount: lab\ncores: 8\nmemory: 32GB\nprocesses: 2\nwalltime: '02:00:00'\n"
                    "job_extra_directives: ['--gres=gpu:1']\nadapt: {minimum_jobs: 0, maximum_jobs: 20}\n")
    kwargs, adapt = load_cluster_config(good)
    assert kwargs["cores"] == 8 and kwargs["memory"] == "32GB" and kwargs["processes"] == 2
    assert kwargs["job_extra_directives"] == ["--gres=gpu:1"] and adapt == {"minimum_jobs": 0, "maximum_jobs": 20}
    nested = tmp_path / "nested.yaml"
    nested.write_text("slurm:\n  cores: 4\n  memory: 8GB\n  adapt: {maximum: 3}\n")
    assert load_cluster_config(nested)[1] == {"minimum_jobs": 0, "maximum_jobs": 3}
    cases = {
        "cores: 8\n": "memory: is required",
        "cores: 0\nmemory: 8GB\n": "cores: must be a whole number >= 1",
        "cores: 8\nmemory: lots\n": "memory: must be an amount",
        "cores: 8\nmemory: 8GB\nqueu: short\n": "queu: unknown setting",
        "cores: 2\nmemory: 8GB\nprocesses: 4\n": "processes: 4 workers per job cannot share 2 cores",
        "cores: 8\nmemory: 8GB\nwalltime: two hours\n": "walltime: must be SLURM time",
        "cores: 8\nmemory: 8GB\nadapt: {minimum_jobs: 5, maximum_jobs: 2}\n": "minimum_jobs .5. > maximum_jobs",
        "cores: [8\n": "not valid YAML",
        "- 1\n- 2\n": "expected a mapping",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(CryopickError, match=message) as info:
            load_cluster_config(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(CryopickError, match="cannot read"):
        load_cluster_config(tmp_path / "missing.yaml")


def test_slurm_job_script_from_the_site_file(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue.slurm import SLURMJob

    site = tmp_path / "site.yaml"
    site.write_text("queue: short\naccount: lab\ncores: 8\nmemory: 32GB\nprocesses: 2\nwalltime: '02:00:00'\n")
    kwargs, _ = load_cluster_config(site)
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **kwargs).job_script()
    assert "#SBATCH -p short" in script and "#SBATCH -A lab" in script and "#SBATCH -t 02:00:00" in script
    assert "--nworkers 2" in script and "--nthreads 4" in script


def test_watch_waits_for_a_stable_size_or_a_marker(tmp_path):
    (tmp_path / "a.mrc").write_bytes(b"x" * 10)
    now = [1000.0]
    stop_after = iter(range(100))
    seen = []

    def clock():
        next(stop_after)
        now[0] += 0.5
        return now[0]

    watcher = watch_folder(tmp_path, lambda p: p.suffix == ".mrc", settle=1.0, timeout=3.0, poll=0, clock=clock)
    seen.append(next(watcher).name)  # size and mtime unchanged for the settle time
    (tmp_path / "b.mrc").write_bytes(b"y")
    (tmp_path / "b.mrc.done").write_text("")
    seen.append(next(watcher).name)  # the marker: at once
    assert seen == ["a.mrc", "b.mrc"]
    assert list(watcher) == []  # stops after 3 s without a new file
