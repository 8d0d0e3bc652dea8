"""Agents (issue 5, ARCHITECTURE.md section 6): stateful objects built inside the workers,
called in parallel, results in agent order; per-agent errors; workers that die with and
without checkpoints. Shared bodies run under serial, thread and process; crash tests are
process-only."""

import asyncio
import concurrent.futures
import os
import pickle
import signal
import threading
import time

import pytest

import shoal
from helpers import chain_text, is_alive, wait_for_workers, wait_until

pytestmark = pytest.mark.timeout(60)

# --- agents -------------------------------------------------------------------------------------


class Counter:
    def __init__(self, index, start=0, step=1):
        self.index = index
        self.total = start
        self.step = step
        self.calls = 0

    def add(self, x=None):
        self.calls += 1
        self.total += self.step if x is None else x
        return self.total

    def where(self):
        return os.getpid()

    def echo(self, *args, **kwargs):
        return self.index, args, kwargs

    def arg_id(self, arg):
        return id(arg)

    def fail_if(self, bad):
        if self.index in bad:
            _raise_from_agent(self.index)
        return self.index

    def make_lock(self):
        return threading.Lock() if self.index == 1 else self.index

    def sleep(self, seconds):
        time.sleep(seconds)
        return self.index

    def fill(self, array):
        array[:] = self.index
        return None

    def total_of(self, array):
        return float(array.sum()) + self.index

    def curve(self, n):
        import numpy as np

        return np.full(n, float(self.index))


class AgentFailure(Exception):
    pass


def _raise_from_agent(index):
    raise AgentFailure(f"agent-{index}-failed")


class Positional:
    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class BadInit:
    def __init__(self, i):
        if i == 2:
            raise ValueError("cannot build agent 2")
        self.i = i


class Killer(Counter):
    """Counter whose `die` kills its own worker: always, or only while a marker file is absent."""

    def die(self, victim, marker=None):
        if self.index == victim and (marker is None or not os.path.exists(marker)):
            if marker is not None:
                open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(30)
        return self.add()


class CountsPickles:
    """Counts how many times it is pickled in this process."""

    pickled = 0

    def __reduce__(self):
        CountsPickles.pickled += 1
        return (CountsPickles, ())


# --- shared bodies: every backend ---------------------------------------------------------------


def test_results_come_back_in_agent_order(executor):
    group = executor.agents(Counter, [dict(index=i, start=10 * i) for i in range(25)])
    assert len(group) == 25
    assert group.call("add", 1) == [10 * i + 1 for i in range(25)]
    assert group.call("echo", 7, key="v") == [(i, (7,), {"key": "v"}) for i in range(25)]
    group.close()


def test_state_stays_in_place_between_calls(executor):
    group = executor.agents(Counter, [dict(index=i, step=i) for i in range(9)])
    for _ in range(4):
        group.call("add")
    assert group.get("total") == [4 * i for i in range(9)]
    assert group.get("calls") == [4] * 9
    group.close()


def test_init_args_dict_tuple_or_single_value(executor):
    group = executor.agents(Positional, [(1, 2), {"a": 3}, 5, ((6,),)])
    assert group.get("args") == [(1, 2), (), (5,), ((6,),)]
    assert group.get("kwargs") == [{}, {"a": 3}, {}, {}]
    group.close()


def test_call_each_gives_every_agent_its_own_arguments(executor):
    group = executor.agents(Counter, [dict(index=i) for i in range(6)])
    assert group.call_each("add", [10 * i for i in range(6)]) == [10 * i for i in range(6)]
    out = group.call_each("echo", [(i, i + 1) if i % 2 else {"k": i} for i in range(6)])
    assert out == [(i, (i, i + 1), {}) if i % 2 else (i, (), {"k": i}) for i in range(6)]
    with pytest.raises(ValueError, match="5 items for 6 agents"):
        group.call_each("add", [1] * 5)
    group.close()


def test_get_set_gather(executor):
    group = executor.agents(Counter, [dict(index=i) for i in range(7)])
    group.set("total", [100 + i for i in range(7)])
    assert group.get("total") == [100 + i for i in range(7)]
    assert group.call("add", 1) == [101 + i for i in range(7)]
    agents = group.gather()
    assert [type(a).__name__ for a in agents] == ["Counter"] * 7
    assert [(a.index, a.total) for a in agents] == [(i, 101 + i) for i in range(7)]
    with pytest.raises(ValueError, match="values has 2 items for 7 agents"):
        group.set("total", [1, 2])
    group.close()


def test_call_async_is_a_future_and_awaitable(executor):
    group = executor.agents(Counter, [dict(index=i) for i in range(5)])
    fut = group.call_async("add", 2)
    assert isinstance(fut, shoal.Future)
    assert fut.result(timeout=30) == [2] * 5

    async def main():
        return await group.call_async("add", 3)

    assert asyncio.run(main()) == [5] * 5
    assert not fut.cancel()  # a started operation runs to its end
    group.close()


class Sleeper:
    """An agent whose methods are coroutines, waiting as if on I/O."""

    def __init__(self, i):
        self.i = i
        self.seen = []

    async def wait(self, seconds, fail=()):
        await asyncio.sleep(seconds)
        if self.i in fail:
            raise AgentFailure(f"agent-{self.i}-failed")
        self.seen.append(seconds)
        return self.i

    async def echo(self, x):
        return (self.i, x)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_executor(request, backend):
    """A two-worker executor on the current backend whose loops are asyncio's or uvloop."""
    ex = shoal.Executor(max_workers=2, backend=backend, event_loop=request.param)
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def test_async_methods_are_awaited_side_by_side(loop_executor):
    """An `async def` method runs for all of a worker's agents at once: 8 agents waiting
    0.3 s each take about 0.3 s, not 8 x 0.3 / 2; results and errors are per agent."""
    group = loop_executor.agents(Sleeper, range(8))
    t0 = time.perf_counter()
    assert group.call("wait", 0.3) == list(range(8))
    assert time.perf_counter() - t0 < 1.0
    assert group.call_each("echo", [(k,) for k in range(8)]) == [(k, k) for k in range(8)]
    with pytest.raises(shoal.AgentError) as info:
        group.call("wait", 0.01, fail={2, 5})
    assert sorted(info.value.errors) == [2, 5]
    assert str(info.value.errors[5]) == "agent-5-failed"
    assert info.value.results == [None if k in (2, 5) else k for k in range(8)]
    assert group.get("seen") == [[0.3, 0.01] if k not in (2, 5) else [0.3] for k in range(8)]

    async def main():  # from inside a running event loop too
        return await group.call_async("wait", 0.01)

    assert asyncio.run(main()) == list(range(8))
    group.close()


async def _nap(seconds):
    await asyncio.sleep(seconds)
    return seconds


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_async_agents_beside_coroutine_tasks(make_process_executor, event_loop):
    """An agent frame that arrives while the worker's loop runs coroutine tasks awaits its
    agents on a helper loop; both finish."""
    ex = make_process_executor(max_workers=1, concurrency=4, event_loop=event_loop)
    group = ex.agents(Sleeper, range(3))
    naps = [ex.submit(_nap, 0.5) for _ in range(2)]
    time.sleep(0.1)
    assert group.call("wait", 0.1) == [0, 1, 2]
    assert [f.result(timeout=30) for f in naps] == [0.5, 0.5]
    assert ex.submit(_helper_loop_started).result(timeout=30) is True
    group.close()


def _helper_loop_started():
    from shoal import _aio

    return _aio._helper is not None


class Slow:
    def __init__(self, i):
        self.i = i
        self.calls = 0

    def step(self, seconds):
        time.sleep(seconds)
        self.calls += 1
        return self.calls


def test_shutdown_runs_queued_operations_unless_cancelled(backend):
    """Operations queued with call_async run before the workers stop, as queued tasks do
    (leaving a `with` block waits for them); with cancel_futures they fail. Nothing hangs."""
    with shoal.Executor(max_workers=2, backend=backend) as ex:
        group = ex.agents(Slow, range(4))
        futs = [group.call_async("step", 0.02) for _ in range(6)]
    assert [f.result(timeout=30) for f in futs] == [[k] * 4 for k in range(1, 7)]

    ex = shoal.Executor(max_workers=2, backend=backend)
    group = ex.agents(Slow, range(4))
    futs = [group.call_async("step", 0.05) for _ in range(6)]
    ex.shutdown(wait=True, cancel_futures=True)
    outcomes = []
    for f in futs:
        try:
            outcomes.append(f.result(timeout=30))
        except concurrent.futures.BrokenExecutor:
            outcomes.append("broken")
    assert outcomes[0] in ([1] * 4, "broken")  # running, unless a block had not started yet
    if backend != "serial":  # the serial backend ran each at call_async
        assert outcomes[1:] == ["broken"] * 5


def test_operations_run_in_the_order_they_were_made(executor):
    group = executor.agents(Counter, [dict(index=i) for i in range(8)])
    futs = [group.call_async("add", 1) for _ in range(20)]
    got = group.get("total")  # after all twenty
    assert [f.result(timeout=30) for f in futs] == [[k] * 8 for k in range(1, 21)]
    assert got == [20] * 8
    group.close()


def test_an_agents_exception_keeps_the_others_results(executor, backend):
    group = executor.agents(Counter, [dict(index=i) for i in range(10)])
    with pytest.raises(shoal.AgentError) as info:
        group.call("fail_if", {3, 7})
    err = info.value
    assert not isinstance(err, shoal.AgentsLostError)
    assert sorted(err.errors) == [3, 7]
    assert err.lost == ()
    for i in (3, 7):
        assert type(err.errors[i]) is AgentFailure
        assert str(err.errors[i]) == f"agent-{i}-failed"
        text = chain_text(err.errors[i])
        assert "_raise_from_agent" in text and "fail_if" in text  # the agent's own traceback
    assert err.results == [None if i in (3, 7) else i for i in range(10)]
    assert "2 of 10 agents failed" in str(err) and "agent-3-failed" in str(err)
    assert "_raise_from_agent" in chain_text(err)
    # The group keeps working, state intact.
    assert group.call("add", 1) == [1] * 10
    group.close()


def test_construction_error_names_the_agent(executor):
    with pytest.raises(shoal.AgentError, match="cannot build agent 2") as info:
        executor.agents(BadInit, range(5))
    assert sorted(info.value.errors) == [2]
    assert type(info.value.errors[2]) is ValueError
    # The executor is fine.
    group = executor.agents(BadInit, [0, 1])
    assert group.get("i") == [0, 1]
    group.close()


def test_close_frees_and_later_operations_raise(executor):
    group = executor.agents(Counter, [dict(index=i) for i in range(4)])
    group.close()
    group.close()  # twice: nothing
    with pytest.raises(RuntimeError, match="closed"):
        group.call("add")
    with pytest.raises(RuntimeError, match="closed"):
        group.get("total")
    with executor.agents(Counter, [dict(index=i) for i in range(3)]) as g:
        assert g.call("add") == [1, 1, 1]
    with pytest.raises(RuntimeError, match="closed"):
        g.call("add")


def test_empty_group_and_more_workers_than_agents(executor):
    empty = executor.agents(Counter, [])
    assert len(empty) == 0
    assert empty.call("add") == []
    empty.close()
    one = executor.agents(Counter, [dict(index=0)])
    assert one.call("add", 4) == [4]
    one.close()


def test_bad_input_is_refused(executor):
    with pytest.raises(TypeError, match="not a class or callable"):
        executor.agents(42, [1])
    group = executor.agents(Counter, [dict(index=0)])
    with pytest.raises(TypeError, match="method must be a str"):
        group.call(len)
    with pytest.raises(TypeError, match="attr must be a str"):
        group.get(3)
    with pytest.raises(shoal.AgentError) as info:
        group.call("no_such_method")
    assert type(info.value.errors[0]) is AttributeError
    group.close()


def test_max_tasks_per_worker_is_refused(backend):
    with shoal.Executor(2, backend=backend, max_tasks_per_worker=10) as ex:
        with pytest.raises(ValueError, match="max_tasks_per_worker"):
            ex.agents(Counter, [dict(index=0)])


def test_operations_after_shutdown_raise(backend):
    ex = shoal.Executor(2, backend=backend)
    group = ex.agents(Counter, [dict(index=i) for i in range(4)])
    ex.shutdown()
    with pytest.raises(RuntimeError):
        group.call("add")
    group.close()  # nothing left to free: no error


def test_operations_queued_at_shutdown_end_without_hanging(backend):
    import concurrent.futures as cf

    ex = shoal.Executor(2, backend=backend)
    group = ex.agents(Counter, [dict(index=i) for i in range(4)])
    futs = [group.call_async("sleep", 0.2) for _ in range(3)]
    ex.shutdown(wait=True)
    outcomes = []
    for f in futs:
        try:
            outcomes.append(f.result(timeout=20))
        except cf.BrokenExecutor:
            outcomes.append("broken")
    assert outcomes[0] == [0, 1, 2, 3]  # it was running: shutdown lets it finish
    assert all(o in ([0, 1, 2, 3], "broken") for o in outcomes)


def test_large_arguments_results_and_values(executor):
    np = pytest.importorskip("numpy")
    group = executor.agents(Counter, [dict(index=i) for i in range(20)])
    big = np.ones(200_000)  # 1.6 MB: through the arena on the process backend, once per call
    assert group.call("total_of", big) == [200_000.0 + i for i in range(20)]
    handle = shoal.share(np.arange(100_000, dtype=np.float64))
    expected = float(np.arange(100_000).sum())
    assert group.call("total_of", handle) == [expected + i for i in range(20)]
    # Results: one array per agent, each its own (large enough together to use the arena).
    curves = group.call("curve", 2000)
    assert [c.tolist() == [float(i)] * 2000 for i, c in enumerate(curves)] == [True] * 20
    curves[0][:] = -1
    assert curves[1][0] == 1.0 and all(c.flags.writeable for c in curves)
    # Per-agent values, each large.
    group.set("total", [np.full(20_000, float(i)) for i in range(20)])
    assert [float(t.sum()) for t in group.get("total")] == [20_000.0 * i for i in range(20)]
    out = group.call_each("total_of", [np.full(20_000, 1.0)] * 20)
    assert out == [20_000.0 + i for i in range(20)]
    group.close()


def test_checkpoint_flag_is_accepted_everywhere(executor, backend):
    group = executor.agents(Counter, [dict(index=i) for i in range(4)], checkpoint=True)
    assert group.checkpoint == (backend in ("process", "mpi"))  # elsewhere agents cannot be lost
    assert group.call("add") == [1] * 4
    assert group.lost == ()
    group.close()


# --- process backend: where the agents live, what travels ---------------------------------------


def test_agents_are_spread_evenly_and_stay_on_their_worker(make_process_executor):
    ex = make_process_executor(max_workers=3)
    group = ex.agents(Counter, [dict(index=i) for i in range(10)])
    pids = group.call("where")
    assert len(set(pids)) == 3
    # contiguous blocks of 3, 3, 4
    assert pids[0:3] == [pids[0]] * 3 and pids[3:6] == [pids[3]] * 3 and pids[6:] == [pids[6]] * 4
    for _ in range(3):
        assert group.call("where") == pids
    assert set(pids) <= set(ex.worker_pids())
    assert os.getpid() not in pids
    group.close()


def test_one_frame_per_worker_per_call(make_process_executor):
    ex = make_process_executor(max_workers=2)
    group = ex.agents(Counter, [dict(index=i) for i in range(40)])
    payload = list(range(1000))
    ids = group.call("arg_id", payload)
    # Every agent of a worker sees the same unpickled argument: it arrived in one frame.
    assert len(set(ids[:20])) == 1 and len(set(ids[20:])) == 1
    group.close()


def test_large_arguments_travel_once_and_each_worker_gets_its_own_copy(make_process_executor):
    np = pytest.importorskip("numpy")
    ex = make_process_executor(max_workers=2)
    group = ex.agents(Counter, [dict(index=i) for i in range(10)])
    big = np.ones(100_000)
    ids = group.call("arg_id", big)
    assert len(set(ids[:5])) == 1 and len(set(ids[5:])) == 1  # one object per worker
    assert group.call("fill", big) == [None] * 10  # the worker's own copy: writable
    assert big[0] == 1.0  # the caller's array is untouched
    handle = shoal.share(np.ones(100_000))
    with pytest.raises(shoal.AgentError) as info:
        group.call("fill", handle)  # memory the caller keeps: read-only views, no copy
    assert isinstance(info.value.errors[0], ValueError) and "read-only" in str(info.value.errors[0])
    group.close()


def test_agents_keep_what_they_are_given(make_process_executor):
    """Arrays an agent keeps from its arguments stay valid after the call (in the arena, an
    argument's copy lives only as long as its task)."""
    np = pytest.importorskip("numpy")
    ex = make_process_executor(max_workers=2)
    group = ex.agents(Keeper, [(np.full(50_000, float(i)),) for i in range(6)])
    group.call("keep", np.full(100_000, 7.0))
    group.call_each("keep_each", [np.full(30_000, float(i)) for i in range(6)])
    group.set("also", [np.full(20_000, 3.0)] * 6)
    for _ in range(5):  # other large arguments and results reuse the arena's pages meanwhile
        group.call("churn", np.full(200_000, -1.0))
    assert group.call("sums") == [(50_000.0 * i, 700_000.0, 30_000.0 * i, 60_000.0) for i in range(6)]
    group.close()


class Keeper:
    def __init__(self, initial):
        self.initial = initial

    def keep(self, array):
        self.kept = array

    def keep_each(self, array):
        self.each = array

    def churn(self, array):
        return array * 2

    def sums(self):
        return (float(self.initial.sum()), float(self.kept.sum()), float(self.each.sum()),
                float(self.also.sum()))


def test_shared_arguments_are_pickled_once_per_call(make_process_executor):
    ex = make_process_executor(max_workers=2)
    group = ex.agents(Counter, [dict(index=i) for i in range(50)])
    CountsPickles.pickled = 0
    group.call("echo", CountsPickles())
    assert CountsPickles.pickled == 1
    group.call_async("echo", CountsPickles()).result(timeout=30)
    assert CountsPickles.pickled == 2
    group.close()


def test_unpicklable_argument_fails_in_the_caller(make_process_executor):
    ex = make_process_executor()
    group = ex.agents(Counter, [dict(index=i) for i in range(4)])
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        group.call("echo", threading.Lock())
    assert group.call("add") == [1] * 4  # nothing was sent, the group works
    group.close()


def test_unpicklable_result_fails_that_agent_only(make_process_executor):
    ex = make_process_executor()
    group = ex.agents(Counter, [dict(index=i) for i in range(4)])
    with pytest.raises(shoal.AgentError) as info:
        group.call("make_lock")
    assert sorted(info.value.errors) == [1]
    assert info.value.results == [0, None, 2, 3]
    group.close()


def test_gather_brings_copies_back(make_process_executor):
    ex = make_process_executor()
    group = ex.agents(Counter, [dict(index=i) for i in range(4)])
    agents = group.gather()
    for a in agents:
        a.total = 99
    assert group.get("total") == [0] * 4
    group.close()


def test_close_frees_the_workers_store(make_process_executor):
    ex = make_process_executor(max_workers=1)
    group = ex.agents(Counter, [dict(index=i) for i in range(3)])
    gid = group._id
    group.close()
    # A frame for the closed group now finds nothing in the worker.
    probe = ex.agents(Counter, [dict(index=0)])
    assert ex.submit(_store_has, gid).result(timeout=30) is False
    assert ex.submit(_store_has, probe._id).result(timeout=30) is True
    probe.close()


def test_a_dropped_group_is_freed_in_the_worker(make_process_executor):
    import gc

    ex = make_process_executor(max_workers=1)
    group = ex.agents(Counter, [dict(index=i) for i in range(3)])
    gid = group._id
    assert ex.submit(_store_has, gid).result(timeout=30) is True
    del group
    gc.collect()
    other = ex.agents(Counter, [dict(index=0)])  # the next agent operation sends the close
    assert ex.submit(_store_has, gid).result(timeout=30) is False
    other.close()


class Bidder:
    """Returns a small array per call, like a bid curve: thousands of results per operation."""

    def __init__(self, i):
        self.i = i

    def bid(self, scale):
        import numpy as np

        return np.full(48, self.i * scale)


def test_driver_heap_is_returned_after_operations_on_large_groups(make_process_executor):
    """After an operation on a group of thousands of agents the driver returns its freed heap
    to the system (malloc_trim) shortly after; small groups never pay for it."""
    from shoal.process import agents as _agents

    ex = make_process_executor(max_workers=2)
    small = ex.agents(Bidder, range(8))
    time.sleep(4 * _agents.TRIM_DELAY_S)  # a trim an earlier test asked for is done
    before = _agents.trimmer.trims if _agents.trimmer is not None else 0
    small.call("bid", 1.0)
    time.sleep(4 * _agents.TRIM_DELAY_S)
    assert (_agents.trimmer.trims if _agents.trimmer is not None else 0) == before
    large = ex.agents(Bidder, range(_agents.TRIM_AGENTS))
    for step in range(3):
        bids = large.call("bid", float(step))
        assert len(bids) == _agents.TRIM_AGENTS and bids[7][0] == 7 * step
    assert wait_until(lambda: _agents.trimmer is not None and _agents.trimmer.trims > before, 10)
    large.close()
    small.close()


def _store_has(gid):
    from shoal.process import agent_worker as aw

    return gid in aw._store


# --- process backend: workers that die -----------------------------------------------------------


def test_worker_killed_mid_call_without_checkpoint_loses_its_agents(make_process_executor):
    ex = make_process_executor(max_workers=2)
    group = ex.agents(Killer, [dict(index=i) for i in range(10)])
    assert group.call("add") == [1] * 10
    with pytest.raises(shoal.AgentsLostError) as info:
        group.call("die", 7)
    err = info.value
    assert err.lost == (5, 6, 7, 8, 9)
    assert group.lost == (5, 6, 7, 8, 9)
    assert err.results == [2] * 5 + [None] * 5
    for i in err.lost:
        assert isinstance(err.errors[i], shoal.WorkerCrashedError)
        assert err.errors[i].signal == signal.SIGKILL
    assert "agents 5..9" in str(err) and "SIGKILL" in str(err)
    # Every later operation says so, and still runs on the live agents.
    for _ in range(2):
        with pytest.raises(shoal.AgentsLostError) as later:
            group.call("add")
        assert later.value.lost == (5, 6, 7, 8, 9)
        assert later.value.results[5:] == [None] * 5
    assert later.value.results[:5] == [4] * 5
    with pytest.raises(shoal.AgentsLostError):
        group.get("total")
    # The executor itself is fine.
    assert ex.submit(pow, 2, 5).result(timeout=30) == 32
    wait_for_workers(ex, 2)
    group.close()


def test_worker_killed_from_outside_mid_call(make_process_executor):
    ex = make_process_executor(max_workers=2)
    group = ex.agents(Counter, [dict(index=i) for i in range(4)])
    pids = group.call("where")
    fut = group.call_async("sleep", 1.5)
    time.sleep(0.3)
    os.kill(pids[3], signal.SIGKILL)  # the worker holding agents 2 and 3, mid-call
    with pytest.raises(shoal.AgentsLostError) as info:
        fut.result(timeout=30)
    assert info.value.lost == (2, 3)
    assert info.value.errors[2].signal == signal.SIGKILL
    assert info.value.results == [0, 1, None, None]  # the other worker finished its agents
    group.close()


def test_checkpoint_rebuilds_agents_and_retries_the_call(make_process_executor, tmp_path):
    ex = make_process_executor(max_workers=2)
    group = ex.agents(Killer, [dict(index=i, step=i) for i in range(10)], checkpoint=True)
    assert group.call("add") == list(range(10))
    assert group.call("add") == [2 * i for i in range(10)]
    marker = str(tmp_path / "killed-once")
    # Agent 8 kills its worker the first time; the block is rebuilt from the state saved after
    # the last call and the call runs again: every agent adds exactly once.
    assert group.call("die", 8, marker) == [3 * i for i in range(10)]
    assert os.path.exists(marker)
    assert group.lost == ()
    assert group.get("total") == [3 * i for i in range(10)]
    assert group.get("calls") == [3] * 10
    assert group.call("add") == [4 * i for i in range(10)]
    group.close()


class Heavy(Killer):
    """A Killer with ~40 KB of state: a slot's checkpoint is past the arena threshold."""

    def __init__(self, index=0, step=1):
        super().__init__(index, step=step)
        self.ballast = bytes([index % 256]) * 40_000

    def check(self):
        return self.ballast == bytes([self.index % 256]) * 40_000


def test_checkpoints_live_in_the_arena_and_rebuild_a_killed_worker(make_process_executor, tmp_path):
    import gc

    ex = make_process_executor(max_workers=2)
    group = ex.agents(Heavy, [dict(index=i, step=i) for i in range(8)], checkpoint=True)
    assert group.call("add") == list(range(8))
    # Each slot's states are one arena block the driver holds (4 agents x ~40 KB), not bytes
    # in the driver's heap; each agent's entry is a slice of it.
    blobs = {id(blob): blob for blob, _, _ in group._states}
    assert len(blobs) == 2
    for blob in blobs.values():
        assert type(blob) is memoryview and type(blob.obj) is shoal._core.Block
        assert blob.nbytes > 4 * 40_000
    used = shoal.arena_stats()["used_bytes"]
    assert used >= sum(b.nbytes for b in blobs.values())
    del blobs, blob
    marker = str(tmp_path / "killed-once")
    assert group.call("die", 5, marker) == [2 * i for i in range(8)]  # rebuilt, run again
    assert os.path.exists(marker)
    assert group.call("check") == [True] * 8
    assert group.get("calls") == [2] * 8
    # Older checkpoints were freed as newer ones replaced them; closing frees the last ones.
    gc.collect()
    assert shoal.arena_stats()["used_bytes"] <= used
    group.close()
    gc.collect()
    assert wait_until(lambda: shoal.arena_stats()["used_bytes"] < used - 4 * 40_000, 10)


def test_checkpoint_call_that_always_kills_fails_after_retries(make_process_executor):
    ex = make_process_executor(max_workers=2, retries=1)
    group = ex.agents(Killer, [dict(index=i) for i in range(6)], checkpoint=True)
    group.call("add")
    with pytest.raises(shoal.AgentError) as info:
        group.call("die", 1)
    err = info.value
    assert not isinstance(err, shoal.AgentsLostError)
    assert err.lost == () and group.lost == ()
    assert sorted(err.errors) == [0, 1, 2]
    assert "tried 2 times" in str(err.errors[0])
    assert err.results[3:] == [2, 2, 2]
    # The block was rebuilt from its checkpoint: its agents are as after the first call.
    assert group.get("total") == [1, 1, 1, 2, 2, 2]
    group.close()


def test_idle_worker_killed_between_calls(make_process_executor):
    ex = make_process_executor(max_workers=2)
    plain = ex.agents(Counter, [dict(index=i) for i in range(4)])
    saved = ex.agents(Counter, [dict(index=i) for i in range(4)], checkpoint=True)
    plain.call("add", 5)
    saved.call("add", 5)
    victim = plain.call("where")[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not is_alive(victim) and victim not in ex.worker_pids(), 10)
    wait_for_workers(ex, 2)
    with pytest.raises(shoal.AgentsLostError) as info:
        plain.call("add", 1)
    assert info.value.lost == (0, 1)
    assert "died between operations" in str(info.value)
    assert saved.call("add", 1) == [6] * 4  # rebuilt from its checkpoint on the new worker
    plain.close()
    saved.close()


def test_construction_crash_is_retried(make_process_executor, tmp_path):
    ex = make_process_executor(max_workers=2)
    marker = str(tmp_path / "init-killed")
    group = ex.agents(DiesOnceInInit, [(i, marker) for i in range(6)])
    assert os.path.exists(marker)
    assert group.get("i") == list(range(6))
    group.close()


class DiesOnceInInit:
    def __init__(self, i, marker):
        if i == 4 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(30)
        self.i = i
