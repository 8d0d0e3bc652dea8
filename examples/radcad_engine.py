"""radCAD's multiprocessing engine on shoal's workers, with no change to the script.

radCAD's Backend.MULTIPROCESSING builds a spawn multiprocessing.Pool for every run. The one
change is how the script is started:

    python examples/radcad_engine.py                   # radCAD's own Pool
    python -m shoal run examples/radcad_engine.py      # the same Pool calls, on shoal's workers

(radCAD's default backend is pathos, which shoal does not replace: this example asks for
Backend.MULTIPROCESSING.) Both print the same digest: every run draws from its own seeded
generator.
"""
import argparse
import hashlib
import multiprocessing
import time

import numpy as np
from radcad import Engine, Experiment, Model, Simulation
from radcad.engine import Backend


def p_trade(params, substep, state_history, previous_state):
    rng = np.random.default_rng([previous_state["run"], previous_state["timestep"], params["seed"]])
    return {"delta": float(rng.normal(params["drift"], params["volatility"]))}


def s_price(params, substep, state_history, previous_state, policy_input):
    return "price", previous_state["price"] * (1 + policy_input["delta"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    model = Model(initial_state={"price": 100.0},
                  state_update_blocks=[{"policies": {"trade": p_trade}, "variables": {"price": s_price}}],
                  params={"drift": [0.0, 0.001], "volatility": [0.01, 0.02], "seed": [7]})
    simulation = Simulation(model=model, timesteps=args.steps, runs=args.runs)
    experiment = Experiment([simulation])
    experiment.engine = Engine(backend=Backend.MULTIPROCESSING, processes=args.processes)
    t0 = time.perf_counter()
    results = experiment.run()
    elapsed = time.perf_counter() - t0
    finals = sorted((r["subset"], r["run"], r["price"]) for r in results if r["timestep"] == args.steps)
    digest = hashlib.sha256(repr(finals).encode()).hexdigest()
    pool = "shoal" if "shoal" in multiprocessing.Pool.__module__ else "multiprocessing"
    print(f"pool: {pool}")
    failed = sum(1 for e in experiment.exceptions if isinstance(e, dict) and e.get("exception") is not None)
    print(f"rows: {len(results)} digest: {digest[:16]} failed runs: {failed}")
    print(f"final prices (subset 0): {[round(p, 4) for s, _, p in finals if s == 0]}")
    print(f"experiment.run: {elapsed:.2f} s")


if __name__ == "__main__":
    main()
