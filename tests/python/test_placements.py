"""A large buffer that many items of one call pass is placed in the arena once (_arena.Placements),
and each task still gets its own copy's semantics: on processes a copy-on-write view (a write
stays in that task), on threads and serially the caller's object (no pickling, as documented).

Bodies run under every backend (the `backend` fixture)."""

import gc

import numpy as np
import pytest

import shoal
from shoal import _arena

from helpers import wait_until

MB = 1 << 20


def blocks_in_use(a, i=0, rng=None):
    """In a worker process: blocks in use in the whole arena; elsewhere None."""
    from shoal.process import worker

    return _arena.worker_arena().blocks if worker.in_worker else None


def scribble(a, i):
    """Writes into its argument, then reports what it saw before and after."""
    before = float(a[0])
    a[:] = i
    return before, float(a[0]), float(a[-1])


def total(a, i=0):
    return float(a.sum())


def driver_blocks():
    stats = _arena.arena()
    return stats.blocks


@pytest.mark.timeout(120)
def test_the_same_array_in_1000_items_is_placed_once(backend):
    big = np.ones(MB // 8)
    with shoal.Executor(max_workers=2, backend=backend) as ex:
        ex.submit(total, big).result(timeout=60)  # the pool is up
        gc.collect()
        before = driver_blocks()
        seen = list(ex.map(blocks_in_use, [big] * 1000, range(1000)))
        if backend == "process":
            # Every task saw one block in use beyond what was there before: the placement.
            assert max(seen) == before + 1, (max(seen), before)
            assert wait_until(lambda: driver_blocks() == before, timeout=10)  # freed after the call
            assert shoal.arena_stats()["blocks"] == before
        elif backend == "mpi":
            # Each node's arena held one block: the node's copy of the array, which crossed to
            # it once for the whole call, and is dropped there after the call.
            assert set(seen) == {1}, sorted(set(seen))
            assert wait_until(lambda: ex.submit(blocks_in_use, None).result(timeout=30) == 0, timeout=10)
        else:  # tasks get the caller's object: nothing is placed
            assert seen == [None] * 1000
            assert driver_blocks() == before


@pytest.mark.timeout(120)
def test_starmap_and_sweep_place_a_shared_array_once(backend):
    big = np.ones(MB // 8)
    with shoal.Executor(max_workers=2, backend=backend) as ex:
        ex.submit(total, big).result(timeout=60)
        before = driver_blocks()
        seen = list(ex.starmap(blocks_in_use, [(big, i) for i in range(200)]))
        rows = ex.sweep(blocks_in_use, {"a": [big], "i": list(range(50))}, runs=1, seed=1)
        rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
        if backend == "process":
            assert max(seen) == before + 1
            assert max(r["result"] for r in rows) == before + 1
        assert wait_until(lambda: driver_blocks() == before, timeout=10)


@pytest.mark.timeout(120)
def test_a_task_writing_into_its_argument_changes_nothing_others_see(backend):
    big = np.zeros(MB // 8)
    with shoal.Executor(max_workers=2, backend=backend) as ex:
        out = list(ex.map(scribble, [big] * 50, range(1, 51), chunksize=3))
        if backend in ("process", "mpi"):  # tasks in other processes
            # Each task saw the array as the caller passed it, and its own writes.
            assert out == [(0.0, float(i), float(i)) for i in range(1, 51)]
            assert not big.any()  # nor does the caller see any write
        else:
            # In-process backends hand tasks the caller's object (docs/api.md): writes are shared.
            assert big.any()


@pytest.mark.timeout(120)
def test_an_array_passed_twice_in_one_item_is_one_object(backend):
    big = np.arange(MB // 8, dtype=float)

    def same(a, b):
        return a is b, float(a[5])

    with shoal.Executor(max_workers=2, backend=backend) as ex:
        assert list(ex.map(same, [big] * 4, [big] * 4)) == [(True, 5.0)] * 4


@pytest.mark.timeout(120)
def test_distinct_arrays_are_each_placed_and_freed(backend):
    with shoal.Executor(max_workers=2, backend=backend) as ex:
        ex.submit(total, np.ones(10)).result(timeout=60)
        before = driver_blocks()
        sums = list(ex.map(total, (np.full(MB // 8, float(i)) for i in range(40))))
        assert sums == [float(i) * (MB // 8) for i in range(40)]
        assert wait_until(lambda: driver_blocks() == before, timeout=10)


@pytest.mark.timeout(120)
def test_a_buffer_is_captured_when_the_call_first_reads_it():
    big = np.zeros(MB // 8)

    def items():
        for i in range(6):
            yield big
            big[:] = i + 1  # changed after the call read it: tasks still see it as first read

    with shoal.Executor(max_workers=2) as ex:
        out = list(ex.map(total, items(), chunksize=1))
    assert out[0] == 0.0


@pytest.mark.timeout(120)
def test_placements_reuse_only_the_same_live_object():
    """A new array at a dead one's address (and id) is a new placement, not the old bytes."""
    arena = _arena.arena()
    p = _arena.Placements(arena)
    a = np.full(MB // 8, 1.0)
    h1, flags, new1 = p.place(memoryview(a).cast("B"))
    h2, _, new2 = p.place(memoryview(a).cast("B"))
    assert new1 and not new2 and h1 is h2 and flags == _arena.COPY_ON_WRITE
    assert p.made == 1
    del a, h1, h2
    gc.collect()
    b = np.full(MB // 8, 2.0)
    h3, _, new3 = p.place(memoryview(b).cast("B"))
    assert new3
    assert np.frombuffer(h3.block, float)[0] == 2.0
    p.close()


def first(a):
    return float(a[0])


@pytest.mark.timeout(120)
def test_many_items_of_one_placement_in_a_chunk_map_one_view_at_a_time(backend):
    """Chunks of thousands of items passing one array: each item's copy-on-write mapping is
    made as the item is loaded, not all at once (vm.max_map_count is ~65,000)."""
    big = np.zeros(MB // 8)
    with shoal.Executor(max_workers=2, backend=backend) as ex:
        assert list(ex.map(first, [big] * 70000, chunksize=70000)) == [0.0] * 70000


@pytest.mark.timeout(120)
def test_a_time_limited_map_places_a_shared_array_once_too(make_process_executor):
    big = np.ones(MB // 8)
    ex = make_process_executor(max_workers=2)
    ex.submit(total, big).result(timeout=60)  # the pool is up
    gc.collect()
    before = driver_blocks()
    seen = list(ex.map(blocks_in_use, [big] * 50, range(50), task_timeout=30))
    assert max(seen) == before + 1, (max(seen), before)
    assert [r[0] for r in ex.map(scribble, [big] * 4, range(4), task_timeout=30)] == [1.0] * 4
    assert wait_until(lambda: driver_blocks() == before, timeout=10)
