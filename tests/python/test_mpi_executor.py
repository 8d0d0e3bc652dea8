"""shoal.Executor(backend="mpi") across "nodes" (see test_mpi.py): the same calls and the same
results as the process backend on one machine. These run through the backend seam: the executor
builds every backend with make_backend(name, BackendConfig) and drives it through the Backend
methods only."""
import pytest

from mpi_jobs import results, run_job, skip_without_nodes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def _nodes():
    skip_without_nodes()


def test_executor_submit_map_starmap_sweep(tmp_path):
    proc = run_job(tmp_path, r'''
        import json, math, operator
        import shoal

        def simulate(alpha, beta, rng):
            x = 0.0
            for _ in range(200):
                x += alpha * rng.normal() - beta * x
            return {"x": x, "u": float(rng.random())}

        params = {"alpha": [0.1, 0.5, 1.0], "beta": [0.01, 0.2]}
        out = {}
        with shoal.Executor(backend="mpi") as ex:
            out["submit"] = ex.submit(operator.mul, 6, 7).result(timeout=60)
            out["map"] = list(ex.map(math.isqrt, range(2000))) == [math.isqrt(i) for i in range(2000)]
            out["map_unordered"] = sorted(ex.map(abs, range(-50, 50), ordered=False)) == sorted(map(abs, range(-50, 50)))
            out["starmap"] = list(ex.starmap(pow, [(2, i) for i in range(20)])) == [2 ** i for i in range(20)]
            try:
                list(ex.map(lambda x: 1 // x, [3, 2, 1, 0, 5]))
            except ZeroDivisionError:
                out["map_error"] = True
            rows = ex.sweep(simulate, params, runs=4, seed=7)
        with shoal.Executor(max_workers=2, backend="process") as ex:
            here = ex.sweep(simulate, params, runs=4, seed=7)
        to_list = lambda t: t.to_dict("records") if hasattr(t, "to_dict") else list(t)
        out["sweep_rows"] = len(to_list(rows))
        out["sweep_identical"] = to_list(rows) == to_list(here)
        print("RESULT " + json.dumps(out))
    ''', leaders=2, workers=1)
    assert proc.returncode == 0, proc.stderr
    (out,) = results(proc)
    assert out == {"submit": 42, "map": True, "map_unordered": True, "starmap": True, "map_error": True,
                   "sweep_rows": 24, "sweep_identical": True}


def test_mpi_sweep_example_matches_one_machine(tmp_path):
    import pathlib
    import subprocess

    from shoal.mpi import testing

    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "mpi_sweep.py"
    argv, env = testing.job(example, ("--runs", "3", "--steps", "50", "--check"), leaders=2, workers_per_rank=1)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "6 parameter sets x 3 runs x 50 steps on 2 workers" in proc.stdout
    assert "rows identical to one machine's: True" in proc.stdout
    assert "market of 1000 traders across the nodes: price after 5 rounds" in proc.stdout


def test_spmd_form_under_plain_mpiexec(tmp_path):
    proc = run_job(tmp_path, r'''
        import json, operator
        import shoal.mpi

        with shoal.mpi.MPIExecutor(workers_per_rank=1) as ex:
            if ex is not None:
                out = {"map": list(ex.map(operator.neg, range(100))) == [-i for i in range(100)],
                       "submit": ex.submit(pow, 3, 4).result(timeout=60)}
                print("RESULT " + json.dumps(out), flush=True)
    ''', leaders=2, module=None)
    assert proc.returncode == 0, proc.stderr
    (out,) = results(proc)
    assert out == {"map": True, "submit": 81}


def test_agents_across_nodes(tmp_path):
    proc = run_job(tmp_path, r'''
        import json, os
        import shoal
        from shoal.mpi import hub

        class Trader:
            def __init__(self, index):
                self.index = index
                self.cash = 100.0

            def trade(self, price):
                if self.index == 3 and price > 5:
                    raise ValueError(f"agent 3 refuses {price}")
                self.cash -= price
                return self.cash

            def where(self):
                return os.getpid()

        out = {}
        with shoal.Executor(backend="mpi") as ex:
            group = ex.agents(Trader, [dict(index=i) for i in range(10)], checkpoint=True)
            out["len"] = len(group)
            out["checkpoint"] = group.checkpoint
            out["pids"] = len(set(group.call("where")))
            before = hub.current().outbox.bytes_sent
            out["call"] = group.call("trade", 1.0)
            out["each"] = group.call_each("trade", [float(i) for i in range(10)])[:3]
            group.set("cash", [float(i) for i in range(10)])
            out["get"] = group.get("cash")
            out["gather"] = [a.index for a in group.gather()]
            try:
                group.call("trade", 10.0)
            except shoal.AgentError as e:
                out["error"] = [sorted(e.errors), type(e.errors[3]).__name__, "refuses" in str(e.errors[3]),
                                e.results[0]]
            group.close()
        print("RESULT " + json.dumps(out))
    ''', leaders=2, workers=2)
    assert proc.returncode == 0, proc.stderr
    (out,) = results(proc)
    assert out["len"] == 10 and out["checkpoint"] is True
    assert out["pids"] == 4  # 2 nodes x 2 workers
    assert out["call"] == [99.0] * 10
    assert out["each"] == [99.0, 98.0, 97.0]
    assert out["get"] == [float(i) for i in range(10)]
    assert out["gather"] == list(range(10))
    assert out["error"] == [[3], "ValueError", True, -10.0]


def test_an_array_passed_to_many_items_crosses_to_each_node_once_per_call(tmp_path):
    proc = run_job(tmp_path, r'''
        import json
        import numpy as np
        import joblib
        import shoal
        from shoal.joblib import ShoalBackend
        from shoal.mpi import hub

        def read(a, i):
            return float(a[i])

        def scribble(a, i):
            a[:] = i  # copy-on-write: nothing another task or the driver sees
            return float(a[0])

        big = np.arange(1 << 20, dtype=np.float64)  # 8 MB
        out = {}
        with shoal.Executor(backend="mpi") as ex:
            ex.submit(read, np.ones(4), 0).result(timeout=60)  # the leaders' pools are up
            sent = hub.current().outbox.bytes_sent
            out["map"] = list(ex.map(read, [big] * 40, range(40), chunksize=1)) == [float(i) for i in range(40)]
            out["map_sent"] = hub.current().outbox.bytes_sent - sent
            out["scribble"] = list(ex.map(scribble, [big] * 8, range(1, 9), chunksize=1))
            out["driver_unchanged"] = bool((big == np.arange(1 << 20)).all())
        with joblib.parallel_config(backend=ShoalBackend(backend="mpi"), n_jobs=2):
            sent = hub.current().outbox.bytes_sent
            got = joblib.Parallel(batch_size=1)(joblib.delayed(read)(big, i) for i in range(40))
            out["joblib"] = got == [float(i) for i in range(40)]
            out["joblib_sent"] = hub.current().outbox.bytes_sent - sent
        print("RESULT " + json.dumps(out))
    ''', leaders=2, workers=1)
    assert proc.returncode == 0, proc.stderr
    (out,) = results(proc)
    nbytes = 8 << 20
    assert out["map"] and out["joblib"]
    assert out["scribble"] == [float(i) for i in range(1, 9)] and out["driver_unchanged"]
    # Once to each of the 2 nodes (and a little for the tasks), not once per item (40 x 8 MB).
    assert out["map_sent"] <= 2 * nbytes * 1.1, out["map_sent"]
    assert out["joblib_sent"] <= 2 * nbytes * 1.1, out["joblib_sent"]


def test_a_trace_has_one_track_per_node_and_worker_with_the_workers_times(tmp_path):
    proc = run_job(tmp_path, r'''
        import json, time
        import shoal

        def nap(s):
            time.sleep(s)
            return s

        with shoal.Executor(backend="mpi") as ex:
            list(ex.map(nap, [0.0] * 8, chunksize=1))  # every worker up
            with ex.trace() as t:
                list(ex.map(nap, [0.05] * 16, chunksize=1))
        doc = t.chrome()
        labels = [e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"]
        rows = t.data()["tasks"]
        print("RESULT " + json.dumps({
            "labels": labels,
            "workers": sorted({r["worker"] for r in rows}),
            "run_s": [r["run_s"] for r in rows],
            "ordered": all(r["submitted"] <= r["started"] <= r["ran"] <= r["ended"] <= r["delivered"] for r in rows),
            "summary": t.summary().splitlines()[0],
        }))
    ''', leaders=2, workers=2)
    assert proc.returncode == 0, proc.stderr
    (out,) = results(proc)
    assert out["workers"] == [0, 1, 2, 3]  # 2 nodes x 2 workers, numbered node by node
    assert sum("rank 1 on" in label for label in out["labels"]) == 2
    assert sum("rank 2 on" in label for label in out["labels"]) == 2
    assert all(0.045 < s < 1.0 for s in out["run_s"]), out["run_s"]  # the worker's own clock
    assert out["ordered"]
    assert out["summary"].startswith("shoal trace: 16 tasks (16 items)")
