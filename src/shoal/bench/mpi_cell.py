"""One cell of the MPI benchmarks, run as rank 0's script of an MPI job (see shoal.bench.mpi).

    python -m shoal.mpi      mpi_cell.py shoal          WORKLOAD SIZE REPEATS
    python -m mpi4py.futures mpi_cell.py mpi4py_futures WORKLOAD SIZE REPEATS [CHUNKSIZE]
    python mpi_cell.py shoal_one_machine WORKLOAD SIZE REPEATS WORKERS

Prints ``RESULT {"samples": [...]}``: per repeat, µs per call (round trip) or per item (map),
time / ideal (mpi_scale: SIZE tasks of 10 ms), ms per task (mpi_big_args: 20 tasks reading one
array of SIZE bytes; ``bytes_sent``: for shoal, the bytes sent over MPI since the array was
shared, after each repeat), after one untimed pass at
a tenth of the size (the whole size for mpi_big_args). Every system runs the same functions
(shoalbench.tasks).
"""
import json
import sys
import time

from shoalbench import tasks


def main():
    system, workload, size, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    chunksize = int(sys.argv[5]) if len(sys.argv) > 5 and system == "mpi4py_futures" else 1
    if system == "shoal":
        import shoal

        ex = shoal.Executor(backend="mpi")
        map_ = lambda fn, xs: list(ex.map(fn, xs))  # noqa: E731
    elif system == "shoal_one_machine":  # the same run on this machine's process pool
        import shoal

        ex = shoal.Executor(max_workers=int(sys.argv[5]), backend="process")
        map_ = lambda fn, xs: list(ex.map(fn, xs))  # noqa: E731
    else:
        from mpi4py.futures import MPIPoolExecutor

        ex = MPIPoolExecutor()
        map_ = lambda fn, xs: list(ex.map(fn, xs, chunksize=chunksize))  # noqa: E731
    submit = ex.submit
    extra = {}

    def once(n):
        if workload == "mpi_round_trip":
            t0 = time.perf_counter()
            for i in range(n):
                if submit(tasks.identity, i).result() != i:
                    raise AssertionError("wrong result")
            return (time.perf_counter() - t0) / n * 1e6
        if workload == "mpi_scale":  # n tasks that each sleep 10 ms; the value is time / ideal
            t0 = time.perf_counter()
            futs = [submit(time.sleep, 0.01) for _ in range(n)]
            for f in futs:
                f.result()
            elapsed = time.perf_counter() - t0
            return elapsed / (n * 0.01 / extra.setdefault("workers", _workers(system)))
        if workload == "mpi_big_args":  # 20 tasks reading one 100 MB array; ms per task
            import numpy as np

            if "array" not in extra:
                extra["array"] = np.arange(n // 8, dtype=np.float64)
                if system == "shoal":
                    import shoal

                    extra["arg"] = shoal.share(extra["array"])
                    from shoal.mpi import hub

                    extra["hub"] = hub.current()
                    extra["base"] = extra["hub"].outbox.bytes_sent  # before the array first crosses
                else:
                    extra["arg"] = extra["array"]
            t0 = time.perf_counter()
            futs = [submit(tasks.array_tail_sum, extra["arg"], i) for i in range(20)]
            got = [f.result() for f in futs]
            elapsed = time.perf_counter() - t0
            if "hub" in extra:  # everything sent since the array was shared, warm-up included
                extra.setdefault("bytes_sent", []).append(extra["hub"].outbox.bytes_sent - extra["base"])
            if got[3] != float(extra["array"][3:].sum()):
                raise AssertionError("wrong results")
            return elapsed / 20 * 1e3
        if workload == "mpi_agents":  # SIZE light agents across the nodes; ms per step (10 steps)
            if "agents" not in extra:
                if system == "shoal":
                    extra["agents"] = ex.agents(tasks.LightAgent, range(size))
                else:
                    extra["agents"] = [tasks.LightAgent(i) for i in range(size)]
            agents = extra["agents"]
            t0 = time.perf_counter()
            for _ in range(10):
                if system == "shoal":
                    wealth = agents.call("step", 1.01)
                else:  # every agent pickled to a worker rank and back, each step
                    half = len(agents) // 2
                    futs = [submit(tasks.step_agents, part, 1.01) for part in (agents[:half], agents[half:])]
                    parts = [f.result() for f in futs]
                    agents = extra["agents"] = parts[0][0] + parts[1][0]
                    wealth = parts[0][1] + parts[1][1]
            if len(wealth) != size:
                raise AssertionError("wrong results")
            return (time.perf_counter() - t0) / 10 * 1e3
        xs = range(n)
        t0 = time.perf_counter()
        ys = map_(tasks.inc, xs)
        elapsed = time.perf_counter() - t0
        if ys != [x + 1 for x in xs]:
            raise AssertionError("wrong results")
        return elapsed / n * 1e6

    once(size if workload == "mpi_big_args" else max(1, size // 10))  # warm-up
    samples = [once(size) for _ in range(repeats)]
    print("RESULT " + json.dumps({"samples": samples, "bytes_sent": extra.get("bytes_sent")}), flush=True)
    ex.shutdown(wait=True)


def _workers(system):
    """Processes running tasks: the leaders' workers, the pool's, or mpi4py.futures' worker ranks."""
    if system == "shoal":
        from shoal.mpi import hub

        return sum(lead.workers for lead in hub.current().live_leaders())
    if system == "shoal_one_machine":
        return int(sys.argv[5])
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size() - 1


if __name__ == "__main__":
    main()
