"""``python -m shoal.bench.mpi``: shoal's MPI backend beside mpi4py.futures, in one run.

Layout (BENCHMARKS.md, the issue's targets): one driver rank and two worker-side ranks, each
of those its own "node" (a private /dev/shm, MPI on TCP; see shoal.mpi.testing). shoal runs
``mpiexec ... python -m shoal.mpi`` with one worker per leader; mpi4py.futures runs its static
launch ``mpiexec ... python -m mpi4py.futures`` with the same ranks, so both have two processes
running tasks. mpi_scale gives shoal 2 leaders x 16 workers, mpi4py.futures 32 worker ranks,
and runs shoal's process backend with 32 workers on one machine beside them. Each cell is a fresh job; the value is the median of the repeats, ``spread`` is
[min, max]. mpi4py.futures runs with its defaults (1 ms back-off, ``chunksize=1``) and, beside
them, with no back-off (round trip) and with its best ``chunksize`` (map).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from ..mpi import testing

_HERE = Path(__file__).resolve().parent
_CELL = _HERE / "mpi_cell.py"

SIZES = {"quick": {"mpi_round_trip": 300, "mpi_map_tiny": 20000, "mpi_scale": 640, "mpi_big_args": 20_000_000,
                   "mpi_agents": 10000},
         "full": {"mpi_round_trip": 2000, "mpi_map_tiny": 100000, "mpi_scale": 3200,
                  "mpi_big_args": 100_000_000, "mpi_agents": 10000}}
REPEATS = {"quick": 3, "full": 5}
METRIC = {"mpi_round_trip": ("us_per_call", "us"), "mpi_map_tiny": ("us_per_item", "us"),
          "mpi_scale": ("time_over_ideal", "x"), "mpi_big_args": ("ms_per_task", "ms"),
          "mpi_agents": ("ms_per_step", "ms")}
SCALE_WORKERS = 16  # mpi_scale: per leader (2 leaders); mpi4py.futures gets 2 x this many ranks


def _systems(workload, size):
    """(name in results, launcher module, extra cell args, extra environment, leaders, workers per
    leader). Leaders are the ranks beside the driver: shoal's node leaders, mpi4py.futures'
    worker ranks."""
    if workload == "mpi_scale":
        yield "shoal", "shoal.mpi", (), {}, 2, SCALE_WORKERS
        yield "shoal_one_machine", None, (str(2 * SCALE_WORKERS),), {}, 0, None
        yield "mpi4py_futures", "mpi4py.futures", (), {}, 2 * SCALE_WORKERS, None
        return
    yield "shoal", "shoal.mpi", (), {}, 2, 1
    yield "mpi4py_futures", "mpi4py.futures", (), {}, 2, None
    if workload == "mpi_round_trip":
        yield "mpi4py_futures[backoff=0]", "mpi4py.futures", (), {"MPI4PY_FUTURES_BACKOFF": "0"}, 2, None
    elif workload == "mpi_map_tiny":
        # Its best chunksize on this shape: one chunk per worker rank per round of 4.
        yield "mpi4py_futures[chunked]", "mpi4py.futures", (str(max(1, size // 8)),), {}, 2, None


def _cell(workload, system, module, extra, env_extra, size, repeats, timeout, leaders, workers):
    argv, env = testing.job(_CELL, (system.split("[")[0], workload, size, repeats) + tuple(extra),
                            leaders=leaders, workers_per_rank=workers, module=module)
    env["PYTHONPATH"] = os.pathsep.join([str(_HERE / "standalone"), env["PYTHONPATH"]])
    env.update(env_extra)
    metric, unit = METRIC[workload]
    record = {"workload": workload, "system": system, "metric": metric, "unit": unit,
              "lower_is_better": True, "workers": leaders * (workers or 1) or int(extra[0]),
              "repeats": repeats, "note": ""}
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(record, value=None, spread=None, status="failed", note=f"timed out after {timeout} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return dict(record, value=None, spread=None, status="failed",
                    note=f"exit {proc.returncode}: {' | '.join(tail)}")
    got = json.loads(lines[-1][7:])
    samples = got["samples"]
    if not samples or None in samples:
        return dict(record, value=None, spread=None, status="failed", note=f"no value: {samples}")
    rec = dict(record, value=statistics.median(samples), spread=[min(samples), max(samples)],
               samples=samples, status="ok")
    if got.get("bytes_sent"):
        rec["bytes_sent_over_mpi"] = got["bytes_sent"]
        total = got["bytes_sent"][-1]
        rec["note"] = (f"bytes sent over MPI for all {20 * (repeats + 1)} tasks: {total:.4g} = "
                       f"{total / (2 * size):.3f} x (array {size:.3g} B x 2 nodes)")
    return rec


def run(mode="quick", only=None, repeats=None):
    records = []
    why = testing.unshare_permitted()
    for workload, size in SIZES[mode].items():
        if only and workload not in only:
            continue
        for system, module, extra, env_extra, leaders, workers in _systems(workload, size):
            if why is not None or testing.mpiexec() is None:
                records.append({"workload": workload, "system": system, "status": "skipped",
                                "note": why or "no mpiexec", "value": None})
                continue
            rec = _cell(workload, system, module, extra, env_extra, size, repeats or REPEATS[mode],
                        timeout=600 if mode == "full" else 300, leaders=leaders, workers=workers)
            print(f"{workload:16} {system:28} {rec['status']:7} "
                  + (f"{rec['value']:10.1f} {rec['unit']}" if rec["value"] is not None else rec["note"]),
                  flush=True)
            records.append(rec)
    return records


def ratios(records):
    """{workload: {peer: peer value / shoal value}} ("times faster than")."""
    out = {}
    for workload in {r["workload"] for r in records}:
        rows = {r["system"]: r for r in records if r["workload"] == workload and r["status"] == "ok"}
        if "shoal" not in rows:
            continue
        out[workload] = {s: r["value"] / rows["shoal"]["value"] for s, r in rows.items() if s != "shoal"}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m shoal.bench.mpi", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    p.add_argument("--only", default="", help="comma-separated workloads (mpi_round_trip, mpi_map_tiny, mpi_scale, mpi_big_args, "
                        "mpi_agents)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--json", dest="json_path", help="write the records here")
    args = p.parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()] or None
    records = run("quick" if args.quick else "full", only, args.repeats)
    for workload, peers in sorted(ratios(records).items()):
        for peer, ratio in peers.items():
            print(f"{workload}: shoal is {ratio:.1f}x faster than {peer}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(records, indent=1) + "\n")
    return 0 if all(r["status"] != "failed" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
