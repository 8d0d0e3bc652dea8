"""Tracing (shoal/_trace.py): what a trace records, on every backend."""
import json
import os
import time

import pytest

import shoal
from shoal._trace import Trace


def nap(s):
    time.sleep(s)
    return s


def inc(x):
    return x + 1


def boom(x):
    raise ValueError(f"boom {x}")


def crash_once(path):
    if not os.path.exists(path):
        open(path, "w").close()
        os.kill(os.getpid(), 9)
    return "survived"


def rows_of(trace):
    return trace.data()["tasks"]


@pytest.mark.timeout(60)
def test_off_by_default_records_nothing(executor):
    assert executor._backend.tracer is None
    assert executor.submit(inc, 1).result() == 2
    with pytest.raises(ValueError, match="trace=True"):
        executor.trace_data()


@pytest.mark.timeout(60)
def test_trace_region_records_each_task_with_worker_and_times(executor, backend):
    executor.submit(inc, 0).result()  # workers up: not part of the trace
    with executor.trace() as t:
        assert [executor.submit(nap, 0.01).result() for _ in range(4)] == [0.01] * 4
        assert list(executor.map(inc, range(50))) == list(range(1, 51))
    executor.submit(inc, 0).result()  # after the region: not recorded
    assert executor._backend.tracer is None
    rows = rows_of(t)
    calls = [r for r in rows if r["kind"] == "call"]
    assert len(calls) == 4
    assert sum(r["items"] for r in rows if r["kind"] != "call") == 50
    for r in rows:
        assert r["status"] == "ok"
        assert r["function"] in ("nap", "inc")
        assert 0 <= r["worker"] < 2
        assert r["submitted"] <= r["started"] <= r["loaded"] <= r["ran"] <= r["ended"] <= r["delivered"]
    for r in calls:
        assert 0.009 < r["run_s"] < 1.0
    if backend == "process":
        assert all(r["pid"] in executor.worker_pids() for r in rows)
        assert all(r["bytes_sent"] > 0 and r["bytes_received"] > 0 for r in rows)
        assert all(r["driver_pickle_s"] > 0 for r in rows)
    tasks = t.tasks()
    assert len(tasks) == len(rows)


@pytest.mark.timeout(60)
def test_executor_trace_true_records_its_whole_life(backend):
    with shoal.Executor(2, backend=backend, trace=True) as ex:
        ex.submit(inc, 1).result()
        list(ex.map(inc, range(10)))
        t = ex.trace_data()
        assert len(rows_of(t)) >= 2
        assert ex._backend.tracer is not None
        with ex.trace() as inner:  # a region inside a whole-life trace
            ex.submit(inc, 2).result()
        assert len(rows_of(inner)) == 1
        assert ex._backend.tracer is not None  # the life trace is still on
    assert {r["function"] for r in rows_of(t)} == {"inc"}


@pytest.mark.timeout(60)
def test_failed_tasks_are_recorded_as_errors(executor):
    with executor.trace() as t:
        with pytest.raises(ValueError, match="boom 3"):
            executor.submit(boom, 3).result()
    (row,) = rows_of(t)
    assert row["status"] == "error"
    assert row["function"] == "boom"


@pytest.mark.timeout(60)
def test_arena_bytes_are_counted():
    np = pytest.importorskip("numpy")
    with shoal.Executor(2) as ex:
        with ex.trace() as t:
            ex.submit(len, np.zeros(1 << 18)).result()  # 2 MiB: through the arena
    (row,) = rows_of(t)
    assert row["arena_sent"] >= 2 * 2**20
    assert row["bytes_sent"] < 64 * 1024


@pytest.mark.timeout(60)
def test_worker_memory_is_sampled(backend):
    with shoal.Executor(2, backend=backend) as ex:
        with ex.trace() as t:
            ex.submit(inc, 1).result()
            time.sleep(0.25)
            pids = set(ex.worker_pids())
    data = t.data()
    sampled = {pid for _, pid, rss in data["memory"] if rss > 0}
    assert data["driver_pid"] in sampled
    assert pids <= sampled
    # Each worker's start: after the trace began for those its first task started, and never
    # after the trace's end.
    started = {int(p): at for p, at in data["started"].items()}
    assert pids <= set(started)
    assert all(at <= data["duration"] for at in started.values())


@pytest.mark.timeout(60)
def test_unique_memory_is_sampled_beside_the_resident(backend):
    with shoal.Executor(2, backend=backend) as ex:
        ex.submit(inc, 1).result()  # the workers are up before the trace's first sample
        pids = set(ex.worker_pids())
        with ex.trace() as t:
            time.sleep(0.2)
    data = t.data()
    unique = {pid: uss for _, pid, uss in data["uss"]}
    resident = {}
    for _, pid, rss in data["memory"]:
        resident[pid] = max(rss, resident.get(pid, 0))
    assert data["driver_pid"] in unique
    assert pids <= set(unique)
    assert all(0 < unique[p] <= resident[p] for p in unique), (unique, resident)
    events = t.chrome()["traceEvents"]
    assert any(e["ph"] == "C" and e["name"] == "unique memory" for e in events)


@pytest.mark.timeout(60)
def test_worker_death_is_an_event_and_the_retry_is_traced(tmp_path):
    marker = str(tmp_path / "crashed")
    with shoal.Executor(2, retries=1) as ex:
        with ex.trace() as t:
            ex.submit(inc, 1).result()
            time.sleep(0.15)  # the sampler has seen the workers
            assert ex.submit(crash_once, marker).result() == "survived"
            time.sleep(0.15)
    data = t.data()
    assert any(name == "worker exited" for _, _, name, _ in data["events"])
    (row,) = [r for r in data["tasks"] if r["function"] == "crash_once"]
    assert row["status"] == "ok" and row["retries"] == 1  # it ran again after its worker died
    assert all(r["retries"] == 0 for r in data["tasks"] if r["function"] == "inc")
    assert "tasks run again after a worker died: 1" in t.summary()


@pytest.mark.timeout(60)
def test_crash_after_retries_is_recorded(tmp_path, make_process_executor):
    ex = make_process_executor(retries=0)
    with ex.trace() as t:
        with pytest.raises(shoal.WorkerCrashedError):
            ex.submit(crash_once, str(tmp_path / "m")).result()
    (row,) = rows_of(t)
    assert row["status"] == "crashed"


@pytest.mark.timeout(60)
def test_timed_out_and_killed_tasks_are_recorded_as_such(make_process_executor):
    ex = make_process_executor()
    with ex.trace() as t:
        with pytest.raises(shoal.TaskTimeoutError):
            list(ex.map(time.sleep, [30], task_timeout=0.2))
        fut = ex.submit(time.sleep, 30)
        time.sleep(0.3)  # it runs
        fut.kill()
        with pytest.raises(Exception):
            fut.result(timeout=20)
    assert sorted(r["status"] for r in rows_of(t)) == ["killed", "timed out"]


def model(a, b, rng):
    if a == 2 and b == "y":
        raise ValueError("diverged")
    return {"value": a}


@pytest.mark.timeout(60)
def test_each_sweep_run_is_recorded_with_its_parameters(executor, tmp_path):
    with executor.trace() as t:
        table = executor.sweep(model, {"a": [1, 2], "b": ["x", "y"]}, errors="keep")
    assert len(table) == 4
    runs = sorted(t.data()["runs"], key=lambda r: r["index"])
    assert [(r["sweep"], r["params"]) for r in runs] == [
        ("model", {"a": 1, "b": "x"}), ("model", {"a": 1, "b": "y"}),
        ("model", {"a": 2, "b": "x"}), ("model", {"a": 2, "b": "y"})]
    assert [r["error"] is not None for r in runs] == [False, False, False, True]
    assert "diverged" in runs[3]["error"] and all(r["done"] >= 0 for r in runs)
    t.save(tmp_path / "run.json")
    events = json.loads((tmp_path / "run.json").read_text())["traceEvents"]
    marks = [e for e in events if e.get("cat") == "sweep"]
    assert len(marks) == 4
    assert [bool(e["args"]["error"]) for e in marks if e["args"]["a"] == 2 and e["args"]["b"] == "y"] == [True]
    with executor.trace() as later:
        pass
    assert later.data()["runs"] == []  # only the runs made while the trace was on


@pytest.mark.timeout(60)
def test_save_writes_chrome_trace_events(executor, tmp_path, backend):
    with executor.trace() as t:
        list(executor.map(nap, [0.002] * 20, chunksize=2))
    path = tmp_path / "run.json"
    t.save(path)
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert "driver" in names
    slices = [e for e in events if e["ph"] == "X" and e["cat"] in ("chunk", "item")]
    assert sum(e["args"]["items"] for e in slices) == 20  # the serial backend: one slice per item
    assert all(e["dur"] >= 2000 * e["args"]["items"] for e in slices)
    assert all(e["pid"] in (1, 2) for e in slices)
    assert any(e["ph"] == "C" and e["name"] == "memory" for e in events)
    if backend == "process":  # pickling nests inside the worker's slice
        nested = [e for e in events if e["ph"] == "X" and e["name"] == "pickle result"]
        assert nested
    loaded = Trace.load(path)
    assert len(loaded.data()["tasks"]) == len(slices)
    assert loaded.summary().splitlines()[0] == t.summary().splitlines()[0]


# ---- summary and its advice: each situation built for real


def length(x):
    return len(x)


def warm(executor):
    """Both workers have loaded this module (their first task's import is not the test's)."""
    list(executor.map(nap, [0.03] * 6, chunksize=1))


@pytest.mark.timeout(60)
def test_summary_lists_each_worker_and_the_split(executor):
    warm(executor)
    with executor.trace() as t:
        list(executor.map(nap, [0.01] * 10, chunksize=1))
    text = t.summary()
    lines = text.splitlines()
    assert lines[0].startswith("shoal trace: 10 tasks (10 items)")
    assert "running  pickling  waiting  idle" in lines[1]
    assert "load imbalance" in text and "slowest: nap" in text and "bytes moved" in text


@pytest.mark.timeout(60)
def test_advice_for_tiny_tasks(executor, backend):
    warm(executor)
    with executor.trace() as t:
        futures = [executor.submit(inc, i) for i in range(300)]
        assert [f.result() for f in futures] == list(range(1, 301))
    advice = t.advice()
    if backend == "serial":  # in the caller a task costs nothing to send: nothing to advise
        assert advice is None
    else:
        assert advice is not None and "chunksize" in advice and "map" in advice
        assert advice in t.summary()


@pytest.mark.timeout(60)
def test_advice_for_pickling(executor, backend):
    warm(executor)
    big = [float(i) for i in range(300_000)]  # ~2.7 MB pickled, in band: no arena
    with executor.trace() as t:
        assert [f.result() for f in [executor.submit(length, big) for _ in range(12)]] == [300_000] * 12
    advice = t.advice()
    if backend in ("process", "mpi"):  # each task's copy is pickled, sent and unpickled
        assert advice is not None and "shoal.share" in advice and "pickling takes" in advice
    else:  # the thread and serial backends pass the object itself
        assert advice is None or "shoal.share" not in advice


@pytest.mark.timeout(60)
def test_advice_for_one_slow_worker(executor, backend):
    warm(executor)
    with executor.trace() as t:
        futures = [executor.submit(nap, 0.6)] + [executor.submit(nap, 0.02) for _ in range(6)]
        [f.result() for f in futures]
    advice = t.advice()
    if backend == "serial":  # one worker: nothing to balance
        assert advice is None
    else:
        assert advice is not None and "longer than the others" in advice and "ordered=False" in advice
