"""Two builds of shoal side by side in one run: the same workloads' shoal cells, alternating.

    .venv/bin/python benchmarks/compare_builds.py BASE_SRC NEW_SRC \\
        --only round_trip,submit_throughput,map_tiny,map_cpu,agents --rounds 4 --json out.json

BASE_SRC and NEW_SRC are `src` folders of two checkouts, each with its built extension. Each
round runs every workload's shoal cell once per build, in alternating order (AB, BA, ...), each
cell in its own process (python -m shoalbench.cell, as `python -m shoal bench` does); the
samples of all rounds are pooled per build and metric. Prints the medians, spreads and the ratio
new/base (for "lower is better" metrics, < 1 is faster).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STANDALONE = Path(__file__).resolve().parents[1] / "src" / "shoal" / "bench" / "standalone"


def run_cell(src, workload, workers, repeats, size, out):
    config = {"workload": workload, "system": "shoal", "workers": workers, "repeats": repeats,
              "size": size, "out": str(out)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STANDALONE), str(src)]), PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, "-m", "shoalbench.cell", json.dumps(config)], env=env, check=True,
                   timeout=900, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return json.loads(Path(out).read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--only", default="round_trip,submit_throughput,map_tiny,map_cpu,agents")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", default="full", choices=("full", "quick"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    builds = {"base": Path(args.base).resolve(), "new": Path(args.new).resolve()}
    samples = {}  # (workload, metric, build) -> values
    meta = {}
    sys.path[:0] = [str(STANDALONE), str(builds["new"])]
    from shoal.bench import runner
    from shoalbench import spec

    sizes = {}
    for workload in args.only.split(","):
        sizes[workload] = dict(spec.SIZES[args.size][workload])
        if workload == "agents":
            runner._prepare_agents(sizes[workload])  # calibrated once, the same for both builds
        if workload == "map_cpu":  # as the runner does: iterations of spin for task_ms
            sizes[workload]["iterations"] = runner._calibrate_spin(sizes[workload]["task_ms"])
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            order = ["base", "new"] if rnd % 2 == 0 else ["new", "base"]
            for workload in args.only.split(","):
                for build in order:
                    out = Path(tmp) / f"{workload}.{build}.{rnd}.json"
                    for rec in run_cell(builds[build], workload, args.workers, args.repeats, sizes[workload], out):
                        key = (workload, rec["metric"])
                        meta[key] = (rec["unit"], rec["lower_is_better"])
                        samples.setdefault(key + (build,), []).extend(rec.get("samples") or [])
                print(f"round {rnd + 1}/{args.rounds}: {workload} done", flush=True)
    rows = []
    for (workload, metric), (unit, lower) in meta.items():
        base = samples.get((workload, metric, "base"), [])
        new = samples.get((workload, metric, "new"), [])
        if not base or not new:
            continue
        b, n = statistics.median(base), statistics.median(new)
        rows.append({"workload": workload, "metric": metric, "unit": unit, "lower_is_better": lower,
                     "base": b, "base_spread": [min(base), max(base)], "new": n,
                     "new_spread": [min(new), max(new)], "new_over_base": n / b if b else None,
                     "samples": {"base": len(base), "new": len(new)}})
    print(f"{'workload':18} {'metric':24} {'base':>12} {'new':>12} {'new/base':>9}")
    for r in rows:
        print(f"{r['workload']:18} {r['metric']:24} {r['base']:12.4g} {r['new']:12.4g} {r['new_over_base']:9.3f}"
              f"   ({r['unit']}, {'lower' if r['lower_is_better'] else 'higher'} is better)")
    if args.json:
        Path(args.json).write_text(json.dumps({"builds": {k: str(v) for k, v in builds.items()},
                                               "rounds": args.rounds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
