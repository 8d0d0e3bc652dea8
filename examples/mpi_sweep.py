"""A cadCAD-style sweep and an agents market across nodes with shoal's MPI backend.

Rank 0 runs this script; every other rank is a node leader with a local pool of shoal workers:

    mpiexec -n 3 python -m shoal.mpi examples/mpi_sweep.py [--runs 10] [--steps 200]

(with Slurm: ``srun -n 3 python -m shoal.mpi examples/mpi_sweep.py``; see docs/mpi.md). Each run
gets its own random generator, derived from the seed and the run's index alone, so the table is
the one a single machine prints: ``--check`` runs the same sweep on this node's process pool and
says whether every row matches bit for bit. Then a small market of trader agents lives on the
nodes (one block per node, split among its workers) and clears a price for a few rounds: each
round is one group call, one MPI message to each node and one back.
"""
import argparse
import statistics
import time

import shoal


def simulate(birth_rate, predation_rate, rng, steps=200):
    """One Monte Carlo run of a stochastic predator-prey model (cadCAD's state-update style:
    policies read the state and return signals, then each variable is updated from them)."""
    prey, predators = 400.0, 40.0
    for _ in range(steps):
        room = max(0.0, 1.0 - prey / 1000.0)
        births = float(rng.poisson(birth_rate * prey * room))
        starved = float(rng.binomial(int(predators), 0.1))
        eaten = min(prey, float(rng.poisson(predation_rate * prey * predators)))
        fed = float(rng.binomial(int(eaten), 0.1))
        prey = max(0.0, prey + births - eaten)
        predators = max(0.0, predators + fed - starved)
    return {"final_prey": prey, "final_predators": predators, "extinct": predators == 0.0}


class Trader:
    """A market agent: buys below its valuation and sells above it, and learns from the price."""

    def __init__(self, index):
        self.value = 50.0 + (index * 37) % 41  # a valuation between 50 and 90
        self.holding = 0

    def order(self, price):
        """Units this agent wants at ``price``: +1 to buy, -1 to sell, 0 to wait."""
        return 1 if price < self.value - 1 else -1 if price > self.value + 1 else 0

    def settle(self, price):
        side = self.order(price)
        self.holding += side
        self.value += 0.1 * (price - self.value)  # valuations drift toward the market
        return side


def rows_of(table):
    return table.to_dict("records") if hasattr(table, "to_dict") else list(table)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--check", action="store_true", help="compare with the same sweep on one machine")
    args = ap.parse_args(argv)

    import functools

    fn = functools.partial(simulate, steps=args.steps)
    params = {"birth_rate": [0.08, 0.1, 0.12], "predation_rate": [0.0015, 0.002]}
    started = time.perf_counter()
    with shoal.Executor(backend="mpi") as ex:
        rows = rows_of(ex.sweep(fn, params, runs=args.runs, seed=args.seed))
        pids = ex.worker_pids()
    elapsed = time.perf_counter() - started
    print(f"{len(params['birth_rate']) * len(params['predation_rate'])} parameter sets x {args.runs} runs "
          f"x {args.steps} steps on {len(pids)} workers across the leaders: {elapsed:.2f} s")
    print(f"{'birth':>7} {'predation':>10} {'runs':>5} {'prey mean':>10} {'prey sd':>8} {'extinct':>8}")
    groups = {}
    for r in rows:
        groups.setdefault((r["birth_rate"], r["predation_rate"]), []).append(r)
    for (b, p), runs in groups.items():
        finals = [r["final_prey"] for r in runs]
        print(f"{b:7.3f} {p:10.4f} {len(runs):5d} {statistics.fmean(finals):10.1f} "
              f"{statistics.pstdev(finals):8.1f} {sum(r['extinct'] for r in runs) / len(runs):8.0%}")
    with shoal.Executor(backend="mpi") as ex:
        with ex.agents(Trader, range(1000)) as market:
            price = 60.0
            for _ in range(5):
                excess = sum(market.call("order", price))  # demand minus supply
                price += 0.01 * excess
                market.call("settle", price)
            print(f"market of {len(market)} traders across the nodes: price after 5 rounds {price:.2f}")
    if args.check:
        with shoal.Executor(max_workers=2, backend="process") as ex:
            here = rows_of(ex.sweep(fn, params, runs=args.runs, seed=args.seed))
        print("rows identical to one machine's:", here == rows)


if __name__ == "__main__":
    main()
