"""emcee's EnsembleSampler on shoal's workers: the one line that changes is the pool.

    sampler = emcee.EnsembleSampler(nwalkers, ndim, log_prob, pool=shoal.Pool(2))

`--pool multiprocessing` runs the same sampler on multiprocessing.Pool, `--pool none` in a plain
loop; all three print the same chain digest (emcee draws from numpy's global seed).

The first step is timed apart: it includes the pool's start-up. shoal's workers are forked from
its zygote, not from this process, so they import emcee (and scipy, which it imports) once, at
the first task; multiprocessing's fork workers inherit this process's imports.
"""
import argparse
import hashlib
import multiprocessing
import time

import emcee
import numpy as np

import shoal


def log_prob(theta):
    """A correlated 3-d Gaussian, with a little work per call, as a real likelihood has."""
    icov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
    x = theta - np.array([1.0, -1.0, 0.5])
    return -0.5 * float(x @ icov @ x)


def run(pool, steps, nwalkers=16, ndim=3):
    """The chain, the first step's time and the other steps' time."""
    np.random.seed(42)
    p0 = np.random.randn(nwalkers, ndim)
    sampler = emcee.EnsembleSampler(nwalkers, ndim, log_prob, pool=pool)
    t0 = time.perf_counter()
    sampler.run_mcmc(p0, 1, progress=False)
    t1 = time.perf_counter()
    sampler.run_mcmc(None, steps - 1, progress=False)  # goes on from the last state
    return sampler.get_chain(), t1 - t0, time.perf_counter() - t1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", choices=("shoal", "multiprocessing", "none"), default="shoal")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    if args.pool == "shoal":
        with shoal.Pool(2) as pool:
            chain, first, rest = run(pool, args.steps)
    elif args.pool == "multiprocessing":
        with multiprocessing.Pool(2) as pool:
            chain, first, rest = run(pool, args.steps)
    else:
        chain, first, rest = run(None, args.steps)
    print(f"pool: {args.pool}")
    print(f"chain: {chain.shape} digest: {hashlib.sha256(chain.tobytes()).hexdigest()[:16]}")
    print(f"mean: {np.round(chain[args.steps // 2:].reshape(-1, 3).mean(axis=0), 3).tolist()}")
    print(f"first step: {first:.2f} s; the other {args.steps - 1} steps: {rest:.2f} s")


if __name__ == "__main__":
    main()
