"""The benchmark runner cannot rot: a tiny `--quick --only round_trip` run must produce well-formed records."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
FIELDS = {"workload": str, "system": str, "metric": str, "unit": str, "lower_is_better": bool,
          "workers": int, "repeats": int, "status": str, "note": str}


def _run_bench(tmp_path, *args):
    out = tmp_path / "records.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    code = "import sys; from shoal.bench.runner import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *args, "--json", str(out),
                           "--markdown", str(tmp_path / "table.md")],
                          capture_output=True, text=True, timeout=280, env=env)
    assert out.exists(), f"no JSON written (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc, json.loads(out.read_text()), (tmp_path / "table.md").read_text()


@pytest.mark.timeout(300)
def test_quick_round_trip_records_are_well_formed(tmp_path):
    proc, records, table = _run_bench(tmp_path, "--quick", "--only", "round_trip",
                                      "--workers", "2", "--systems", "serial,shoal")
    assert isinstance(records, list)
    assert {r["system"] for r in records} == {"serial", "shoal"}
    for r in records:
        assert set(r) == set(FIELDS) | {"value", "spread", "samples"}, r
        for key, typ in FIELDS.items():
            assert isinstance(r[key], typ), (key, r)
        assert r["workload"] == "round_trip" and r["metric"] == "us_per_call" and r["unit"] == "us"
        assert r["lower_is_better"] is True
        assert r["status"] in {"ok", "skipped", "failed"}
        if r["status"] == "ok":
            assert isinstance(r["value"], float) and r["value"] > 0
            lo, hi = r["spread"]
            assert lo <= r["value"] <= hi
            assert r["repeats"] == 3 and len(r["samples"]) == 3
            assert [lo, hi] == [min(r["samples"]), max(r["samples"])]
        else:
            assert r["value"] is None and r["spread"] is None
            assert r["note"], "a skipped or failed record says why"
    serial = next(r for r in records if r["system"] == "serial")
    assert serial["status"] == "ok" and serial["workers"] == 1
    assert "| round_trip | us_per_call | us |" in table
    # the runner exits non-zero exactly when a shoal row failed
    shoal_failed = any(r["system"] == "shoal" and r["status"] == "failed" for r in records)
    assert proc.returncode == (1 if shoal_failed else 0), proc.stderr[-3000:]


@pytest.mark.timeout(300)
def test_rounds_alternate_the_systems_and_pool_the_repeats(tmp_path):
    proc, records, table = _run_bench(tmp_path, "--quick", "--only", "round_trip", "--workers", "2",
                                      "--systems", "serial,shoal", "--rounds", "2", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    order = [line.split()[2] for line in proc.stderr.splitlines() if line.startswith("[bench] round_trip")]
    assert order == ["serial", "shoal", "shoal", "serial"], order
    for r in records:
        assert r["status"] == "ok", r
        assert r["repeats"] == 4 and len(r["samples"]) == 4
        assert r["spread"] == [min(r["samples"]), max(r["samples"])]
        s = sorted(r["samples"])
        assert r["value"] == pytest.approx((s[1] + s[2]) / 2)


def test_merge_rounds_keeps_a_failed_round():
    from shoal.bench.runner import merge_rounds

    ok = {"workload": "w", "system": "s", "metric": "m", "value": 1.0, "repeats": 2,
          "spread": [1.0, 1.0], "samples": [1.0, 1.0], "status": "ok", "note": ""}
    bad = dict(ok, value=None, repeats=0, spread=None, samples=[], status="failed", note="boom")
    assert merge_rounds([[ok], [bad]]) == [bad]
    merged = merge_rounds([[ok], [dict(ok, samples=[3.0, 5.0], spread=[3.0, 5.0])]])
    assert merged[0]["samples"] == [1.0, 1.0, 3.0, 5.0] and merged[0]["value"] == 2.0


@pytest.mark.timeout(60)
def test_unknown_workload_is_refused(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(SRC))
    code = "import sys; from shoal.bench.runner import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "--only", "no_such_workload"],
                          capture_output=True, text=True, timeout=50, env=env)
    assert proc.returncode != 0
    assert "unknown workload" in proc.stderr


@pytest.mark.timeout(300)
def test_quick_sweep_checks_rows_and_worker_counts(tmp_path):
    # The sweep cell fails unless every system's rows equal the serial loop's, and shoal's
    # also with 1, 2 and 4 workers.
    proc, records, table = _run_bench(tmp_path, "--quick", "--only", "sweep", "--workers", "2",
                                      "--systems", "serial,shoal", "--repeats", "1")
    by_system = {r["system"]: r for r in records}
    assert set(by_system) == {"serial", "shoal"}
    assert by_system["serial"]["status"] == "ok", by_system["serial"]["note"]
    shoal_record = by_system["shoal"]
    assert shoal_record["status"] == "ok", shoal_record["note"]
    assert "identical to the serial loop and with 1, 2 and 4 workers" in shoal_record["note"]
    assert shoal_record["metric"] == "s_total" and shoal_record["value"] > 0
    assert "| sweep | s_total | s |" in table
    assert proc.returncode == 0, proc.stderr[-3000:]


def _agents_size(n=24, steps=2):
    sys.path.insert(0, str(SRC / "shoal" / "bench" / "standalone"))
    from shoalbench import tasks

    size = {}
    for variant, key in (("standard", ""), ("heavy", "heavy_"), ("light", "light_")):
        size.update({key + "agents": n, key + "steps": steps, key + "task_us": 10, key + "iterations": 2})
    size["expected"] = {v: tasks.agents_reference(n, steps, 2) for v in ("standard", "heavy", "light")}
    return size


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["serial", "joblib", "ray", "shoal"])
def test_agents_workload_reproduces_the_plain_loop(name, monkeypatch):
    """Every system's bids in the agents workload are bit-identical to the plain loop's."""
    # Workers started by a peer (Ray's) import the agent class as the bench's cells do.
    standalone = str(SRC / "shoal" / "bench" / "standalone")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([standalone, str(SRC), os.environ.get("PYTHONPATH", "")]))
    size = _agents_size()
    from shoalbench import systems, workloads

    system = systems.make(name, 2)
    try:
        system.import_library()
    except ImportError as exc:
        pytest.skip(f"{name} is not installed: {exc}")
    system.start()
    try:
        out, note = workloads.measure_agents(system, size, repeats=1)
    finally:
        system.close()
        system.teardown()
    for metric in ("s_per_step", "s_per_step_heavy", "s_per_step_light", "mem_mb", "tree_mb"):
        assert len(out[metric]) == 1, metric
    assert all(v > 0 for v in out["s_per_step"] + out["s_per_step_light"])
    assert "bit-identical" in note


@pytest.mark.timeout(60)
def test_agents_workload_fails_on_wrong_bids():
    size = _agents_size()
    size["expected"]["standard"] = "0" * 16
    from shoalbench import systems, workloads

    system = systems.make("serial", 1)
    with pytest.raises(AssertionError, match="standard bids differ"):
        workloads.measure_agents(system, size, repeats=1)


@pytest.mark.timeout(300)
def test_quick_io_bound_runs_threads_coroutines_and_shoal(tmp_path):
    proc, records, table = _run_bench(tmp_path, "--quick", "--only", "io_bound", "--workers", "2",
                                      "--systems", "cf_thread,asyncio,asyncio[uvloop],mp_pool,shoal,shoal[thread]")
    by = {(r["system"], r["metric"]): r for r in records}
    for system in ("cf_thread", "asyncio", "asyncio[uvloop]", "shoal", "shoal[thread]"):
        for metric in ("ms_total", "x_ideal"):
            r = by[(system, metric)]
            assert r["status"] == "ok", r
            assert r["value"] > 0 and r["repeats"] == 3
        # x_ideal is the time over 500 x 20 ms / 100 in flight = 100 ms
        assert abs(by[(system, "x_ideal")]["value"] * 100 - by[(system, "ms_total")]["value"]) < 1e-6 * 100 + 1
        # nothing finishes faster than the server's delay allows
        assert by[(system, "ms_total")]["value"] >= 100
    assert by[("mp_pool", "ms_total")]["status"] == "skipped" and by[("mp_pool", "ms_total")]["note"]
    assert "concurrency=50" in by[("shoal", "ms_total")]["note"]
    assert "on uvloop" in by[("shoal", "ms_total")]["note"]  # event_loop="auto", uvloop installed
    assert "uvloop" in by[("asyncio[uvloop]", "ms_total")]["note"]
    assert "| io_bound | x_ideal | x |" in table
    assert proc.returncode == 0, proc.stderr[-3000:]



@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["serial", "shoal"])
def test_map_numpy_workload_checks_results(name, monkeypatch):
    """map_numpy's results match the serial loop's; a wrong one fails the cell."""
    pytest.importorskip("numpy")
    monkeypatch.syspath_prepend(str(SRC / "shoal" / "bench" / "standalone"))
    from shoalbench import systems, workloads

    size = {"tasks": 6, "products": 3, "n": 64}
    system = systems.make(name, 2)
    system.start()
    try:
        out, note = workloads.measure_map_numpy(system, size, repeats=2)
        assert len(out["s_total"]) == len(out["efficiency"]) == 2
        assert all(v > 0 for v in out["s_total"] + out["efficiency"])
        assert "6 tasks of 3 products of 64x64" in note
        real_map = system.map
        monkeypatch.setattr(system, "map", lambda fn, items: [r * 1.01 + 1 for r in real_map(fn, items)])
        with pytest.raises(AssertionError, match="matmul_chain"):
            workloads.measure_map_numpy(system, size, repeats=1)
    finally:
        system.close()
        system.teardown()
