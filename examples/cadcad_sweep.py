"""A cadCAD-style model run as a shoal sweep: parameter sets x Monte Carlo runs.

The model is written the way cadCAD models are: a state dict, policy functions that read the
state and return signals, and state update functions that each return one new variable.
A small engine runs the blocks over the timesteps. `Executor.sweep` runs every parameter set
`runs` times; each run gets its own `numpy.random.Generator` derived from the seed and the
task's index, so the table below is the same on any machine, backend and worker count.

    python examples/cadcad_sweep.py [--runs 20] [--steps 300] [--workers N] [--backend process]
"""
import argparse
import functools
import statistics
import time

import shoal

# ----------------------------------------------------------------------------- the model
# A stochastic predator-prey system: Lotka-Volterra with logistic prey growth (carrying
# capacity), random births, encounters and deaths.

INITIAL_STATE = {"prey": 400.0, "predators": 40.0}


def p_births(params, substep, history, state, rng):
    """Policy: how many prey are born and predators starve this step."""
    room = max(0.0, 1.0 - state["prey"] / params["capacity"])
    births = rng.poisson(params["prey_birth_rate"] * state["prey"] * room)
    starved = rng.binomial(int(state["predators"]), params["predator_death_rate"])
    return {"births": float(births), "starved": float(starved)}


def p_hunting(params, substep, history, state, rng):
    """Policy: encounters between predators and prey; some become predator births."""
    rate = params["predation_rate"] * state["prey"] * state["predators"]
    eaten = min(state["prey"], float(rng.poisson(rate)))
    return {"eaten": eaten, "fed": float(rng.binomial(int(eaten), params["conversion"]))}


def s_prey(params, substep, history, state, signals):
    return "prey", max(0.0, state["prey"] + signals["births"] - signals["eaten"])


def s_predators(params, substep, history, state, signals):
    return "predators", max(0.0, state["predators"] + signals["fed"] - signals["starved"])


PARTIAL_STATE_UPDATE_BLOCKS = [
    {"policies": {"births": p_births, "hunting": p_hunting},
     "variables": {"prey": s_prey, "predators": s_predators}},
]


# ---------------------------------------------------------------------------- the engine


def run_model(params, rng, timesteps, blocks=PARTIAL_STATE_UPDATE_BLOCKS, initial=INITIAL_STATE):
    """Runs the blocks for `timesteps` steps (cadCAD's semantics: within a block every policy
    sees the same state, their signals are merged, then every variable is updated from that
    state). Returns the list of states."""
    history = [dict(initial)]
    for _ in range(timesteps):
        state = dict(history[-1])
        for substep, block in enumerate(blocks):
            signals = {}
            for policy in block["policies"].values():
                signals.update(policy(params, substep, history, state, rng))
            updated = dict(state)
            for update in block["variables"].values():
                name, value = update(params, substep, history, state, signals)
                updated[name] = value
            state = updated
        history.append(state)
    return history


def simulate(prey_birth_rate, predation_rate, rng, timesteps=300):
    """One Monte Carlo run for one parameter set: the sweep's task function."""
    params = {"prey_birth_rate": prey_birth_rate, "predation_rate": predation_rate,
              "predator_death_rate": 0.1, "conversion": 0.1, "capacity": 1000.0}
    history = run_model(params, rng, timesteps)
    prey = [s["prey"] for s in history]
    predators = [s["predators"] for s in history]
    return {"final_prey": prey[-1], "final_predators": predators[-1],
            "peak_prey": max(prey), "extinct": predators[-1] == 0.0}


# ----------------------------------------------------------------------------- the sweep


def summarize(rows, names):
    """One line per parameter set: mean and spread over the runs."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[n] for n in names), []).append(row)
    lines = []
    for key, runs in groups.items():
        finals = [r["final_prey"] for r in runs]
        preds = [r["final_predators"] for r in runs]
        lines.append((*key, len(runs), statistics.fmean(finals), statistics.pstdev(finals),
                      statistics.fmean(preds), sum(r["extinct"] for r in runs) / len(runs)))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--backend", default="process", choices=("process", "thread", "serial"))
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)

    params = {"prey_birth_rate": [0.08, 0.1, 0.12], "predation_rate": [0.0015, 0.002]}
    started = time.perf_counter()
    with shoal.Executor(args.workers, backend=args.backend) as ex:
        table = ex.sweep(functools.partial(simulate, timesteps=args.steps), params,
                         runs=args.runs, seed=args.seed, progress=True)
        workers = ex.max_workers
    elapsed = time.perf_counter() - started
    rows = table if isinstance(table, list) else table.to_dict("records")

    n_sets = len(params["prey_birth_rate"]) * len(params["predation_rate"])
    print(f"\n{n_sets} parameter sets x {args.runs} runs x {args.steps} steps on {workers} "
          f"{args.backend} workers: {elapsed:.2f} s (seed {args.seed})\n")
    header = ("birth rate", "predation", "runs", "final prey", "sd", "final predators", "extinct")
    print("  ".join(f"{h:>15}" for h in header))
    for line in summarize(rows, list(params)):
        birth, predation, n, prey, sd, preds, extinct = line
        print("  ".join([f"{birth:>15.3f}", f"{predation:>15.4f}", f"{n:>15d}", f"{prey:>15.1f}",
                         f"{sd:>15.1f}", f"{preds:>15.1f}", f"{extinct:>15.0%}"]))
    return rows


if __name__ == "__main__":
    main()
