"""How each workload is measured on one started system: warm-up, timed repeats, checks."""
# Each ``measure_<id>(system, size, repeats)`` returns ({metric: [value per repeat]}, note).
# Warm-up is the same for every system: one untimed pass of the same procedure before
# the timed repeats (a 10% pass where the full one is long), after the pool is started.
# Results are checked, so a system that returns wrong answers fails instead of winning.
import gc
import time

from . import memory, tasks

MB = 1024 * 1024


def _check(ok, what):
    if not ok:
        raise AssertionError(f"wrong result: {what}")


def measure_round_trip(system, size, repeats):
    calls = size["calls"]
    for i in range(max(20, calls // 10)):
        system.call(tasks.identity, i)
    out = {"us_per_call": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(calls):
            r = system.call(tasks.identity, i)
        dt = time.perf_counter() - t0
        _check(r == calls - 1, "identity")
        out["us_per_call"].append(dt / calls * 1e6)
    return out, f"{calls} sequential calls of identity(i)"


def measure_submit_throughput(system, size, repeats):
    n = size["tasks"]
    system.submit_all(tasks.identity, [(i,) for i in range(max(100, n // 10))])
    args = [(i,) for i in range(n)]
    out = {"us_per_task": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = system.submit_all(tasks.identity, args)
        dt = time.perf_counter() - t0
        _check(len(res) == n and res[-1] == n - 1, "identity")
        out["us_per_task"].append(dt / n * 1e6)
    return out, f"{n} tasks of identity(i) submitted, then all waited for"


def measure_map_tiny(system, size, repeats):
    n = size["items"]
    items = list(range(n))
    system.map(tasks.inc, items[: n // 10])
    out = {"us_per_item": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = system.map(tasks.inc, items)
        dt = time.perf_counter() - t0
        _check(len(res) == n and res[-1] == n, "inc")
        out["us_per_item"].append(dt / n * 1e6)
    return out, f"{n} items of x + 1"


def measure_map_cpu(system, size, repeats):
    # The serial reference runs in this driver right before each timed repeat, so that
    # each efficiency compares two runs made under the same machine load.
    n, iterations = size["tasks"], size["iterations"]
    items = [iterations] * n
    expected = tasks.spin(iterations)
    system.map(tasks.spin, items[: max(2 * system.workers, n // 10)])
    workers = 1 if system.name == "serial" else system.workers
    out = {"ms_total": [], "efficiency": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in items:
            tasks.spin(x)
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = system.map(tasks.spin, items)
        dt = time.perf_counter() - t0
        _check(len(res) == n and res[-1] == expected, "spin")
        out["ms_total"].append(dt * 1e3)
        out["efficiency"].append(serial / dt / workers)
    return out, (f"{n} tasks of spin({iterations}) (~{size['task_ms']:g} ms each, calibrated); "
                 f"efficiency = serial loop time (measured in the driver before each repeat) "
                 f"/ (time x workers)")


def measure_map_numpy(system, size, repeats):
    # As map_cpu, the serial loop runs in this driver right before each timed repeat; here it
    # is given all the cores (the driver's BLAS runs one thread per core), so the efficiency
    # is serial loop time / parallel time, not divided by the workers. Each repeat's results
    # are checked against that repeat's serial loop.
    import functools

    n, products, dim = size["tasks"], size["products"], size["n"]
    fn = functools.partial(tasks.matmul_chain, products=products, n=dim)
    seeds = list(range(n))
    system.map(fn, seeds[: max(2 * system.workers, n // 10)])  # workers up, numpy imported
    out = {"s_total": [], "efficiency": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        expected = [fn(s) for s in seeds]
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = system.map(fn, seeds)
        dt = time.perf_counter() - t0
        _check(len(res) == n and all(abs(r - e) <= 1e-6 * max(1.0, abs(e)) for r, e in zip(res, expected)),
               "matmul_chain")
        out["s_total"].append(dt)
        out["efficiency"].append(serial / dt)
    return out, (f"{n} tasks of {products} products of {dim}x{dim} matrices; efficiency = serial loop "
                 f"time (in the driver, BLAS on all cores, before each repeat) / time")


def measure_big_args(system, size, repeats):
    import numpy as np

    n, array_mb = size["tasks"], size["array_mb"]
    system.map_shared(tasks.array_sum, np.zeros(1000), system.workers)  # workers up, numpy imported
    gc.collect()
    time.sleep(0.3)
    base = memory.snapshot(memory.tree())
    array = np.ones(array_mb * MB // 8)
    expected = float(array.size)
    # Each system places the array its recommended way, once; then the driver drops its
    # own reference (a system that needs the original keeps it alive through `shared`).
    shared = system.share(array)
    del array
    gc.collect()
    system.map_shared(tasks.array_sum, shared, n)  # warm-up pass
    out = {"ms_per_task": [], "peak_pss_mb": [], "peak_uss_mb": [], "steady_pss_mb": []}
    for _ in range(repeats):
        # Time and memory in two passes: a sample of the tree reads every process's page
        # tables (~5 ms of CPU every 10 ms here), which on a small machine slows the very
        # workers being timed.
        t0 = time.perf_counter()
        res = system.map_shared(tasks.array_sum, shared, n)
        dt = time.perf_counter() - t0
        _check(len(res) == n and all(r == expected + i for i, r in enumerate(res)), "array_sum")
        del res
        with memory.PeakSampler(base) as sampler:
            res = system.map_shared(tasks.array_sum, shared, n)
        _check(len(res) == n and all(r == expected + i for i, r in enumerate(res)), "array_sum")
        del res
        gc.collect()
        time.sleep(0.3)
        steady = memory.snapshot(memory.tree())
        out["ms_per_task"].append(dt / n * 1e3)
        out["peak_pss_mb"].append(sampler.peak_footprint / MB)
        out["peak_uss_mb"].append(sampler.peak_uss / MB)
        out["steady_pss_mb"].append(steady.footprint_above(base) / MB)
    del shared
    return out, (f"{n} tasks reading one {array_mb} MB array, placed once the way each system "
                 f"recommends (shoal.share, ray.put, dask scatter, mpire shared_objects; joblib "
                 f"memmaps it per call; multiprocessing pickles it per task), after which the "
                 f"driver drops its own reference; memory is the whole process tree "
                 f"above the warm idle pool before the array existed (so the array itself counts "
                 f"{array_mb} MB), PSS plus unmapped shared memory, sampled every 10 ms in a "
                 f"second, untimed pass of each repeat")


def measure_big_results(system, size, repeats):
    n, result_mb = size["tasks"], size["result_mb"]
    nbytes = result_mb * MB
    system.starmap(tasks.make_array, [(MB, i) for i in range(system.workers)])
    args = [(nbytes, i) for i in range(n)]
    system.starmap(tasks.make_array, args)  # warm-up pass
    out = {"ms_per_task": []}
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        res = system.starmap(tasks.make_array, args)
        dt = time.perf_counter() - t0
        _check(len(res) == n and all(r.nbytes == nbytes and r[-1] == i for i, r in enumerate(res)),
               "make_array")
        del res
        out["ms_per_task"].append(dt / n * 1e3)
    return out, f"{n} tasks each returning a {result_mb} MB array"


def measure_seed_map(system, size, repeats):
    count, length = size["items"], size["range"]
    items = [range(length)] * count
    expected = length * (length - 1) // 2
    system.map(tasks.sum_range, items[: system.workers])
    out = {"s_total": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = system.map(tasks.sum_range, items)
        dt = time.perf_counter() - t0
        _check(len(res) == count and all(r == expected for r in res), "sum_range")
        out["s_total"].append(dt)
    return out, f"map(sum, [range({length:_})] * {count})"


def measure_sweep(system, size, repeats):
    """Parameter sets x Monte Carlo runs of tasks.sweep_model over one shared table. Every
    system's results must equal the serial loop's, bit for bit (same seeds per task); shoal's
    must also be the same with 1, 2 and 4 workers."""
    sets, runs, steps = size["sets"], size["runs"], size["steps"]
    alphas = [0.8 + 0.1 * k for k in range(max(1, sets // 2))]
    betas = [0.5, 1.0][: max(1, min(2, sets))]
    grid = [(a, b) for a in alphas for b in betas]
    seed = 20240611
    table = tasks.sweep_table(size["table_mb"] * MB)
    reference = [tasks.sweep_task(table, *grid[i // runs], seed, i, steps)
                 for i in range(len(grid) * runs)]  # serial, untimed: what every system must return
    system.sweep(table, grid, runs, seed, steps)  # warm-up: pools and shared tables made here
    out = {"s_total": []}
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        res = system.sweep(table, grid, runs, seed, steps)
        dt = time.perf_counter() - t0
        _check(res == reference, "sweep rows differ from the serial loop's")
        out["s_total"].append(dt)
    note = (f"{len(grid)} parameter sets x {runs} runs x {steps} steps, a {size['table_mb']} MB "
            f"shared table; results identical to the serial loop")
    if hasattr(system, "sweep_with_workers"):
        for w in (1, 2, 4):
            _check(system.sweep_with_workers(w, table, grid, runs, seed, steps) == reference,
                   f"sweep rows with {w} workers")
        note += " and with 1, 2 and 4 workers"
    return out, note


def measure_worker_memory(make_system, repeats):
    """Each repeat starts a fresh pool (numpy preloaded where the system offers it), lets it idle, measures."""
    out = {"uss_mb_per_worker": [], "pss_mb_per_worker": [], "tree_uss_mb": [], "tree_pss_mb": []}
    found = []
    for _ in range(repeats):
        system = make_system()
        system.start(preload_numpy=True)
        try:
            pids = system.worker_pids()
            gc.collect()
            time.sleep(0.5)  # idle
            per = memory.per_process(pids)
            added = memory.tree()[1:]  # everything the system runs besides the driver
            snap = memory.snapshot(added, include_shmem=False)
        finally:
            system.close()
        _check(len(per) > 0, "no live worker found")
        found.append(len(per))
        out["uss_mb_per_worker"].append(sum(u for u, _ in per.values()) / len(per) / MB)
        out["pss_mb_per_worker"].append(sum(p for _, p in per.values()) / len(per) / MB)
        out["tree_uss_mb"].append(snap.uss / MB)
        out["tree_pss_mb"].append(snap.pss / MB)
    return out, (f"idle workers after importing numpy ({min(found)}-{max(found)} found); tree = every "
                 f"process the system started (scheduler, nanny, raylet, zygote... included)")


def measure_io_bound(system, size, repeats):
    from . import ioserver

    n, delay_ms, inflight = size["requests"], size["delay_ms"], size["inflight"]
    ideal_ms = n * delay_ms / inflight
    expected = [i * i for i in range(n)]
    out = {"ms_total": [], "x_ideal": []}
    peaks = []
    with ioserver.running(delay_ms) as base:
        urls = [f"{base}/n/{i}" for i in range(n)]
        res = system.fetch_all(urls[: max(2 * inflight, n // 10)], inflight)  # warm-up
        _check(res == expected[: len(res)], "fetch (warm-up)")
        for _ in range(repeats):
            ioserver.peak(base)  # resets the server's count
            t0 = time.perf_counter()
            res = system.fetch_all(urls, inflight)
            dt = time.perf_counter() - t0
            peaks.append(ioserver.peak(base))
            _check(res == expected, "fetch")
            out["ms_total"].append(dt * 1e3)
            out["x_ideal"].append(dt * 1e3 / ideal_ms)
    return out, (f"{n} GETs to a local HTTP server (own process, {ioserver.loop_name()}) answering after "
                 f"{delay_ms} ms, a fresh connection each; ideal {ideal_ms:.0f} ms with {inflight} "
                 f"in flight (x_ideal = time / ideal); the server held at most {max(peaks)} at once; "
                 f"{system.io_how(inflight)}")


# agents: variant -> (metric, size key prefix)
AGENT_VARIANTS = (("standard", "s_per_step", ""), ("heavy", "s_per_step_heavy", "heavy_"),
                  ("light", "s_per_step_light", "light_"))


def measure_agents(system, size, repeats):
    """Battery agents stepped through market hours (tasks.market_steps). Each repeat builds
    the agents (untimed), times the steps, checks the digest of every hour against the
    runner's plain-loop reference, and (standard variant) measures the process tree with the
    agents alive, above the idle pool."""
    workers = system.workers
    # Warm-up, the same for all: a few agents, two hours (pools started, numpy imported in
    # every worker). Kept small so that freed warm-up memory does not hide the agents' own.
    warm = 4 * workers
    system.agents_start(tasks.Battery, tasks.battery_args(warm, size["iterations"]))
    tasks.market_steps(system.agents_call, warm, 2)
    system.agents_stop()
    gc.collect()
    time.sleep(0.5)
    base = memory.snapshot(memory.tree())
    out = {metric: [] for _, metric, _ in AGENT_VARIANTS}
    out["mem_mb"] = []
    out["tree_mb"] = []
    for _ in range(repeats):
        for variant, metric, key in AGENT_VARIANTS:
            n, steps, iterations = size[key + "agents"], size[key + "steps"], size[key + "iterations"]
            system.agents_start(tasks.Battery, tasks.battery_args(n, iterations))
            try:
                t0 = time.perf_counter()
                digest = tasks.market_steps(system.agents_call, n, steps)
                dt = time.perf_counter() - t0
                _check(digest == size["expected"][variant],
                       f"{variant} bids differ from the plain loop's (digest {digest})")
                out[metric].append(dt / steps)
                if variant == "standard":
                    gc.collect()
                    time.sleep(0.3)
                    snap = memory.snapshot(memory.tree())
                    out["mem_mb"].append(snap.footprint_above(base) / MB)
                    out["tree_mb"].append(snap.pss / MB)
            finally:
                system.agents_stop()
            gc.collect()
    note = "; ".join(f"{variant}: {size[key + 'agents']} agents x {size[key + 'steps']} hours, "
                     f"~{size[key + 'task_us']:g} us each ({size[key + 'iterations']} iterations)"
                     for variant, _, key in AGENT_VARIANTS)
    return out, (f"{note}; state ~11 KB per agent; bids bit-identical to the plain loop's; mem_mb = "
                 f"process tree with {size['agents']} agents alive above the idle pool (PSS plus "
                 f"unmapped shared memory); tree_mb = the whole tree's PSS then (driver, workers, "
                 f"daemons)")
