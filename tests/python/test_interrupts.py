"""Ctrl-C: no finished result is lost to a caught KeyboardInterrupt, and a program interrupted
without a `with` block exits promptly, its workers stopped."""
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import is_alive, subprocess_env

pytestmark = pytest.mark.timeout(120)


def test_ctrl_c_without_with_exits_promptly_and_stops_the_workers(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import os, signal, time, shoal\n"
        "def slow():\n"
        "    time.sleep(8)\n"
        "ex = shoal.Executor(1)\n"
        "f = ex.submit(slow)\n"
        "time.sleep(0.5)\n"
        "print(' '.join(map(str, ex.worker_pids())), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(30)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env=subprocess_env())
    took = time.monotonic() - start
    assert "KeyboardInterrupt" in proc.stderr
    assert took < 4.0, f"exit took {took:.1f} s (the running task sleeps 8 s)"
    pids = [int(p) for p in proc.stdout.split()]
    assert pids
    deadline = time.monotonic() + 5
    while any(is_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(is_alive(p) for p in pids)


def test_a_normal_exit_still_runs_queued_work(tmp_path):
    out = tmp_path / "done"
    script = tmp_path / "normal.py"
    script.write_text(
        "import sys, time, shoal\n"
        "def slow(path):\n"
        "    time.sleep(0.5)\n"
        "    open(path, 'w').write('done')\n"
        "ex = shoal.Executor(1)\n"
        f"ex.submit(slow, {str(out)!r})\n")
    subprocess.run([sys.executable, str(script)], check=True, timeout=60, env=subprocess_env())
    assert out.read_text() == "done"
