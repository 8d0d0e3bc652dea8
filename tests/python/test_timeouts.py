"""Runaway tasks: task_timeout (Executor, map, starmap, sweep) and Future.kill().

The process backend stops a running task by killing its worker and forking a replacement; the
thread and serial backends cannot stop a thread and say so. Each behaviour test runs under
every backend (the `backend` fixture) and checks the process backend's behaviour or the
others' clear error."""
import asyncio
import concurrent.futures
import os
import pickle
import statistics
import time

import psutil
import pytest

import shoal

from helpers import is_alive, wait_for_workers, wait_until
from test_lifecycle import shm_names


def endless(x=None):
    while True:
        pass


def nap(s):
    time.sleep(s)
    return s


def run_or_loop(steps, rng):
    """A sweep's model: `steps` < 0 diverges and never returns."""
    if steps < 0:
        endless()
    time.sleep(steps)
    return {"value": float(rng.random())}


def nbytes(a):
    return a.nbytes


def looping_with(a):
    endless()


async def async_nap(s):
    await asyncio.sleep(s)
    return s


def limits_tasks(backend):
    """task_timeout is kept: the process backend, and MPI (each node's executor keeps it)."""
    return backend in ("process", "mpi")


def kills_tasks(backend):
    """Future.kill() stops a running task."""
    return backend == "process"


def children():
    return {p.pid for p in psutil.Process().children(recursive=True) if is_alive(p)}


# ---------------------------------------------------------------- shared behaviour


@pytest.mark.timeout(60)
def test_sweep_with_one_endless_run_finishes_with_that_row_marked(backend):
    """1 run of 40 loops for ever: the sweep takes about the others' time plus the limit."""
    limit, step = 1.0, 0.1
    ex = shoal.Executor(max_workers=2, backend=backend)
    try:
        steps = [step] * 39 + [-1.0]
        if not limits_tasks(backend):
            with pytest.raises(ValueError, match="task_timeout"):
                ex.sweep(run_or_loop, {"steps": steps}, errors="keep", task_timeout=limit)
            return
        ex.sweep(run_or_loop, {"steps": [0.0] * 4}, task_timeout=limit)  # workers started, numpy loaded
        t = time.monotonic()
        ex.sweep(run_or_loop, {"steps": [step] * 40}, errors="keep", task_timeout=limit)
        others = time.monotonic() - t
        t = time.monotonic()
        rows = ex.sweep(run_or_loop, {"steps": steps}, errors="keep", task_timeout=limit)
        elapsed = time.monotonic() - t
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    errors = list(rows["error"])
    assert errors[:39] == [None] * 39
    assert errors[39].startswith("TaskTimeoutError") and "run_or_loop" in errors[39] and "1 s" in errors[39]
    # The endless run holds one of two workers for the limit, while the other runs the rest.
    print(f"sweep of 40 runs: {others:.2f} s; with one endless run and a {limit} s limit: {elapsed:.2f} s")
    assert elapsed < others + limit + 1.5


@pytest.mark.timeout(60)
def test_kill_stops_a_running_task_and_frees_its_worker_fast(backend):
    ex = shoal.Executor(max_workers=2, backend=backend)
    try:
        fut = ex.submit(nap, 0.5)
        if not kills_tasks(backend):
            with pytest.raises(RuntimeError, match="not supported"):
                fut.kill()
            assert fut.result() == 0.5
            return
        fut.result()
        wait_for_workers(ex, 2)
        latencies, replaced = [], []
        for _ in range(5):
            fut = ex.submit(endless)
            assert wait_until(lambda: ex._backend._pool.inflight == 1 and ex._backend._pool.queued == 0)
            time.sleep(0.05)  # it runs
            assert not fut.cancel()  # concurrent.futures' contract: a running task is not cancelled
            before = set(ex.worker_pids())
            t = time.monotonic()
            assert fut.kill()
            with pytest.raises(concurrent.futures.CancelledError):
                fut.result(timeout=5)
            latencies.append(time.monotonic() - t)
            assert fut.cancelled() and fut.done()
            assert ex.submit(nap, 0).result(timeout=5) == 0
            replaced.append(time.monotonic() - t)
            pids = wait_for_workers(ex, 2)
            assert len(before - set(pids)) == 1  # one worker was replaced
            assert not any(is_alive(p) for p in before - set(pids))
        print(f"kill -> future cancelled: median {statistics.median(latencies) * 1e3:.1f} ms "
              f"(max {max(latencies) * 1e3:.1f}); kill -> next task's result: median "
              f"{statistics.median(replaced) * 1e3:.1f} ms (max {max(replaced) * 1e3:.1f})")
        assert statistics.median(latencies) < 0.1
        assert statistics.median(replaced) < 0.1
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.mark.timeout(60)
def test_limits_and_kills_leave_no_process_or_shared_memory_behind(backend):
    np = pytest.importorskip("numpy")
    ex = shoal.Executor(max_workers=2, backend=backend)
    if not kills_tasks(backend):  # the processes and shared memory of this machine are watched
        if limits_tasks(backend):
            assert list(ex.map(nap, [0], task_timeout=1)) == [0]
        else:
            with pytest.raises(ValueError, match="task_timeout"):
                list(ex.map(nap, [0], task_timeout=1))
        ex.shutdown()
        return
    procs, shm = children(), shm_names()  # the zygote (kept for later executors) is among them
    big = np.ones(1 << 18)  # 2 MiB: travels in the arena
    assert ex.submit(nbytes, big).result() == big.nbytes
    used = shoal.arena_stats()["used_bytes"]
    futs = [ex.submit(looping_with, big) for _ in range(2)]
    time.sleep(0.2)
    for f in futs:
        f.kill()
    with pytest.raises(shoal.TaskTimeoutError):
        list(ex.map(looping_with, [big, big], task_timeout=0.3))
    assert list(ex.map(nbytes, [big] * 4)) == [big.nbytes] * 4
    assert all(f.cancelled() for f in futs)
    assert wait_until(lambda: shoal.arena_stats()["used_bytes"] <= used)
    ex.shutdown(wait=True)
    assert wait_until(lambda: children() <= procs), children() - procs
    assert shm_names() <= shm


# ---------------------------------------------------------------- process backend


@pytest.mark.timeout(60)
def test_timed_out_task_is_not_retried_and_the_tasks_behind_it_lose_no_attempt(make_process_executor):
    ex = make_process_executor(max_workers=1, retries=0, task_timeout=0.5)
    wait_for_workers(ex, 1)
    t = time.monotonic()
    stuck = ex.submit(endless)
    behind = [ex.submit(nap, 0.01) for _ in range(4)]  # some wait in the worker's ring
    with pytest.raises(shoal.TaskTimeoutError) as info:
        stuck.result(timeout=10)
    assert 0.45 < time.monotonic() - t < 3
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, shoal.ShoalError)
    assert err.limit == 0.5 and err.function == "endless"
    assert "endless" in str(err) and "0.5 s" in str(err)
    assert [f.result(timeout=10) for f in behind] == [0.01] * 4  # retries=0: none was charged


@pytest.mark.timeout(60)
def test_killed_task_costs_the_others_nothing(make_process_executor):
    ex = make_process_executor(max_workers=1, retries=0)
    wait_for_workers(ex, 1)
    stuck = ex.submit(endless)
    behind = [ex.submit(nap, 0.01) for _ in range(3)]
    time.sleep(0.2)
    assert stuck.kill()
    assert [f.result(timeout=10) for f in behind] == [0.01] * 3
    assert stuck.cancelled()


@pytest.mark.timeout(60)
def test_kill_of_a_queued_or_finished_task(make_process_executor):
    ex = make_process_executor(max_workers=1)
    assert ex.submit(nap, 0).result() == 0
    running = ex.submit(nap, 0.5)
    queued = [ex.submit(nap, 0) for _ in range(5)]
    # Queued in the driver (dropped) or already in the worker's ring (its worker is killed):
    # cancelled either way, and `running`, killed with it, runs again uncharged.
    assert queued[-1].kill()
    with pytest.raises(concurrent.futures.CancelledError):
        queued[-1].result(timeout=5)
    assert queued[-1].cancelled()
    done = ex.submit(nap, 0)
    assert running.result(timeout=10) == 0.5
    assert [f.result(timeout=10) for f in queued[:-1]] == [0] * 4
    done.result()
    assert not done.kill() and not done.cancelled()


@pytest.mark.timeout(60)
def test_limit_applies_to_each_item_of_a_chunk(make_process_executor):
    ex = make_process_executor(max_workers=1)
    # Four items of 0.2 s in one chunk: 0.8 s in all, each under the 0.5 s limit.
    assert list(ex.map(nap, [0.2] * 4, chunksize=4, task_timeout=0.5)) == [0.2] * 4
    assert list(ex.starmap(nap, [(0.01,)] * 3, task_timeout=0.5)) == [0.01] * 3
    with pytest.raises(shoal.TaskTimeoutError, match="nap"):
        list(ex.starmap(nap, [(0.01,), (5,)], task_timeout=0.3))


@pytest.mark.timeout(60)
def test_sweep_raises_the_timeout_under_errors_raise(make_process_executor):
    ex = make_process_executor()
    with pytest.raises(shoal.TaskTimeoutError) as info:
        ex.sweep(run_or_loop, {"steps": [0.0, -1.0]}, task_timeout=0.3)
    assert info.value.limit == 0.3 and info.value.function == "run_or_loop"


@pytest.mark.timeout(60)
def test_coroutine_task_is_cancelled_in_its_loop_and_its_siblings_run_on(make_process_executor):
    ex = make_process_executor(max_workers=1, concurrency=4, task_timeout=0.3)
    pid = wait_for_workers(ex, 1)[0]
    slow = ex.submit(async_nap, 30)
    quick = [ex.submit(async_nap, 0.1) for _ in range(3)]
    with pytest.raises(shoal.TaskTimeoutError, match="async_nap"):
        slow.result(timeout=10)
    assert [f.result(timeout=10) for f in quick] == [0.1] * 3
    assert ex.worker_pids() == [pid]  # no worker was killed
    assert list(ex.map(async_nap, [0.05, 0.05], task_timeout=1)) == [0.05, 0.05]


@pytest.mark.timeout(60)
def test_agents_without_checkpoints_refuse_limits_and_kills(make_process_executor):
    ex = make_process_executor()

    class Counter:
        def __init__(self, n):
            self.n = n

    group = ex.agents(Counter, [1, 2, 3])
    with pytest.raises(ValueError, match="checkpoint=True"):
        list(ex.map(nap, [0], task_timeout=1))
    fut = ex.submit(nap, 0.3)
    with pytest.raises(RuntimeError, match="checkpoint=True"):
        fut.kill()
    assert fut.result() == 0.3
    group.close()
    assert list(ex.map(nap, [0], task_timeout=1)) == [0]
    safe = ex.agents(Counter, [1, 2, 3], checkpoint=True)
    fut = ex.submit(endless)
    time.sleep(0.2)
    assert fut.kill()
    assert safe.get("n") == [1, 2, 3]  # rebuilt from their checkpoints if their worker died


class Stepper:
    """An agent whose step loops for ever when it is told to (a solver that hangs)."""

    def __init__(self, n):
        self.n = n
        self.steps = 0

    def step(self, hang):
        if self.n == hang:
            endless()
        self.steps += 1
        return self.n


@pytest.mark.timeout(60)
def test_an_agent_call_past_its_limit_fails_for_that_block_and_the_agents_come_back(backend):
    with shoal.Executor(max_workers=2, backend=backend) as ex:
        group = ex.agents(Stepper, range(4), checkpoint=True)
        if not limits_tasks(backend):
            with pytest.raises(ValueError, match="not supported"):
                group.call("step", -1, task_timeout=1)
            assert group.call("step", -1) == [0, 1, 2, 3]
            return
        assert group.call("step", -1, task_timeout=5) == [0, 1, 2, 3]
        start = time.monotonic()
        with pytest.raises(shoal.AgentError) as info:
            group.call("step", 3, task_timeout=0.5)
        assert time.monotonic() - start < 5
        err = info.value
        timed_out = sorted(i for i, e in err.errors.items() if isinstance(e, shoal.TaskTimeoutError))
        assert 3 in timed_out and set(err.errors) == set(timed_out)  # only the hung agent's block
        assert "Stepper.step" in str(err.errors[3]) and err.errors[3].limit == 0.5
        assert all(err.results[i] == i for i in range(4) if i not in timed_out)
        assert err.lost == ()
        # The block was rebuilt from its checkpoint (the step that timed out left no trace).
        assert group.get("steps") == [1 if i in timed_out else 2 for i in range(4)]
        assert group.call("step", -1) == [0, 1, 2, 3]
        assert group.call_each("step", [-1, -1, -1, -1], task_timeout=5) == [0, 1, 2, 3]
        with pytest.raises(shoal.AgentError) as info:
            group.call_async("step", 0, task_timeout=0.3).result(timeout=30)
        assert isinstance(info.value.errors[0], shoal.TaskTimeoutError)


@pytest.mark.timeout(60)
def test_an_agent_call_limit_needs_checkpoints(make_process_executor):
    ex = make_process_executor()
    group = ex.agents(Stepper, range(2))
    with pytest.raises(ValueError, match="checkpoint=True"):
        group.call("step", -1, task_timeout=1)
    with pytest.raises(ValueError, match="task_timeout"):
        group.call("step", -1, task_timeout=-1)
    assert group.call("step", -1) == [0, 1]


@pytest.mark.timeout(60)
def test_no_limit_no_change(make_process_executor):
    ex = make_process_executor()
    assert ex.task_timeout is None
    assert ex.submit(nap, 0).result() == 0


# ---------------------------------------------------------------- arguments and errors


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", [0, -1, "1", True, float("nan"), float("inf")])
def test_bad_task_timeout_values(value):
    with pytest.raises(ValueError, match="task_timeout"):
        shoal.Executor(max_workers=1, backend="serial", task_timeout=value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["thread", "serial"])
def test_threads_and_the_caller_cannot_keep_a_limit(backend):
    with pytest.raises(ValueError, match="not supported"):
        shoal.Executor(max_workers=1, backend=backend, task_timeout=1)
    with shoal.Executor(max_workers=1, backend=backend) as ex:
        for call in (lambda: ex.map(nap, [0], task_timeout=1),
                     lambda: ex.starmap(nap, [(0,)], task_timeout=1),
                     lambda: ex.sweep(run_or_loop, {"steps": [0]}, task_timeout=1)):
            with pytest.raises(ValueError, match="task_timeout"):
                call()


@pytest.mark.timeout(30)
def test_task_timeout_error_pickles_whole():
    err = shoal.TaskTimeoutError("m", limit=2.0, function="f")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.limit, back.function) == (shoal.TaskTimeoutError, "m", 2.0, "f")
    assert "TaskTimeoutError" in shoal.__all__
