"""`python -m shoal bench`: runs every workload on shoal and its peers, one table, one run.

Fairness rules (BENCHMARKS.md; every number in the README comes from a run under them):

1. Same functions, same data. Every system runs the same top-level functions from
   ``shoalbench.tasks`` on the same inputs; results are checked, and a wrong answer
   is a failure, not a time. The functions live in a package that does not import
   shoal, so no peer's worker pays for importing the engine it is compared with.
2. One system at a time, in its own process. Each (workload, system) cell runs in a
   fresh child interpreter that starts the pool, measures and shuts it down; the
   runner kills whatever is left of that process tree before the next cell. The
   driver imports numpy before it creates a pool, as a user's script would.
3. Warm-up is the same for all: after the pool is started, one untimed pass of the
   same procedure (a 10% pass for round_trip, submit_throughput, map_tiny, map_cpu)
   runs before the timed repeats. Pool start is only timed in ``startup``, where each
   sample is a fresh interpreter: construct the pool, wait for the first result, shut
   down, then the same again for a second pool in that interpreter.
4. Repeats: quick 3, full 5; the value is the median, ``spread`` is [min, max].
   ``--rounds N`` runs each cell N times, the systems in alternating order (ABC, CBA, ...)
   so that a machine that drifts slower or faster favours none of them, and pools the
   repeats of all rounds (the value is their median).
5. Each peer is used as its own documentation recommends for the shape of work:
   ``ray.put`` for a large shared input and batches of items for tiny tasks (Ray's
   "too fine-grained tasks" anti-pattern); ``client.scatter`` for a large input and
   ``dask.bag`` partitions for tiny items (Dask's task-size guidance); joblib's
   ``Parallel`` as a context manager (reused workers) with automatic memmapping of
   large arrays; mpire with ``shared_objects`` and ``keep_alive=True``;
   ``multiprocessing`` passes arguments explicitly (its programming guidelines).
   Batching of items follows ``multiprocessing.Pool``'s rule of 4 chunks per worker.
6. No peer is left at a setting its docs warn against unless that is the common
   default, and then both are shown as separate columns: ``cf_process`` (map's
   default chunksize=1) beside ``cf_process[chunked]`` in map_tiny;
   ``mp_pool`` (fork, Linux's default) beside ``mp_pool[spawn]`` in startup, which
   the startup target compares against.
7. A capability a system does not offer is reported as ``skipped`` with the reason
   (joblib has no per-task submit); a system that is not installed is ``skipped``,
   one that raises, hangs past the cell timeout or returns wrong results is
   ``failed``. Nothing is dropped.
8. Memory is USS and PSS (psutil ``memory_full_info``) summed over the driver and all
   its descendants, sampled every 10 ms for the peak, plus shared memory that no
   process maps (from /proc/meminfo Shmem), so memory parked in tmpfs still counts.
   The sampler runs alike for every system, in an untimed pass of its own: a sample reads
   every process's page tables (~5 ms of CPU per 10 ms on 2 cores) and would slow what is timed.
9. "Best peer" excludes ``serial`` and shoal's own variants. Ratios are "times
   better than": peer/shoal for lower-is-better metrics, shoal/peer otherwise.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_STANDALONE = Path(__file__).resolve().parent / "standalone"
if str(_STANDALONE) not in sys.path:
    sys.path.insert(0, str(_STANDALONE))

from shoalbench import spec, tasks  # noqa: E402

from . import report  # noqa: E402

__all__ = ["main"]

_SRC = Path(__file__).resolve().parents[2]  # the directory holding the shoal package
_CELL_TIMEOUT = {"quick": 120, "full": 1800}


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m shoal bench",
                                description="shoal beside its peers, one workload at a time.")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, 3 repeats: every workload in under 10 minutes on 2 cores")
    p.add_argument("--only", default="", help="comma-separated workload ids (default: all)")
    p.add_argument("--systems", default="",
                   help="comma-separated systems (default: all)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=None, help="override the repeat count")
    p.add_argument("--rounds", type=int, default=1,
                   help="run each cell this many times, systems in alternating order, and pool "
                        "the repeats (for systems within the machine's noise of each other)")
    p.add_argument("--json", dest="json_path", help="write the records here")
    p.add_argument("--markdown", dest="markdown_path", help="write the table here")
    p.add_argument("--plot", dest="plot_path", help="write a PNG of shoal's ratios here")
    args = p.parse_args(argv)
    args.only = _pick(args.only, spec.WORKLOADS, "workload")
    args.systems = _pick(args.systems, spec.ALL_SYSTEMS, "system")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def _pick(text, known, what):
    if not text:
        return list(known)
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise SystemExit(f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def _child_env():
    env = dict(os.environ)
    paths = [str(_STANDALONE), str(_SRC)] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _kill_tree(proc):
    """Kills the cell's process group and any descendant that left it (daemons)."""
    try:
        import psutil

        kids = psutil.Process(proc.pid).children(recursive=True)
    except Exception:
        kids = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    for k in kids:
        try:
            k.kill()
        except Exception:
            pass
    proc.wait()


def _calibrate_spin(task_ms):
    """Iterations of tasks.spin that take ~task_ms here (best of 5)."""
    probe = 20000
    best = min(_timed(tasks.spin, probe) for _ in range(5))
    return max(1, round(probe * task_ms / 1e3 / best))


def _prepare_agents(size):
    """Calibrates each variant's iterations to its task time and computes the plain loop's
    digest of its bids, which every system's cell must reproduce bit for bit."""
    size["expected"] = {}
    for variant, key in (("standard", ""), ("heavy", "heavy_"), ("light", "light_")):
        size[key + "iterations"] = tasks.calibrate_battery(size[key + "task_us"])
        size["expected"][variant] = tasks.agents_reference(size[key + "agents"], size[key + "steps"],
                                                           size[key + "iterations"])


def merge_rounds(cells):
    """One cell's records from its rounds: per metric, the samples of every round pooled
    (median, [min, max]); a metric that did not come out ok in some round keeps that
    round's record (failed or skipped, with its note)."""
    if len(cells) == 1:
        return cells[0]
    import statistics

    merged = []
    by_metric = [{r["metric"]: r for r in cell} for cell in cells]
    for metric in [r["metric"] for r in cells[0]]:
        rounds = [m.get(metric) for m in by_metric]
        first = rounds[0]
        if any(r is None for r in rounds):
            merged.append(dict(first))
            continue
        bad = next((r for r in rounds if r["status"] != "ok" or not r.get("samples")), None)
        if bad is not None:
            merged.append(dict(bad))
            continue
        samples = [x for r in rounds for x in r["samples"]]
        merged.append(dict(first, value=statistics.median(samples), samples=samples,
                           repeats=len(samples), spread=[min(samples), max(samples)]))
    return merged


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _run_cell(workload, system, args, mode, size, logdir):
    out = Path(logdir) / f"{workload}.{system}.json"
    log = Path(logdir) / f"{workload}.{system}.log"
    config = {"workload": workload, "system": system, "workers": args.workers,
              "repeats": args.repeats or spec.REPEATS[mode], "size": size, "out": str(out)}
    timeout = _CELL_TIMEOUT[mode]
    with open(log, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "shoalbench.cell", json.dumps(config)],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                env=_child_env(), start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            problem = None if proc.returncode == 0 else f"cell exited with code {proc.returncode}"
        except subprocess.TimeoutExpired:
            problem = f"timed out after {timeout} s"
        _kill_tree(proc)  # leftovers of a clean exit too (e.g. a daemon the library forgot)
    records = []
    if out.exists():
        records = json.loads(out.read_text())
    if not records or problem:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        note = f"{problem or 'no records'}" + (f"; last output: {tail[0][:300]}" if tail else "")
        have = {r["metric"] for r in records}
        for metric, unit, lower in spec.METRICS[workload]:
            if metric not in have:
                records.append({"workload": workload, "system": system, "metric": metric,
                                "value": None, "unit": unit, "lower_is_better": lower,
                                "workers": args.workers, "repeats": 0, "spread": None,
                                "status": "failed", "note": note})
    return records


def machine_description():
    """Cores, memory, OS, Python and the versions of every peer library (as installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        mem = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    libs = {}
    for dist in ("numpy", "joblib", "mpire", "ray", "dask", "distributed", "psutil", "shoal"):
        try:
            libs[dist] = version(dist)
        except PackageNotFoundError:
            libs[dist] = "source tree" if dist == "shoal" else "not installed"
    return {"cores": os.cpu_count(), "cpu": cpu, "memory": mem,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "libraries": libs}


def main(argv=None):
    """Entry point of `python -m shoal bench`; returns 0, or 1 if any shoal row failed."""
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    mode = "quick" if args.quick else "full"
    sizes = {w: dict(spec.SIZES[mode][w]) for w in args.only}
    if "map_cpu" in sizes:
        sizes["map_cpu"]["iterations"] = _calibrate_spin(sizes["map_cpu"]["task_ms"])
    if "agents" in sizes:
        _prepare_agents(sizes["agents"])
    started = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as logdir:
        for workload in args.only:
            chosen = [s for s in spec.SYSTEMS[workload] if s in args.systems]
            cells = {system: [] for system in chosen}
            for round_ in range(args.rounds):
                for system in (chosen if round_ % 2 == 0 else chosen[::-1]):
                    t0 = time.perf_counter()
                    cell = _run_cell(workload, system, args, mode, sizes[workload], logdir)
                    cells[system].append(cell)
                    status = ",".join(sorted({r["status"] for r in cell}))
                    where = f" (round {round_ + 1}/{args.rounds})" if args.rounds > 1 else ""
                    print(f"[bench] {workload:<18} {system:<20} {status:<8} "
                          f"{time.perf_counter() - t0:6.1f} s{where}", file=sys.stderr, flush=True)
            for system in chosen:
                records.extend(merge_rounds(cells[system]))
    elapsed = time.perf_counter() - started
    command = "python -m shoal bench " + " ".join(sys.argv[1:] if argv is None else list(argv))
    machine = machine_description()
    table = report.markdown(records, machine=machine, command=command.strip(), sizes=sizes,
                            elapsed_s=elapsed, mode=mode)
    if args.json_path:
        _write(args.json_path, json.dumps(records, indent=1) + "\n")
    if args.markdown_path:
        _write(args.markdown_path, table)
    if args.plot_path:
        message = report.plot(records, args.plot_path)
        if message:
            print(f"[bench] {message}", file=sys.stderr)
    print(table)
    print(f"[bench] done in {elapsed:.0f} s", file=sys.stderr)
    failed = any(r["system"] == "shoal" and r["status"] == "failed" for r in records)
    return 1 if failed else 0


def _write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
