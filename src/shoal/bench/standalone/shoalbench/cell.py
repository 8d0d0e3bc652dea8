"""Child process entry: measures one workload on one system and writes its records as JSON.

    python -m shoalbench.cell CONFIG_JSON          # one cell, records to config["out"]
    python -m shoalbench.cell --startup-probe SYSTEM WORKERS   # one fresh-process startup sample

The runner (shoal/bench/runner.py) starts one of these per (workload, system), so that
no system's processes, threads or caches outlive its own measurement.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

from . import spec, systems, workloads
from .systems import Unsupported


def record(workload, system, metric, unit, lower, workers, status, values=(), note=""):
    values = list(values)
    ok = status == "ok" and values
    return {
        "workload": workload, "system": system, "metric": metric,
        "value": statistics.median(values) if ok else None,
        "unit": unit, "lower_is_better": lower, "workers": workers,
        "repeats": len(values),
        "spread": [min(values), max(values)] if ok else None,
        "status": status if (ok or status != "ok") else "failed", "note": note,
        "samples": values if ok else [],
    }


def _records_for(workload, system, workers, status, note, measured=None):
    out = []
    for metric, unit, lower in spec.METRICS[workload]:
        if measured is not None:
            out.append(record(workload, system, metric, unit, lower, workers, status,
                              measured[metric], note))
        else:
            out.append(record(workload, system, metric, unit, lower, workers, status, (), note))
    return out


def startup_probe(name, workers):
    """Runs in a fresh interpreter: import, first pool to first result, second pool likewise."""
    system = systems.make(name, workers)
    t0 = time.perf_counter()
    system.import_library()
    t1 = time.perf_counter()
    system.start()
    system.call(systems.tasks.identity, 1)
    t2 = time.perf_counter()
    system.close()
    second = systems.make(name, workers)
    t3 = time.perf_counter()
    second.start()
    second.call(systems.tasks.identity, 2)
    t4 = time.perf_counter()
    second.close()
    second.teardown()
    return {"import_ms": (t1 - t0) * 1e3, "first_pool_ms": (t2 - t1) * 1e3,
            "second_pool_ms": (t4 - t3) * 1e3}


def _measure_startup(name, workers, repeats, timeout):
    if name == "serial":
        raise Unsupported("serial runs in the caller: there is no pool to start")
    out = {"import_ms": [], "first_pool_ms": [], "second_pool_ms": []}
    for _ in range(repeats):
        # Output to a file, not a pipe: a library's leftover daemon holding the pipe open
        # must not make us wait for it.
        with tempfile.TemporaryFile("w+") as outf:
            proc = subprocess.run(
                [sys.executable, "-m", "shoalbench.cell", "--startup-probe", name, str(workers)],
                stdin=subprocess.DEVNULL, stdout=outf, stderr=subprocess.STDOUT, timeout=timeout)
            outf.seek(0)
            output = outf.read()
        lines = [ln for ln in output.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (output.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"startup probe exited {proc.returncode}: {tail}")
        sample = json.loads(lines[-1])
        for k in out:
            out[k].append(sample[k])
    return out, "each sample in a fresh interpreter; pool constructed -> first result of identity(1)"


def run_cell(config):
    workload, name = config["workload"], config["system"]
    workers, repeats = config["workers"], config["repeats"]
    size = config.get("size", {})
    system = systems.make(name, workers)
    try:
        version = system.version()
    except Exception:
        version = ""
    prefix = f"{version}; " if version else ""
    try:
        system.import_library()
    except ImportError as exc:
        return _records_for(workload, name, workers, "skipped", f"not installed: {exc}")
    try:
        if workload == "startup":
            measured, note = _measure_startup(name, workers, repeats, config.get("probe_timeout", 120))
        elif workload == "worker_memory":
            if name == "serial":
                raise Unsupported("serial runs in the caller: it has no workers")
            measured, note = workloads.measure_worker_memory(
                lambda: systems.make(name, workers), repeats)
        else:
            measure = getattr(workloads, f"measure_{workload}")
            system.start()
            try:
                measured, note = measure(system, size, repeats)
            finally:
                system.close()
                system.teardown()
    except Unsupported as exc:
        return _records_for(workload, name, workers, "skipped", str(exc))
    except Exception as exc:
        traceback.print_exc()
        return _records_for(workload, name, workers, "failed",
                            f"{prefix}{type(exc).__name__}: {exc}"[:500])
    rec_workers = 1 if name == "serial" else workers
    return _records_for(workload, name, rec_workers, "ok", prefix + note, measured)


def main(argv):
    if argv and argv[0] == "--startup-probe":
        print(json.dumps(startup_probe(argv[1], int(argv[2]))), flush=True)
        return 0
    config = json.loads(argv[0])
    import numpy  # noqa: F401  -- like a user's script: numpy imported before the pool exists

    records = run_cell(config)
    with open(config["out"], "w") as f:
        json.dump(records, f)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # Some peers leave non-daemon threads behind after shutdown; the records are written.
    os._exit(code)
