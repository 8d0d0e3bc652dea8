"""Soak run (not in CI): many tasks, agent calls and shares, checking that memory stays flat.

    PYTHONPATH=src .venv/bin/python benchmarks/soak.py [--scale 1.0] [--json benchmarks/results/soak.json]

At scale 1: 10 million tiny tasks (half through submit, half through map), 1 million agent calls
(1,000 agents x 1,000 group calls), 100,000 shoal.share handles created and dropped. Driver and
worker memory (RSS and USS) is sampled after each tenth of every phase; the slope of a least-
squares line through the samples of the second half of a phase is reported in MB per million
operations (the first half is warm-up: allocator pools, caches). Every result is checked, and
/dev/shm must hold no new file at the end.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import psutil

import shoal


def inc(x):
    return x + 1


class Counter:
    def __init__(self, start):
        self.n = start

    def step(self, k):
        self.n += k
        return self.n


def memory(ex):
    procs = [psutil.Process()] + [psutil.Process(p) for p in ex.worker_pids()]
    out = {}
    for i, p in enumerate(procs):
        try:
            m = p.memory_full_info()
        except psutil.Error:
            continue
        out["driver" if i == 0 else f"worker{i}"] = (m.rss / 2**20, m.uss / 2**20)
    return out


def slope(points):
    """MB per million operations: least squares over the second half of the samples."""
    half = points[len(points) // 2:]
    if len(half) < 2:
        return 0.0
    xs = np.array([x for x, _ in half], float) / 1e6
    ys = np.array([y for _, y in half], float)
    return float(np.polyfit(xs, ys, 1)[0])


def phase(name, ex, total, step, report):
    """Runs step(n) for `total` operations in tenths, sampling memory after each."""
    samples = []
    done = 0
    start = time.perf_counter()
    for k in range(10):
        n = total // 10
        step(done, n)
        done += n
        samples.append((done, memory(ex)))
        print(f"  {name}: {done:,} of {total:,} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    result = {"operations": total, "seconds": round(seconds, 1), "slope_mb_per_million": {}}
    for proc in samples[-1][1]:
        for kind, idx in (("rss", 0), ("uss", 1)):
            pts = [(x, m[proc][idx]) for x, m in samples if proc in m]
            result["slope_mb_per_million"][f"{proc}_{kind}"] = round(slope(pts), 3)
        result.setdefault("final_mb", {})[proc] = [round(v, 1) for v in samples[-1][1][proc]]
    report[name] = result
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    s = args.scale
    shm_before = set(os.listdir("/dev/shm"))
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "scale": s}
    with shoal.Executor(2) as ex:
        def submits(done, n):
            window = []
            for i in range(done, done + n):
                window.append((i, ex.submit(inc, i)))
                if len(window) >= 2000:
                    for j, f in window:
                        assert f.result(timeout=60) == j + 1
                    window.clear()
            for j, f in window:
                assert f.result(timeout=60) == j + 1

        def maps(done, n):
            total = sum(ex.map(inc, range(done, done + n)))
            assert total == sum(range(done + 1, done + n + 1))

        group = ex.agents(Counter, [0] * 1000)
        calls = {"n": 0}

        def agent_calls(done, n):
            for _ in range(n // 1000):
                calls["n"] += 1
                out = group.call("step", 1)
                assert out[0] == calls["n"] and out[-1] == calls["n"]

        def shares(done, n):
            for i in range(n):
                h = shoal.share(np.full(16384, float(i)))  # 128 KB: through the arena
                if i % 1000 == 0:
                    assert ex.submit(float, h.value[0]).result(timeout=60) == float(i)
                del h

        print("soak:", flush=True)
        phase("submit", ex, int(5_000_000 * s), submits, report)
        phase("map", ex, int(5_000_000 * s), maps, report)
        phase("agent_calls", ex, int(1_000_000 * s), agent_calls, report)
        phase("share", ex, int(100_000 * s), shares, report)
        group.close()
    leftover = sorted(set(os.listdir("/dev/shm")) - shm_before)
    report["dev_shm_new_files"] = leftover
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if not leftover else 1


if __name__ == "__main__":
    sys.exit(main())
