"""Code written for schwimmbad's pool interface, on shoal's workers: the one line that changes is
the pool's class.

    from shoal.schwimmbad import ShoalPool
    pool = ShoalPool(2)                  # instead of schwimmbad.MultiPool(2) / choose_pool(...)

`--pool multipool` runs schwimmbad's own MultiPool, `--pool serial` its SerialPool; all print the
same results.
"""
import argparse
import math

import schwimmbad


def worker(task):
    """A task as schwimmbad's examples have them: a tuple in, a value out."""
    a, b = task
    return round(math.cos(3 * a) + math.sin(2 * b), 12)


def main(pool):
    tasks = [(0.1 * i, 0.2 * i) for i in range(200)]
    seen = []
    # schwimmbad's map(worker, tasks, callback): a list, or a lazy iterator from SerialPool
    results = list(pool.map(worker, tasks, callback=seen.append))
    pool.close()
    print(f"results: {len(list(results))} sum: {sum(results):.9f}")
    print(f"callbacks: {len(seen)} in order: {seen == list(results)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pool", choices=("shoal", "multipool", "serial"), default="shoal")
    args = parser.parse_args()
    if args.pool == "shoal":
        from shoal.schwimmbad import ShoalPool

        pool = ShoalPool(2)
    elif args.pool == "multipool":
        pool = schwimmbad.MultiPool(2)
    else:
        pool = schwimmbad.SerialPool()
    print(f"pool: {type(pool).__name__}")
    main(pool)
