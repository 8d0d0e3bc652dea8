"""One cell of the MPI benchmarks, run as rank 0's script of an MPI job (see shoal.bench.mpi).

    python -m shoal.mpi      mpi_cell.py shoal          WORKLOAD SIZE REPEATS
    python -m mpi4py.futures mpi_cell.py mpi4py_futures WORKLOAD SIZE REPEATS [CHUNKSIZE]

Prints ``RESULT {"samples": [...]}``: per repeat, µs per call (round trip) or per item (map),
after one untimed 10 % pass. Every system runs the same functions (shoalbench.tasks).
"""
import json
import sys
import time

from shoalbench import tasks


def _shoal_executor():
    import shoal
    from shoal import _backend

    try:
        return shoal.Executor(backend="mpi"), None
    except ValueError:
        # The executor does not route to the MPI backend yet: drive it directly, as the
        # executor will (map: chunks of map's rule of thumb, 4 per worker, 2 per worker in flight).
        return None, _backend.make_backend("mpi", _backend.BackendConfig(max_workers=2))


def _backend_map(backend, fn, items):
    import collections
    import itertools

    items = list(items)
    size = max(1, -(-len(items) // (4 * backend.slots)))
    it = iter(items)
    window = collections.deque()
    out = []
    while True:
        while len(window) < 2 * backend.slots:
            chunk = list(itertools.islice(it, size))
            if not chunk:
                break
            window.append(backend.submit_chunk(fn, chunk, star=False))
        if not window:
            return out
        outcome = window.popleft().result()
        if outcome.error is not None:
            raise outcome.error[0]
        out.extend(outcome.results[1])


def main():
    system, workload, size, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    chunksize = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    ex = backend = None
    if system == "shoal":
        ex, backend = _shoal_executor()
        if ex is not None:
            submit = ex.submit
            map_ = lambda fn, xs: list(ex.map(fn, xs))  # noqa: E731
        else:
            submit = lambda fn, x: backend.submit(fn, (x,), {})  # noqa: E731
            map_ = lambda fn, xs: _backend_map(backend, fn, xs)  # noqa: E731
    else:
        from mpi4py.futures import MPIPoolExecutor

        ex = MPIPoolExecutor()
        submit = ex.submit
        map_ = lambda fn, xs: list(ex.map(fn, xs, chunksize=chunksize))  # noqa: E731

    def once(n):
        if workload == "mpi_round_trip":
            t0 = time.perf_counter()
            for i in range(n):
                if submit(tasks.identity, i).result() != i:
                    raise AssertionError("wrong result")
            return (time.perf_counter() - t0) / n * 1e6
        xs = range(n)
        t0 = time.perf_counter()
        ys = map_(tasks.inc, xs)
        elapsed = time.perf_counter() - t0
        if ys != [x + 1 for x in xs]:
            raise AssertionError("wrong results")
        return elapsed / n * 1e6

    once(max(1, size // 10))  # warm-up
    samples = [once(size) for _ in range(repeats)]
    print("RESULT " + json.dumps({"samples": samples}), flush=True)
    if ex is not None:
        ex.shutdown(wait=True)
    else:
        backend.shutdown(wait=True)


if __name__ == "__main__":
    main()
