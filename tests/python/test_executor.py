"""shoal.Executor and shoal.Future: the concurrent.futures contract of docs/api.md,
run under every backend (serial, thread, process) unless a test says otherwise."""

import asyncio
import collections
import concurrent.futures as cf
import datetime
import decimal
import fractions
import functools
import hashlib
import itertools
import os
import random
import sys
import threading
import time

import numpy as np
import psutil
import pytest

import shoal
from helpers import chain_text, run_python, run_python_file, wait_for_workers

# --- tasks (module level: importable by workers) ---------------------------------------


def add(a, b=0, *, c=0):
    return a + b + c


def square(x):
    return x * x


def echo(x):
    return x


def echo_kwargs(**kwargs):
    return kwargs


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return seconds if value is None else value


def fail_at(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def whoami(_=None):
    return (os.getpid(), threading.get_ident())


def make_bytes(n, seed):
    return random.Random(seed).randbytes(n)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def modules_loaded(names):
    return [name in sys.modules for name in names]


def add_one_inplace_and_sum(arr):
    arr += 1
    return float(arr.sum())


_INIT_STATE = {}


def init_store(path, value):
    _INIT_STATE["value"] = value
    with open(path, "a") as f:
        f.write(f"{os.getpid()}:{threading.get_ident()}\n")


def read_init_state(_=None):
    return _INIT_STATE.get("value")


def init_fail():
    raise OSError("boom-init")


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def scale(self, x):
        return self.factor * x


class CountsPickling:
    """Counts, in the caller, how many times it is pickled."""

    pickled = 0

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        type(self).pickled += 1
        return (CountsPickling, (self.value,))


def wait_all(fs, timeout=60):
    done, not_done = cf.wait(fs, timeout=timeout)
    assert not not_done, f"{len(not_done)} futures still pending after {timeout}s"


# --- types and construction -------------------------------------------------------------


def test_public_types():
    assert issubclass(shoal.Executor, cf.Executor)
    assert issubclass(shoal.Future, cf.Future)
    assert issubclass(shoal.WorkerCrashedError, cf.BrokenExecutor)
    assert issubclass(shoal.InitializerError, cf.BrokenExecutor)
    assert issubclass(shoal.RemoteTraceback, Exception)
    for name in ("Executor", "Future", "WorkerCrashedError", "InitializerError", "RemoteTraceback"):
        assert name in shoal.__all__


def test_attributes(executor, backend):
    assert executor.max_workers == 2
    assert executor.backend == backend
    assert isinstance(executor.worker_pids(), list)
    if backend in ("serial", "thread"):  # no processes of their own
        assert executor.worker_pids() == []


def test_default_max_workers_is_cpu_count(backend):
    with shoal.Executor(backend=backend) as ex:
        assert ex.max_workers == os.cpu_count()
        assert ex.submit(square, 4).result(timeout=30) == 16


def test_default_backend_is_process():
    with shoal.Executor(max_workers=1) as ex:
        assert ex.backend == "process"
        assert ex.submit(os.getpid).result(timeout=30) != os.getpid()


@pytest.mark.parametrize("bad", [0, -1, 2.5, "2"])
def test_bad_max_workers(backend, bad):
    with pytest.raises(ValueError):
        shoal.Executor(max_workers=bad, backend=backend)


@pytest.mark.parametrize("bad", ["processes", "", "fork", None])
def test_bad_backend(bad):
    with pytest.raises(ValueError):
        shoal.Executor(max_workers=1, backend=bad)


def test_process_worker_pids():
    with shoal.Executor(max_workers=2, backend="process") as ex:
        list(ex.map(sleep_return, [0.2, 0.2], chunksize=1))
        pids = wait_for_workers(ex, 2)
        assert os.getpid() not in pids
        task_pids = {pid for pid, _ in ex.map(whoami, range(20), chunksize=1)}
        assert task_pids <= set(pids)
        descendants = {p.pid for p in psutil.Process().children(recursive=True)}
        assert set(pids) <= descendants


# --- submit -------------------------------------------------------------------------------


def test_submit_result(executor):
    fut = executor.submit(add, 1, 2)
    assert isinstance(fut, shoal.Future)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=30) == 3
    assert fut.done() and not fut.cancelled() and fut.exception() is None


def test_submit_kwargs(executor):
    assert executor.submit(add, 1, b=2, c=3).result(timeout=30) == 6
    # fn is positional-only: a task may take a keyword argument named "fn"
    assert executor.submit(echo_kwargs, fn=1, x="y").result(timeout=30) == {"fn": 1, "x": "y"}


def test_submit_from_many_threads(executor):
    results = {}

    def producer(k):
        fs = [executor.submit(add, k, i) for i in range(300)]
        results[k] = [f.result(timeout=60) for f in fs]

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2, 3]
    for k, got in results.items():
        assert got == [k + i for i in range(300)]


def test_a_task_submitted_alone_never_waits_behind_a_long_one(executor):
    # The joblib backend's batches are submitted ``alone`` (Backend.submit): each starts only on
    # a worker with nothing else to run, so a quick one is never parked in the queue of a worker
    # busy with a slow one (joblib's generator_unordered returns the quick batches first).
    slow = executor._submit_call(sleep_return, (3.0, "slow"), {}, alone=True)
    sent = time.monotonic()
    quick = [executor._submit_call(sleep_return, (0.02, i), {}, alone=True) for i in range(8)]
    assert [f.result(timeout=30) for f in quick] == list(range(8))
    waited = time.monotonic() - sent
    assert waited < 1.5, waited  # none waited for the slow task
    assert slow.result(timeout=30) == "slow"


# --- map ------------------------------------------------------------------------------------


def test_map_ordered(executor):
    assert list(executor.map(square, range(100))) == [i * i for i in range(100)]


def test_map_unordered_yields_in_completion_order(executor, backend):
    n = 21
    sleeps = [1.0] + [0.01] * (n - 1)  # item 0 is slow
    ordered = list(executor.map(sleep_return, sleeps, range(n), chunksize=1))
    assert ordered == list(range(n))
    unordered = list(executor.map(sleep_return, sleeps, range(n), ordered=False, chunksize=1))
    assert sorted(unordered) == list(range(n))
    if backend == "serial":
        assert unordered == list(range(n))  # serial completes in input order
    else:
        assert unordered[0] != 0, unordered
        assert unordered.index(0) > n // 2, unordered


def test_map_unordered_default_chunksize(executor):
    out = list(executor.map(square, range(1000), ordered=False))
    assert sorted(out) == [i * i for i in range(1000)]


def test_map_multiple_iterables_stops_at_shortest(executor):
    assert list(executor.map(add, [1, 2, 3], [10, 20, 30, 40])) == [11, 22, 33]
    assert list(executor.map(add, range(5), itertools.count(100))) == [100, 102, 104, 106, 108]


def test_starmap(executor):
    assert list(executor.starmap(add, [(1, 2), (3, 4), (5,)])) == [3, 7, 5]
    got = list(executor.starmap(add, ((i, i) for i in range(50)), chunksize=4))
    assert got == [2 * i for i in range(50)]
    assert sorted(executor.starmap(add, [(1, 2), (3, 4)], ordered=False)) == [3, 7]


@pytest.mark.parametrize("chunksize", [1, 7, 100, 1000])
def test_map_explicit_chunksize(executor, chunksize):
    assert list(executor.map(square, range(100), chunksize=chunksize)) == [i * i for i in range(100)]


def test_map_chunk_runs_on_one_worker_process():
    # chunksize is honoured: the items of a chunk travel and run together in one worker.
    # (ThreadPoolExecutor ignores chunksize, so the thread backend is not held to this.)
    with shoal.Executor(max_workers=2, backend="process") as ex:
        ids = list(ex.map(whoami, range(40), chunksize=10))
    for start in range(0, 40, 10):
        assert len(set(ids[start:start + 10])) == 1, ids


def test_map_bad_chunksize(executor):
    # Not spelled out in api.md; concurrent.futures raises ValueError for chunksize < 1.
    with pytest.raises(ValueError):
        list(executor.map(square, range(3), chunksize=0))


def test_map_empty(executor):
    assert list(executor.map(square, [])) == []
    assert list(executor.map(add, [], [1, 2])) == []
    assert list(executor.starmap(add, [])) == []
    assert list(executor.map(square, [], ordered=False)) == []


def test_map_is_lazy_on_endless_iterator(executor):
    consumed = [0]

    def source():
        for i in itertools.count():
            consumed[0] += 1
            yield i

    it = executor.map(square, source())
    first = list(itertools.islice(it, 1000))
    assert first == [i * i for i in range(1000)]
    # Not consuming: the input must stop being read (bounded read-ahead).
    time.sleep(0.5)
    c1 = consumed[0]
    time.sleep(0.5)
    c2 = consumed[0]
    assert c1 == c2, f"map kept reading its input while nobody consumed ({c1} -> {c2})"
    assert c1 < 1_000_000, f"map read {c1} items ahead"
    # Resume, then abandon the iterator; the executor keeps working.
    assert next(it) == 1000 * 1000
    del it
    assert executor.submit(square, 3).result(timeout=30) == 9


def test_map_unordered_is_lazy_on_endless_iterator(executor):
    out = list(itertools.islice(executor.map(square, itertools.count(), ordered=False), 500))
    assert len(set(out)) == 500
    assert all(int(v ** 0.5) ** 2 == v for v in out)
    assert executor.submit(square, 3).result(timeout=30) == 9


def test_map_input_iterator_raising(executor):
    def source():
        yield 1
        yield 2
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        list(executor.map(square, source()))
    assert executor.submit(square, 5).result(timeout=30) == 25


def test_map_timeout(executor):
    sleeps = [0.0, 0.3, 0.3, 0.3, 2.0, 2.0]
    got = []
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as ei:
        for v in executor.map(sleep_return, sleeps, timeout=0.5, chunksize=1):
            got.append(v)
    elapsed = time.monotonic() - t0
    assert isinstance(ei.value, cf.TimeoutError)
    assert len(got) < len(sleeps)
    assert elapsed < 1.5, f"timeout=0.5 raised only after {elapsed:.2f}s"


def test_map_raises_midway(executor):
    got = []
    with pytest.raises(ValueError, match="bad item 4"):
        for v in executor.map(fail_at, range(10), itertools.repeat(4)):
            got.append(v)
    assert got == [0, 1, 2, 3]
    assert list(executor.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_map_raises_midway_in_chunk(executor):
    with pytest.raises(ValueError, match="bad item 17"):
        list(executor.map(fail_at, range(40), itertools.repeat(17), chunksize=8))
    got = []
    with pytest.raises(ValueError, match="bad item 17"):
        for v in executor.map(fail_at, range(40), itertools.repeat(17), chunksize=8):
            got.append(v)
    assert got == list(range(17))


# --- shutdown and context manager --------------------------------------------------------


def test_submit_after_shutdown_raises(executor):
    assert executor.submit(square, 2).result(timeout=30) == 4
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(square, 2)
    with pytest.raises(RuntimeError):
        list(executor.map(square, range(3)))
    executor.shutdown()  # idempotent


def test_shutdown_waits_for_pending(executor):
    fs = [executor.submit(sleep_return, 0.05, i) for i in range(10)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(10))


def test_shutdown_without_wait_still_completes(executor):
    fs = [executor.submit(sleep_return, 0.3, i) for i in range(4)]
    t0 = time.monotonic()
    executor.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.25
    assert [f.result(timeout=30) for f in fs] == list(range(4))


def test_shutdown_cancel_futures(executor, backend):
    blockers = [executor.submit(sleep_return, 0.5, "b") for _ in range(2)]
    queued = [executor.submit(sleep_return, 0.02, i) for i in range(60)]
    time.sleep(0.1)
    t0 = time.monotonic()
    executor.shutdown(wait=True, cancel_futures=True)
    elapsed = time.monotonic() - t0
    everything = blockers + queued
    assert all(f.done() for f in everything)
    assert [f.result() for f in blockers] == ["b", "b"]
    cancelled = [f for f in queued if f.cancelled()]
    for f in cancelled:
        with pytest.raises(cf.CancelledError):
            f.result()
    for f in queued:
        if not f.cancelled():
            assert f.result() == queued.index(f)
    if backend == "serial":
        assert not cancelled  # serial ran every task at submit time
    else:
        assert len(cancelled) >= 40, f"only {len(cancelled)} of 60 queued futures were cancelled"
        assert elapsed < 2.0


def test_result_timeout_and_cancel_queued(executor, backend, tmp_path):
    marker = tmp_path / "ran"
    blockers = [executor.submit(sleep_return, 0.6, "b") for _ in range(2)]
    if backend != "serial":
        with pytest.raises(TimeoutError):
            blockers[0].result(timeout=0.1)
    queued = [executor.submit(sleep_return, 0.0, i) for i in range(30)]
    victim = executor.submit(open, str(marker), "w")  # creates the file if it ever runs
    if backend == "serial":
        assert not victim.cancel() and victim.done()  # already ran at submit
        return
    assert victim.cancel(), "a future queued behind 30 tasks could not be cancelled"
    assert victim.cancelled() and victim.done()
    with pytest.raises(cf.CancelledError):
        victim.result()
    assert [f.result(timeout=30) for f in blockers + queued] == ["b", "b"] + list(range(30))
    assert not marker.exists(), "a cancelled task ran"
    assert not blockers[0].cancel()  # finished futures cannot be cancelled


def test_context_manager(backend):
    with shoal.Executor(max_workers=2, backend=backend) as ex:
        assert isinstance(ex, shoal.Executor)
        f = ex.submit(sleep_return, 0.2, "v")
    assert f.done()  # __exit__ waited
    assert f.result() == "v"
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)


# --- concurrent.futures and asyncio interoperability --------------------------------------


def test_wait_and_as_completed(executor, backend):
    fs = [executor.submit(sleep_return, 0.01 * (i % 3), i) for i in range(12)]
    done, not_done = cf.wait(fs, timeout=30)
    assert not not_done and done == set(fs)
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=30)) == list(range(12))

    slow = executor.submit(sleep_return, 1.0, "slow")
    fast = executor.submit(sleep_return, 0.0, "fast")
    done, not_done = cf.wait([slow, fast], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert fast in done
    if backend != "serial":
        assert slow in not_done
    first = next(cf.as_completed([slow, executor.submit(sleep_return, 0.0, "quick")], timeout=30))
    if backend != "serial":
        assert first.result() == "quick"

    bad = executor.submit(fail_at, 1, 1)
    slow2 = executor.submit(sleep_return, 1.0)
    done, _ = cf.wait([bad, slow2], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert bad in done
    assert isinstance(bad.exception(), ValueError)


def test_add_done_callback(executor):
    called = []
    event = threading.Event()

    def callback(f):
        called.append(f)
        event.set()

    fut = executor.submit(sleep_return, 0.1, 5)
    fut.add_done_callback(callback)
    assert event.wait(30)
    assert len(called) == 1 and called[0] is fut
    assert called[0].result() == 5
    # On a finished future the callback runs at once, in the caller.
    later = []
    fut.add_done_callback(later.append)
    assert later == [fut]
    # Callbacks see failures too.
    failed = []
    bad = executor.submit(fail_at, 3, 3)
    done = threading.Event()
    bad.add_done_callback(lambda f: (failed.append(f.exception()), done.set()))
    assert done.wait(30)
    assert isinstance(failed[0], ValueError)


def test_await_future(executor, backend):
    async def main():
        assert await executor.submit(add, 1, 2) == 3
        results = await asyncio.gather(*(executor.submit(square, i) for i in range(10)))
        assert results == [i * i for i in range(10)]
        with pytest.raises(ValueError, match="bad item 2"):
            await executor.submit(fail_at, 2, 2)
        assert await asyncio.wrap_future(executor.submit(add, 2, 2)) == 4
        # Awaiting does not block the event loop.
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        assert await executor.submit(sleep_return, 0.5, "slept") == "slept"
        t.cancel()
        if backend != "serial":
            assert ticks >= 10, f"the event loop ticked only {ticks} times during a 0.5 s await"
        return True

    assert asyncio.run(asyncio.wait_for(main(), 30))


# --- initializer ------------------------------------------------------------------------------


def test_initializer_effects_visible(backend, tmp_path):
    path = tmp_path / "init.log"
    try:
        with shoal.Executor(max_workers=2, backend=backend, initializer=init_store,
                            initargs=(str(path), "hello")) as ex:
            assert ex.submit(read_init_state).result(timeout=30) == "hello"
            assert list(ex.map(read_init_state, range(40), chunksize=1)) == ["hello"] * 40
        lines = path.read_text().splitlines()
        assert len(lines) == len(set(lines)), "initializer ran twice in one worker"
        if backend == "serial":
            assert len(lines) == 1
        else:
            assert 1 <= len(lines) <= 2
    finally:
        _INIT_STATE.clear()


def test_initializer_error(backend):
    ex = shoal.Executor(max_workers=2, backend=backend, initializer=init_fail)
    try:
        for _ in range(2):
            with pytest.raises(shoal.InitializerError) as ei:
                ex.submit(square, 3).result(timeout=15)
            assert isinstance(ei.value, cf.BrokenExecutor)
            assert "boom-init" in chain_text(ei.value)
        with pytest.raises(shoal.InitializerError):
            list(ex.map(square, range(5)))
    finally:
        ex.shutdown(wait=True)


# --- what can be a task ------------------------------------------------------------------------


def test_lambdas_closures_nested_partial(executor):
    k = 10

    def nested(x):
        return x + k

    def make_adder(n):
        return lambda x: x + n

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    def swap(p):
        return Point(p.y, p.x)

    assert executor.submit(lambda x: x * 2, 21).result(timeout=30) == 42
    assert executor.submit(nested, 1).result(timeout=30) == 11
    assert list(executor.map(nested, range(3))) == [10, 11, 12]
    assert list(executor.map(make_adder(5), range(3))) == [5, 6, 7]
    assert executor.submit(functools.partial(add, 1, c=5), 2).result(timeout=30) == 8
    assert list(executor.map(functools.partial(add, b=100), range(3))) == [100, 101, 102]
    assert executor.submit(Scaler(3).scale, 4).result(timeout=30) == 12
    assert executor.submit(pow, 2, 10).result(timeout=30) == 1024
    assert list(executor.map(str.upper, ["a", "b"])) == ["A", "B"]
    p = executor.submit(swap, Point(1, 2)).result(timeout=30)
    assert type(p).__name__ == "Point" and (p.x, p.y) == (2, 1)


def test_function_pickled_once_per_executor(executor, backend):
    tag = CountsPickling(7)

    def uses_tag(x):
        return x + tag.value

    CountsPickling.pickled = 0
    fs = [executor.submit(uses_tag, i) for i in range(20)]
    assert [f.result(timeout=30) for f in fs] == [i + 7 for i in range(20)]
    assert list(executor.map(uses_tag, range(100), chunksize=1)) == [i + 7 for i in range(100)]
    if backend == "process":
        assert CountsPickling.pickled == 1, f"function pickled {CountsPickling.pickled} times"
    else:
        assert CountsPickling.pickled <= 1


MAIN_SCRIPT = """
import sys
import shoal

def triple(x):
    return 3 * x

class Box:
    def __init__(self, v):
        self.v = v

def unbox_inc(b):
    return Box(b.v + 1)

{guard}
    ex = shoal.Executor(max_workers=2, backend=sys.argv[1])
    print(list(ex.map(triple, range(5))))
    print(ex.submit(lambda: "lam").result(timeout=30))
    print(ex.submit(unbox_inc, Box(41)).result(timeout=30).v)
    ex.shutdown()
    print("done")
"""


@pytest.mark.parametrize("how", ["python -c", "script file"])
def test_functions_defined_in_main(backend, how, tmp_path):
    # The notebook case: functions and classes that live only in __main__.
    if how == "python -c":
        proc = run_python(MAIN_SCRIPT.replace("{guard}", "if True:"), backend, cwd=str(tmp_path))
    else:
        script = tmp_path / "user_script.py"
        script.write_text(MAIN_SCRIPT.replace("{guard}", 'if __name__ == "__main__":'))
        proc = run_python_file(script, backend, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[0,", "3,", "6,", "9,", "12]", "lam", "42", "done"], proc.stdout


def test_module_on_user_sys_path(backend, tmp_path):
    # A module importable only through a sys.path entry the user added at run time.
    (tmp_path / "usermod_xyz.py").write_text("def work(x):\n    return x + 1000\n")
    code = f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import shoal, usermod_xyz
        with shoal.Executor(max_workers=2, backend=sys.argv[1]) as ex:
            print(list(ex.map(usermod_xyz.work, range(3))))
    """
    proc = run_python(code, backend)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1000, 1001, 1002]"


def test_preload_process():
    # colorsys is imported neither by this module nor by anything it imports.
    assert "colorsys" not in sys.modules
    with shoal.Executor(max_workers=1, backend="process") as ex:
        assert ex.submit(modules_loaded, ["colorsys"]).result(timeout=30) == [False]
    with shoal.Executor(max_workers=1, backend="process", preload=("colorsys",)) as ex:
        assert ex.submit(modules_loaded, ["colorsys"]).result(timeout=30) == [True]


_IMPORTED_BY = os.getpid()  # in a worker: the process that imported this module


def imported_by():
    return _IMPORTED_BY, os.getpid()


def test_workers_share_the_first_tasks_module():
    """The zygote imports the first task's module before it forks the workers: no worker
    imports it on its own (each would dirty ~0.5 MB of pages doing so)."""
    with shoal.Executor(max_workers=2, backend="process") as ex:
        got = [ex.submit(imported_by).result(timeout=30) for _ in range(6)]
        pids = set(ex.worker_pids())
    zygote_pid = shoal.process.driver.zygote().pid
    assert {w for _, w in got} <= pids
    assert all(importer == zygote_pid for importer, _ in got), (got, zygote_pid)


def test_preload_of_a_missing_module_fails_at_construction():
    with pytest.raises(ModuleNotFoundError, match="no_such_module_for_shoal"):
        shoal.Executor(max_workers=1, backend="process", preload=("no_such_module_for_shoal",))


def test_worker_pids_before_the_first_task():
    with shoal.Executor(max_workers=2, backend="process") as ex:
        pids = ex.worker_pids()
        assert len(pids) == 2
        assert ex.submit(os.getpid).result(timeout=30) in pids
    with shoal.Executor(max_workers=2, backend="process") as ex:
        pass  # never started: shuts down at once
    assert ex.worker_pids() == []


def test_preload_accepted_by_every_backend(backend):
    with shoal.Executor(max_workers=2, backend=backend, preload=("json",)) as ex:
        assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]


def test_max_tasks_per_worker_process():
    with shoal.Executor(max_workers=1, backend="process", max_tasks_per_worker=2) as ex:
        pids = [ex.submit(os.getpid).result(timeout=30) for _ in range(6)]
        counts = collections.Counter(pids)
        assert sorted(counts.values()) == [2, 2, 2], counts
        assert list(ex.map(square, range(50))) == [i * i for i in range(50)]


def test_max_tasks_per_worker_accepted_by_every_backend(backend):
    with shoal.Executor(max_workers=2, backend=backend, max_tasks_per_worker=3) as ex:
        assert list(ex.map(square, range(30), chunksize=1)) == [i * i for i in range(30)]


# --- what can travel ---------------------------------------------------------------------------

VALUES = {
    "none": None,
    "true": True,
    "zero": 0,
    "big-int": 2 ** 10_000 + 1,
    "neg-big-int": -(3 ** 500),
    "float": 1.5,
    "inf": float("inf"),
    "complex": complex(1, -2),
    "empty-str": "",
    "unicode": "ünïcødé ✓ 水",
    "empty-bytes": b"",
    "bytes": bytes(range(256)) * 4,
    "bytearray": bytearray(b"abc"),
    "tuple": (1, (2, (3, None))),
    "list": [1, [2, [3]], "x"],
    "dict": {"a": {1, 2}, 3: [4], (5, 6): None},
    "frozenset": frozenset({1, "a"}),
    "decimal": decimal.Decimal("1.10"),
    "fraction": fractions.Fraction(1, 3),
    "datetime": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "exception-object": KeyError("returned"),  # returned, not raised
    "range": range(3, 30, 3),
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_values_round_trip(executor, name):
    value = VALUES[name]
    got = executor.submit(echo, value).result(timeout=30)
    assert type(got) is type(value)
    if name == "exception-object":
        assert got.args == value.args
    else:
        assert got == value


NUMPY_ARRAYS = {
    "f8-2d": lambda: np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000),
    "empty": lambda: np.zeros((0, 3), dtype=np.int8),
    "0-d": lambda: np.array(3.5),
    "strided": lambda: np.arange(10_000).reshape(100, 100)[::3, ::7],
    "fortran": lambda: np.asfortranarray(np.arange(600, dtype=np.int32).reshape(20, 30)),
    "bool": lambda: np.array([True, False, True]),
    "complex": lambda: np.arange(10) * (1 + 2j),
    "structured": lambda: np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "i4"), ("b", "f8")]),
    "object": lambda: np.array([{"a": 1}, None, "s"], dtype=object),
    "datetime64": lambda: np.arange("2024-01-01", "2024-01-10", dtype="datetime64[D]"),
    "scalar": lambda: np.float32(2.5),
}


@pytest.mark.parametrize("name", sorted(NUMPY_ARRAYS))
def test_numpy_round_trip(executor, name):
    value = NUMPY_ARRAYS[name]()
    got = executor.submit(echo, value).result(timeout=30)
    assert type(got) is type(value)
    assert got.dtype == value.dtype and got.shape == value.shape
    assert np.array_equal(got, value) if value.dtype != object else list(got) == list(value)


def test_numpy_results_are_owned_and_writable(executor):
    # A result array must stay valid while later tasks reuse transport memory.
    first = executor.submit(np.full, 1_000_000, 1.0).result(timeout=30)
    others = [executor.submit(np.full, 1_000_000, float(i)).result(timeout=30) for i in range(2, 12)]
    assert (first == 1.0).all()
    for i, other in enumerate(others, start=2):
        assert (other == i).all()
    first[0] = 7.0  # a result belongs to the caller, as with multiprocessing
    assert first[0] == 7.0


def test_process_arguments_are_copies():
    arr = np.zeros(1_000_000)
    with shoal.Executor(max_workers=1, backend="process") as ex:
        assert ex.submit(add_one_inplace_and_sum, arr).result(timeout=30) == 1_000_000.0
    assert not arr.any(), "a task's in-place change reached the caller's array"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [5 * 2 ** 20, 50 * 2 ** 20], ids=["5MB", "50MB"])
def test_large_frames(executor, size):
    payload = random.Random(1).randbytes(size)
    digest = sha256(payload)
    assert executor.submit(sha256, payload).result(timeout=60) == digest  # large argument
    made = executor.submit(make_bytes, size, 1).result(timeout=60)  # large result
    assert len(made) == size and sha256(made) == digest
    back = executor.submit(echo, payload).result(timeout=60)  # both ways
    assert back == payload
    arr = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 1024)
    assert np.array_equal(executor.submit(echo, arr).result(timeout=60), arr)


@pytest.mark.timeout(120)
def test_many_large_frames_in_flight(executor):
    size = 10 * 2 ** 20
    fs = [executor.submit(make_bytes, size, seed) for seed in range(6)]
    for seed, f in enumerate(fs):
        assert sha256(f.result(timeout=60)) == sha256(random.Random(seed).randbytes(size))


# --- many tasks ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_many_submits(executor):
    fs = [executor.submit(square, i) for i in range(20_000)]
    wait_all(fs, timeout=100)
    assert [f.result() for f in fs] == [i * i for i in range(20_000)]


@pytest.mark.timeout(120)
def test_many_map_items(executor):
    n = 200_000
    assert list(executor.map(square, range(n))) == [i * i for i in range(n)]
    assert sum(executor.map(square, range(n), ordered=False)) == sum(i * i for i in range(n))


def test_worker_pids_right_after_the_first_submit_lists_the_starting_workers():
    with shoal.Executor(max_workers=2, backend="process") as ex:
        ex.submit(sleep_return, 0.5)
        pids = ex.worker_pids()
        assert len(pids) == 2 and os.getpid() not in pids


@pytest.mark.timeout(90)  # the hang this guards against ends here, as a failure
def test_callback_that_waits_for_a_lock_the_submitting_thread_holds(executor):
    # joblib's pattern: a future's done-callback takes the lock that the dispatching thread
    # holds while it submits more. The thread delivering results (here, running that
    # callback) must not stop the submitting thread: each would wait for the other for ever.
    lock = threading.RLock()  # the serial backend runs the callback in this thread
    entered = threading.Event()

    def callback(f):
        entered.set()
        with lock:
            pass

    with lock:
        executor.submit(add, -1, 0).add_done_callback(callback)
        assert entered.wait(20)  # the callback runs (and waits for the lock)
        futures = [executor.submit(add, i, 0) for i in range(3000)]
    assert [f.result(timeout=20) for f in futures] == list(range(3000))
