"""shoal.Executor: one API over every backend (serial, thread, process; see _backend.py)."""
import atexit
import concurrent.futures
import os
import sys
import threading
import time
import weakref

from ._agents import AgentGroup, AgentHost
from ._aio import check_event_loop
from ._arena import DEFAULT_THRESHOLD
from ._backend import BACKEND_NAMES, Backend, BackendConfig, make_backend
from ._errors import CannotSendError, ExecutorClosedError, check_task_timeout
from ._import_guard import check as _check_not_importing
from ._sweep import sweep as _sweep
from ._threads import check as _check_threads
from ._trace import Recorder, Trace

__all__ = ["Executor"]

_live = weakref.WeakSet()


# At an exit caused by Ctrl-C, running tasks get this long to finish before their workers are
# stopped: long enough for a task that was about to end, short enough that the program exits
# as promptly as one without shoal.
EXIT_GRACE_S = 0.25


@atexit.register
def _shutdown_live_executors():
    """At a normal exit, like concurrent.futures: queued work finishes, then workers stop. At
    an exit caused by Ctrl-C (an uncaught KeyboardInterrupt), queued work is cancelled and
    running tasks are stopped after a short grace: the program exits promptly."""
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for ex in list(_live):
        try:
            if interrupted:
                ex._stop_at_exit()
            else:
                ex.shutdown(wait=True)
        except BaseException:  # noqa: BLE001 - never block interpreter exit on one executor
            pass


class Executor(concurrent.futures.Executor):
    """Runs tasks serially, on threads, or on a pool of worker processes, behind one API.

    ``backend="process"`` (default) forks workers from a zygote process started once per
    driver process; ``"thread"`` uses threads; ``"serial"`` runs each task in the caller
    at submit time, so ``pdb`` and tracebacks work as in a plain loop.

    A coroutine function (``async def``) given to ``submit``/``map``/``starmap`` runs in the
    worker's own event loop; ``concurrency=K`` lets each worker run up to K such tasks at
    once (plain functions still run one at a time per worker). ``event_loop`` picks that
    loop: ``"auto"`` (uvloop when installed, else asyncio's), ``"asyncio"``, ``"uvloop"``, or
    a function returning a new loop; the ``event_loop`` attribute names the loop in use
    (``"auto"`` resolved).

    ``threads_per_worker`` sizes the native thread pools (BLAS, OpenMP, MKL, numexpr) of each
    worker process: None (default) gives each ``max(1, cores // max_workers)`` threads, except
    where the user set the variables (``OMP_NUM_THREADS``, ...); an int sets every pool to that
    many; ``"inherit"`` leaves them as a process started from the caller's environment has
    them. The thread and serial backends run tasks in the caller's process and leave its pools
    alone.

    ``task_timeout`` (seconds, or None) limits how long each task (each item of a map chunk)
    may run: past it, its worker is killed and replaced and its future fails with
    :class:`shoal.TaskTimeoutError` (not retried); a coroutine task is cancelled in its event
    loop instead. ``map``, ``starmap`` and ``sweep`` take their own ``task_timeout``. Process
    backend only: a thread cannot be stopped, so the others raise ValueError.

    ``trace=True`` records every task for the executor's whole life (read it with
    :meth:`trace_data`); :meth:`trace` records a region. See docs/observability.md.
    """

    def __init__(self, max_workers=None, backend="process", *, initializer=None, initargs=(),
                 retries=2, preload=(), max_tasks_per_worker=None, buffer_threshold=DEFAULT_THRESHOLD,
                 concurrency=1, event_loop="auto", threads_per_worker=None, task_timeout=None, trace=False):
        _check_not_importing()  # a module shoal imports for a worker must not start executors
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        # The messages are concurrent.futures' own where it has one (users compare them).
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise ValueError(f"max_workers must be an int greater than 0, not {max_workers!r}")
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if not isinstance(backend, str) or backend not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}, not {backend!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if max_tasks_per_worker is not None and (not isinstance(max_tasks_per_worker, int)
                                                  or max_tasks_per_worker < 1):
            raise ValueError(f"max_tasks_per_worker must be a positive int or None, not {max_tasks_per_worker!r}")
        if buffer_threshold is not None and (not isinstance(buffer_threshold, int)
                                             or isinstance(buffer_threshold, bool) or buffer_threshold < 0):
            raise ValueError(f"buffer_threshold must be an int >= 0 (bytes) or None, not {buffer_threshold!r}")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency < 2**31:
            raise ValueError(f"concurrency must be a positive int, not {concurrency!r}")
        event_loop = check_event_loop(event_loop)
        threads_per_worker = _check_threads(threads_per_worker)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        if isinstance(preload, str):
            preload = (preload,)
        task_timeout = check_task_timeout(task_timeout)
        self.max_workers = max_workers
        self.backend = backend
        self.concurrency = concurrency
        self.event_loop = event_loop
        self.threads_per_worker = threads_per_worker
        self.task_timeout = task_timeout
        self._max_tasks_per_worker = max_tasks_per_worker
        self._shutdown = False   # no new tasks or agent operations
        self._lock = threading.Lock()
        self._agent_groups = weakref.WeakSet()  # for shutdown(): their queued operations run first
        self._backend = make_backend(backend, BackendConfig(
            max_workers=max_workers, initializer=initializer, initargs=tuple(initargs), retries=retries,
            preload=tuple(preload), max_tasks_per_worker=max_tasks_per_worker,
            buffer_threshold=buffer_threshold, concurrency=concurrency, event_loop=event_loop,
            threads_per_worker=threads_per_worker, task_timeout=task_timeout))
        # submit() skips prepare() where it changes nothing (backends that pickle): a call less
        # per task on the hot path.
        prepare = self._backend.prepare
        self._prepare = None if getattr(prepare, "__func__", None) is Backend.prepare else prepare
        self._recorder = None   # the _trace.Recorder while any trace is on
        self._tracing = 0       # how many traces are on
        self._trace_lock = threading.Lock()
        self._life_trace = self.trace() if trace else None
        # No worker is killed (for a limit or Future.kill) while it may hold agents that
        # cannot be rebuilt; weakly held: the backend must not keep the executor alive.
        ref = weakref.WeakMethod(self._unkillable)
        self._backend.unkillable = lambda: None if ref() is None else ref()()
        _live.add(self)

    def __reduce__(self):
        raise CannotSendError(
            "shoal: an Executor cannot be sent to a task: its workers cannot submit to it. Submit "
            "the follow-up tasks from the caller (as results come back), or create a new executor "
            "inside the task")

    def __repr__(self):
        state = "shut down" if self._shutdown else "running"
        conc = f" concurrency={self.concurrency}" if self.concurrency != 1 else ""
        return f"<shoal.Executor backend={self.backend!r} max_workers={self.max_workers}{conc} {state}>"

    # ------------------------------------------------------------------ tasks

    def _limit(self, task_timeout):
        """The time limit of a call's tasks: its own ``task_timeout``, else the executor's."""
        if task_timeout is None:
            return self.task_timeout
        task_timeout = check_task_timeout(task_timeout)
        self._backend.check_limit(task_timeout)
        return task_timeout

    def _unkillable(self):
        for group in list(self._agent_groups):
            if not group.checkpoint and not group._closed:
                return (f"an agent group ({len(group)} agents) lives in this executor's workers without "
                        "checkpoint=True, and killing a worker would lose its agents: close the group, "
                        "or create it with checkpoint=True (killed workers' agents are then rebuilt)")
        return None

    def _check_open(self):
        if self._shutdown:
            raise ExecutorClosedError("cannot schedule new futures after shutdown")

    def submit(self, fn, /, *args, **kwargs):
        """Schedules ``fn(*args, **kwargs)``; returns a :class:`shoal.Future` (which can also
        be awaited). Arguments that cannot be pickled raise here, in the caller. A coroutine
        function runs in the worker's event loop, up to ``concurrency`` at once per worker."""
        if self._shutdown:
            raise ExecutorClosedError("cannot schedule new futures after shutdown")
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if self._prepare is not None:
            fn, args, kwargs = self._prepare(fn, args, kwargs)
        if self.task_timeout is None:
            return self._backend.submit(fn, args, kwargs)
        return self._backend.submit(fn, args, kwargs, self.task_timeout)

    def _submit_call(self, fn, args, kwargs, placements=None, alone=False, limit=None):
        """submit() with what callers inside shoal pass: a call's Placements (made by
        ``self._backend.placements``; None: none), ``alone`` (see Backend.submit) and a time
        limit (None: the executor's task_timeout). The joblib backend's batches (alone, within
        the Parallel call's placements) and an MPI leader's tasks."""
        self._check_open()
        fn, args, kwargs = self._backend.prepare(fn, args, kwargs)
        options = {"alone": True} if alone else {}
        if placements is not None:
            options["placements"] = placements
        if limit is None:
            limit = self.task_timeout
        if limit is not None:
            options["limit"] = limit
        return self._backend.submit(fn, args, kwargs, **options)

    def map(self, fn, *iterables, timeout=None, chunksize=None, ordered=True, progress=False,
            task_timeout=None):
        """Lazy ``map``: reads the inputs only as far as needed to keep the workers busy,
        so it works on endless iterators with bounded memory. ``ordered=False`` yields
        results as they complete. ``chunksize=None`` adapts chunks to ~50 ms of work.
        With a coroutine function, each chunk's items are awaited one after another in the
        worker's event loop and up to ``concurrency`` chunks run at once per worker.
        ``progress=True`` shows a bar (count, rate, time left) while the results are read;
        ``progress`` may also be the caller's own bar (anything with ``update(n)``).
        ``task_timeout`` limits each item's run time (see the class; then chunks hold one
        item unless ``chunksize`` is given, and a timed-out item fails its whole chunk)."""
        self._check_open()
        limit = self._limit(task_timeout)
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if chunksize is not None:
            if not isinstance(chunksize, int) or isinstance(chunksize, bool):
                raise ValueError(f"chunksize must be an int >= 1 or None, not {chunksize!r}")
            if chunksize < 1:
                raise ValueError("chunksize must be >= 1.")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        bar = None
        if progress is not False:
            bar = _progress_for(progress, iterables, "map")
        length = _known_length(*iterables)
        fn, iterables = self._backend.prepare_items(fn, iterables)
        if len(iterables) == 1:  # items travel bare, not as 1-tuples: called as fn(x)
            return self._map(fn, iterables[0], False, timeout, chunksize, ordered, bar, length, limit)
        return self._map(fn, zip(*iterables), True, timeout, chunksize, ordered, bar, length, limit)

    def _map(self, fn, args, star, timeout, chunksize, ordered, bar, length, limit=None):
        if limit is not None:
            return self._backend.map(fn, args, star=star, timeout=timeout, chunksize=chunksize,
                                     ordered=ordered, bar=bar, length=length, max_workers=self.max_workers,
                                     concurrency=self.concurrency, limit=limit)
        return self._backend.map(fn, args, star=star, timeout=timeout, chunksize=chunksize,
                                 ordered=ordered, bar=bar, length=length,
                                 max_workers=self.max_workers, concurrency=self.concurrency)

    def starmap(self, fn, iterable, timeout=None, chunksize=None, ordered=True, progress=False,
                task_timeout=None):
        """Like :meth:`map`, with each item of ``iterable`` unpacked as the arguments."""
        self._check_open()
        limit = self._limit(task_timeout)
        bar = None
        if progress is not False:
            bar = _progress_for(progress, (iterable,), "starmap")
        length = _known_length(iterable)
        fn, args = self._backend.prepare_star_items(fn, (tuple(a) for a in iterable))
        return self._map(fn, args, True, timeout, chunksize, ordered, bar, length, limit)

    def sweep(self, fn, params, runs=1, seed=None, product=True, progress=False, errors="raise",
              stream=False, task_timeout=None):
        """Runs ``fn`` over a parameter grid times ``runs`` Monte Carlo runs, reproducibly.

        ``params`` is a dict of lists: their cartesian product (``product=True``) or the
        lists zipped (``product=False``, equal lengths) gives the parameter sets, each run
        ``runs`` times. Task ``i`` calls ``fn(**parameters, rng=rng)`` where ``rng`` is a
        ``numpy.random.Generator`` seeded from ``SeedSequence(seed)`` and ``i`` alone, so the
        results are the same on every backend and for any number of workers. ``fn`` returns
        a dict (its keys become columns) or any other value (column ``result``).

        Returns the rows (parameters, ``run``, returned values) in task order: a pandas
        DataFrame when pandas is importable, else a list of dicts. ``stream=True`` returns
        an iterator of row dicts in completion order instead. ``errors="keep"`` turns a
        failed task into a row with an ``error`` column instead of raising; with
        ``task_timeout`` (see the class) a run past the limit is such a row (or raises
        TaskTimeoutError). See docs/api.md for the details."""
        self._check_open()
        limit = self._limit(task_timeout)
        return _sweep(self._backend, fn, params, runs=runs, seed=seed, product=product, progress=progress,
                      errors=errors, stream=stream, max_workers=self.max_workers,
                      concurrency=self.concurrency, limit=limit)

    def agents(self, cls, init_args, *, checkpoint=False):
        """Builds one ``cls`` agent per item of ``init_args`` (a dict: keyword arguments, a
        tuple: positional ones, anything else: the one argument) inside the workers, spread
        evenly and kept in place; returns a :class:`shoal.AgentGroup` to call them in parallel.
        ``checkpoint=True`` saves each agent's state after every call so that agents whose
        worker dies are rebuilt on its replacement (process backend). See docs/api.md."""
        if self._max_tasks_per_worker:
            raise ValueError("agents cannot live in an executor with max_tasks_per_worker: a worker "
                             "retired after that many tasks would take its agents with it")
        host = AgentHost(self._backend, self._check_open, lambda: self._shutdown, self.backend)
        group = AgentGroup(host, cls, init_args, checkpoint=checkpoint)
        self._agent_groups.add(group)
        return group

    def worker_pids(self):
        """Process ids of the live workers (process backend; empty otherwise)."""
        return self._backend.worker_pids()

    # ---------------------------------------------------------------- tracing

    def trace(self):
        """Starts recording every task (worker, times, pickling, bytes, memory) until the
        returned :class:`shoal.Trace` is stopped; use it as ``with ex.trace() as t:``. Then
        ``t.summary()``, ``t.tasks()``, ``t.save("run.json")``. Tracing is off otherwise."""
        with self._trace_lock:
            if self._recorder is None:
                self._recorder = Recorder(self._backend, self._backend.slots)
                self._recorder.start_sampling()
                self._backend.tracer = self._recorder
            self._tracing += 1
            return Trace(self._recorder, self._trace_stopped)

    def _trace_stopped(self):
        with self._trace_lock:
            self._tracing -= 1
            if self._tracing == 0 and self._recorder is not None:
                self._backend.tracer = None
                self._recorder.stop_sampling()
                self._recorder = None

    def trace_data(self):
        """The :class:`shoal.Trace` of an executor made with ``trace=True``: every task so far."""
        if self._life_trace is None:
            raise ValueError("this executor was made without trace=True: use `with ex.trace() as t:`")
        return self._life_trace

    # -------------------------------------------------------------- lifetime

    def shutdown(self, wait=True, *, cancel_futures=False, kill_workers=False):
        """Stops accepting tasks. Queued tasks still run unless ``cancel_futures``;
        ``wait`` blocks until they are done and the workers have exited. ``kill_workers``
        (as in loky) also cancels what is queued and stops the workers at once, failing the
        running tasks with ExecutorShutdownError."""
        with self._lock:
            self._shutdown = True
        recorder = self._recorder
        if recorder is not None:  # the workers' exits at shutdown are not events of the run
            recorder.stop_sampling()
        if kill_workers:
            self._backend.cancel_all()
            self._backend.shutdown(True, kill=True)
            return
        if wait and not cancel_futures:
            self._finish_agent_operations()
        if cancel_futures:
            self._backend.cancel_all()
        self._backend.shutdown(wait)

    def _finish_agent_operations(self):
        """Agent operations queued behind a group's running one (call_async) run before the
        workers stop, as queued tasks do. Not from shoal's own threads (a callback on the
        completion thread): the operations may need that thread."""
        if threading.current_thread().name.startswith("shoal-"):
            return
        for group in list(self._agent_groups):
            last = group.last_operation_future()
            if last is not None:
                try:
                    last.exception()
                except BaseException:  # noqa: BLE001 - it failed or was cancelled: it is done
                    pass

    def _stop_at_exit(self):
        """Cancels what is queued, lets running tasks end for EXIT_GRACE_S, then stops the
        workers without waiting for them."""
        with self._lock:
            self._shutdown = True
        self._backend.cancel_all()
        self._backend.shutdown(False)
        deadline = time.monotonic() + EXIT_GRACE_S
        while self._backend.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._backend.shutdown(False, kill=True)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.shutdown(wait=True, kill_workers=True)  # Ctrl-C: nothing more runs
        else:
            self.shutdown(wait=True)
        return False


def _known_length(*iterables):
    """How many items zip(*iterables) yields, when every iterable has a length; else None."""
    try:
        return min(len(it) for it in iterables)
    except (TypeError, ValueError):
        return None


def _progress_for(progress, iterables, desc):
    from ._progress import known_length, progress_for

    return progress_for(progress, known_length(*iterables), desc)
