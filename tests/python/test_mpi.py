"""shoal.mpi across "nodes": one driver rank and leader ranks, each leader in its own mount
namespace with a private /dev/shm, MPI on TCP (see shoal.mpi.testing). Real mpiexec, real
processes; every job runs under a timeout."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from shoal.mpi import testing

from mpi_jobs import results, run_job, skip_without_nodes, write_script

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _nodes():
    skip_without_nodes()


def test_backend_runs_tasks_on_every_leader(tmp_path):
    proc = run_job(tmp_path, r'''
        import json, os, socket
        import numpy as np
        from shoal._backend import make_backend, BackendConfig, ChunkOutcome
        from shoal._errors import RemoteTraceback

        def where(x):  # defined in __main__: travels by value, as from a notebook
            # Each leader has its own /dev/shm: a file written here is not the driver's.
            with open(f"/dev/shm/shoal-test-{os.getpid()}", "w") as f:
                f.write("x")
            return x, os.getpid(), sorted(os.listdir("/dev/shm"))

        def boom(x):
            raise ValueError(f"bad {x}")

        b = make_backend("mpi", BackendConfig(max_workers=2))
        out = {"slots": b.slots, "pids": b.worker_pids()}
        futs = [b.submit(where, (i,), {}) for i in range(40)]
        rows = [f.result(timeout=60) for f in futs]
        out["values"] = [r[0] for r in rows]
        out["task_pids"] = sorted({r[1] for r in rows})
        out["driver_shm"] = [n for n in os.listdir("/dev/shm") if n.startswith("shoal-test-")]
        try:
            b.submit(boom, (3,), {}).result(timeout=60)
        except ValueError as e:
            out["error"] = [str(e), type(e.__cause__) is RemoteTraceback and "boom" in str(e.__cause__)]
        c = b.submit_chunk(lambda x, y: x * y, [(1, 2), (3, 4)], star=True).result(timeout=60)
        out["chunk"] = [type(c) is ChunkOutcome, c.results, c.error, c.seconds >= 0, c.nbytes > 0]
        c = b.submit_chunk(lambda x: 10 // x, [5, 1, 0, 7], star=False).result(timeout=60)
        out["chunk_error"] = [c.results, type(c.error[0]).__name__, "ZeroDivisionError" in c.error[1]]
        a = np.arange(3_000_000, dtype=np.float64)  # 24 MB: travels as its own MPI message
        out["array"] = [bool(b.submit(np.sum, (a,), {}).result(timeout=60) == a.sum()),
                        bool((b.submit(np.negative, (a,), {}).result(timeout=60) == -a).all())]
        try:
            b.submit(where, (lambda: None,), {}).result(timeout=60)  # picklable by cloudpickle: runs
            import threading
            b.submit(where, (threading.Lock(),), {})
        except TypeError as e:
            out["unpicklable"] = "lock" in str(e)
        b.shutdown(wait=True)
        print("RESULT " + json.dumps(out))
    ''')
    assert proc.returncode == 0, proc.stderr
    (out,) = results(proc)
    assert out["slots"] == 2 and len(out["pids"]) == 2
    assert out["values"] == list(range(40))
    assert sorted(out["task_pids"]) == sorted(out["pids"])  # both leaders' workers ran tasks
    assert out["driver_shm"] == []  # nothing crossed between the "nodes" but MPI messages
    assert out["error"] == ["bad 3", True]
    assert out["chunk"] == [True, [False, [2, 12]], None, True, True]
    assert out["chunk_error"] == [[False, [2, 10]], "ZeroDivisionError", True]
    assert out["array"] == [True, True]
    assert out["unpicklable"] is True
    assert not any(psutil.pid_exists(p) and _is(p) for p in out["pids"])  # workers gone with the job


def _is(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_error_without_leaders():
    from shoal._backend import BackendConfig, make_backend
    from shoal.mpi import NoLeadersError

    with pytest.raises(NoLeadersError, match="mpiexec"):
        make_backend("mpi", BackendConfig(max_workers=2))


def test_script_exception_ends_the_job_with_one_traceback(tmp_path):
    start = time.monotonic()
    proc = run_job(tmp_path, '''
        from shoal._backend import make_backend, BackendConfig
        b = make_backend("mpi", BackendConfig(max_workers=2))
        print(b.submit(pow, (2, 10), {}).result(timeout=60))
        raise SystemError("the script failed here")
    ''', timeout=120)
    assert proc.returncode != 0
    assert "1024" in proc.stdout
    assert proc.stderr.count("Traceback (most recent call last)") == 1, proc.stderr
    assert "the script failed here" in proc.stderr
    assert time.monotonic() - start < 60


def test_killed_leader_is_a_clear_error_within_ten_seconds(tmp_path):
    script = write_script(tmp_path, r'''
        import json, os, sys, time
        from shoal._backend import make_backend, BackendConfig
        from shoal.mpi import LeaderLostError
        from shoal.mpi import hub

        b = make_backend("mpi", BackendConfig(max_workers=2))
        leaders = {l.rank: l.pid for l in hub.current().leaders.values()}
        pids = b.worker_pids()
        futs = [b.submit(time.sleep, (4,), {}) for _ in range(4)]  # 2 per leader, in flight
        time.sleep(0.5)
        print("READY " + json.dumps({"leaders": leaders, "workers": pids}), flush=True)
        sys.stdin.readline()  # the test kills leader rank 1 now
        t = time.monotonic()
        errors = []
        for f in futs:
            try:
                f.result(timeout=30)
                errors.append(None)
            except LeaderLostError as e:
                errors.append([str(e), e.rank, e.host])
        print("RESULT " + json.dumps({"errors": errors, "seconds": time.monotonic() - t}), flush=True)
        print("RESULT " + json.dumps({"after": b.submit(pow, (3, 3), {}).result(timeout=30)}), flush=True)
    ''')
    argv, env = testing.job(script, leaders=2, workers_per_rank=1)
    p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path)
    try:
        line = p.stdout.readline()
        assert line.startswith("READY "), line + p.stderr.read()
        import json

        ready = json.loads(line[6:])
        victim = ready["leaders"]["1"]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    proc = subprocess.CompletedProcess(argv, p.returncode, line + out, err)
    first, second = results(proc)
    lost = [e for e in first["errors"] if e is not None]
    assert lost, first
    assert all(e[1] == 1 and "rank 1" in e[0] and e[2] in e[0] for e in lost)
    assert first["seconds"] < 10
    assert time.monotonic() - killed_at < 60
    assert second["after"] == 27  # the other leader goes on
    # Nothing is left: the leaders, their zygotes and workers.
    for pid in list(map(int, ready["leaders"].values())) + ready["workers"]:
        assert not _is(pid), f"process {pid} outlived the job"


def test_idle_leaders_and_driver_cost_almost_nothing(tmp_path):
    script = write_script(tmp_path, r'''
        import json, os, sys, time
        from shoal._backend import make_backend, BackendConfig
        from shoal.mpi import hub

        b = make_backend("mpi", BackendConfig(max_workers=2))
        b.submit(pow, (2, 2), {}).result(timeout=60)
        leaders = [l.pid for l in hub.current().leaders.values()]
        print("READY " + json.dumps({"leaders": leaders, "driver": os.getpid()}), flush=True)
        sys.stdin.readline()
        print("RESULT " + json.dumps(b.submit(pow, (2, 5), {}).result(timeout=60)), flush=True)
    ''')
    argv, env = testing.job(script, leaders=2, workers_per_rank=1)
    p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path)
    try:
        import json

        line = p.stdout.readline()
        assert line.startswith("READY "), line + p.stderr.read()
        ready = json.loads(line[6:])
        procs = [psutil.Process(pid) for pid in ready["leaders"] + [ready["driver"]]]
        time.sleep(1.5)  # past the back-off to the idle nap
        before = [pr.cpu_times() for pr in procs]
        t = time.monotonic()
        time.sleep(6.0)
        elapsed = time.monotonic() - t
        after = [pr.cpu_times() for pr in procs]
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    busy = [((a.user + a.system) - (b.user + b.system)) / elapsed for a, b in zip(after, before)]
    print("idle CPU share (leaders..., driver):", [f"{x:.2%}" for x in busy])
    assert all(x <= 0.02 for x in busy), busy
    assert p.returncode == 0, err
    assert "RESULT 32" in out


def test_ctrl_c_to_mpiexec_ends_everything(tmp_path):
    script = write_script(tmp_path, r'''
        import json, time
        from shoal._backend import make_backend, BackendConfig
        from shoal.mpi import hub

        b = make_backend("mpi", BackendConfig(max_workers=2))
        futs = [b.submit(time.sleep, (60,), {}) for _ in range(4)]
        leaders = [l.pid for l in hub.current().leaders.values()]
        print("READY " + json.dumps(leaders + b.worker_pids()), flush=True)
        [f.result() for f in futs]
    ''')
    argv, env = testing.job(script, leaders=2, workers_per_rank=1)
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = p.stdout.readline()
        assert line.startswith("READY "), line + p.stderr.read()
        import json

        pids = json.loads(line[6:])
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends mpiexec
        start = time.monotonic()
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            alive = [pid for pid in pids if _is(pid)]
            p.kill()
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                out, err = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # a rank still holds its pipes
                out, err = "", "(not read: a rank still holds the job's output)"
            pytest.fail(f"the job did not end within 30 s of Ctrl-C; still alive: {alive}; "
                        f"stdout: {out[-2000:]!r}; stderr: {err[-4000:]!r}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert time.monotonic() - start < 20
    assert p.returncode != 0
    assert err.count("KeyboardInterrupt") == 1, err
    deadline = time.monotonic() + 10
    while any(_is(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _is(pid)]


def test_shared_object_crosses_to_each_node_once(tmp_path):
    proc = run_job(tmp_path, r'''
        import functools, json
        import numpy as np
        import shoal
        from shoal._backend import make_backend, BackendConfig
        from shoal.mpi import hub

        def tail_sum(a, i):
            return float(a[i:].sum()), a.flags.writeable

        b = make_backend("mpi", BackendConfig(max_workers=2))
        arr = np.arange(3_000_000, dtype=np.float64)  # 24 MB
        h = shoal.share(arr)
        sent = hub.current().outbox.bytes_sent
        futs = [b.submit(tail_sum, (h, i), {}) for i in range(20)]
        got = [f.result(timeout=60) for f in futs]
        args_sent = hub.current().outbox.bytes_sent - sent
        sent = hub.current().outbox.bytes_sent
        bound = functools.partial(tail_sum, h)  # a function binding the handle: nothing more to send
        got2 = [f.result(timeout=60) for f in [b.submit(bound, (i,), {}) for i in range(10)]]
        fn_sent = hub.current().outbox.bytes_sent - sent
        b.shutdown(wait=True)
        print("RESULT " + json.dumps({
            "right": [g[0] for g in got] == [float(arr[i:].sum()) for i in range(20)]
                     and [g[0] for g in got2] == [float(arr[i:].sum()) for i in range(10)],
            "read_only": not any(g[1] for g in got + got2),
            "args_sent": args_sent, "fn_sent": fn_sent, "nbytes": arr.nbytes}))
    ''')
    assert proc.returncode == 0, proc.stderr
    (out,) = results(proc)
    assert out["right"] and out["read_only"]  # the workers read the node's arena copy
    assert out["args_sent"] <= 1.1 * out["nbytes"] * 2  # once per node (2 nodes), not per task
    assert out["fn_sent"] < 1e6


def test_agents_of_a_killed_leader_are_lost_the_others_go_on(tmp_path):
    script = write_script(tmp_path, r'''
        import json, sys
        import shoal
        from shoal.mpi import hub

        class Counter:
            def __init__(self, index):
                self.n = index

            def add(self, k):
                self.n += k
                return self.n

        ex = shoal.Executor(backend="mpi")
        group = ex.agents(Counter, range(4))
        first = group.call("add", 1)
        leaders = {l.rank: l.pid for l in hub.current().leaders.values()}
        print("READY " + json.dumps(leaders), flush=True)
        sys.stdin.readline()  # the test kills leader rank 1 now
        out = {"first": first}
        try:
            group.call("add", 1)
        except shoal.AgentsLostError as e:
            out["lost"] = list(e.lost)
            out["results"] = e.results
        print("RESULT " + json.dumps(out), flush=True)
    ''')
    argv, env = testing.job(script, leaders=2, workers_per_rank=1)
    p = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path)
    try:
        line = p.stdout.readline()
        assert line.startswith("READY "), line + p.stderr.read()
        import json

        os.kill(json.loads(line[6:])["1"], signal.SIGKILL)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    (res,) = results(subprocess.CompletedProcess(argv, p.returncode, out, err))
    assert res["first"] == [1, 2, 3, 4]
    assert res["lost"] == [0, 1]          # the block on rank 1
    assert res["results"] == [None, None, 4, 5]
