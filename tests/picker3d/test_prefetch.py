"""pick3d's local pipeline: the next tomogram is read, checked and rescaled in a background thread while
the current one is picked; reading ahead is bounded; a tomogram that cannot be read fails alone."""

import threading

import pytest

import cryopick.picker3d.pick as P
import cryopick.picker3d.prefetch as F
from cryopick.errors import CryopickError
from cryopick.picker3d.prefetch import prefetched
from tests.picker3d.test_batch import _n, make_env, pick3d


def test_next_item_loads_while_the_current_one_is_used():
    next_loaded = threading.Event()
    threads = {}

    def load(item):
        threads[item] = threading.current_thread().name
        if item == 1:
            next_loaded.set()
        return item * 10

    out = []
    for item, value, error in prefetched(range(3), load, ahead=1):
        if item == 0:  # without reading ahead this would wait forever
            assert next_loaded.wait(10), "item 1 was not loaded while item 0 was in use"
        out.append((item, value, error))
    assert out == [(0, 0, None), (1, 10, None), (2, 20, None)]
    assert all(name.startswith(F.THREAD_NAME) for name in threads.values())


def test_reading_ahead_is_bounded():
    started = []

    def load(item):
        started.append(item)
        return item

    gen = prefetched(range(6), load, ahead=1)
    next(gen)  # working on item 0
    threading.Event().wait(0.3)  # give the worker time to run ahead if it would
    assert started == [0, 1]  # the current item and one more, never the whole list
    assert [item for item, _, _ in gen] == [1, 2, 3, 4, 5]


def test_errors_are_handed_over_and_the_rest_goes_on():
    def load(item):
        if item == 1:
            raise CryopickError("t1.mrc: damaged")
        return item

    for ahead in (0, 1, 2):
        out = [(item, value, str(error) if error else None) for item, value, error in prefetched(range(3), load, ahead)]
        assert out == [(0, 0, None), (1, None, "t1.mrc: damaged"), (2, 2, None)]


def test_other_exceptions_propagate():
    def load(item):
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        list(prefetched(range(2), load, ahead=1))


def test_pick3d_prepares_tomograms_in_the_background(tmp_path, monkeypatch):
    make_env(tmp_path, monkeypatch)
    threads = []
    real = F.working_tomogram
    monkeypatch.setattr(F, "working_tomogram", lambda *a, **k: threads.append(threading.current_thread().name)
                        or real(*a, **k))
    monkeypatch.setattr(P, "working_tomogram", lambda *a, **k: pytest.fail("rescaled again in the picking loop"))
    assert pick3d("--format", "imod", tomos=("t0", "t1", "t2")) == 0
    assert len(threads) == 3 and all(name.startswith(F.THREAD_NAME) for name in threads)
    from cryopick.io.coords import read_picks

    assert len(read_picks(tmp_path / "out" / "imod" / "blob")) == _n("t0", "t1", "t2")


def test_library_without_prefetch_picks_the_same(tmp_path, monkeypatch):
    from cryopick.picker3d.batch import pick_tomograms

    env = make_env(tmp_path, monkeypatch)
    runs = {}
    for ahead in (0, 1):
        summary = pick_tomograms(env / "tomos", [env / "blob.prompt"], None, None, env / f"lib{ahead}", ["imod"],
                                 window=32, overrides={"min_similarity": None}, montage=False, progress=False,
                                 prefetch=ahead)
        runs[ahead] = {n: (env / f"lib{ahead}" / "imod" / "blob" / f"{n}.coords").read_text() for n in ("t0", "t1", "t2")}
        assert summary["n_finished"] == 3
    assert runs[0] == runs[1]
