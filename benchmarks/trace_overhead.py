"""What tracing costs: the benchmark's map_tiny and map_cpu with a trace off and on, one run.

    PYTHONPATH=src .venv/bin/python benchmarks/trace_overhead.py --rounds 8 [--size full|quick]

One executor (2 workers, the process backend, as the benchmark's shoal cell); each round times
each workload once with tracing off and once inside ``with ex.trace()``, in alternating order
(off/on, on/off, ...) so that a machine drifting slower favours neither. Prints per workload
the medians, [min, max] and the ratio on/off of the medians. Issue 18's targets: map_tiny
<= 1.10, map_cpu <= 1.02. (Off against the previous build: benchmarks/compare_builds.py.)
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "shoal" / "bench" / "standalone"))

import shoal  # noqa: E402
from shoal.bench import runner  # noqa: E402
from shoalbench import spec, tasks  # noqa: E402


def timed_map(ex, fn, items, trace):
    if trace:
        with ex.trace() as t:
            t0 = time.perf_counter()
            out = list(ex.map(fn, items))
            dt = time.perf_counter() - t0
        assert len(t.data()["tasks"]) > 0
    else:
        t0 = time.perf_counter()
        out = list(ex.map(fn, items))
        dt = time.perf_counter() - t0
    assert len(out) == len(items)
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--size", default="full", choices=("full", "quick"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sizes = spec.SIZES[args.size]
    n_tiny = sizes["map_tiny"]["items"]
    n_cpu = sizes["map_cpu"]["tasks"]
    iterations = runner._calibrate_spin(sizes["map_cpu"]["task_ms"])
    work = {"map_tiny": (tasks.inc, list(range(n_tiny)), 1e6 / n_tiny, "us_per_item"),
            "map_cpu": (tasks.spin, [iterations] * n_cpu, 1e3, "ms_total")}
    samples = {(w, on): [] for w in work for on in (False, True)}
    with shoal.Executor(args.workers) as ex:
        for w, (fn, items, _, _) in work.items():  # warm up: workers forked, chunk sizes learnt
            timed_map(ex, fn, items[: len(items) // 10], False)
        for rnd in range(args.rounds):
            for w, (fn, items, scale, _) in work.items():
                for on in ((False, True) if rnd % 2 == 0 else (True, False)):
                    samples[(w, on)].append(timed_map(ex, fn, items, on) * scale)
    out = {}
    for w, (_, _, _, unit) in work.items():
        off, on = samples[(w, False)], samples[(w, True)]
        m_off, m_on = statistics.median(off), statistics.median(on)
        out[w] = {"unit": unit, "off": off, "on": on, "ratio": m_on / m_off}
        print(f"{w:9} {unit:12} off {m_off:9.3f} [{min(off):.3f}, {max(off):.3f}]   "
              f"on {m_on:9.3f} [{min(on):.3f}, {max(on):.3f}]   on/off {m_on / m_off:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
