"""Failures (ARCHITECTURE.md section 5, issue 2 part 4): task exceptions, pickling
failures on either side, and workers that die. After each one the executor keeps
working and nothing hangs."""

import concurrent.futures as cf
import ctypes
import itertools
import os
import pickle
import re
import signal
import threading
import time
import traceback

import pytest

import shoal
from helpers import chain_text, is_alive, live_workers, wait_for_workers, wait_until

PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError)

# --- tasks -------------------------------------------------------------------------------------


def add(a, b):
    return a + b


def square(x):
    return x * x


def echo(x):
    return x


def sleep_return(seconds, value):
    time.sleep(seconds)
    return value


class TaskError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


def _innermost_raise(code):
    raise TaskError(code, "detail-text")


def raise_task_error(code):
    _innermost_raise(code)


def raise_chained():
    try:
        {}["missing-key"]
    except KeyError as e:
        raise ValueError("outer-msg") from e


def raise_unpicklable_exception():
    raise ValueError("holds a lock", threading.Lock())


class NeedsTwoArgsError(Exception):
    """Pickles with args=(a,) but cannot be rebuilt from them: unpickling raises TypeError."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raise_needs_two_args():
    raise NeedsTwoArgsError("first", "second")


def return_lock(_=None):
    return threading.Lock()


def lock_at(x, bad):
    return threading.Lock() if x == bad else x


def _explode_on_load(message):
    raise ValueError(message)


class ExplodesOnLoad:
    """Pickles fine; unpickling it raises ValueError(message)."""

    def __init__(self, message):
        self.message = message

    def __reduce__(self):
        return (_explode_on_load, (self.message,))


def make_explodes_on_load(x=None):
    return ExplodesOnLoad("boom-on-load")


def explodes_on_load_at(x, bad):
    return ExplodesOnLoad("boom-on-load") if x == bad else x


class ExplodingCallable:
    """A callable whose own unpickling fails in the worker."""

    def __call__(self, x):
        return x

    def __reduce__(self):
        return (_explode_on_load, ("boom-fn-load",))


class RefusesPickling:
    def __reduce__(self):
        raise pickle.PicklingError("refuses-pickling")


def append_line(path, _payload=None):
    with open(path, "a") as f:
        f.write("ran\n")


def record_attempt(path):
    """Append this worker's pid to path; return how many attempts the file now holds."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        return len(f.read().splitlines())


def die_by_signal(path, signum):
    record_attempt(path)
    os.kill(os.getpid(), signum)
    time.sleep(30)


def segfault(path):
    record_attempt(path)
    ctypes.string_at(0)


def exit_with(path, code):
    record_attempt(path)
    os._exit(code)


def die_first_time(path, value):
    if record_attempt(path) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    return value


def die_at_first_time(x, bad, path):
    if x == bad:
        die_first_time(path, None)
    return x


def die_at(x, bad, path):
    if x == bad:
        die_by_signal(path, signal.SIGKILL)
    return x


def slow_record(path, seconds, value):
    record_attempt(path)
    time.sleep(seconds)
    return value


def attempts(path):
    try:
        with open(path) as f:
            return [int(line) for line in f.read().splitlines()]
    except FileNotFoundError:
        return []


def assert_pool_recovers(ex, n=2, dead=()):
    """The executor runs new work and is back to n live workers, none of them a dead one."""
    assert ex.submit(add, 2, 3).result(timeout=30) == 5
    assert list(ex.map(square, range(50), chunksize=1)) == [i * i for i in range(50)]
    pids = wait_for_workers(ex, n)
    assert not set(pids) & set(dead), f"dead worker {set(pids) & set(dead)} still listed"


def assert_works(ex):
    assert ex.submit(add, 2, 3).result(timeout=30) == 5
    assert list(ex.map(square, range(20))) == [i * i for i in range(20)]


# --- a task's own exception ---------------------------------------------------------------------


def test_exception_keeps_type_and_remote_traceback(executor, backend):
    with pytest.raises(TaskError) as ei:
        executor.submit(raise_task_error, 7).result(timeout=30)
    exc = ei.value
    assert type(exc) is TaskError
    assert exc.code == 7 and exc.detail == "detail-text" and exc.args == (7, "detail-text")
    if backend == "serial":
        # As in plain Python: the traceback reaches into the task's frames.
        names = [frame.name for frame in traceback.extract_tb(exc.__traceback__)]
        assert "_innermost_raise" in names and "raise_task_error" in names
    else:
        cause = exc.__cause__
        assert isinstance(cause, shoal.RemoteTraceback), repr(cause)
        text = str(cause)
        for needle in ("raise_task_error", "_innermost_raise", "TaskError", "detail-text", "Traceback"):
            assert needle in text, f"{needle!r} missing from the remote traceback:\n{text}"
    assert_works(executor)


def test_exception_in_map_keeps_type_and_traceback(executor, backend):
    with pytest.raises(TaskError) as ei:
        list(executor.map(raise_task_error, [1, 2, 3], chunksize=3))
    assert ei.value.code == 1
    if backend != "serial":
        assert isinstance(ei.value.__cause__, shoal.RemoteTraceback)
        assert "_innermost_raise" in str(ei.value.__cause__)


def test_chained_exception_text_reaches_caller(executor, backend):
    with pytest.raises(ValueError, match="outer-msg") as ei:
        executor.submit(raise_chained).result(timeout=30)
    text = chain_text(ei.value)
    assert "missing-key" in text and "KeyError" in text, text


def test_exception_that_cannot_be_pickled(executor, backend):
    # process: the exception cannot travel back; the task still fails, visibly, and nothing hangs.
    with pytest.raises(Exception) as ei:
        executor.submit(raise_unpicklable_exception).result(timeout=30)
    if backend in ("serial", "thread"):  # nothing pickled
        assert type(ei.value) is ValueError
    text = chain_text(ei.value)
    assert "ValueError" in text and "holds a lock" in text, text
    assert_works(executor)


def test_exception_that_cannot_be_unpickled(executor, backend):
    with pytest.raises(Exception) as ei:
        executor.submit(raise_needs_two_args).result(timeout=30)
    if backend in ("serial", "thread"):
        assert type(ei.value) is NeedsTwoArgsError
    assert "NeedsTwoArgsError" in chain_text(ei.value)
    assert_works(executor)


# --- pickling failures (process backend: the only one that pickles) -----------------------------


@pytest.mark.parametrize("bad", [
    pytest.param(lambda: threading.Lock(), id="lock"),
    pytest.param(lambda: (i for i in range(3)), id="generator"),
    pytest.param(lambda: RefusesPickling(), id="refuses"),
])
def test_unpicklable_argument_fails_in_caller(make_process_executor, tmp_path, bad):
    ex = make_process_executor()
    path = tmp_path / "ran.txt"
    with pytest.raises(PICKLING_ERRORS):
        ex.submit(append_line, str(path), bad())
    with pytest.raises(PICKLING_ERRORS):
        ex.submit(append_line, str(path), _payload=bad())
    assert_works(ex)
    time.sleep(0.1)
    assert not path.exists(), "a task whose argument could not be pickled was sent and run"
    with pytest.raises(PICKLING_ERRORS):
        list(ex.map(echo, [1, bad(), 3], chunksize=1))
    with pytest.raises(PICKLING_ERRORS):
        list(ex.map(echo, [1, 2, bad(), 4], chunksize=4))
    with pytest.raises(PICKLING_ERRORS):
        list(ex.starmap(echo, [(1,), (bad(),)]))
    assert_pool_recovers(ex)


def test_unpicklable_result_fails_that_task_only(make_process_executor):
    ex = make_process_executor()
    fut = ex.submit(return_lock)
    with pytest.raises(PICKLING_ERRORS) as ei:
        fut.result(timeout=30)
    assert "lock" in chain_text(ei.value).lower()
    assert_works(ex)
    # In a chunk, the other results still arrive.
    got = []
    with pytest.raises(PICKLING_ERRORS):
        for v in ex.map(lock_at, range(10), itertools.repeat(9), chunksize=10):
            got.append(v)
    assert got == list(range(9))
    fs = [ex.submit(lock_at, i, 5) for i in range(10)]
    for i, f in enumerate(fs):
        if i == 5:
            assert isinstance(f.exception(timeout=30), PICKLING_ERRORS)
        else:
            assert f.result(timeout=30) == i
    assert_pool_recovers(ex)


def test_result_unpickling_fails_in_caller(make_process_executor):
    ex = make_process_executor()
    with pytest.raises(Exception) as ei:
        ex.submit(make_explodes_on_load).result(timeout=30)
    assert "boom-on-load" in chain_text(ei.value)
    assert_works(ex)
    got = []
    with pytest.raises(Exception) as ei:
        for v in ex.map(explodes_on_load_at, range(10), itertools.repeat(9), chunksize=10):
            got.append(v)
    assert "boom-on-load" in chain_text(ei.value)
    assert got == list(range(9))
    assert_pool_recovers(ex)


def test_map_result_that_cannot_load_fails_that_item_only(make_process_executor):
    """The bad item raises at its place; iterating on yields the items after it."""
    ex = make_process_executor()
    it = ex.map(explodes_on_load_at, range(10), itertools.repeat(4), chunksize=10)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="boom-on-load"):
        next(it)
    assert list(it) == [5, 6, 7, 8, 9]


def test_argument_unpickling_fails_in_worker(make_process_executor):
    ex = make_process_executor()
    bad = ExplodesOnLoad("boom-in-worker")
    with pytest.raises(Exception) as ei:
        ex.submit(echo, bad).result(timeout=30)
    assert not isinstance(ei.value, cf.CancelledError)
    assert "boom-in-worker" in chain_text(ei.value), chain_text(ei.value)
    assert_works(ex)
    # In a chunk: only that item fails.
    got = []
    with pytest.raises(Exception) as ei:
        for v in ex.map(echo, [0, 1, 2, bad], chunksize=4):
            got.append(v)
    assert "boom-in-worker" in chain_text(ei.value)
    assert got == [0, 1, 2]
    assert_pool_recovers(ex)


def test_function_unpickling_fails_in_worker(make_process_executor):
    ex = make_process_executor()
    with pytest.raises(Exception) as ei:
        ex.submit(ExplodingCallable(), 1).result(timeout=30)
    assert "boom-fn-load" in chain_text(ei.value), chain_text(ei.value)
    assert_pool_recovers(ex)


# --- workers that die (process backend) -------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1, 2, None], ids=["retries=0", "retries=1", "retries=2", "default"])
def test_sigkill_retried_then_fails(make_process_executor, tmp_path, retries):
    kwargs = {} if retries is None else {"retries": retries}
    ex = make_process_executor(**kwargs)
    path = tmp_path / "attempts"
    with pytest.raises(shoal.WorkerCrashedError) as ei:
        ex.submit(die_by_signal, str(path), signal.SIGKILL).result(timeout=30)
    err = ei.value
    assert isinstance(err, cf.BrokenExecutor)
    assert err.signal == signal.SIGKILL == 9
    assert "SIGKILL" in str(err), str(err)
    expected = (2 if retries is None else retries) + 1
    dead = attempts(path)
    assert len(dead) == expected, f"{len(dead)} attempts, expected {expected}"
    assert len(set(dead)) == expected, "a retry ran in the worker that had died"
    assert_pool_recovers(ex, dead=dead)


def test_sigterm_names_signal(make_process_executor, tmp_path):
    ex = make_process_executor(retries=0)
    with pytest.raises(shoal.WorkerCrashedError) as ei:
        ex.submit(die_by_signal, str(tmp_path / "a"), signal.SIGTERM).result(timeout=30)
    assert ei.value.signal == signal.SIGTERM
    assert "SIGTERM" in str(ei.value)
    assert_pool_recovers(ex, dead=attempts(tmp_path / "a"))


def test_segfault(make_process_executor, tmp_path):
    ex = make_process_executor(retries=1)
    path = tmp_path / "attempts"
    with pytest.raises(shoal.WorkerCrashedError) as ei:
        ex.submit(segfault, str(path)).result(timeout=30)
    assert ei.value.signal == signal.SIGSEGV
    assert "SIGSEGV" in str(ei.value), str(ei.value)
    assert len(attempts(path)) == 2
    assert_pool_recovers(ex, dead=attempts(path))


def test_os_exit(make_process_executor, tmp_path):
    ex = make_process_executor(retries=0)
    path = tmp_path / "attempts"
    with pytest.raises(shoal.WorkerCrashedError) as ei:
        ex.submit(exit_with, str(path), 3).result(timeout=30)
    err = ei.value
    assert err.exitcode == 3 and err.signal is None
    assert re.search(r"\b3\b", str(err)) and "exit" in str(err).lower(), str(err)
    assert len(attempts(path)) == 1
    assert_pool_recovers(ex, dead=attempts(path))


def test_os_exit_zero_is_a_crash_too(make_process_executor, tmp_path):
    ex = make_process_executor(retries=0)
    with pytest.raises(shoal.WorkerCrashedError) as ei:
        ex.submit(exit_with, str(tmp_path / "a"), 0).result(timeout=30)
    assert ei.value.exitcode == 0
    assert_pool_recovers(ex, dead=attempts(tmp_path / "a"))


def test_crash_on_first_attempt_succeeds_on_retry(make_process_executor, tmp_path):
    ex = make_process_executor(retries=2)
    path = tmp_path / "attempts"
    assert ex.submit(die_first_time, str(path), "survived").result(timeout=30) == "survived"
    pids = attempts(path)
    assert len(pids) == 2 and pids[0] != pids[1]
    assert_pool_recovers(ex, dead=pids[:1])


def test_crash_on_first_attempt_with_no_retries_fails(make_process_executor, tmp_path):
    ex = make_process_executor(retries=0)
    path = tmp_path / "attempts"
    with pytest.raises(shoal.WorkerCrashedError):
        ex.submit(die_first_time, str(path), "survived").result(timeout=30)
    assert len(attempts(path)) == 1
    assert_pool_recovers(ex, dead=attempts(path))


def test_crash_inside_map_chunk_is_retried(make_process_executor, tmp_path):
    ex = make_process_executor(retries=2)
    path = tmp_path / "attempts"
    got = list(ex.map(die_at_first_time, range(40), itertools.repeat(13),
                      itertools.repeat(str(path)), chunksize=5))
    assert got == list(range(40))
    assert len(attempts(path)) == 2
    assert_pool_recovers(ex)


def test_crash_in_map_without_retries(make_process_executor, tmp_path):
    ex = make_process_executor(retries=0)
    path = tmp_path / "attempts"
    got = []
    with pytest.raises(shoal.WorkerCrashedError):
        for v in ex.map(die_at, range(20), itertools.repeat(7), itertools.repeat(str(path)), chunksize=1):
            got.append(v)
    assert got == list(range(7))
    assert len(attempts(path)) == 1
    assert_pool_recovers(ex, dead=attempts(path))


def test_crash_does_not_fail_other_tasks(make_process_executor, tmp_path):
    # retries=0: only the task that killed its worker may fail. Tasks that were waiting
    # behind it, or running on the other worker, did nothing wrong.
    ex = make_process_executor(retries=0)
    path = tmp_path / "attempts"
    list(ex.map(sleep_return, [0.2, 0.2], ["a", "b"], chunksize=1))
    wait_for_workers(ex, 2)
    innocent_before = [ex.submit(sleep_return, 0.0, i) for i in range(10)]
    crasher = ex.submit(die_by_signal, str(path), signal.SIGKILL)
    innocent_after = [ex.submit(sleep_return, 0.0, i) for i in range(10, 20)]
    with pytest.raises(shoal.WorkerCrashedError):
        crasher.result(timeout=30)
    assert [f.result(timeout=30) for f in innocent_before + innocent_after] == list(range(20))
    assert_pool_recovers(ex, dead=attempts(path))


@pytest.mark.timeout(90)
def test_many_crashes_in_a_row(make_process_executor, tmp_path):
    ex = make_process_executor(retries=0)
    path = tmp_path / "attempts"
    fs = [ex.submit(die_by_signal, str(path), signal.SIGKILL) for _ in range(12)]
    for f in fs:
        assert isinstance(f.exception(timeout=60), shoal.WorkerCrashedError)
    assert len(attempts(path)) == 12
    assert_pool_recovers(ex, dead=attempts(path))


def test_busy_worker_killed_from_outside_is_retried(make_process_executor, tmp_path):
    ex = make_process_executor(retries=2)
    path = tmp_path / "attempts"
    fut = ex.submit(slow_record, str(path), 1.5, "finished")
    assert wait_until(lambda: attempts(path), timeout=20), "task never started"
    victim = attempts(path)[0]
    os.kill(victim, signal.SIGKILL)
    assert fut.result(timeout=30) == "finished"
    pids = attempts(path)
    assert len(pids) == 2 and pids[1] != victim
    assert_pool_recovers(ex, dead=[victim])


def test_idle_worker_killed_from_outside_is_replaced(make_process_executor):
    ex = make_process_executor()
    list(ex.map(sleep_return, [0.2, 0.2], ["a", "b"], chunksize=1))
    pids = wait_for_workers(ex, 2)
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in ex.worker_pids() and len(live_workers(ex)) == 2, timeout=10), \
        f"worker_pids()={ex.worker_pids()} after killing {victim}"
    assert not is_alive(victim)
    assert_pool_recovers(ex, dead=[victim])
