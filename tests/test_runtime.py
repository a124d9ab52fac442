"""The thread-count policy shared by 2D and 3D (cryopick.runtime): one thread per core other processes left free."""

import os

import pytest
import torch

from cryopick import runtime
from cryopick.runtime import CpuSample, busy_other_cores, choose_threads, configure_threads, parse_proc_stat

PROC_STAT = """cpu  300 0 100 1000 10 0 0 0 0 0
cpu0 100 0 50 500 5 0 0 0 0 0
cpu1 200 0 50 500 5 0 0 0 0 0
intr 12345
ctxt 678
"""


@pytest.fixture
def keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_parse_proc_stat_sums_the_allowed_cores():
    # busy = user + nice + system + irq + softirq + steal; total adds idle and iowait; the "cpu" total line is skipped
    assert parse_proc_stat(PROC_STAT) == (400.0, 1410.0)
    assert parse_proc_stat(PROC_STAT, cpus={1}) == (250.0, 755.0)
    assert parse_proc_stat("cpu0 1 2\n") == (3.0, 3.0)  # short lines (old kernels) are padded with zeros


def test_busy_other_cores_subtracts_our_own_cpu_time():
    # 2 cores over 1 s: 1.6 core-seconds busy, 0.6 of them ours -> 1 core busy with others.
    before = CpuSample(wall=10.0, own_cpu=5.0, busy=100.0, total=200.0)
    after = CpuSample(wall=11.0, own_cpu=5.6, busy=101.6, total=202.0)
    assert busy_other_cores(before, after) == pytest.approx(1.0)
    # Our own load alone is not "others".
    assert busy_other_cores(before, CpuSample(11.0, 7.0, 102.0, 202.0)) == pytest.approx(0.0)
    assert busy_other_cores(None, after) is None
    assert busy_other_cores(after, after) is None  # no time elapsed


@pytest.mark.parametrize("cores, busy, expected", [(2, 0.0, 2), (2, 0.3, 2), (2, 0.67, 1), (2, 1.0, 1), (2, 2.0, 1),
                                                   (2, 5.0, 1), (8, 2.2, 6), (1, 0.0, 1)])
def test_one_thread_per_free_core(cores, busy, expected):
    n, reason = choose_threads(cores=cores, busy=busy)
    assert n == expected
    assert reason.startswith(f"using {n} CPU thread") and f"{cores} core" in reason and f"{busy:.1f} busy" in reason


def test_the_measured_case_two_cores_one_busy():
    """The measured failure: 2 cores, one other single-threaded process -> 1 thread, said in words."""
    assert choose_threads(cores=2, busy=1.0) == (1, "using 1 CPU thread: 2 cores, 1.0 busy with other processes")
    n, reason = choose_threads(cores=2, busy=2.0)
    assert n == 1 and "--threads" in reason  # all busy: still one thread, and how to override


def test_requested_threads_win_and_are_checked():
    assert choose_threads(3, cores=2, busy=2.0) == (3, "using 3 CPU threads (as requested)")
    with pytest.raises(ValueError):
        choose_threads(0)


def test_unknown_load_uses_every_core(monkeypatch):
    monkeypatch.setattr(runtime, "measure_busy_cores", lambda seconds: None)
    n, reason = choose_threads(cores=3)
    assert n == 3 and "load unknown" in reason


def test_cgroup_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: 1.5)
    assert runtime.available_cores() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: None)
    assert runtime.available_cores() == len(os.sched_getaffinity(0))


def test_configure_threads_applies_and_says_it(monkeypatch, keep_torch_threads):
    messages = []
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    monkeypatch.setattr(runtime, "measure_busy_cores", lambda seconds: 1.0)
    assert configure_threads(log=messages.append) == 1
    assert torch.get_num_threads() == 1
    assert messages == ["using 1 CPU thread: 2 cores, 1.0 busy with other processes"]
    assert configure_threads(2, log=messages.append) == 2 and torch.get_num_threads() == 2


def test_real_measurement_is_sane():
    busy = runtime.measure_busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= os.cpu_count() + 1
    n, _ = choose_threads(sample_seconds=0.05)
    assert 1 <= n <= runtime.available_cores()
