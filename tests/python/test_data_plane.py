"""The data plane: large buffers through the shared arena, shoal.share, lifetime and limits.

Bodies that can run under every backend take the `executor` fixture (serial, thread,
process); what only a process pool has (the arena's accounting, worker deaths, the limit)
runs on processes."""

import gc
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shoal
from shoal import _arena, _core

from helpers import SRC, wait_until

MB = 1 << 20


# ---------------------------------------------------------------- tasks

def identity(x):
    return x


def describe(x):
    """What a worker sees: type, writability and content checksum."""
    if isinstance(x, np.ndarray):
        return ("ndarray", bool(x.flags.writeable), x.dtype.str, x.shape, float(np.asarray(x, float).sum()))
    return (type(x).__name__, None, None, None, None)


def try_write(a):
    try:
        a[0] = 42
    except ValueError as exc:
        return f"refused: {exc}"
    return "written"


def total(a, offset=0):
    return float(a.sum()) + offset


def make_array(nbytes, value):
    return np.full(nbytes // 8, float(value))


def frame_of(df):
    return df.assign(c=df["a"] * 2)


def crash_while_returning(nbytes):
    """Places a large result in the arena, then dies while pickling the rest of it."""

    class Killer:
        def __reduce__(self):
            os._exit(3)

    return (np.ones(nbytes // 8), Killer())


def used_bytes():
    return _arena.arena().used_bytes


def resident_bytes():
    return os.fstat(_arena.arena().fd).st_blocks * 512


def private_bytes():
    """This process's own anonymous memory (heap): its RSS less the file and shared-memory
    pages it maps, which for the arena are bounded by resident_bytes() instead."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


# ------------------------------------------------------------ every backend

VALUES = {
    "contiguous": lambda: np.arange(300_000, dtype=np.float64),
    "fortran": lambda: np.asfortranarray(np.arange(200_000, dtype=np.int32).reshape(400, 500)),
    "strided": lambda: np.arange(400_000, dtype=np.float64)[::3],
    "small": lambda: np.arange(10, dtype=np.int16),
    "object": lambda: np.array([{"k": i} for i in range(20_000)], dtype=object),
    "bytes": lambda: bytes(range(256)) * 1000,
    "bytearray": lambda: bytearray(b"xyz" * 50_000),
    "memoryview": lambda: memoryview(np.arange(50_000, dtype=np.float64).tobytes()).cast("d"),
    "small memoryview": lambda: memoryview(b"abcdef").cast("B", (2, 3)),
    "memoryviews in a dict": lambda: {"small": memoryview(b"abc"), "large": memoryview(bytes(100_000))},
    "dict": lambda: {"a": np.ones(100_000), "b": np.zeros((300, 300)), "meta": [1, "two"]},
}


def assert_same(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert (a == b).all()
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, memoryview):
        assert isinstance(b, memoryview) and a.format == b.format and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("kind", sorted(VALUES))
def test_argument_and_result_round_trip(executor, kind):
    value = VALUES[kind]()
    assert_same(value, executor.submit(identity, value).result(timeout=30))


@pytest.mark.parametrize("kind", ["contiguous", "strided", "bytes", "dict"])
def test_map_items_with_large_buffers(executor, kind):
    values = [VALUES[kind]() for _ in range(5)]
    for got, want in zip(executor.map(identity, values), values):
        assert_same(want, got)


def test_large_result_is_an_ordinary_writable_array(executor):
    a = executor.submit(make_array, 8 * MB, 7).result(timeout=30)
    assert a.flags.writeable and a.shape == (MB,) and a[0] == 7
    a[0] = 1  # the caller may keep and change it
    b = a.copy()
    del a
    gc.collect()
    assert b[0] == 1 and b[1] == 7


def test_pandas_dataframe(executor):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": np.arange(100_000), "s": ["x"] * 100_000})
    out = executor.submit(frame_of, df).result(timeout=30)
    assert (out["c"] == df["a"] * 2).all() and (out["s"] == "x").all()


def test_shared_array_is_a_read_only_view_in_tasks(executor):
    a = np.arange(1_000_000, dtype=np.float64)
    h = shoal.share(a)
    assert isinstance(h, shoal.Shared) and h.nbytes == a.nbytes
    assert describe(h.value) == describe(a)[:1] + (False,) + describe(a)[2:]
    assert executor.submit(describe, h).result(timeout=30) == ("ndarray", False, "<f8", a.shape, float(a.sum()))
    assert executor.submit(try_write, h).result(timeout=30).startswith("refused")
    assert executor.submit(total, a=h, offset=1).result(timeout=30) == float(a.sum()) + 1
    assert list(executor.map(total, [h] * 6, range(6))) == [float(a.sum()) + i for i in range(6)]
    assert list(executor.starmap(total, [(h, 2)] * 3)) == [float(a.sum()) + 2] * 3


def test_shared_dict_of_arrays(executor):
    d = {"x": np.ones(200_000), "y": np.arange(10)}
    h = shoal.share(d)
    out = executor.submit(identity, h).result(timeout=30)
    assert_same(d, out)


def table_info(x, table):
    """What a task sees of a table bound into its function: total + x, writable, in the arena."""
    from shoal import _arena as arena_module

    a = arena_module._arena
    in_arena = a is not None and arena_module._arena_pid == os.getpid() and a.locate(table) >= 0
    return (float(table.sum()) + x, bool(table.flags.writeable), in_arena)


def sweep_table_info(x, rng, table):
    total, writable, in_arena = table_info(x, table)
    return {"total": total, "writable": writable, "in_arena": in_arena}


def test_shared_table_bound_into_a_function_is_mapped_not_copied(executor):
    """functools.partial(fn, handle) or partial(fn, handle.value): every task reads the one
    copy in the arena, read-only, on every backend (a process worker maps it when it loads
    the function; no worker unpickles a copy)."""
    import functools

    a = np.arange(1_000_000, dtype=np.float64)
    h = shoal.share(a)
    want = (float(a.sum()) + 1, False, True)
    for bound in (h, h.value):
        fn = functools.partial(table_info, table=bound)
        assert executor.submit(fn, 1).result(timeout=30) == want
        assert list(executor.map(fn, [1, 1, 1])) == [want] * 3
        assert list(executor.starmap(functools.partial(table_info, 1), [(bound,)])) == [want]
        rows = executor.sweep(functools.partial(sweep_table_info, table=bound), {"x": [1, 2]}, seed=3)
        rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
        assert [(r["total"], r["writable"], r["in_arena"]) for r in rows] == [
            (float(a.sum()) + 1, False, True), (float(a.sum()) + 2, False, True)]
    # A plain array bound into a function: each worker has its own writable copy.
    plain = functools.partial(table_info, table=a)
    assert executor.submit(plain, 1).result(timeout=30) == (float(a.sum()) + 1, True, False)
    assert list(executor.map(plain, [2, 3])) == [(float(a.sum()) + k, True, False) for k in (2, 3)]


def test_a_function_holding_shared_data_pickles_references_only():
    import functools

    from shoal._pickle import dumps_function, loads

    a = np.arange(1_000_000, dtype=np.float64)
    h = shoal.share(a)
    arena = _arena.arena()
    for fn in (functools.partial(table_info, table=h), functools.partial(table_info, table=h.value)):
        blob = dumps_function(fn, arena, _arena.DEFAULT_THRESHOLD)
        assert blob[:1] == b"R" and len(blob) < 4096, len(blob)
    # An array that is not in the arena is copied into it once, however many functions hold
    # it, and loads into memory numpy allocates (not a view of the arena).
    from shoal._pickle import loads_function

    own = functools.partial(table_info, table=a)
    keep = []
    blob = dumps_function(own, arena, _arena.DEFAULT_THRESHOLD, keep)
    assert blob[:1] == b"R" and len(blob) < 4096 and len(keep) == 1
    again = []
    dumps_function(functools.partial(table_info, table=a), arena, _arena.DEFAULT_THRESHOLD, again)
    assert again == keep
    fn = loads_function(blob)
    assert fn(0) == (float(a.sum()), True, False)
    table = fn.keywords["table"]
    assert np.array_equal(table, a) and isinstance(table.base, np.ndarray) and table.base.flags.owndata
    a[0] = 7.0  # new contents: a new copy
    changed = []
    dumps_function(functools.partial(table_info, table=a), arena, _arena.DEFAULT_THRESHOLD, changed)
    assert changed[0] is not keep[0]
    # Small arrays and other objects stay in the pickle.
    small = functools.partial(table_info, table=np.ones(10))
    assert loads(dumps_function(small, arena, _arena.DEFAULT_THRESHOLD))(1)[0] == 11.0


def test_share_of_a_handle_is_the_handle():
    h = shoal.share(np.ones(100_000))
    assert shoal.share(h) is h


def test_share_of_unpicklable_fails_at_once():
    import threading

    with pytest.raises(TypeError, match="pickle"):
        shoal.share({"lock": threading.Lock(), "a": np.ones(100_000)})


# ------------------------------------------------------------ processes only

@pytest.fixture
def pool(make_process_executor):
    ex = make_process_executor(max_workers=2)
    ex.submit(identity, 0).result(timeout=30)
    return ex


def test_map_keeps_chunks_of_large_items_small(pool):
    """Chunks aim at 50 ms of work, but a chunk's arguments and results stay under
    MAX_CHUNK_BYTES: identity over 1 MB arrays is fast, yet at most 8 go together. (Distinct
    arrays: one array passed by every item is placed once and does not count per chunk.)"""
    from shoal import _mapping

    arrays = (np.ones(MB // 8) for _ in range(200))
    window = _mapping.MapWindow(pool._backend, identity, arrays, timeout=None, chunksize=None, ordered=True,
                                star=False, length=200, max_workers=pool.max_workers)
    sizes = []
    while (finished := window.next_finished()) is not None:
        fut, items = finished
        window.learned(len(items), fut.result())
        sizes.append(len(items))
    assert sum(sizes) == 200
    assert _mapping.MAX_CHUNK_BYTES == 16 * MB
    assert max(sizes) <= 8, sizes  # 16 MB / (1 MB in + 1 MB out)
    assert max(sizes) > 1, sizes  # they did grow


def test_arguments_and_results_leave_no_blocks_behind(pool):
    gc.collect()
    before = used_bytes()
    a = np.ones(4 * MB // 8)
    for r in pool.map(total, [a] * 10, range(10)):
        pass
    results = [pool.submit(make_array, 2 * MB, i).result(timeout=30) for i in range(5)]
    assert used_bytes() >= before + 5 * 2 * MB  # the results live in the arena
    del results, r
    gc.collect()
    assert wait_until(lambda: used_bytes() == before, timeout=10), (used_bytes(), before)


def test_shared_handle_memory_is_freed_when_collected_and_unused(pool):
    gc.collect()
    before = used_bytes()
    h = shoal.share(np.ones(8 * MB // 8))
    assert used_bytes() == before + 8 * MB
    fut = pool.submit(total, h)
    del h
    gc.collect()
    assert fut.result(timeout=30) == 8 * MB // 8
    gc.collect()
    assert wait_until(lambda: used_bytes() == before, timeout=10)


def kernel_collapses_shmem():
    """MADV_COLLAPSE is Linux 6.1; shmem_enabled=deny is the one setting that refuses it."""
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            setting = f.read()
    except OSError:
        return False
    return release >= (6, 1) and "[deny]" not in setting


def sum_and_huge_mapped(a):
    """(sum of a, kB of shared memory this worker maps with whole huge pages)."""
    s = float(a.sum())
    with open("/proc/self/smaps_rollup") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("ShmemPmdMapped:"))
    return s, kb


def test_shared_arrays_are_backed_by_huge_pages_in_the_workers(pool):
    """share() asks for huge pages (MADV_COLLAPSE) for a large block, and every worker maps
    the arena where they fit whole: a table read at random costs fewer TLB misses."""
    huge = _core.Arena.huge_page_bytes
    a = np.arange(12 * MB // 8, dtype=np.float64)
    h = shoal.share(a)
    got = [pool.submit(sum_and_huge_mapped, h).result(timeout=30) for _ in range(4)]
    assert all(s == float(a.sum()) for s, _ in got)
    if kernel_collapses_shmem():
        assert min(kb for _, kb in got) * 1024 >= 12 * MB - 2 * huge, got
    else:
        assert all(kb == 0 for _, kb in got), got


def test_dead_workers_blocks_are_reclaimed(make_process_executor):
    ex = make_process_executor(max_workers=2, retries=0)
    ex.submit(identity, 0).result(timeout=30)
    gc.collect()
    before = used_bytes()
    with pytest.raises(shoal.WorkerCrashedError):
        ex.submit(crash_while_returning, 16 * MB).result(timeout=30)
    assert wait_until(lambda: used_bytes() == before, timeout=10), (used_bytes(), before)
    assert ex.submit(total, np.ones(MB)).result(timeout=30) == MB  # still working


def test_in_band_when_disabled(make_process_executor):
    ex = make_process_executor(max_workers=1, buffer_threshold=None)
    a = np.arange(500_000)
    assert (ex.submit(identity, a).result(timeout=30) == a).all()


def test_small_threshold_sends_small_buffers_through_the_arena(make_process_executor):
    ex = make_process_executor(max_workers=1, buffer_threshold=0)
    a = np.arange(100)
    assert (ex.submit(identity, a).result(timeout=30) == a).all()
    out = ex.submit(identity, a).result(timeout=30)
    assert _arena.arena().locate(memoryview(out).cast("B")) >= 0  # a view of the arena


@pytest.mark.parametrize("bad", [-1, 1.5, "64K", True])
def test_bad_threshold_is_rejected(bad):
    with pytest.raises(ValueError, match="buffer_threshold"):
        shoal.Executor(1, buffer_threshold=bad)


def test_references_outside_the_arena_are_refused():
    a = _arena.arena()
    with pytest.raises(ValueError, match="outside the arena"):
        a.view(a.limit_bytes - 8, 64)
    with pytest.raises(ValueError, match="outside the arena"):
        a.view(2**63, 1)
    assert a.locate(bytearray(100)) == -1


def run_driver(code, timeout=120):
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.timeout(180)
def test_limit_is_a_clear_error_and_nothing_hangs():
    out = run_driver("""
        import numpy as np, shoal
        def make(n): return np.ones(n // 8)
        def total(a): return float(a.sum())
        shoal.set_arena_limit("64M")
        with shoal.Executor(2) as ex:
            try:
                ex.submit(total, np.ones(100 * 2**20 // 8))
            except shoal.ArenaFull as e:
                print("caller:", e)
            try:
                ex.submit(make, 100 * 2**20).result(timeout=60)
            except shoal.ArenaFull as e:
                print("worker:", e)
            try:
                shoal.share(np.ones(80 * 2**20 // 8))
            except MemoryError as e:
                print("share:", type(e).__name__)
            print("after:", ex.submit(total, np.ones(2**20)).result(timeout=60))
        """)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("caller:") and "64 MiB" in lines[0], out.stdout
    assert lines[1].startswith("worker:") and "64 MiB" in lines[1], out.stdout
    assert lines[2] == "share: ArenaFull", out.stdout
    assert lines[3] == "after: 1048576.0", out.stdout


def test_set_arena_limit_after_first_use_is_an_error():
    _arena.arena()
    with pytest.raises(RuntimeError, match="already exists"):
        shoal.set_arena_limit(_arena.arena().limit_bytes // 2)
    with pytest.raises(ValueError):
        shoal.set_arena_limit(0)


@pytest.mark.timeout(180)
def test_no_file_left_in_dev_shm_after_a_killed_driver():
    before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, numpy as np, shoal
        def total(a): return float(a.sum())
        ex = shoal.Executor(2)
        h = shoal.share(np.ones(2**20))
        print(ex.submit(total, h).result(timeout=60), flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=SRC), text=True)
    try:
        assert proc.stdout.readline().strip() == "1048576.0"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert set(os.listdir("/dev/shm")) <= before


@pytest.mark.timeout(600)
def test_ten_thousand_tasks_moving_ten_megabytes_leave_memory_flat(pool):
    """Each task takes a 10 MB array (copied into the arena) and returns a 10 MB array (placed
    by the worker, adopted by the caller): 200 GB through the arena in all."""
    import psutil

    a = np.ones(10 * MB // 8)
    me = psutil.Process()

    def rounds(n):
        for r in pool.map(identity, (a for _ in range(n))):
            assert r.shape == a.shape

    rounds(500)
    gc.collect()
    used, resident, heap = used_bytes(), resident_bytes(), private_bytes()
    rounds(9500)
    gc.collect()
    assert wait_until(lambda: used_bytes() == used, timeout=10), (used_bytes(), used)
    # Freed pages are kept for reuse up to a bound, never accumulated.
    assert resident_bytes() <= max(resident, 256 * MB) + 64 * MB, (resident_bytes(), resident)
    assert private_bytes() <= heap + 64 * MB, (private_bytes(), heap)


@pytest.mark.timeout(180)
def test_map_waits_for_arena_room_when_items_in_flight_would_pass_the_limit():
    """12 arrays of 40 MB under a 256 MB limit: each fits, all at once would not. map() waits
    for the chunks in flight to free their blocks; a single item that can never fit still
    raises ArenaFull."""
    out = run_driver("""
        import numpy as np, shoal
        def total(a): return float(a[0] + a[-1])
        shoal.set_arena_limit("256M")
        arrays = [np.full(40 * 2**20 // 8, float(i)) for i in range(12)]
        with shoal.Executor(2) as ex:
            print("map:", list(ex.map(total, arrays)) == [2.0 * i for i in range(12)])
            try:
                list(ex.map(total, [np.ones(300 * 2**20 // 8)]))
            except shoal.ArenaFull:
                print("too big: ArenaFull")
        """)
    assert out.returncode == 0, out.stderr
    assert "map: True" in out.stdout and "too big: ArenaFull" in out.stdout, out.stdout + out.stderr
