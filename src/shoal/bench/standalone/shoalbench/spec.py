"""What is measured: workloads, their metrics, sizes (quick and full) and the systems that run them."""

# Systems in table order. A name with brackets is a variant of its peer shown beside
# the default (the fairness rules in shoal/bench/runner.py say when one is added).
PEERS = ("serial", "mp_pool", "mp_pool[spawn]", "cf_process", "cf_process[chunked]",
         "cf_thread", "asyncio", "asyncio[uvloop]", "joblib", "mpire", "ray", "dask")
SHOAL = ("shoal", "shoal[thread]", "shoal[direct]", "joblib[shoal]", "shoal.Pool")
ALL_SYSTEMS = PEERS + SHOAL

_CORE = ("serial", "mp_pool", "cf_process", "joblib", "mpire", "ray", "dask", "shoal")

# workload -> systems that run it (a system that cannot is still listed: it reports `skipped`)
SYSTEMS = {
    "round_trip": _CORE,
    "submit_throughput": _CORE,
    # shoal.Pool: the drop-in for multiprocessing.Pool, measured beside it (issue 17's targets)
    "map_tiny": _CORE[:3] + ("cf_process[chunked]",) + _CORE[3:] + ("shoal.Pool", "joblib[shoal]"),
    "map_cpu": _CORE + ("shoal.Pool", "joblib[shoal]"),
    # Native thread pools: each system as a user runs it (no thread limits set by hand).
    "map_numpy": _CORE[:3] + ("cf_process[chunked]",) + _CORE[3:],
    # joblib[shoal]: joblib's Parallel through shoal's backend, the array passed directly
    "big_args": _CORE + ("shoal[direct]", "joblib[shoal]"),
    "big_results": _CORE,
    "startup": ("serial", "mp_pool", "mp_pool[spawn]") + _CORE[2:],
    "worker_memory": _CORE,
    "seed_map": _CORE[:3] + ("cf_thread",) + _CORE[3:] + ("shoal[thread]",),
    # threads vs coroutines vs shoal's coroutine tasks (process pools: one of them measured)
    "io_bound": ("mp_pool", "cf_process", "cf_thread", "asyncio", "asyncio[uvloop]", "joblib",
                 "mpire", "ray", "dask", "shoal", "shoal[thread]"),
    "sweep": _CORE,
    "agents": ("serial", "joblib", "ray", "shoal"),
}
WORKLOADS = tuple(SYSTEMS)

# workload -> [(metric, unit, lower_is_better)]
METRICS = {
    "round_trip": [("us_per_call", "us", True)],
    "submit_throughput": [("us_per_task", "us", True)],
    "map_tiny": [("us_per_item", "us", True)],
    "map_cpu": [("ms_total", "ms", True), ("efficiency", "ratio", False)],
    "map_numpy": [("s_total", "s", True), ("efficiency", "ratio", False)],
    "big_args": [("ms_per_task", "ms", True), ("peak_pss_mb", "MB", True),
                 ("peak_uss_mb", "MB", True), ("steady_pss_mb", "MB", True)],
    "big_results": [("ms_per_task", "ms", True)],
    "startup": [("first_pool_ms", "ms", True), ("second_pool_ms", "ms", True),
                ("import_ms", "ms", True)],
    "worker_memory": [("uss_mb_per_worker", "MB", True), ("pss_mb_per_worker", "MB", True),
                      ("tree_uss_mb", "MB", True), ("tree_pss_mb", "MB", True)],
    "seed_map": [("s_total", "s", True)],
    "io_bound": [("ms_total", "ms", True), ("x_ideal", "x", True)],
    "sweep": [("s_total", "s", True)],
    "agents": [("s_per_step", "s", True), ("s_per_step_heavy", "s", True),
               ("s_per_step_light", "s", True), ("mem_mb", "MB", True), ("tree_mb", "MB", True)],
}

# Sizes: full is BENCHMARKS.md's shape; quick shrinks counts so that every system
# finishes the whole suite in a few minutes on 2 cores.
SIZES = {
    "full": {
        "round_trip": {"calls": 2000},
        "submit_throughput": {"tasks": 20000},
        "map_tiny": {"items": 200000},
        "map_cpu": {"tasks": 2000, "task_ms": 1.0},
        "map_numpy": {"tasks": 60, "products": 20, "n": 400},
        "big_args": {"tasks": 20, "array_mb": 100},
        "big_results": {"tasks": 20, "result_mb": 50},
        "startup": {},
        "worker_memory": {},
        "seed_map": {"items": 64, "range": 10_000_000},
        "io_bound": {"requests": 500, "delay_ms": 20, "inflight": 100},
        "sweep": {"sets": 8, "runs": 25, "steps": 500, "table_mb": 50},
        # agents: BENCHMARKS.md's 10,000 agents x 20 hours at ~100 us, plus issue 5's heavy
        # (~1 ms per agent) and light (~10 us) steps. The runner adds iterations (calibrated
        # to task_us) and the plain loop's digests.
        "agents": {"agents": 10000, "steps": 20, "task_us": 100,
                   "heavy_agents": 2000, "heavy_steps": 5, "heavy_task_us": 1000,
                   "light_agents": 10000, "light_steps": 20, "light_task_us": 10},
    },
    "quick": {
        "round_trip": {"calls": 200},
        "submit_throughput": {"tasks": 1000},
        "map_tiny": {"items": 20000},
        "map_cpu": {"tasks": 300, "task_ms": 1.0},
        "map_numpy": {"tasks": 20, "products": 20, "n": 400},
        "big_args": {"tasks": 6, "array_mb": 40},
        "big_results": {"tasks": 8, "result_mb": 20},
        "startup": {},
        "worker_memory": {},
        "seed_map": {"items": 8, "range": 2_000_000},
        "io_bound": {"requests": 500, "delay_ms": 20, "inflight": 100},
        "sweep": {"sets": 4, "runs": 10, "steps": 500, "table_mb": 50},
        "agents": {"agents": 2000, "steps": 5, "task_us": 100,
                   "heavy_agents": 400, "heavy_steps": 3, "heavy_task_us": 1000,
                   "light_agents": 2000, "light_steps": 5, "light_task_us": 10},
    },
}

REPEATS = {"quick": 3, "full": 5}
