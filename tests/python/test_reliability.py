"""Reliability of the process backend against its surroundings: forked copies of the driver,
a killed driver with a forked child alive, descriptors the driver left inheritable, and what
the zygote keeps of an executor that is gone. Drivers run in their own interpreter so the
test can fork, kill and inspect them."""

import json
import os
import subprocess
import time

import psutil
import pytest

from helpers import is_alive, kill_tree, run_python, spawn_python_file, wait_until


def read_json_line(proc, prefix):
    """Read stdout lines until one starts with prefix; return its JSON payload (None at EOF)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    return None


# ---------------------------------------------------------------- a forked child uses the executor


@pytest.mark.timeout(90)
@pytest.mark.parametrize("use", ["submit", "result", "map", "new-function"])
def test_a_forked_child_using_the_executor_gets_a_clear_error_and_the_parent_is_untouched(use):
    # The child's calls must fail at once with InheritedExecutorError, without reading or
    # writing the parent's rings; the parent's next tasks and shutdown(wait=True) still work.
    proc = run_python("""
        import os, sys, time
        import shoal

        def double(x):
            return 2 * x

        def triple(x):
            return 3 * x

        use = sys.argv[1]
        ex = shoal.Executor(2, backend="process")
        assert ex.submit(double, 1).result(timeout=20) == 2
        pending = ex.submit(time.sleep, 0.5)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                if use == "submit":
                    ex.submit(double, 2).result(timeout=5)
                elif use == "result":
                    pending.result(timeout=5)
                elif use == "map":
                    list(ex.map(double, range(100)))
                else:
                    ex.submit(triple, 2).result(timeout=5)
            except shoal.InheritedExecutorError as exc:
                ok = isinstance(exc, RuntimeError) and "fork" in str(exc) and str(os.getppid()) in str(exc)
                code = 0 if ok else 4
                print("child error:", exc, flush=True)
            except BaseException as exc:
                print("child other error:", type(exc).__name__, exc, flush=True)
                code = 5
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), flush=True)
        pending.result(timeout=20)
        print("parent", [ex.submit(double, i).result(timeout=10) for i in range(20)] == [2 * i for i in range(20)],
              list(ex.map(triple, range(50))) == [3 * i for i in range(50)], flush=True)
        start = time.monotonic()
        ex.shutdown(wait=True)
        print("shutdown fast", time.monotonic() - start < 5, flush=True)
    """, use, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "child 0" in proc.stdout, proc.stdout + proc.stderr
    assert "parent True True" in proc.stdout, proc.stdout + proc.stderr
    assert "shutdown fast True" in proc.stdout, proc.stdout + proc.stderr


# ---------------------------------------------------------------- descriptors of the zygote and workers


def fd_targets(pid):
    """{fd number: readlink target} of process `pid`."""
    out = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            out[int(name)] = os.readlink(f"{base}/{name}")
        except OSError:
            pass  # closed meanwhile
    return out


INHERITABLE_DRIVER = """
import json, os, socket
import shoal
from shoal.process import driver

def pid(_):
    return os.getpid()

r, w = os.pipe()
os.set_inheritable(r, True)
os.set_inheritable(w, True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.set_inheritable(True)
high = os.dup2(w, 300)  # inheritable, far past the others
ex = shoal.Executor(2, backend="process")
ex.submit(pid, 0).result(timeout=20)
pids = ex.worker_pids()
print("PIDS " + json.dumps({"workers": pids, "zygote": driver.zygote().pid,
      "targets": sorted({os.readlink(f"/proc/self/fd/{fd}") for fd in (r, w, s.fileno(), high)})}), flush=True)
input()
ex.shutdown()
"""


@pytest.mark.timeout(60)
def test_descriptors_the_driver_made_inheritable_stay_out_of_the_zygote_and_workers(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(INHERITABLE_DRIVER)
    proc = spawn_python_file(script, stdin=subprocess.PIPE)
    try:
        info = read_json_line(proc, "PIDS ")
        assert info is not None, proc.stderr.read()
        assert len(info["targets"]) == 2  # the pipe (both ends) and the socket
        assert len(info["workers"]) == 2
        for pid in [info["zygote"], *info["workers"]]:
            targets = fd_targets(pid)
            leaked = {fd: t for fd, t in targets.items() if t in info["targets"]}
            assert not leaked, f"process {pid} holds the driver's inheritable descriptors: {leaked}"
            # What shoal gives: stdin, stdout, stderr; the zygote's sockets and pidfds; a
            # worker's shared memory, doorbell and arena (memfds, eventfds).
            odd = {fd: t for fd, t in targets.items()
                   if fd > 2 and not t.startswith(("memfd:", "anon_inode:", "socket:", "/memfd:"))}
            assert not odd, f"process {pid} holds descriptors shoal did not give it: {odd}"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        kill_tree(proc.pid)
        proc.wait(10)


# ---------------------------------------------------------------- what the zygote keeps of a gone executor


ZYGOTE_KEEPS_DRIVER = """
import gc, json, os, sys, time
import shoal
from shoal.process import driver

def double(x):
    return 2 * x

threshold = None if sys.argv[1] == "no-arena" else 1 << 16
# The first executor's workers are forked while the zygote is still starting; once it is warm
# (it has been idle a moment) it serves the next ones with nothing else to do in between.
for _ in range(2):
    ex = shoal.Executor(2, backend="process", buffer_threshold=threshold)
    assert ex.submit(double, 1).result(timeout=20) == 2
    ex.shutdown(wait=True)
    del ex
    gc.collect()
    time.sleep(0.3)
print("ZYGOTE " + json.dumps(driver.zygote().pid), flush=True)
input()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("arena", ["arena", "no-arena"])
def test_the_zygote_keeps_nothing_of_an_executor_that_is_gone(tmp_path, arena):
    script = tmp_path / "driver.py"
    script.write_text(ZYGOTE_KEEPS_DRIVER)
    proc = spawn_python_file(script, arena, stdin=subprocess.PIPE)
    try:
        zygote = read_json_line(proc, "ZYGOTE ")
        assert zygote is not None, proc.stderr.read()

        def kept():
            fds = {fd: t for fd, t in fd_targets(zygote).items()
                   if "shoal-pool" in t or "eventfd" in t or "shoal-arena" in t}
            with open(f"/proc/{zygote}/maps") as f:
                maps = [line.strip() for line in f if "shoal-pool" in line]
            return fds, maps

        assert wait_until(lambda: kept() == ({}, []), timeout=5), \
            f"the zygote still holds the executor's shared memory: {kept()}"
        assert is_alive(zygote)  # it still serves the next executor
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        kill_tree(proc.pid)
        proc.wait(10)


# ---------------------------------------------------------------- a killed driver with a forked child


FORKING_DRIVER = """
import json, multiprocessing, os, sys, time
import shoal
from shoal.process import driver

def double(x):
    return 2 * x

def sleep_long():
    time.sleep(60)

how, end = sys.argv[1], sys.argv[2]
ex = shoal.Executor(2, backend="process")
assert ex.submit(double, 1).result(timeout=20) == 2
deadline = time.monotonic() + 10
while len(ex.worker_pids()) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
if how == "os.fork":
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
else:  # a multiprocessing "fork" process, as a Manager or a Pool worker is
    proc = multiprocessing.get_context("fork").Process(target=sleep_long, daemon=False)
    proc.start()
    child = proc.pid
print("PIDS " + json.dumps({"workers": ex.worker_pids(), "zygote": driver.zygote().pid, "child": child}),
      flush=True)
if end == "kill":
    time.sleep(120)
ex.shutdown(wait=True)
print("EXITING " + json.dumps(time.time()), flush=True)
os._exit(0) if how == "multiprocessing" else None  # do not wait for the sleeping process
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_a_killed_driver_with_a_forked_child_leaves_no_zygote_or_workers(tmp_path, how):
    script = tmp_path / "driver.py"
    script.write_text(FORKING_DRIVER)
    proc = spawn_python_file(script, how, "kill")
    child = None
    try:
        info = read_json_line(proc, "PIDS ")
        assert info is not None, proc.stderr.read()
        child = info["child"]
        pool = [info["zygote"], *info["workers"]]
        assert len(pool) == 3 and all(is_alive(p) for p in pool)
        proc.kill()
        proc.wait(10)
        gone = wait_until(lambda: not any(is_alive(p) for p in pool), timeout=3.0)
        assert gone, f"alive 3 s after the driver was killed: {[p for p in pool if is_alive(p)]}"
        assert is_alive(child), "the test is void: the driver's forked child died with it"
    finally:
        kill_tree(proc.pid, [psutil.Process(p) for p in [child] if p and is_alive(p)])
        proc.wait(10)


@pytest.mark.timeout(60)
def test_a_driver_with_a_forked_child_alive_exits_promptly(tmp_path):
    # The interpreter's exit stops the zygote: a forked child holding a copy of its socket
    # must not hold that up (it took 2 s, until the zygote was killed).
    script = tmp_path / "driver.py"
    script.write_text(FORKING_DRIVER.replace("os._exit(0) if how", "sys.exit(0) if how"))
    proc = spawn_python_file(script, "os.fork", "exit")
    child = None
    try:
        info = read_json_line(proc, "PIDS ")
        assert info is not None, proc.stderr.read()
        child = info["child"]
        exiting = read_json_line(proc, "EXITING ")
        assert exiting is not None, proc.stderr.read()
        proc.wait(20)
        took = time.time() - exiting
        assert proc.returncode == 0, proc.stderr.read()
        assert took < 1.2, f"the driver took {took:.2f} s to exit with a forked child alive"
        assert wait_until(lambda: not is_alive(info["zygote"]), timeout=2.0)
        assert is_alive(child)
    finally:
        kill_tree(proc.pid, [psutil.Process(p) for p in [child] if p and is_alive(p)])
        proc.wait(10)


# ---------------------------------------------------------------- a forked child drops arena memory


@pytest.mark.timeout(60)
@pytest.mark.parametrize("held", ["share", "result"])
def test_a_forked_child_dropping_arena_memory_leaves_the_parents_data_alone(held):
    # The child inherits the parent's arena blocks (a shoal.share handle, a result's array);
    # when it drops them and exits normally, the blocks must stay the parent's: freed, the
    # parent's next arena allocation reused the pages under the data it still held.
    proc = run_python("""
        import gc, os, sys
        import numpy as np
        import shoal

        def make(n):
            return np.full(n, 7, dtype=np.int64)

        if sys.argv[1] == "share":
            handle = shoal.share(make(1 << 20))  # 8 MiB in the arena
            value = handle.value
        else:
            ex = shoal.Executor(1, backend="process")
            value = ex.submit(make, 1 << 20).result(timeout=20)  # a result on an arena block
        pid = os.fork()
        if pid == 0:
            handle = value = None
            gc.collect()
            sys.exit(0)  # finalization runs too
        _, status = os.waitpid(pid, 0)
        others = [shoal.share(np.full(1 << 20, 9, dtype=np.int64)) for _ in range(4)]
        print("child", os.waitstatus_to_exitcode(status), "intact", bool((value == 7).all()), flush=True)
    """, held, timeout=50)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "child 0 intact True" in proc.stdout, proc.stdout + proc.stderr
