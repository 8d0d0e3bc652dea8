"""asyncio (issue 6): awaiting shoal futures, coroutine tasks in the workers' event loops,
and ``concurrency=K``. Shared bodies run under serial, thread and process, each on
asyncio's own loop and on uvloop (``event_loop=``); where the serial backend differs by
design (it runs each task to completion at submit time) the test says so."""

import asyncio
import concurrent.futures as cf
import functools
import os
import time

import psutil
import pytest

import shoal
from helpers import chain_text, wait_for_workers

# --- tasks -------------------------------------------------------------------------------------


def square(x):
    return x * x


async def asquare(x):
    await asyncio.sleep(0.001)
    return x * x


async def aadd(a, b):
    await asyncio.sleep(0)
    return a + b


async def nap(seconds, value=None):
    """Sleeps in the event loop; returns (value, start, end) on the monotonic clock (shared by
    every process of the machine)."""
    start = time.monotonic()
    await asyncio.sleep(seconds)
    return value, start, time.monotonic()


class AsyncTaskError(Exception):
    pass


async def _inner_fail(code):
    await asyncio.sleep(0.01)
    raise AsyncTaskError(f"failed-{code}")


async def afail(code):
    await _inner_fail(code)


async def fail_at(x, bad):
    await asyncio.sleep(0)
    if x == bad:
        raise AsyncTaskError(f"item-{x}")
    return x


async def loop_identity():
    await asyncio.sleep(0)
    return os.getpid(), id(asyncio.get_running_loop())


async def loop_kind():
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def new_counting_loop():
    """A user's loop factory (event_loop=callable): asyncio's loop, marked."""
    loop = asyncio.new_event_loop()
    loop.made_by_user_factory = True
    return loop


async def made_by_user_factory():
    return getattr(asyncio.get_running_loop(), "made_by_user_factory", False)


def sync_sleep(seconds, value):
    time.sleep(seconds)
    return value


async def exit_once(marker, seconds):
    """Kills its worker the first time it runs (marker file absent), else sleeps and returns."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        await asyncio.sleep(0.1)  # the others are running too by now
        os._exit(3)
    await asyncio.sleep(seconds)
    return "ok"


async def exit_always():
    await asyncio.sleep(0.1)
    os._exit(4)


class Fetcher:
    """A callable object whose __call__ is a coroutine function."""

    async def __call__(self, x):
        await asyncio.sleep(0)
        return -x


def returns_coroutine(x):
    """A plain function returning a coroutine: awaited too (counted as a plain task)."""
    return asquare(x)


# --- helpers -----------------------------------------------------------------------------------


def max_overlap(intervals):
    """The most intervals (start, end) open at the same time."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


LOOPS = ("asyncio", "uvloop")


@pytest.fixture(params=LOOPS)
def event_loop_choice(request):
    """Each worker event loop in turn: asyncio's (whose selector looks at the task ring)
    and uvloop (the ring armed while the loop runs)."""
    return request.param


@pytest.fixture
def make(backend, event_loop_choice):
    """Executor factory on the current backend and event loop; every executor made is shut
    down after."""
    made = []

    def factory(workers=2, **kwargs):
        kwargs.setdefault("event_loop", event_loop_choice)
        ex = shoal.Executor(max_workers=workers, backend=backend, **kwargs)
        made.append(ex)
        return ex

    try:
        yield factory
    finally:
        for ex in made:
            ex.shutdown(wait=True, cancel_futures=True)


async def _await(fut):
    return await fut


# --- await ex.submit(...) ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_await_submit_plain_and_coroutine_tasks(make):
    ex = make()

    async def main():
        a = await ex.submit(square, 7)
        b = await ex.submit(asquare, 8)
        c = await ex.submit(aadd, 1, b=2)
        return a, b, c

    assert asyncio.run(main()) == (49, 64, 3)


@pytest.mark.timeout(60)
def test_many_concurrent_awaits(make):
    ex = make(concurrency=8)

    async def main():
        plain = [ex.submit(square, i) for i in range(150)]
        coro = [ex.submit(asquare, i) for i in range(150)]
        return await asyncio.gather(*plain, *coro)

    out = asyncio.run(main())
    assert out == [i * i for i in range(150)] * 2


@pytest.mark.timeout(60)
def test_await_raises_the_task_exception(make):
    ex = make()

    async def main():
        with pytest.raises(AsyncTaskError, match="failed-5") as info:
            await ex.submit(afail, 5)
        return info.value

    exc = asyncio.run(main())
    assert "_inner_fail" in chain_text(exc)


@pytest.mark.timeout(60)
def test_cancelling_the_awaiting_task_cancels_a_queued_task(make, backend):
    ex = make(workers=1)
    # Every worker slot (one here; under MPI the launcher's: two nodes of one) takes two tasks
    # ahead before any is measured (its ring, or its leader's credits): hold them all, so that
    # the next task waits in the executor's queue.
    ahead = 2 * ex._backend.slots

    async def main():
        blockers = [ex.submit(sync_sleep, 0.5, "blocker") for _ in range(ahead)]
        fut = ex.submit(square, 3)
        waiter = asyncio.ensure_future(_await(fut))
        await asyncio.sleep(0.05)
        waiter.cancel()
        if backend == "serial":  # ran at submit time: there was nothing left to cancel
            assert await waiter == 9
        else:
            with pytest.raises(asyncio.CancelledError):
                await waiter
        return blockers, fut

    blockers, fut = asyncio.run(main())
    if backend != "serial":
        assert fut.cancelled()  # it was still queued: it never runs
    assert [b.result(timeout=10) for b in blockers] == ["blocker"] * ahead
    assert ex.submit(square, 4).result(timeout=10) == 16


@pytest.mark.timeout(60)
def test_cancelling_the_awaiting_task_leaves_a_running_task_alone(make, backend):
    if backend == "serial":
        pytest.skip("serial runs the task at submit time: it is never running while awaited")
    ex = make(workers=1, concurrency=2)

    async def main():
        fut = ex.submit(nap, 0.4, "done")
        await asyncio.sleep(0.15)  # handed to the worker by now
        waiter = asyncio.ensure_future(_await(fut))
        await asyncio.sleep(0.02)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return fut

    fut = asyncio.run(main())
    value, _, _ = fut.result(timeout=10)  # the task itself finished normally
    assert value == "done"


# --- coroutine tasks ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_coroutine_tasks_return_values(make):
    ex = make()
    futs = [ex.submit(asquare, i) for i in range(20)]
    assert [f.result(timeout=20) for f in futs] == [i * i for i in range(20)]
    assert ex.submit(functools.partial(aadd, 10), 5).result(timeout=20) == 15
    assert ex.submit(Fetcher(), 4).result(timeout=20) == -4
    assert ex.submit(returns_coroutine, 6).result(timeout=20) == 36


@pytest.mark.timeout(60)
def test_coroutine_task_raises_with_the_remote_traceback(make, backend):
    ex = make()
    with pytest.raises(AsyncTaskError, match="failed-2") as info:
        ex.submit(afail, 2).result(timeout=20)
    text = chain_text(info.value)
    assert "_inner_fail" in text and "failed-2" in text
    if backend != "serial":
        assert isinstance(info.value.__cause__, shoal.RemoteTraceback)
    # The worker (and its loop) keep working.
    assert ex.submit(asquare, 3).result(timeout=20) == 9
    assert ex.submit(square, 3).result(timeout=20) == 9


@pytest.mark.timeout(60)
def test_concurrency_overlaps_k_coroutines_per_worker(make, backend):
    k, seconds = 5, 0.2
    ex = make(workers=1, concurrency=k)
    ex.submit(nap, 0).result(timeout=20)  # the worker's loop exists (asyncio imported)
    t0 = time.monotonic()
    futs = [ex.submit(nap, seconds, i) for i in range(k)]
    results = [f.result(timeout=20) for f in futs]
    elapsed = time.monotonic() - t0
    assert [r[0] for r in results] == list(range(k))
    intervals = [(r[1], r[2]) for r in results]
    if backend == "serial":  # one task at a time, at submit time: documented
        assert max_overlap(intervals) == 1
        assert elapsed >= k * seconds
    else:
        assert max_overlap(intervals) == k
        assert seconds <= elapsed < seconds + 0.35, elapsed  # not k * seconds = 1 s


@pytest.mark.timeout(60)
def test_tasks_beyond_k_wait_for_a_free_slot(make, backend):
    k, seconds, n = 2, 0.15, 6
    ex = make(workers=1, concurrency=k)
    ex.submit(nap, 0).result(timeout=20)
    t0 = time.monotonic()
    futs = [ex.submit(nap, seconds, i) for i in range(n)]
    results = [f.result(timeout=20) for f in futs]
    elapsed = time.monotonic() - t0
    assert [r[0] for r in results] == list(range(n))
    most = max_overlap([(r[1], r[2]) for r in results])
    if backend == "serial":
        assert most == 1
    else:
        assert most == k
        assert elapsed >= (n // k) * seconds - 0.01, elapsed
        assert elapsed < (n // k) * seconds + 0.5, elapsed


@pytest.mark.timeout(60)
def test_concurrency_applies_per_worker(make, backend):
    if backend == "serial":
        pytest.skip("serial has no workers")
    k, workers, seconds = 3, 2, 0.25
    ex = make(workers=workers, concurrency=k)
    list(ex.map(nap, [0] * 8))
    t0 = time.monotonic()
    results = [f.result(timeout=20) for f in [ex.submit(nap, seconds, i) for i in range(k * workers)]]
    elapsed = time.monotonic() - t0
    assert max_overlap([(r[1], r[2]) for r in results]) == k * workers
    assert elapsed < seconds + 0.4, elapsed


@pytest.mark.timeout(60)
def test_map_of_a_coroutine_function(make):
    ex = make(concurrency=10)
    assert list(ex.map(asquare, range(300), timeout=30)) == [i * i for i in range(300)]
    assert list(ex.map(aadd, range(50), range(50), timeout=30)) == [2 * i for i in range(50)]
    assert list(ex.starmap(aadd, [(i, 1) for i in range(50)], timeout=30)) == list(range(1, 51))
    assert sorted(ex.map(asquare, range(100), ordered=False, timeout=30)) == [i * i for i in range(100)]
    assert list(ex.map(asquare, range(40), chunksize=7, timeout=30)) == [i * i for i in range(40)]


@pytest.mark.timeout(60)
def test_map_of_a_coroutine_function_overlaps(make, backend):
    ex = make(workers=2, concurrency=10)
    list(ex.map(nap, [0] * 4))
    t0 = time.monotonic()
    results = list(ex.map(nap, [0.1] * 40, range(40), timeout=30))
    elapsed = time.monotonic() - t0
    assert [r[0] for r in results] == list(range(40))
    if backend == "serial":
        assert max_overlap([(r[1], r[2]) for r in results]) == 1
    else:
        assert max_overlap([(r[1], r[2]) for r in results]) > 10  # both workers, many each
        assert elapsed < 4 * 0.1 + 0.6, elapsed  # ideal 0.2 s; one at a time would be 4 s


@pytest.mark.timeout(60)
def test_map_raises_at_the_failing_item(make):
    ex = make(concurrency=4)
    it = ex.map(fail_at, range(20), [7] * 20, timeout=30)
    got = []
    with pytest.raises(AsyncTaskError, match="item-7"):
        for x in it:
            got.append(x)
    assert got == list(range(7))


@pytest.mark.timeout(60)
def test_mixed_plain_and_coroutine_tasks(make):
    ex = make(concurrency=4)
    futs = []
    for i in range(40):
        if i % 3 == 0:
            futs.append(ex.submit(sync_sleep, 0.005, ("sync", i)))
        elif i % 3 == 1:
            futs.append(ex.submit(nap, 0.02, ("async", i)))
        else:
            futs.append(ex.submit(square, i))
    out = [f.result(timeout=30) for f in futs]
    for i, r in enumerate(out):
        if i % 3 == 0:
            assert r == ("sync", i)
        elif i % 3 == 1:
            assert r[0] == ("async", i)
        else:
            assert r == i * i
    # And plain tasks alone still run after the loop went idle.
    assert list(ex.map(square, range(100))) == [i * i for i in range(100)]


@pytest.mark.timeout(60)
def test_each_worker_keeps_one_event_loop(make, backend):
    ex = make(workers=1, concurrency=3)
    first = ex.submit(loop_identity).result(timeout=20)
    ex.submit(square, 2).result(timeout=20)  # a plain task in between
    later = [f.result(timeout=20) for f in [ex.submit(loop_identity) for _ in range(5)]]
    assert all(x == first for x in later)
    if backend == "process":
        assert first[0] != os.getpid()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_concurrency_must_be_a_positive_int(backend, bad):
    with pytest.raises(ValueError, match="concurrency"):
        shoal.Executor(max_workers=1, backend=backend, concurrency=bad)


def test_concurrency_is_shown(backend):
    with shoal.Executor(max_workers=1, backend=backend, concurrency=7) as ex:
        assert ex.concurrency == 7
        assert "concurrency=7" in repr(ex)


# --- event_loop= ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_chosen_event_loop_runs_the_tasks(make, event_loop_choice):
    ex = make(workers=2, concurrency=3)
    kinds = {f.result(timeout=20) for f in [ex.submit(loop_kind) for _ in range(6)]}
    assert kinds == {event_loop_choice}
    assert ex.event_loop == event_loop_choice
    assert sorted(ex.map(asquare, range(20))) == [x * x for x in range(20)]


@pytest.mark.timeout(60)
def test_auto_takes_uvloop_when_installed(backend):
    import importlib.util

    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    with shoal.Executor(max_workers=1, backend=backend, concurrency=2) as ex:
        assert ex.event_loop == expected  # the loop in use, not "auto"
        assert ex.submit(loop_kind).result(timeout=20) == expected


@pytest.mark.timeout(60)
def test_event_loop_can_be_a_factory(backend):
    with shoal.Executor(max_workers=1, backend=backend, concurrency=2,
                        event_loop=new_counting_loop) as ex:
        assert ex.submit(made_by_user_factory).result(timeout=20) is True


@pytest.mark.parametrize("bad", ["trio", "", None, 3])
def test_event_loop_must_be_known(backend, bad):
    with pytest.raises(ValueError, match="event_loop must be one of"):
        shoal.Executor(max_workers=1, backend=backend, event_loop=bad)


@pytest.mark.timeout(60)
def test_a_uvloop_worker_takes_frames_while_its_coroutines_wait(make_process_executor):
    """With uvloop the task ring is armed while the loop runs: a plain task and new
    coroutine tasks sent while others wait must still start at once."""
    ex = make_process_executor(max_workers=1, concurrency=4, event_loop="uvloop")
    ex.submit(nap, 0).result(timeout=20)
    slow = [ex.submit(nap, 1.5, i) for i in range(2)]
    time.sleep(0.2)  # the worker sits in uvloop, the ring armed
    t0 = time.perf_counter()
    assert ex.submit(square, 7).result(timeout=20) == 49
    assert ex.submit(asquare, 8).result(timeout=20) == 64
    assert time.perf_counter() - t0 < 0.5
    assert [f.result(timeout=20)[0] for f in slow] == [0, 1]


# --- serial: the caller's own loop -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_serial_coroutine_task_inside_a_running_loop():
    with shoal.Executor(backend="serial") as ex:
        async def main():
            mine = id(asyncio.get_running_loop())
            pid, theirs = await ex.submit(loop_identity)
            value = await ex.submit(asquare, 5)
            return mine, theirs, value

        mine, theirs, value = asyncio.run(main())
        assert value == 25
        assert theirs != mine  # never on the caller's loop
        # Outside a running loop the executor's own loop runs in the caller's thread.
        assert ex.submit(asquare, 6).result() == 36


# --- process backend: worker death, idling ------------------------------------------------------


@pytest.mark.timeout(60)
def test_crash_with_k_in_flight_fails_all_of_them_without_retries(make_process_executor, event_loop_choice):
    ex = make_process_executor(max_workers=1, retries=0, concurrency=3, event_loop=event_loop_choice)
    ex.submit(nap, 0).result(timeout=20)
    futs = [ex.submit(nap, 2.0, "a"), ex.submit(exit_always), ex.submit(nap, 2.0, "b")]
    for f in futs:
        with pytest.raises(shoal.WorkerCrashedError):
            f.result(timeout=20)
    # A new worker serves the executor.
    assert ex.submit(asquare, 9).result(timeout=20) == 81
    assert ex.submit(square, 9).result(timeout=20) == 81


@pytest.mark.timeout(60)
def test_crash_with_k_in_flight_retries_all_of_them(make_process_executor, event_loop_choice, tmp_path):
    ex = make_process_executor(max_workers=1, retries=2, concurrency=3, event_loop=event_loop_choice)
    marker = str(tmp_path / "crashed-once")
    futs = [ex.submit(exit_once, marker, 0.3) for _ in range(3)]
    assert [f.result(timeout=30) for f in futs] == ["ok"] * 3
    assert os.path.exists(marker)


@pytest.mark.timeout(60)
def test_a_worker_waiting_on_coroutines_does_not_spin(make_process_executor, event_loop_choice):
    ex = make_process_executor(max_workers=1, concurrency=4, event_loop=event_loop_choice)
    ex.submit(nap, 0).result(timeout=20)
    [pid] = wait_for_workers(ex, 1)
    proc = psutil.Process(pid)
    futs = [ex.submit(nap, 1.0, i) for i in range(4)]
    time.sleep(0.2)  # the tasks are running: the worker sits in its event loop
    before = proc.cpu_times()
    time.sleep(0.6)
    after = proc.cpu_times()
    used = (after.user + after.system) - (before.user + before.system)
    assert used < 0.1, f"the idle worker used {used:.2f} s of CPU in 0.6 s"
    assert [f.result(timeout=20)[0] for f in futs] == [0, 1, 2, 3]


@pytest.mark.timeout(60)
def test_output_of_coroutine_tasks_reaches_the_driver(make_process_executor, event_loop_choice, capfd):
    ex = make_process_executor(max_workers=1, concurrency=2, event_loop=event_loop_choice)
    assert ex.submit(print_later, "hello-from-a-coroutine").result(timeout=20) is None
    ex.shutdown(wait=True)
    assert "hello-from-a-coroutine" in capfd.readouterr().out


async def print_later(text):
    await asyncio.sleep(0.01)
    print(text)


@pytest.mark.timeout(60)
def test_as_completed_with_coroutine_tasks(make):
    ex = make(concurrency=5)
    futs = {ex.submit(nap, 0.05 * (i % 3), i): i for i in range(15)}
    seen = sorted(f.result()[0] for f in cf.as_completed(futs, timeout=30))
    assert seen == list(range(15))


@pytest.mark.timeout(120)
def test_the_io_bound_example_runs():
    import pathlib

    from helpers import run_python_file

    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "io_bound.py"
    proc = run_python_file(example, "60", timeout=100)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("60 requests")
    assert len(lines) == 4 and all(" ms  (" in ln for ln in lines[1:]), proc.stdout


async def big_in_big_out(array, i):
    await asyncio.sleep(0.05)  # the argument's shared-memory block must outlive the wait
    total = float(array.sum())
    await asyncio.sleep(0)
    import numpy as np

    return total, np.full(200_000, float(i))


@pytest.mark.timeout(60)
def test_coroutine_tasks_with_large_arguments_and_results(make):
    np = pytest.importorskip("numpy")
    ex = make(workers=2, concurrency=3)
    arrays = [np.full(300_000, float(i)) for i in range(8)]  # 2.4 MB each: above the threshold
    futs = [ex.submit(big_in_big_out, a, i) for i, a in enumerate(arrays)]
    for i, f in enumerate(futs):
        total, out = f.result(timeout=30)
        assert total == 300_000.0 * i
        assert out.shape == (200_000,) and out[0] == i and out[-1] == i
    res = list(ex.map(big_in_big_out, arrays, range(8), timeout=30))
    assert [r[0] for r in res] == [300_000.0 * i for i in range(8)]
