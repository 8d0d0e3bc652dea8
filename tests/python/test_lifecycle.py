"""Process lifecycle (process backend): a killed driver leaves nothing behind, Ctrl-C
returns promptly, executors come and go without leaking processes, fds or /dev/shm
names. Drivers run in their own interpreter so the test can kill or signal them."""

import gc
import json
import os
import re
import signal
import threading
import time

import numpy as np
import psutil
import pytest

import shoal
from helpers import (is_alive, kill_tree, live, run_python, spawn_python_file,
                     wait_for_workers, wait_until)


def add(a, b):
    return a + b


def echo(x):
    return x


# Other programs on a shared machine (multiprocessing, loky, joblib) come and go in /dev/shm
# while the tests run; their names are not shoal's and are ignored.
FOREIGN_SHM = re.compile(r"^(mpich_shm_|sem\.mp-|sem\.loky-|loky-|joblib_memmapping_folder_|sem\.joblib|pymp-|mp-)")


def shm_names():
    try:
        return {n for n in os.listdir("/dev/shm") if not FOREIGN_SHM.match(n)}
    except FileNotFoundError:
        return set()


def read_json_line(proc, prefix):
    """Read stdout lines until one starts with prefix; return its JSON payload (None at EOF)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    return None


KILLED_DRIVER = """
import json, sys, time
import shoal

def nap(s):
    time.sleep(s)
    return s

if __name__ == "__main__":
    ex = shoal.Executor(max_workers=2, backend="process")
    list(ex.map(nap, [0.2, 0.2], chunksize=1))
    deadline = time.monotonic() + 10
    while len(ex.worker_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    if sys.argv[1] == "busy":
        futures = [ex.submit(nap, 60) for _ in range(6)]
        time.sleep(0.3)
    print("PIDS " + json.dumps(ex.worker_pids()), flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_killed_driver_leaves_no_processes(tmp_path, state):
    shm_before = shm_names()
    script = tmp_path / "driver.py"
    script.write_text(KILLED_DRIVER)
    proc = spawn_python_file(script, state)
    descendants = []
    try:
        worker_pids = read_json_line(proc, "PIDS ")
        assert worker_pids is not None, proc.stderr.read()
        descendants = psutil.Process(proc.pid).children(recursive=True)
        assert len(worker_pids) == 2
        assert set(worker_pids) <= {p.pid for p in descendants}, "worker_pids() are not the driver's descendants"
        proc.kill()
        killed_at = time.monotonic()
        proc.wait(10)
        remaining = wait_until(lambda: not live(descendants), timeout=1.0 - (time.monotonic() - killed_at))
        survivors = [(p.pid, p.name()) for p in live(descendants)]
        assert remaining and not survivors, f"alive 1 s after the driver was killed: {survivors}"
        assert shm_names() - shm_before == set()
    finally:
        kill_tree(proc.pid, descendants)
        proc.wait(10)


CTRL_C_DRIVER = """
import json, sys, time
import psutil
import shoal

def nap(s):
    time.sleep(s)
    return s

if __name__ == "__main__":
    mode = sys.argv[1]
    pids = []
    try:
        with shoal.Executor(max_workers=2, backend="process") as ex:
            list(ex.map(nap, [0.2, 0.2], chunksize=1))
            deadline = time.monotonic() + 10
            while len(ex.worker_pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            pids = ex.worker_pids()
            futures = [ex.submit(nap, 60) for _ in range(6)]
            print("READY " + json.dumps(pids), flush=True)
            if mode == "result":
                futures[0].result()
            else:
                list(ex.map(nap, [60] * 6, chunksize=1))
        print("NO-INTERRUPT", flush=True)
    except KeyboardInterrupt:
        def alive():
            out = []
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        out.append(pid)
                except psutil.NoSuchProcess:
                    pass
            return out
        deadline = time.monotonic() + 1.0
        while alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        print("INTERRUPTED " + json.dumps(alive()), flush=True)
"""


@pytest.mark.parametrize("target", ["driver", "process-group"])
@pytest.mark.parametrize("mode", ["result", "map"])
def test_ctrl_c_returns_promptly(tmp_path, mode, target):
    script = tmp_path / "driver.py"
    script.write_text(CTRL_C_DRIVER)
    # A terminal's Ctrl-C signals the whole foreground process group; "driver" signals only it.
    proc = spawn_python_file(script, mode, start_new_session=True)
    descendants = []
    try:
        pids = read_json_line(proc, "READY ")
        assert pids is not None, proc.stderr.read()
        descendants = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.5)  # the driver is now blocked waiting for 60 s tasks
        t0 = time.monotonic()
        if target == "driver":
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)
        except Exception:
            kill_tree(proc.pid, descendants)
            out, err = proc.communicate()
            raise AssertionError(f"driver did not return 15 s after SIGINT\n{out}\n{err}")
        elapsed = time.monotonic() - t0
        assert "INTERRUPTED" in out, f"no KeyboardInterrupt in the driver\nstdout:\n{out}\nstderr:\n{err}"
        assert elapsed < 5, f"Ctrl-C took {elapsed:.1f} s"
        alive_in_driver = json.loads(out.split("INTERRUPTED ", 1)[1].splitlines()[0])
        assert alive_in_driver == [], f"workers still alive after Ctrl-C: {alive_in_driver}"
        assert wait_until(lambda: not live(descendants), timeout=1.0), \
            f"alive after the driver exited: {[p.pid for p in live(descendants)]}"
    finally:
        kill_tree(proc.pid, descendants)
        proc.wait(10)


MANY_EXECUTORS = """
import json, os, time
import psutil
import shoal

def add(a, b):
    return a + b

def fds():
    return len(os.listdir("/proc/self/fd"))

def settle(me, allowed, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = {p.pid for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}
        if kids <= allowed:
            break
        time.sleep(0.02)
    return sorted(kids)

if __name__ == "__main__":
    me = psutil.Process()
    with shoal.Executor(max_workers=2) as ex:       # the first pool may leave a per-process zygote
        assert ex.submit(add, 1, 2).result(timeout=30) == 3
        first = set(ex.worker_pids())
    kids0 = settle(me, set(), timeout=0.5)
    fd0 = fds()
    workers = []
    t0 = time.monotonic()
    for i in range(20):
        with shoal.Executor(max_workers=2) as ex:
            assert ex.submit(add, i, 1).result(timeout=30) == i + 1
            workers += ex.worker_pids()
    elapsed = time.monotonic() - t0
    kids1 = settle(me, set(kids0))
    fd1 = fds()
    alive = [p for p in workers + sorted(first) if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    print("RESULT " + json.dumps(dict(fd0=fd0, fd1=fd1, kids0=kids0, kids1=kids1,
                                      workers=workers, alive=alive, elapsed=elapsed)))
"""


def test_many_executors_in_a_row_leak_nothing():
    shm_before = shm_names()
    proc = run_python(MANY_EXECUTORS, timeout=50)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert len(r["workers"]) >= 20, r
    assert r["alive"] == [], f"workers of shut-down executors still alive: {r['alive']}"
    assert set(r["kids1"]) <= set(r["kids0"]), f"new child processes left behind: {r}"
    assert r["fd1"] <= r["fd0"] + 2, f"fds leaked: {r['fd0']} -> {r['fd1']}"
    assert shm_names() - shm_before == set()


def test_many_thread_executors_leak_no_threads():
    with shoal.Executor(max_workers=2, backend="thread") as ex:
        ex.submit(add, 1, 2).result(timeout=30)
    before = threading.active_count()
    for i in range(20):
        with shoal.Executor(max_workers=2, backend="thread") as ex:
            assert list(ex.map(add, range(10), range(10))) == [2 * j for j in range(10)]
    assert wait_until(lambda: threading.active_count() <= before, timeout=5), \
        f"{threading.active_count() - before} threads left behind"


def test_no_dev_shm_names_after_large_traffic():
    before = shm_names()
    payload = os.urandom(20 * 2 ** 20)
    arr = np.arange(2_000_000, dtype=np.float64)
    with shoal.Executor(max_workers=2, backend="process") as ex:
        assert ex.submit(echo, payload).result(timeout=60) == payload
        assert np.array_equal(ex.submit(echo, arr).result(timeout=60), arr)
        during = shm_names() - before
    assert during == set(), f"shoal created named shared memory: {during}"
    assert shm_names() - before == set()


def test_garbage_collected_executor_stops_its_workers():
    ex = shoal.Executor(max_workers=2, backend="process")
    fut = ex.submit(add, 1, 2)
    assert fut.result(timeout=30) == 3
    list(ex.map(add, [0, 0], [0, 0], chunksize=1))
    pids = ex.worker_pids()
    assert pids
    del ex, fut
    gc.collect()
    assert wait_until(lambda: not any(is_alive(p) for p in pids), timeout=5), \
        f"workers of an unreachable executor still alive: {[p for p in pids if is_alive(p)]}"


EXIT_WITHOUT_SHUTDOWN = """
import sys, time
import shoal

def add(a, b):
    return a + b

ex = shoal.Executor(max_workers=2, backend=sys.argv[1])
assert ex.submit(add, 1, 2).result(timeout=30) == 3
print("WORKERS", ex.worker_pids(), flush=True)
"""


@pytest.mark.parametrize("backend_name", ["thread", "process"])
def test_interpreter_exits_without_shutdown(backend_name):
    t0 = time.monotonic()
    proc = run_python(EXIT_WITHOUT_SHUTDOWN, backend_name, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 10
    pids = json.loads(proc.stdout.split("WORKERS", 1)[1].strip())
    assert wait_until(lambda: not any(is_alive(p) for p in pids), timeout=1.0)


def test_process_executor_in_this_process_cleans_up():
    # In-process variant of the leak test, with the pytest process as the driver.
    with shoal.Executor(max_workers=2, backend="process") as ex:
        list(ex.map(add, [1, 2], [3, 4], chunksize=1))
        pids = wait_for_workers(ex, 2)
    assert wait_until(lambda: not any(is_alive(p) for p in pids), timeout=2), \
        f"workers alive after shutdown(): {[p for p in pids if is_alive(p)]}"


@pytest.mark.timeout(60)
def test_a_forked_copy_of_the_driver_can_start_its_own_pool():
    # A driver forks (os.fork, or a multiprocessing "fork" worker) while its executor is
    # alive; the child starts an executor of its own. The child must not wait for, kill or
    # reap the parent's zygote, and both must keep working.
    proc = run_python("""
        import os, sys
        import shoal

        def double(x):
            return 2 * x

        with shoal.Executor(2) as ex:
            assert ex.submit(double, 1).result(timeout=20) == 2
            pid = os.fork()
            if pid == 0:
                try:
                    with shoal.Executor(2) as child_ex:
                        ok = list(child_ex.map(double, range(5))) == [0, 2, 4, 6, 8]
                finally:
                    pass
                os._exit(0 if ok else 3)
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status))
            print("parent", ex.submit(double, 21).result(timeout=20))
    """)
    assert proc.returncode == 0, proc.stderr
    assert "child 0" in proc.stdout and "parent 42" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.timeout(60)
def test_a_forked_copy_that_drops_the_inherited_executor_leaves_it_alone():
    # The copy drops the parent's executor (and shuts it down, and exits through atexit)
    # while the parent's completion thread may hold the pool's lock: the copy must neither
    # hang on that lock nor stop the parent's workers.
    proc = run_python("""
        import gc, os, sys, time
        import shoal

        def double(x):
            return 2 * x

        ex = shoal.Executor(2)
        assert ex.submit(double, 1).result(timeout=20) == 2
        deadline = time.monotonic() + 20
        while len(ex.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # both workers up, so that a change of pids means a kill
        pids = sorted(ex.worker_pids())
        assert len(pids) == 2, pids
        holder = [ex]
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            inherited = holder.pop()
            inherited.shutdown(wait=True)
            del inherited, ex
            gc.collect()
            sys.exit(0)  # atexit runs too
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), "fast", time.monotonic() - start < 10)
        print("parent", ex.submit(double, 21).result(timeout=20), sorted(ex.worker_pids()) == pids)
        ex.shutdown()
    """)
    assert proc.returncode == 0, proc.stderr
    assert "child 0 fast True" in proc.stdout, proc.stdout + proc.stderr
    assert "parent 42 True" in proc.stdout, proc.stdout + proc.stderr
