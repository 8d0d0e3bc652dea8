"""Mistakes a newcomer from multiprocessing makes, and what shoal does about them (issue 19):
modules that start an executor when imported, __main__ functions that share globals, large
closures, tracebacks, map over a failing generator, objects that cannot be sent."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shoal
from helpers import kill_tree, skip_outside_the_mpi_job, subprocess_env

# ---------------------------------------------------------------- runaway imports (item 1)

# More processes than this in a driver's session means something forks without end: the
# watchdog kills the whole session at once (a zygote has its own process group, not session).
_MAX_PROCESSES = 12


def _session_pids(sid):
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def _kill_session(sid):
    for _ in range(3):  # a process forking as we kill: go round again
        for pid in _session_pids(sid):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        time.sleep(0.05)


def run_guarded(argv, cwd, timeout=60):
    """Runs `python argv` in its own session under a watchdog that kills the whole session as
    soon as it holds more than _MAX_PROCESSES processes, or at the timeout. Returns
    (CompletedProcess, most processes seen, whether the watchdog fired)."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    seen = [0]
    fired = threading.Event()
    stop = threading.Event()

    def watch():
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            n = len(_session_pids(proc.pid))
            seen[0] = max(seen[0], n)
            if n > _MAX_PROCESSES or time.monotonic() > deadline:
                fired.set()
                _kill_session(proc.pid)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        kill_tree(proc.pid)
        out, err = proc.communicate()
        fired.set()
    finally:
        stop.set()
        watcher.join()
        _kill_session(proc.pid)  # whatever is left (a zygote outliving its driver)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen[0], fired.is_set()


_UNGUARDED = """\
import shoal

def double(x):
    return 2 * x

ex = shoal.Executor(2)
print("RESULT", ex.submit(double, 21).result(timeout=30), flush=True)
ex.shutdown()
"""


@pytest.fixture
def unguarded(tmp_path):
    (tmp_path / "sim.py").write_text(_UNGUARDED)
    (tmp_path / "runner.py").write_text("import sim\n")
    return tmp_path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("argv", [["-c", "import sim"], ["runner.py"]], ids=["python-c-import", "imported"])
def test_module_creating_executor_when_imported_raises_and_never_recurses(unguarded, argv):
    res, most, fired = run_guarded(argv, unguarded)
    assert not fired, f"processes kept multiplying ({most} at once): killed\n{res.stderr[-3000:]}"
    assert res.returncode != 0
    assert "ImportTimeExecutorError" in res.stderr, res.stderr[-3000:]
    assert "'sim'" in res.stderr and 'if __name__ == "__main__":' in res.stderr
    assert "RESULT" not in res.stdout
    assert most <= 5  # the driver, its zygote and two workers (and nothing they started)


@pytest.mark.timeout(120)
def test_module_creating_executor_still_runs_as_a_script(unguarded):
    res, most, fired = run_guarded(["sim.py"], unguarded)
    assert not fired and res.returncode == 0, res.stderr[-3000:]
    assert "RESULT 42" in res.stdout


_NESTED = """\
import shoal

def inner(x):
    return x + 1

def outer(x):
    with shoal.Executor(1) as ex:  # created by the task, on purpose
        return ex.submit(inner, x).result(timeout=30)

if __name__ == "__main__":
    with shoal.Executor(1) as ex:
        print("RESULT", ex.submit(outer, 41).result(timeout=60), flush=True)
"""


@pytest.mark.timeout(120)
def test_executor_created_inside_a_task_still_works(tmp_path):
    (tmp_path / "nested.py").write_text(_NESTED)
    (tmp_path / "runner.py").write_text("import nested\nnested.__name__ = 'nested'\n"
                                        "import shoal\nwith shoal.Executor(1) as ex:\n"
                                        "    print('RESULT', ex.submit(nested.outer, 41).result(timeout=60))\n")
    for argv in (["nested.py"], ["runner.py"]):
        res, most, fired = run_guarded(argv, tmp_path)
        assert not fired and res.returncode == 0, res.stderr[-3000:]
        assert "RESULT 42" in res.stdout


# ---------------------------------------------------------------- __main__ shares globals (item 2)

def run_main(code, backend, tmp_path, timeout=60):
    """Runs ``code`` as a script (its functions live in __main__) with the backend name as
    argv[1]; returns its stdout, failing with its stderr if it fails."""
    skip_outside_the_mpi_job([backend])
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    res, _, fired = run_guarded([str(script), backend], tmp_path, timeout=timeout)
    assert not fired and res.returncode == 0, res.stderr[-3000:]
    return res.stdout


_SHARED_GLOBALS = """\
import sys
import shoal

M = None
CACHE = {}
SCALE = 0

def init():
    global M
    M = 1

def get():
    return M

def put(k, v):
    CACHE[k] = v

def lookup(k):
    return CACHE.get(k)

class Counter:
    n = 0

def bump():
    Counter.n += 1
    return Counter.n

if __name__ == "__main__":
    with shoal.Executor(1, backend=sys.argv[1], initializer=init) as ex:
        print("initializer", ex.submit(get).result(timeout=30))
        ex.submit(put, "k", 42).result(timeout=30)
        print("cache", ex.submit(lookup, "k").result(timeout=30))
        print("class", [ex.submit(bump).result(timeout=30) for _ in range(2)])
        scaled = []
        for s in (2, 3):
            SCALE = s  # a new lambda each time sees the global's value of its time
            scaled.append(ex.submit(lambda x: x * SCALE, 1).result(timeout=30))
        print("scaled", scaled)
"""


def test_main_functions_share_globals(backend, tmp_path):
    out = run_main(_SHARED_GLOBALS, backend, tmp_path)
    assert "initializer 1\n" in out
    assert "cache 42\n" in out
    assert "class [1, 2]\n" in out
    assert "scaled [2, 3]\n" in out


# ---------------------------------------------------------------- what cannot be sent (item 6)

def _first_line(path):
    with open(path) as f:
        return f.readline()


def test_open_file_cannot_be_sent_to_a_worker(make_process_executor, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    ex = make_process_executor()
    with open(path) as f, pytest.raises(shoal.CannotSendError, match="open file") as info:
        ex.submit(_first_line, f)
    assert isinstance(info.value, TypeError)
    assert ex.submit(_first_line, str(path)).result(timeout=30) == "hello\n"


# ---------------------------------------------------------------- map over a failing input (item 5)

def _square(x):
    return x * x


def _add(x, y):
    return x + y


def _broken_input(n_ok):
    yield from range(n_ok)
    raise ValueError(f"the input broke after {n_ok} items")


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_map_yields_the_results_before_its_input_raises(executor, chunksize):
    got = []
    with pytest.raises(ValueError, match="broke after 5 items"):
        for y in executor.map(_square, _broken_input(5), chunksize=chunksize):
            got.append(y)
    assert got == [0, 1, 4, 9, 16]


def test_unordered_map_and_starmap_yield_the_results_before_the_input_raises(executor):
    got = []
    with pytest.raises(ValueError, match="broke after 4 items"):
        for y in executor.map(_square, _broken_input(4), ordered=False):
            got.append(y)
    assert sorted(got) == [0, 1, 4, 9]
    got = []
    with pytest.raises(ValueError, match="broke after 3 items"):
        for y in executor.starmap(_add, ((x, x) for x in _broken_input(3))):
            got.append(y)
    assert got == [0, 2, 4]


def test_map_over_an_input_that_raises_at_once_raises_when_read(executor):
    results = executor.map(_square, _broken_input(0))  # as the built-in map: nothing raised yet
    with pytest.raises(ValueError, match="broke after 0 items"):
        next(results)


# ---------------------------------------------------------------- large closures (item 3)

def _closure_over(array, i):
    return lambda: float(array[-1]) + i


def test_closures_over_one_array_see_its_contents(executor):
    np = pytest.importorskip("numpy")
    big = np.arange(1 << 17, dtype=np.float64)  # 1 MiB: out of band
    assert [executor.submit(_closure_over(big, i)).result(timeout=30) for i in range(3)] == \
        [big[-1], big[-1] + 1, big[-1] + 2]
    big[-1] = -1.0  # changed in place: new functions see the new contents
    assert executor.submit(_closure_over(big, 0)).result(timeout=30) == -1.0


def _rss(pid):
    import psutil

    return psutil.Process(pid).memory_info().rss


@pytest.mark.timeout(120)
def test_array_held_by_many_functions_costs_bounded_memory(make_process_executor):
    # Each closure is a new function: it is sent, and forgotten once its task is done and it is
    # dropped (the function table holds functions weakly). Its array travels as one arena copy,
    # freed with the function, and is copied once into the worker: memory stays bounded however
    # many closures come (24 of 8 MiB would be 192 MiB if the copies were kept).
    np = pytest.importorskip("numpy")
    mib = 8
    big = np.ones(mib << 17, dtype=np.float64)  # 8 MiB
    ex = make_process_executor(max_workers=1)
    ex.submit(_square, 1).result(timeout=30)
    (worker,) = ex.worker_pids()
    used0 = shoal.arena_stats()["used_bytes"]
    grown = []
    for n in (24, 24):
        assert [ex.submit(_closure_over(big, i)).result(timeout=30) for i in range(n)] == \
            [1.0 + i for i in range(n)]
        assert shoal.arena_stats()["used_bytes"] - used0 < 2 * (mib << 20)  # at most one arena copy
        grown.append((_rss(worker), _rss(os.getpid())))
    (worker1, driver1), (worker2, driver2) = grown
    assert worker2 - worker1 < mib << 20, worker2 - worker1    # the second 24 add no copy
    assert driver2 - driver1 < mib << 20, driver2 - driver1


@pytest.mark.timeout(120)
def test_arena_copy_of_a_functions_array_goes_with_the_functions():
    np = pytest.importorskip("numpy")
    import gc

    big = np.ones(1 << 20, dtype=np.float64)  # 8 MiB
    ex = shoal.Executor(1, backend="process")
    try:
        ex.submit(_square, 1).result(timeout=30)
        used0 = shoal.arena_stats()["used_bytes"]
        fn = _closure_over(big, 1)
        assert ex.submit(fn).result(timeout=30) == 2.0
        # The copy lives as long as the function does (the table holds it weakly) ...
        assert shoal.arena_stats()["used_bytes"] - used0 >= big.nbytes
        del fn
        gc.collect()
        # ... and goes with it, while the executor still runs.
        deadline = time.monotonic() + 10
        while shoal.arena_stats()["used_bytes"] - used0 >= big.nbytes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert shoal.arena_stats()["used_bytes"] - used0 < big.nbytes
        fn = _closure_over(big, 1)
        assert ex.submit(fn).result(timeout=30) == 2.0
    finally:
        ex.shutdown(wait=True)
    del ex, fn
    gc.collect()
    assert shoal.arena_stats()["used_bytes"] - used0 < big.nbytes


# ---------------------------------------------------------------- tracebacks (item 4)

_TRACEBACK = """\
import sys
import traceback
import shoal

def boom(x):
    y = x + 1
    raise ValueError(f"boom {y}")

if __name__ == "__main__":
    with shoal.Executor(1, backend=sys.argv[1]) as ex:
        for run in (lambda: ex.submit(boom, 1).result(timeout=30), lambda: list(ex.map(boom, [1]))):
            try:
                run()
            except ValueError as exc:
                print("".join(traceback.format_exception(exc)))
"""


def test_traceback_of_a_script_function_names_the_file_and_line(backend, tmp_path):
    out = run_main(_TRACEBACK, backend, tmp_path)
    script = str(tmp_path / "script.py")
    assert out.count(f'File "{script}", line 7, in boom\n    raise ValueError(f"boom {{y}}")') >= 2, out
    assert "<dynamic-code>" not in out


def _uses(thing):
    return type(thing).__name__


def test_executor_and_future_cannot_be_sent_to_a_worker(make_process_executor):
    ex = make_process_executor()
    with pytest.raises(shoal.CannotSendError, match="Executor cannot be sent to a task"):
        ex.submit(_uses, ex)
    fut = ex.submit(_square, 3)
    with pytest.raises(shoal.CannotSendError, match="pass its result"):
        ex.submit(_uses, fut)
    with pytest.raises(shoal.CannotSendError, match="Executor cannot be sent"):
        list(ex.map(_uses, [ex]))
    assert ex.submit(_uses, fut.result(timeout=30)).result(timeout=30) == "int"


def test_executor_passed_to_a_task_on_a_local_backend_is_the_same_object(backend):
    if backend not in ("serial", "thread"):
        pytest.skip("sent to another process: see the test above")
    with shoal.Executor(1, backend=backend) as ex:
        assert ex.submit(_uses, ex).result(timeout=30) == "Executor"


def test_share_of_what_cannot_be_shared_says_so():
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match="dtype object"):
        shoal.share(np.array([object()] * 100_000, dtype=object))
    with pytest.warns(RuntimeWarning, match="nothing was placed in shared memory"):
        h = shoal.share({"a": 1, "b": [1, 2, 3]})
    assert h.nbytes == 0 and h.value == {"a": 1, "b": [1, 2, 3]}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert shoal.share({"table": np.ones(1 << 16)}).nbytes == 8 << 16


_PRELOAD = """\
import concurrent.futures
import sys
import traceback
import shoal

if __name__ == "__main__":
    with shoal.Executor(1, backend=sys.argv[1], preload=["broken_dep"]) as ex:
        for _ in range(2):
            try:
                ex.submit(abs, -1).result(timeout=30)
            except shoal.InitializerError as exc:
                print(type(exc).__name__, exc.module, isinstance(exc, concurrent.futures.BrokenExecutor))
                print("".join(traceback.format_exception(exc)))
"""


@pytest.mark.timeout(120)
def test_preload_module_that_fails_to_import_is_a_preload_error(tmp_path):
    (tmp_path / "broken_dep.py").write_text("import os\nraise RuntimeError('no licence server')\n")
    out = run_main(_PRELOAD, "process", tmp_path)
    assert out.count("PreloadError broken_dep True") == 2, out
    assert "failed to import" in out and "no licence server" in out
    assert f'File "{tmp_path / "broken_dep.py"}", line 2' in out


# ---------------------------------------------------------------- messages and small gaps (item 7)

def test_arena_limit_messages_name_the_sizes():
    with pytest.raises(ValueError, match="size such as '512M'.*not 'foo'"):
        shoal.set_arena_limit("foo")
    out = run_python_code("""
        import shoal
        shoal.set_arena_limit("64K")
        print(shoal.arena_stats())
        try:
            shoal.share(bytes(1 << 20))
        except MemoryError as e:
            print(e)
    """)
    assert out.splitlines()[0] == "None"  # no arena yet: documented
    assert "a block of 1 MiB does not fit in the arena limit of 64 KiB" in out, out


def run_python_code(code):
    from helpers import run_python

    res = run_python(code, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def _die():
    os.kill(os.getpid(), 9)


def test_crash_message_reads_was_killed(make_process_executor):
    ex = make_process_executor(retries=0)
    with pytest.raises(shoal.WorkerCrashedError, match="the worker running this task was killed by signal 9"):
        ex.submit(_die).result(timeout=60)


def _fails_for_odd(x, rng):
    if x % 2:
        raise ValueError(f"odd {x}")
    return {"y": x}


def test_sweep_keep_errors_column_holds_none_for_good_rows(executor):
    pytest.importorskip("pandas")
    rows = executor.sweep(_fails_for_odd, {"x": [0, 1, 2]}, errors="keep")
    errors = list(rows["error"])
    assert errors[0] is None and errors[2] is None, errors
    assert "odd 1" in errors[1]


def test_event_loop_attribute_names_the_loop_in_use(backend):
    import importlib.util

    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    with shoal.Executor(1, backend=backend) as ex:
        assert ex.event_loop == expected


def _waits_for_inner(ex):
    return ex.submit(_square, 3).result(timeout=30)


@pytest.mark.timeout(60)
def test_every_thread_waiting_on_its_own_executor_is_a_deadlock_error():
    with shoal.Executor(2, backend="thread") as ex:
        outer = [ex.submit(_waits_for_inner, ex) for _ in range(2)]
        results = []
        for f in outer:
            try:
                results.append(f.result(timeout=30))
            except shoal.DeadlockError as exc:
                results.append(exc)
        assert any(isinstance(r, shoal.DeadlockError) for r in results), results
        assert all(r == 9 or isinstance(r, shoal.DeadlockError) for r in results), results
        # With a thread to spare, waiting on one's own executor works.
        assert ex.submit(_waits_for_inner, ex).result(timeout=30) == 9
