"""Mesa's batch_run on shoal's workers, with no change to the script.

batch_run builds its own (spawn) multiprocessing.Pool for every call. The one change is how the
script is started:

    python examples/mesa_batch_run.py                  # Mesa's own Pool
    python -m shoal run examples/mesa_batch_run.py     # the same Pool calls, on shoal's workers

Both print the same digest of the results (the model is seeded); the time is batch_run's alone.
"""
import argparse
import hashlib
import json
import multiprocessing
import time

from mesa.batchrunner import batch_run
from mesa.examples.basic.boltzmann_wealth_model.model import BoltzmannWealth


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2, help="batch_run calls (a pool each)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    for _ in range(args.calls):
        rows = batch_run(BoltzmannWealth, parameters={"n": [20, 50], "seed": [1, 2, 3]},
                         number_processes=args.processes, max_steps=args.steps,
                         data_collection_period=-1, display_progress=False)
    elapsed = time.perf_counter() - t0
    rows.sort(key=lambda r: (r["RunId"], r["AgentID"]))  # imap_unordered: completion order
    digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    pool = "shoal" if "shoal" in multiprocessing.Pool.__module__ else "multiprocessing"
    print(f"pool: {pool}")
    print(f"rows: {len(rows)} digest: {digest[:16]}")
    print(f"gini by run: {[round(r['Gini'], 6) for r in rows if r['AgentID'] == 1]}")
    print(f"batch_run: {elapsed:.2f} s for {args.calls} calls")


if __name__ == "__main__":
    main()
