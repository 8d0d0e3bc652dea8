"""One adapter per system: how each library is started, called, mapped and stopped."""
# Every adapter offers the same operations; each is written the way its library's
# documentation recommends for that shape of work. An operation a library does not
# offer raises ``Unsupported`` and the workload is reported as `skipped` with the reason.
import math
import os

from . import ioserver, tasks


class Unsupported(Exception):
    """Raised when a system does not offer the capability a workload measures."""


def _chunks(items, n_chunks):
    """Splits ``items`` into about ``n_chunks`` contiguous lists (multiprocessing.Pool's rule: 4 per worker)."""
    size = max(1, math.ceil(len(items) / n_chunks))
    return [items[i:i + size] for i in range(0, len(items), size)]


def _pool_for_table(system, table, make):
    """The pool that holds ``table`` for the sweep workload, made on first use and kept for
    later calls with the same table (closed with the system)."""
    held = getattr(system, "_table_pool", None)
    if held is not None and held[0] is table:
        return held[1]
    if held is not None:
        _close_pool(held[1])
    pool = make()
    system._table_pool = (table, pool)
    return pool


def _close_pool(pool):
    if hasattr(pool, "shutdown"):
        pool.shutdown(wait=True)
    else:
        pool.close()
        pool.join()


def _close_table_pool(system):
    held = getattr(system, "_table_pool", None)
    if held is not None:
        system._table_pool = None
        _close_pool(held[1])


class System:
    name = "?"
    library = None  # distribution name whose version is reported
    imports = ()    # modules the system needs (startup times their import separately)

    def __init__(self, workers):
        self.workers = workers

    def version(self):
        if self.library is None:
            return ""
        from importlib.metadata import version
        return f"{self.library} {version(self.library)}"

    def import_library(self):
        """Imports ``imports``; ImportError means the system is not installed."""
        import importlib

        for name in self.imports:
            importlib.import_module(name)

    def start(self, **options):
        """Constructs the pool. ``options``: preload_numpy (bool)."""

    def close(self):
        """Shuts the pool down, waiting for its processes."""

    def teardown(self):
        """Stops whatever the library keeps alive past ``close`` (untimed, before exit)."""

    def call(self, fn, *args):
        """One task, waited for: the round trip."""
        raise Unsupported(f"{self.name} has no single-task call")

    def submit_all(self, fn, args_list):
        """Submits every task before waiting for any; returns the results in order."""
        raise Unsupported(f"{self.name} has no per-task submit")

    def map(self, fn, items):
        """fn over items with the library's recommended batching; returns a list."""
        raise Unsupported(f"{self.name} has no map")

    def starmap(self, fn, args_list):
        """[fn(*a) for a in args_list] as independent tasks; default: submit them all, then wait."""
        return self.submit_all(fn, args_list)

    def share(self, obj):
        """Places a large object the way the library recommends for reading it in many tasks;
        returns what ``map_shared`` takes. The caller then drops its own reference, so a
        library that keeps only its shared copy holds the data once. Default: the object."""
        return obj

    def map_shared(self, fn, shared, n):
        """[fn(shared, i) for i in range(n)], ``shared`` being what ``share`` returned."""
        return self.submit_all(fn, [(shared, i) for i in range(n)])

    def sweep(self, table, grid, runs, seed, steps):
        """The sweep workload: task i runs sweep_model on parameter set grid[i // runs] with
        the generator sweep_rng(seed, i), reading ``table`` shared the recommended way.
        Returns the results (dicts) in task order."""
        raise Unsupported(f"{self.name} has no sweep adapter")

    def worker_pids(self, sleep_s=0.3):
        """Pids of the workers, each made to import numpy (by running numpy_worker_pid)."""
        pids = self.submit_all(tasks.numpy_worker_pid, [(sleep_s,)] * (3 * self.workers))
        return sorted(set(pids))

    def fetch_all(self, urls, inflight):
        """io_bound: the GET of every URL (tasks.fetch / tasks.afetch), about `inflight` at
        once where the system can; returns the answers in order."""
        raise Unsupported(f"{self.name} has no way to keep many I/O waits in flight")

    def io_how(self, inflight):
        """io_bound: how this system ran the requests (for the note)."""
        return ""

    # Agents: stateful objects stepped in parallel (the `agents` workload).
    def agents_start(self, cls, init_args):
        """Builds ``cls(**a)`` for each ``a`` in init_args, wherever the system keeps agents."""
        raise Unsupported(f"{self.name} has no way to keep stateful agents")

    def agents_call(self, method, *args):
        """``[agent.method(*args) for agent in agents]``, in agent order."""
        raise Unsupported(f"{self.name} has no way to keep stateful agents")

    def agents_stop(self):
        """Frees the agents."""


class Serial(System):
    name = "serial"

    def call(self, fn, *args):
        return fn(*args)

    def submit_all(self, fn, args_list):
        return [fn(*a) for a in args_list]

    def map(self, fn, items):
        return list(map(fn, items))

    def map_shared(self, fn, shared, n):
        return [fn(shared, i) for i in range(n)]

    def sweep(self, table, grid, runs, seed, steps):
        return [tasks.sweep_task(table, *grid[i // runs], seed, i, steps)
                for i in range(len(grid) * runs)]

    def worker_pids(self, sleep_s=0.3):
        raise Unsupported("serial runs in the caller: it has no pool and no workers")

    def agents_start(self, cls, init_args):
        self.agents = [cls(**a) for a in init_args]

    def agents_call(self, method, *args):
        return [getattr(a, method)(*args) for a in self.agents]

    def agents_stop(self):
        self.agents = None


class _PoolCalls:
    """The calls of a system whose ``self.pool`` has multiprocessing.Pool's API."""

    def close(self):
        self.pool.close()
        self.pool.join()

    def call(self, fn, *args):
        return self.pool.apply(fn, args)

    def submit_all(self, fn, args_list):
        handles = [self.pool.apply_async(fn, a) for a in args_list]
        return [h.get() for h in handles]

    def map(self, fn, items):
        return self.pool.map(fn, items)


class MpPool(_PoolCalls, System):
    """multiprocessing.Pool with its defaults (fork on Linux); `mp_pool[spawn]` uses the spawn context."""

    imports = ("multiprocessing.pool",)
    name = "mp_pool"
    context = None

    def start(self, **options):
        import multiprocessing as mp

        ctx = mp.get_context(self.context)
        self.start_method = ctx.get_start_method()
        self.pool = ctx.Pool(self.workers)

    def close(self):
        _close_table_pool(self)
        _PoolCalls.close(self)

    def fetch_all(self, urls, inflight):
        raise Unsupported("a process pool runs one blocking task per worker (W requests in "
                          "flight): the same shape as cf_process, which is measured")
    def sweep(self, table, grid, runs, seed, steps):
        # "Better to inherit than pickle/unpickle" (multiprocessing's programming guidelines):
        # a pool whose initializer keeps the table, inherited by the forked workers; made
        # once per table (in the untimed warm-up) and reused, as a script would.
        pool = _pool_for_table(self, table, lambda: self.pool_class()(
            self.workers, initializer=tasks.set_sweep_table, initargs=(table,)))
        args = [(*grid[i // runs], seed, i, steps) for i in range(len(grid) * runs)]
        return pool.starmap(tasks.sweep_task_global, args)

    def pool_class(self):
        import multiprocessing as mp

        return mp.get_context(self.context).Pool


class MpPoolSpawn(MpPool):
    name = "mp_pool[spawn]"
    context = "spawn"


class _FuturesSystem(System):
    """A system driven through a concurrent.futures-style executor in `self.ex`."""

    def close(self):
        self.ex.shutdown(wait=True)

    def call(self, fn, *args):
        return self.ex.submit(fn, *args).result()

    def submit_all(self, fn, args_list):
        futures = [self.ex.submit(fn, *a) for a in args_list]
        return [f.result() for f in futures]

    def map(self, fn, items):
        return list(self.ex.map(fn, items))


class CfProcess(_FuturesSystem):
    """concurrent.futures.ProcessPoolExecutor; `map` at its default chunksize=1."""

    imports = ("concurrent.futures.process",)
    name = "cf_process"
    chunked = False

    def start(self, **options):
        from concurrent.futures import ProcessPoolExecutor

        self.ex = ProcessPoolExecutor(self.workers)

    def map(self, fn, items):
        if self.chunked:
            # The docs: "for very long iterables, using a large value for chunksize can
            # significantly improve performance"; Pool's rule of 4 chunks per worker.
            chunksize = max(1, math.ceil(len(items) / (4 * self.workers)))
            return list(self.ex.map(fn, items, chunksize=chunksize))
        return list(self.ex.map(fn, items))

    def sweep(self, table, grid, runs, seed, steps):
        # As for mp_pool: an initializer keeps the table in each (forked) worker.
        from concurrent.futures import ProcessPoolExecutor

        ex = _pool_for_table(self, table, lambda: ProcessPoolExecutor(
            self.workers, initializer=tasks.set_sweep_table, initargs=(table,)))
        n = len(grid) * runs
        futures = [ex.submit(tasks.sweep_task_global, *grid[i // runs], seed, i, steps)
                   for i in range(n)]
        return [f.result() for f in futures]

    def close(self):
        _close_table_pool(self)
        super().close()


    def fetch_all(self, urls, inflight):
        return list(self.ex.map(tasks.fetch, urls))

    def io_how(self, inflight):
        return (f"ProcessPoolExecutor({self.workers}).map(fetch): one blocking request per "
                f"worker process, {self.workers} in flight")


class CfProcessChunked(CfProcess):
    name = "cf_process[chunked]"
    chunked = True


class CfThread(_FuturesSystem):
    """concurrent.futures.ThreadPoolExecutor: the thread side of seed_map."""

    imports = ("concurrent.futures.thread",)
    name = "cf_thread"

    def start(self, **options):
        from concurrent.futures import ThreadPoolExecutor

        self.ex = ThreadPoolExecutor(self.workers)
        self.io = None

    def close(self):
        super().close()
        if self.io is not None:
            self.io.shutdown(wait=True)

    def fetch_all(self, urls, inflight):
        # I/O waits: as many threads as requests in flight (made in the untimed warm-up).
        from concurrent.futures import ThreadPoolExecutor

        if self.io is None:
            self.io = ThreadPoolExecutor(inflight)
        return list(self.io.map(tasks.fetch, urls))

    def io_how(self, inflight):
        return f"ThreadPoolExecutor({inflight}).map(fetch) in the driver, blocking sockets"


class Asyncio(System):
    """Plain coroutines in the driver: asyncio.gather with a semaphore (io_bound)."""

    imports = ("asyncio",)
    name = "asyncio"

    def start(self, **options):
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.loop_name = "asyncio's loop"

    def close(self):
        self.loop.close()

    def fetch_all(self, urls, inflight):
        import asyncio

        async def run():
            gate = asyncio.Semaphore(inflight)

            async def one(url):
                async with gate:
                    return await tasks.afetch(url)

            return await asyncio.gather(*(one(u) for u in urls))

        return self.loop.run_until_complete(run())

    def io_how(self, inflight):
        return f"asyncio.gather of afetch in the driver, Semaphore({inflight}), {self.loop_name}"


class AsyncioUvloop(Asyncio):
    """The same coroutines on uvloop, the loop Ray's workers and shoal's take when it is
    installed (uvloop.new_event_loop, as its docs show)."""

    imports = ("uvloop",)
    name = "asyncio[uvloop]"
    library = "uvloop"

    def start(self, **options):
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.loop_name = "uvloop"


class Joblib(System):
    """joblib.Parallel with loky, used as a context manager so its workers are reused across calls."""

    imports = ("joblib",)
    name = "joblib"
    library = "joblib"
    backend = "loky"

    def start(self, **options):
        from joblib import Parallel, delayed

        self.delayed = delayed
        # Defaults otherwise: batch_size="auto", max_nbytes="1M" (automatic memmapping).
        self.parallel = Parallel(n_jobs=self.workers, backend=self.backend)
        self.parallel.__enter__()

    def close(self):
        # Leaves loky's reusable executor alive, as joblib does by design: a later
        # Parallel in the same process (startup's second pool) reuses its workers.
        self.parallel.__exit__(None, None, None)

    def teardown(self):
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)

    def call(self, fn, *args):
        return self.parallel([self.delayed(fn)(*args)])[0]

    def submit_all(self, fn, args_list):
        raise Unsupported("joblib has no per-task submit/futures API; its batched "
                          "Parallel(...) call is measured in map_tiny")

    def map(self, fn, items):
        return self.parallel(self.delayed(fn)(x) for x in items)

    def starmap(self, fn, args_list):
        return self.parallel(self.delayed(fn)(*a) for a in args_list)

    def map_shared(self, fn, shared, n):
        # numpy arrays over max_nbytes are memmapped automatically, once per call
        return self.parallel(self.delayed(fn)(shared, i) for i in range(n))

    def sweep(self, table, grid, runs, seed, steps):
        # the table is memmapped automatically (max_nbytes="1M"), once per call
        return self.parallel(self.delayed(tasks.sweep_task)(table, *grid[i // runs], seed, i, steps)
                             for i in range(len(grid) * runs))

    def worker_pids(self, sleep_s=0.3):
        pids = self.parallel(self.delayed(tasks.numpy_worker_pid)(sleep_s)
                             for _ in range(3 * self.workers))
        return sorted(set(pids))

    def fetch_all(self, urls, inflight):
        raise Unsupported("loky runs one blocking task per worker process (W requests in "
                          "flight): the same shape as cf_process, which is measured")

    # The pattern of the energy-market seed: the agents live in the driver and every step
    # pickles each batch of agents to a worker, which steps them and returns them updated.
    def agents_start(self, cls, init_args):
        self.agents = [cls(**a) for a in init_args]

    def agents_call(self, method, *args):
        batches = _chunks(self.agents, 4 * self.workers)
        out = self.parallel(self.delayed(tasks.step_batch)(b, method, *args) for b in batches)
        self.agents = [a for agents, _ in out for a in agents]
        return [r for _, results in out for r in results]

    def agents_stop(self):
        self.agents = None


class Mpire(System):
    """mpire.WorkerPool (fork), keep_alive=True as its docs advise for repeated map calls."""

    imports = ("mpire",)
    name = "mpire"
    library = "mpire"

    def start(self, **options):
        from mpire import WorkerPool

        self.pool = WorkerPool(n_jobs=self.workers, keep_alive=True)
        self.shared_pool, self.shared = None, None

    def close(self):
        self.pool.stop_and_join()
        if self.shared_pool is not None:
            self.shared_pool.stop_and_join()

    def call(self, fn, *args):
        return self.pool.apply(fn, args)

    def submit_all(self, fn, args_list):
        handles = [self.pool.apply_async(fn, a) for a in args_list]
        return [h.get() for h in handles]

    def map(self, fn, items):
        # mpire unpacks an item that is itself iterable into arguments; its docs say to
        # wrap such items in a tuple (seed_map's ranges).
        if items and not isinstance(items[0], (int, float)):
            items = [(x,) for x in items]
        return self.pool.map(fn, items)

    def map_shared(self, fn, shared, n):
        # shared_objects: passed to fn as its first argument, inherited copy-on-write by
        # the forked workers. A pool per shared object (set_shared_objects compares the
        # old and new objects with `!=`, which raises for numpy arrays); its start is
        # counted in the untimed warm-up pass, as the docs' pattern reuses the pool.
        from mpire import WorkerPool

        if self.shared is not shared:
            if self.shared_pool is not None:
                self.shared_pool.stop_and_join()
            self.shared_pool = WorkerPool(n_jobs=self.workers, shared_objects=shared, keep_alive=True)
            self.shared = shared
        return self.shared_pool.map(fn, range(n))

    def sweep(self, table, grid, runs, seed, steps):
        # shared_objects: the table is passed to each task as its first argument,
        # inherited copy-on-write by the forked workers (one pool per table, as map_shared).
        from mpire import WorkerPool

        if self.shared is not table:
            if self.shared_pool is not None:
                self.shared_pool.stop_and_join()
            self.shared_pool = WorkerPool(n_jobs=self.workers, shared_objects=table, keep_alive=True)
            self.shared = table
        args = [(*grid[i // runs], seed, i, steps) for i in range(len(grid) * runs)]
        return self.shared_pool.map(tasks.sweep_task, args)

    def worker_pids(self, sleep_s=0.3):
        handles = [self.pool.apply_async(tasks.numpy_worker_pid, (sleep_s,))
                   for _ in range(3 * self.workers)]
        return sorted({h.get() for h in handles})

    def fetch_all(self, urls, inflight):
        raise Unsupported("mpire runs one blocking task per worker process (W requests in "
                          "flight): the same shape as cf_process, which is measured")


class Ray(System):
    """Ray tasks on a local ray.init(num_cpus=W); ray.put for large inputs; tiny tasks batched."""

    imports = ("ray",)
    name = "ray"
    library = "ray"

    def start(self, **options):
        import ray

        self.ray = ray
        ray.init(num_cpus=self.workers, log_to_driver=False, configure_logging=False)
        self._remote = {}

    def close(self):
        self.ray.shutdown()

    def _r(self, fn):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(fn)
        return self._remote[fn]

    def call(self, fn, *args):
        return self.ray.get(self._r(fn).remote(*args))

    def submit_all(self, fn, args_list):
        rf = self._r(fn)
        return self.ray.get([rf.remote(*a) for a in args_list])

    def map(self, fn, items):
        # Ray's docs call one task per tiny item an anti-pattern and recommend batching.
        rf = self._r(tasks.apply_chunk)
        out = self.ray.get([rf.remote(fn, c) for c in _chunks(items, 4 * self.workers)])
        return [y for chunk in out for y in chunk]

    def share(self, obj):
        return self.ray.put(obj)  # one copy in the object store, read zero-copy by workers

    def map_shared(self, fn, shared, n):
        rf = self._r(fn)
        return self.ray.get([rf.remote(shared, i) for i in range(n)])

    def fetch_all(self, urls, inflight):
        # Ray's AsyncIO actors: async methods run concurrently in the actor's event loop, up
        # to max_concurrency. One actor per worker, made in the untimed warm-up.
        per = max(1, inflight // self.workers)
        if getattr(self, "_fetchers", None) is None:
            @self.ray.remote(max_concurrency=per)
            class Fetcher:
                async def fetch(self, url):
                    return await tasks.afetch(url)

            self._fetchers = [Fetcher.remote() for _ in range(self.workers)]
        actors = self._fetchers
        return self.ray.get([actors[i % len(actors)].fetch.remote(u) for i, u in enumerate(urls)])

    def io_how(self, inflight):
        return (f"{self.workers} async actors (max_concurrency={max(1, inflight // self.workers)}) "
                f"awaiting afetch on {ioserver.loop_name()}")
    def sweep(self, table, grid, runs, seed, steps):
        # ray.put once per table (kept for later calls): workers read it zero-copy.
        if getattr(self, "_table", None) is not table:
            self._table, self._table_ref = table, self.ray.put(table)
        rf = self._r(tasks.sweep_task)
        return self.ray.get([rf.remote(self._table_ref, *grid[i // runs], seed, i, steps)
                             for i in range(len(grid) * runs)])

    # Actors hold state; one actor per worker, each holding a contiguous shard of the agents
    # (an actor per agent would be a process per agent: Ray's docs advise against many
    # tiny actors). Each step calls every actor once.
    def agents_start(self, cls, init_args):
        shard = self.ray.remote(tasks.AgentShard)
        self.actors = [shard.remote(cls, part) for part in _chunks(init_args, self.workers)]
        self.ray.get([a.size.remote() for a in self.actors])  # built before the clock starts

    def agents_call(self, method, *args):
        out = self.ray.get([a.call.remote(method, *args) for a in self.actors])
        return [r for part in out for r in part]

    def agents_stop(self):
        for a in self.actors:
            self.ray.kill(a)
        self.actors = None


class Dask(System):
    """dask.distributed LocalCluster of W single-threaded worker processes."""

    imports = ("dask.distributed",)
    name = "dask"
    library = "distributed"

    def start(self, **options):
        import logging

        from dask.distributed import Client, LocalCluster

        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True)
        self.client = Client(self.cluster)

    def close(self):
        self.client.close()
        self.cluster.close()

    def call(self, fn, *args):
        # pure=False: the same arguments must run again, not hit Dask's result cache
        return self.client.submit(fn, *args, pure=False).result()

    def submit_all(self, fn, args_list):
        futures = [self.client.submit(fn, *a, pure=False) for a in args_list]
        return self.client.gather(futures)

    def map(self, fn, items):
        # Dask's docs: tasks of ~1 ms are too small for the scheduler; use a bag with
        # a few partitions per worker.
        import dask.bag as db

        return db.from_sequence(items, npartitions=4 * self.workers).map(fn).compute()

    def share(self, obj):
        [shared_future] = self.client.scatter([obj], broadcast=True)
        return shared_future

    def map_shared(self, fn, shared, n):
        futures = self.client.map(fn, [shared] * n, range(n), pure=False)
        out = self.client.gather(futures)
        del futures
        return out

    def fetch_all(self, urls, inflight):
        raise Unsupported("dask runs each task in one of a worker's thread slots "
                          "(threads_per_worker=1 here: W requests in flight); coroutine tasks "
                          "are not a documented task type")
    def sweep(self, table, grid, runs, seed, steps):
        # client.scatter(broadcast=True) once per table (kept for later calls).
        if getattr(self, "_table", None) is not table:
            [self._table_future] = self.client.scatter([table], broadcast=True)
            self._table = table
        n = len(grid) * runs
        futures = [self.client.submit(tasks.sweep_task, self._table_future, *grid[i // runs],
                                      seed, i, steps, pure=False) for i in range(n)]
        return self.client.gather(futures)


class Shoal(_FuturesSystem):
    """shoal.Executor(max_workers=W): the process backend (`shoal[thread]`: backend="thread")."""

    imports = ("shoal",)
    name = "shoal"
    library = "shoal"
    backend = "process"

    def version(self):
        try:
            return super().version()
        except Exception:
            import shoal

            return f"shoal {getattr(shoal, '__version__', 'source tree')}"

    def start(self, preload_numpy=False, **options):
        import shoal

        kwargs = {"preload": ("numpy",)} if preload_numpy else {}
        if self.backend == "process":
            self.ex = shoal.Executor(max_workers=self.workers, **kwargs)
        else:
            self.ex = shoal.Executor(max_workers=self.workers, backend=self.backend, **kwargs)

    def share(self, obj):
        import shoal

        return shoal.share(obj)  # placed in the shared arena once; tasks get read-only views
    def sweep(self, table, grid, runs, seed, steps, executor=None):
        # ex.sweep with shoal.share(table) bound into the function: the table is placed in the
        # arena once; the function (registered once per executor) carries a reference, and
        # each worker maps the table read-only instead of holding a copy.
        import functools

        import shoal

        if getattr(self, "_model_key", None) != (id(table), steps):
            self._table, self._model_key = table, (id(table), steps)
            self._model = functools.partial(tasks.sweep_model, shoal.share(table), steps=steps)
        alphas = list(dict.fromkeys(a for a, _ in grid))
        betas = list(dict.fromkeys(b for _, b in grid))
        assert [(a, b) for a in alphas for b in betas] == list(grid)
        rows = (executor or self.ex).sweep(self._model, {"alpha": alphas, "beta": betas},
                                           runs=runs, seed=seed)
        if not isinstance(rows, list):  # a pandas DataFrame
            rows = rows.to_dict("records")
        return [{k: r[k] for k in ("price", "stock", "cash")} for r in rows]

    def sweep_with_workers(self, workers, table, grid, runs, seed, steps):
        """The same sweep on a fresh executor of ``workers`` workers (the identity check)."""
        import shoal

        with shoal.Executor(max_workers=workers, backend=self.backend) as ex:
            return self.sweep(table, grid, runs, seed, steps, executor=ex)

    def fetch_all(self, urls, inflight):
        # Coroutine tasks, `inflight / W` at once per worker: an executor made for it in the
        # untimed warm-up (the default one, concurrency=1, is shut down first).
        import shoal

        per = max(1, inflight // self.workers)
        if self.ex.concurrency != per:
            self.ex.shutdown(wait=True)
            self.ex = shoal.Executor(max_workers=self.workers, backend=self.backend, concurrency=per)
        return list(self.ex.map(tasks.afetch, urls))

    def io_how(self, inflight):
        return (f"Executor({self.workers}, backend={self.backend!r}, "
                f"concurrency={max(1, inflight // self.workers)}).map(afetch) on {ioserver.loop_name()}")

    def worker_pids(self, sleep_s=0.3):
        super().worker_pids(sleep_s)  # same warm-up as the peers
        pids = self.ex.worker_pids()
        if not pids:
            raise Unsupported(f"shoal backend={self.backend!r} has no worker processes")
        return sorted(pids)

    def agents_start(self, cls, init_args):
        self.group = self.ex.agents(cls, init_args)

    def agents_call(self, method, *args):
        return self.group.call(method, *args)

    def agents_stop(self):
        self.group.close()
        self.group = None


class ShoalThread(Shoal):
    name = "shoal[thread]"
    backend = "thread"


class ShoalDirect(Shoal):
    """The array passed as an ordinary argument (no shoal.share) to every item of one
    ``ex.map``: placed in the arena once for the call, each task a copy-on-write view of it."""

    name = "shoal[direct]"

    def share(self, obj):
        return obj

    def map_shared(self, fn, shared, n):
        return list(self.ex.map(fn, [shared] * n, range(n)))


class JoblibShoal(Joblib):
    """joblib.Parallel on shoal's joblib backend (``backend="shoal"``), called as the joblib
    peer is: arrays above max_nbytes are placed in shoal's arena once per call."""

    imports = ("joblib", "shoal.joblib")  # importing shoal.joblib registers "shoal"
    name = "joblib[shoal]"
    backend = "shoal"

    def version(self):
        return Shoal.version(self)

    def teardown(self):
        pass  # shoal's idle executor is shut down at interpreter exit


class ShoalPool(_PoolCalls, System):
    """shoal.Pool(W), multiprocessing.Pool's API on shoal's workers, called as mp_pool is."""

    imports = ("shoal",)
    name = "shoal.Pool"
    library = "shoal"

    def version(self):
        try:
            return super().version()
        except Exception:
            import shoal

            return f"shoal {getattr(shoal, '__version__', 'source tree')}"

    def start(self, **options):
        import shoal

        self.pool = shoal.Pool(self.workers)


BY_NAME = {cls.name: cls for cls in (Serial, MpPool, MpPoolSpawn, CfProcess, CfProcessChunked,
                                     CfThread, Asyncio, AsyncioUvloop, Joblib, Mpire, Ray, Dask, Shoal, ShoalThread,
                                     ShoalDirect, JoblibShoal, ShoalPool)}


def make(name, workers):
    return BY_NAME[name](workers)
