"""Ctrl-C: no finished result is lost to a caught KeyboardInterrupt, and a program interrupted
without a `with` block exits promptly, its workers stopped."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import shoal

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


# Results are taken from the pool by the thread that waits (here the main thread, where Python
# raises KeyboardInterrupt), so a Ctrl-C can land between the taking and the futures being set.
_CAUGHT = """
import concurrent.futures as cf, json, os, signal, sys, threading, time, shoal

def square(x):
    return x * x

def pester(stop, gap):
    time.sleep(0.01)
    while not stop.is_set():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(gap)

def main(n, gap, rounds):
    caught = 0
    futs = []
    ex = shoal.Executor(2)
    with ex:
        for r in range(rounds):
            base = len(futs)
            futs.extend(ex.submit(square, i) for i in range(base, base + n))
            stop = threading.Event()
            t = threading.Thread(target=pester, args=(stop, gap))
            t.start()
            k, since = base, time.monotonic()
            while k < len(futs):
                try:
                    while k < len(futs):  # results taken by the main thread, Ctrl-C or not
                        try:
                            futs[k].result(timeout=0.05)
                        except cf.TimeoutError:
                            if time.monotonic() - since < 1:
                                continue
                            # lost: counted below
                        k, since = k + 1, time.monotonic()
                except KeyboardInterrupt:
                    caught += 1
            stop.set()
            while True:  # the harness's own waits may be interrupted too
                try:
                    t.join()
                    time.sleep(0.05)  # the last signal may still be on its way
                    break
                except KeyboardInterrupt:
                    caught += 1
        done, not_done = cf.wait(futs, timeout=10)
        wrong = sum(1 for i, f in enumerate(futs) if f.done() and f.exception() is None and f.result() != i * i)
        print(json.dumps({"caught": caught, "not_done": len(not_done), "wrong": wrong}), flush=True)
        start = time.monotonic()
    print(json.dumps({"left_with": time.monotonic() - start}), flush=True)

main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
"""


@pytest.mark.parametrize("gap, rounds", [(0.02, 1), (0.0005, 3)], ids=["few-interrupts", "many-interrupts"])
def test_a_caught_ctrl_c_loses_no_result(tmp_path, gap, rounds):
    script = tmp_path / "caught.py"
    script.write_text(_CAUGHT)
    for _ in range(3):
        try:
            proc = subprocess.run([sys.executable, str(script), "2000", str(gap), str(rounds)],
                                  capture_output=True, text=True, timeout=60, env=subprocess_env())
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the script hung; it printed {exc.stdout!r}")
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, proc.stderr[-3000:]
        out = lines[0]
        assert out["caught"] > 0, out
        assert out["not_done"] == 0 and out["wrong"] == 0, out
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert lines[1]["left_with"] < 0.3, lines


@pytest.mark.timeout(60)
def test_a_batch_taken_as_ctrl_c_lands_is_delivered_before_the_interrupt_leaves(monkeypatch):
    # A signal is raised at the first bytecode after Pool.take returns: here, the delivery.
    # The batch the take stored must not then wait for some later delivery (none may come:
    # a program that next calls concurrent.futures.wait would wait for ever).
    import concurrent.futures

    from shoal.process import driver

    with shoal.Executor(1, backend="process") as ex:
        ex.submit(int).result(timeout=30)  # the worker is up
        deliver, interrupted = driver._deliver, []

        def interrupt_once(state):
            if state.pending and not interrupted:
                interrupted.append(True)
                raise KeyboardInterrupt
            return deliver(state)

        monkeypatch.setattr(driver, "_deliver", interrupt_once)
        fut = ex.submit(time.sleep, 0.2)
        with pytest.raises(KeyboardInterrupt):
            fut.result(timeout=30)
        assert interrupted
        done, _ = concurrent.futures.wait([fut], timeout=5)
        assert done == {fut} and fut.result() is None
