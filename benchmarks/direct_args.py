"""A large array passed directly to many tasks (issue 22): joblib on loky and on shoal's backend,
and shoal's map with the array passed directly, with shoal.share, and (optionally) a base build.

    .venv/bin/python benchmarks/direct_args.py [--base-src /path/to/other/src] [--rounds 5]

Each case runs in its own process per round, the cases in alternating order (ABC, CBA, ...), so
all of them see the same machine; prints each case's median and (min, max) over the rounds.

- joblib_big: Parallel(n_jobs=W)(delayed(read_one)(big, i) for i in range(20)), big 50 MB,
  read_one reads one element: seconds per call (the loky/shoal ratio is the target: >= 2x).
- joblib_tiny: 100,000 calls of x + 1; joblib_1ms: 240 calls of ~1 ms of pure Python; seconds.
- map_direct: list(ex.map(read_one, [big] * 20, range(20))): ms per task (first call after the
  pool is warm, so the one placement counts); map_share: the same over shoal.share(big);
  map_placement: the same as map_direct, the time its placements took (ms per call).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MB = 1 << 20


def read_one(a, i):
    return float(a[i])


def plus_one(x):
    return x + 1


def busy_1ms(x):
    end = time.perf_counter() + 0.001
    n = 0
    while time.perf_counter() < end:
        n += 1
    return x


def run_case(case, workers):
    """In a fresh process: the case's one timed number (after a warm-up)."""
    import numpy as np

    big = np.ones(50 * MB // 8)
    if case.startswith("joblib"):
        from joblib import Parallel, delayed

        backend = case.split(":")[1]
        if backend == "shoal":
            import shoal.joblib  # noqa: F401
        what = case.split(":")[0]
        if what == "joblib_big":
            calls = [delayed(read_one)(big, i) for i in range(20)]
        elif what == "joblib_tiny":
            calls = [delayed(plus_one)(i) for i in range(100000)]
        else:
            calls = [delayed(busy_1ms)(i) for i in range(240)]
        with Parallel(n_jobs=workers, backend=backend) as p:
            p(delayed(read_one)(np.ones(10), 0) for _ in range(workers))  # workers up
        Parallel(n_jobs=workers, backend=backend)(calls)  # warm-up: the same call once
        t = time.perf_counter()
        Parallel(n_jobs=workers, backend=backend)(calls)
        return time.perf_counter() - t
    import shoal

    placing = []
    if case == "map_placement":  # map_direct, timing the one placement (copy into the arena)
        from shoal import _arena

        place = _arena.Placements.place

        def timed(self, raw):
            t = time.perf_counter()
            try:
                return place(self, raw)
            finally:
                placing.append(time.perf_counter() - t)

        _arena.Placements.place = timed
    with shoal.Executor(max_workers=workers) as ex:
        list(ex.map(read_one, [np.ones(10)] * 4, range(4)))  # workers up
        arg = shoal.share(big) if case == "map_share" else big
        list(ex.map(read_one, [arg] * 20, range(20)))  # warm-up
        placing.clear()
        t = time.perf_counter()
        list(ex.map(read_one, [arg] * 20, range(20)))
        if case == "map_placement":
            return sum(placing) * 1e3  # ms per call: the first item's placement, then lookups
        return (time.perf_counter() - t) / 20 * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--base-src", default=None, help="another build's src folder: adds map_direct on it")
    ap.add_argument("--only", default=None, help="comma-separated case prefixes, e.g. joblib_tiny,joblib_1ms")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.workers)))
        return
    cases = [("joblib_big:loky", SRC), ("joblib_big:shoal", SRC), ("joblib_tiny:loky", SRC),
             ("joblib_tiny:shoal", SRC), ("joblib_1ms:loky", SRC), ("joblib_1ms:shoal", SRC),
             ("map_direct", SRC), ("map_share", SRC), ("map_placement", SRC)]
    if args.base_src:
        cases.append(("map_direct@base", args.base_src))
    if args.only:
        wanted = args.only.split(",")
        cases = [(c, src) for c, src in cases if c.split(":")[0].split("@")[0] in wanted]
    samples = {c: [] for c, _ in cases}
    for r in range(args.rounds):
        for case, src in (cases if r % 2 == 0 else cases[::-1]):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(src), PYTHONWARNINGS="ignore")
            out = subprocess.run([sys.executable, __file__, "--case", case.split("@")[0], "--workers",
                                  str(args.workers)], env=env, capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                print(case, "failed:", out.stderr[-2000:], file=sys.stderr)
                continue
            samples[case].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {case}: {samples[case][-1]:.4g}", file=sys.stderr)
    med = {c: statistics.median(v) for c, v in samples.items() if v}
    for c, v in samples.items():
        if v:
            unit = "ms/call" if c == "map_placement" else "ms/task" if c.startswith("map") else "s"
            print(f"{c:22s} median {med[c]:.4g} {unit}  (min {min(v):.4g}, max {max(v):.4g}, n={len(v)})")
    for what in ("joblib_big", "joblib_tiny", "joblib_1ms"):
        a, b = med.get(what + ":loky"), med.get(what + ":shoal")
        if a and b:
            print(f"{what}: shoal backend {a / b:.2f}x loky's speed")
    if med.get("map_direct") and med.get("map_share"):
        print(f"map_direct / map_share per task: {med['map_direct'] / med['map_share']:.2f}")
    if med.get("map_direct") and med.get("map_share") and med.get("map_placement"):
        bound = 2 * (med["map_share"] + med["map_placement"] / 20)
        print(f"map_direct target: <= 2 x (map_share + map_placement / 20) = {bound:.4g} ms/task: "
              f"{'met' if med['map_direct'] <= bound else 'missed'}")
    if med.get("map_direct") and med.get("map_direct@base"):
        print(f"map_direct: {med['map_direct@base'] / med['map_direct']:.1f}x faster per task than the base build")


if __name__ == "__main__":
    main()
