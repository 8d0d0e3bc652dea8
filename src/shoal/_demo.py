"""python -m shoal demo: the seed notes' own examples, side by side, and a crash survived."""
import multiprocessing
import os
import sys
import time
from multiprocessing.pool import ThreadPool

import shoal


def work(n):
    """~CPU-bound pure Python: the kind of task the GIL keeps threads from speeding up."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def crash_once(path):
    """Kills its own worker the first time it runs; succeeds when retried."""
    if not os.path.exists(path):
        open(path, "w").close()
        os.kill(os.getpid(), 9)
    return "survived"


def _timed(label, fn, baseline=None):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    extra = f"   ({baseline / dt:4.2f}x the loop)" if baseline else ""
    print(f"  {label:<34} {dt * 1e3:8.1f} ms{extra}")
    return out, dt


def main(argv=()):
    workers = min(4, os.cpu_count() or 1)
    items = [200_000] * 64
    print(f"shoal demo on {os.cpu_count()} cores, {workers} workers\n")
    print(f"1. map(work, 64 items of ~10 ms of pure-Python work)")
    expected, loop = _timed("plain loop", lambda: [work(x) for x in items])
    with ThreadPool(workers) as tp:
        out, _ = _timed("multiprocessing ThreadPool.map", lambda: tp.map(work, items), loop)
        assert out == expected
    with multiprocessing.get_context("spawn").Pool(workers) as mp:
        out, _ = _timed("multiprocessing.Pool.map (spawn)", lambda: mp.map(work, items), loop)
        assert out == expected
    with shoal.Executor(workers) as ex:
        out, _ = _timed("shoal.Executor.map", lambda: list(ex.map(work, items)), loop)
        assert out == expected

    print("\n2. many tiny tasks: submit(f, x).result() one after another, 2,000 times")
    with multiprocessing.get_context("spawn").Pool(workers) as mp:
        _, t_mp = _timed("multiprocessing.Pool.apply", lambda: [mp.apply(abs, (i,)) for i in range(2000)])
    with shoal.Executor(workers) as ex:
        ex.submit(abs, 0).result()
        _, t_sh = _timed("shoal submit().result()", lambda: [ex.submit(abs, i).result() for i in range(2000)])
    print(f"  shoal is {t_mp / t_sh:.0f}x faster per round trip here")

    print("\n3. a worker killed by SIGKILL mid-task")
    marker = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"shoal-demo-{os.getpid()}")
    try:
        with shoal.Executor(workers, retries=1) as ex:
            before = ex.worker_pids()
            print(f"  workers before: {before}")
            print(f"  result: {ex.submit(crash_once, marker).result()!r} (the task was retried on a new worker)")
            print(f"  workers after:  {ex.worker_pids()}")
            print(f"  the pool still works: {list(ex.map(work, [10, 20]))}")
            with shoal.Executor(workers, retries=0) as ex2:
                os.remove(marker)
                try:
                    ex2.submit(crash_once, marker).result()
                except shoal.WorkerCrashedError as e:
                    print(f"  with retries=0: WorkerCrashedError: {e}")
    finally:
        if os.path.exists(marker):
            os.remove(marker)

    print("\n4. the same code, serially, for debugging (pdb and tracebacks as in a plain loop)")
    with shoal.Executor(backend="serial") as ex:
        print(f"  serial map: {list(ex.map(work, [10, 20]))}")

    print("\n5. agents: battery agents living in the workers bid into a market each hour")
    _energy_market(workers)

    print("\n6. where the time went: a trace of a map with one slow item, and its report")
    _traced_run(workers)
    return 0


def _traced_run(workers):
    """Section 6: traces a map whose last item is 20x slower, saves it, writes the report."""
    import tempfile

    from ._report import render

    folder = tempfile.mkdtemp(prefix="shoal-demo-trace-")
    with shoal.Executor(workers) as ex:
        with ex.trace() as t:
            list(ex.map(work, [100_000] * 48 + [2_000_000], chunksize=4))
            [f.result() for f in [ex.submit(work, 50_000) for _ in range(8)]]
    for line in t.summary().splitlines():
        print(f"  {line}")
    run = os.path.join(folder, "run.json")
    t.save(run)
    report = os.path.join(folder, "report.html")
    with open(report, "w", encoding="utf-8") as f:
        f.write(render(t))
    print(f"  trace (open in https://ui.perfetto.dev): {run}")
    print(f"  report of this run: {report}")
    print(f"  (made from the trace by: python -m shoal report {run} -o report.html)")


def _energy_market(workers):
    """examples/energy_market.py, small: on the workers, then the same market in the caller."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "energy_market.py"
    if not example.exists():
        print("  examples/energy_market.py is in the source checkout: run the demo from there")
        return
    sys.path.insert(0, str(example.parent))  # before the executor: its workers import it too
    import energy_market

    prices, _, t_pool = energy_market.run(agents=400, hours=6, workers=workers)
    same, _, t_serial = energy_market.run(agents=400, hours=6, backend="serial", verbose=False)
    print(f"  market hours: {t_pool * 1e3:.0f} ms with the agents on {workers} workers, "
          f"{t_serial * 1e3:.0f} ms in the caller (backend=\"serial\"); the same prices: {same == prices}")


if __name__ == "__main__":
    sys.exit(main())
