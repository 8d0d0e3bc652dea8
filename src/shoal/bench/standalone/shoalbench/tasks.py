"""The task functions every system runs: same code, same data, for every peer."""
# Top-level, importable functions so that plain pickle (multiprocessing), cloudpickle
# (loky, Ray, Dask, shoal) and fork-based pools all ship them by reference.
# numpy is imported inside the functions that need it, so that importing this module
# costs a worker nothing.
import os
import time


def identity(x):
    """round_trip, submit_throughput, startup: returns its argument."""
    return x


def inc(x):
    """map_tiny: the per-item work is one addition."""
    return x + 1


def spin(iterations):
    """map_cpu: pure-Python busy work (an LCG), calibrated by the runner to ~1 ms."""
    x = 1
    for _ in range(iterations):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    return x


def array_sum(array, index):
    """big_args: reads the whole shared array, returns a float."""
    return float(array.sum()) + index


def make_array(nbytes, index):
    """big_results: returns a freshly written array of ``nbytes`` bytes."""
    import numpy as np

    return np.full(nbytes // 8, float(index))


def sum_range(r):
    """seed_map: the seed notebook's ``sum`` over a ``range`` (wrapped: Ray cannot remote a builtin)."""
    return sum(r)


def numpy_worker_pid(sleep_s):
    """worker_memory: imports numpy, holds the worker for ``sleep_s`` so that every worker gets one."""
    import numpy  # noqa: F401

    time.sleep(sleep_s)
    return os.getpid()


def apply_chunk(fn, chunk):
    """Runs ``fn`` over a chunk of items: the batching Ray's docs recommend for tiny tasks."""
    return [fn(x) for x in chunk]
