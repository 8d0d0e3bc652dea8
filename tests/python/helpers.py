"""Helpers for the shoal tests that are not tasks: polling, process inspection,
driver subprocesses. Tasks live beside the tests that use them."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import traceback

import psutil

import shoal

# Subprocess drivers import the same shoal as the tests (src/ in a checkout, or an install).
SRC = str(pathlib.Path(shoal.__file__).resolve().parents[1])


def wait_until(predicate, timeout=5.0, interval=0.01):
    """Poll predicate until it returns a truthy value or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def is_alive(proc_or_pid):
    """True if the process exists and is not a zombie (a zombie has already died)."""
    try:
        proc = proc_or_pid if isinstance(proc_or_pid, psutil.Process) else psutil.Process(proc_or_pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def live(procs):
    return [p for p in procs if is_alive(p)]


def live_workers(ex):
    return [pid for pid in ex.worker_pids() if is_alive(pid)]


def wait_for_workers(ex, n, timeout=10.0):
    """Wait until the executor reports exactly n live workers; return their pids."""
    def ready():
        pids = ex.worker_pids()
        return len(pids) == n and all(is_alive(p) for p in pids)

    assert wait_until(ready, timeout), f"expected {n} live workers, worker_pids()={ex.worker_pids()}"
    return list(ex.worker_pids())


def chain_text(exc):
    """The exception formatted as Python prints it, with its __cause__/__context__ chain."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def subprocess_env():
    env = os.environ.copy()
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


def kill_tree(root_pid, extra=()):
    """SIGKILL a process and every descendant (cleanup after a failed test)."""
    procs = list(extra)
    try:
        root = psutil.Process(root_pid)
        procs += root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        pass
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass


def skip_outside_the_mpi_job(argv):
    """Inside an MPI job (test_mpi_shared.py), a test that would run backend "mpi" in a fresh
    interpreter skips: that interpreter is outside the job and has no leaders (test_mpi.py
    runs scripts under mpiexec)."""
    if "mpi" in map(str, argv) and "mpi" in os.environ.get("SHOAL_TEST_BACKENDS", ""):
        import pytest

        pytest.skip("a fresh interpreter is outside the MPI job (test_mpi.py runs scripts under mpiexec)")


def run_argv(argv, timeout=50, cwd=None):
    """Run a fresh interpreter with argv; return the CompletedProcess (kills it on timeout).
    Inside an MPI job, a test that would start backend "mpi" in it skips (see below)."""
    skip_outside_the_mpi_job(argv)
    proc = subprocess.Popen(
        [sys.executable, *map(str, argv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(), cwd=cwd, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"subprocess timed out after {timeout}s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_python(code, *args, timeout=50, cwd=None):
    """Run `python -c code args` (code is dedented); __main__ has no file, as in a notebook."""
    return run_argv(["-c", textwrap.dedent(code), *args], timeout=timeout, cwd=cwd)


def run_python_file(path, *args, timeout=50, cwd=None):
    """Run `python path args`."""
    return run_argv([path, *args], timeout=timeout, cwd=cwd)


def spawn_python_file(path, *args, **popen_kwargs):
    """Start `python path args` with stdout/stderr pipes (a driver the test will signal)."""
    return subprocess.Popen(
        [sys.executable, str(path), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(), **popen_kwargs,
    )


def fd_count():
    return len(os.listdir("/proc/self/fd"))
