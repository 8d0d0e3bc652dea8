"""shoal.Executor: one API over the serial, thread and process backends."""
import atexit
import collections
import concurrent.futures
import itertools
import os
import queue
import threading
import time
import weakref

from ._arena import DEFAULT_THRESHOLD, unshare, unshare_function
from ._aio import check_event_loop, is_coroutine_function
from ._errors import RemoteTraceback
from ._pickle import iter_items
from ._thread import SerialBackend, ThreadBackend

__all__ = ["Executor"]

_BACKENDS = ("process", "thread", "serial")
_live = weakref.WeakSet()


@atexit.register
def _shutdown_live_executors():
    """At exit, like concurrent.futures: queued work finishes, then workers stop."""
    for ex in list(_live):
        try:
            ex.shutdown(wait=True)
        except BaseException:  # noqa: BLE001 - never block interpreter exit on one executor
            pass

# Adaptive chunking: aim for about this much work per chunk, measured as it runs. Each chunk
# costs the driver a wake-up and some Python (~70-100 µs of CPU on a 2-core machine whose cores
# the workers are using): 1 ms chunks lost ~10 % of map_cpu's efficiency, 10 ms chunks ~1 %, and
# tasks of 5-10 ms went one per chunk (the sweep workload's 7 ms runs: ~3 % behind Pool.starmap's
# chunks of 25); at 50 ms it is level with Pool.starmap. When the
# input's length is known, a chunk also never exceeds its share of what is left, so the last
# chunks stay small and the workers finish together. A chunk's arguments and results together
# stay under _MAX_CHUNK_BYTES (as measured on the chunks so far): the window holds 4 chunks per
# worker, and chunks of many large arrays would hold gigabytes.
_TARGET_CHUNK_S = 0.05
_TARGET_COROUTINE_CHUNK_S = 0.01  # coroutine chunks (concurrency > 1): see _MapWindow
_MAX_CHUNK = 1 << 16
_MAX_CHUNK_BYTES = 16 << 20


class Executor(concurrent.futures.Executor):
    """Runs tasks serially, on threads, or on a pool of worker processes, behind one API.

    ``backend="process"`` (default) forks workers from a zygote process started once per
    driver process; ``"thread"`` uses threads; ``"serial"`` runs each task in the caller
    at submit time, so ``pdb`` and tracebacks work as in a plain loop.

    A coroutine function (``async def``) given to ``submit``/``map``/``starmap`` runs in the
    worker's own event loop; ``concurrency=K`` lets each worker run up to K such tasks at
    once (plain functions still run one at a time per worker). ``event_loop`` picks that
    loop: ``"auto"`` (uvloop when installed, else asyncio's), ``"asyncio"``, ``"uvloop"``, or
    a function returning a new loop.
    """

    def __init__(self, max_workers=None, backend="process", *, initializer=None, initargs=(),
                 retries=2, preload=(), max_tasks_per_worker=None, buffer_threshold=DEFAULT_THRESHOLD,
                 concurrency=1, event_loop="auto"):
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, not {max_workers!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}, not {backend!r}")
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
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        if isinstance(preload, str):
            preload = (preload,)
        self.max_workers = max_workers
        self.backend = backend
        self.concurrency = concurrency
        self.event_loop = event_loop
        self._max_tasks_per_worker = max_tasks_per_worker
        self._shutdown = False   # no new tasks or agent operations
        self._stopping = False   # the backend is being stopped: queued agent operations fail
        self._lock = threading.Lock()
        self._agent_groups = weakref.WeakSet()  # for shutdown(): their queued operations run first
        if backend == "process":
            from ._process import ProcessBackend
            self._backend = ProcessBackend(max_workers, initializer, initargs, retries,
                                           tuple(preload), max_tasks_per_worker, buffer_threshold,
                                           concurrency=concurrency, event_loop=event_loop)
        elif backend == "thread":
            self._backend = ThreadBackend(max_workers, initializer, initargs, concurrency, event_loop)
        else:
            self._backend = SerialBackend(max_workers, initializer, initargs, event_loop)
        _live.add(self)

    def __repr__(self):
        state = "shut down" if self._shutdown else "running"
        conc = f" concurrency={self.concurrency}" if self.concurrency != 1 else ""
        return f"<shoal.Executor backend={self.backend!r} max_workers={self.max_workers}{conc} {state}>"

    # ------------------------------------------------------------------ tasks

    def _check_open(self):
        if self._shutdown:
            raise RuntimeError("cannot schedule new tasks after shutdown")

    def submit(self, fn, /, *args, **kwargs):
        """Schedules ``fn(*args, **kwargs)``; returns a :class:`shoal.Future` (which can also
        be awaited). Arguments that cannot be pickled raise here, in the caller. A coroutine
        function runs in the worker's event loop, up to ``concurrency`` at once per worker."""
        self._check_open()
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if self.backend != "process":  # objects, not frames: a handle stands for its value
            fn = unshare_function(fn)
            args = tuple(map(unshare, args))
            if kwargs:
                kwargs = {k: unshare(v) for k, v in kwargs.items()}
        return self._backend.submit(fn, args, kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=None, ordered=True, progress=False):
        """Lazy ``map``: reads the inputs only as far as needed to keep the workers busy,
        so it works on endless iterators with bounded memory. ``ordered=False`` yields
        results as they complete. ``chunksize=None`` adapts chunks to ~50 ms of work.
        With a coroutine function, each chunk's items are awaited one after another in the
        worker's event loop and up to ``concurrency`` chunks run at once per worker.
        ``progress=True`` shows a bar (count, rate, time left) while the results are read;
        ``progress`` may also be the caller's own bar (anything with ``update(n)``)."""
        self._check_open()
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int or None, not {chunksize!r}")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        bar = None
        if progress is not False:
            bar = _progress_for(progress, iterables, "map")
        length = _known_length(*iterables)
        if self.backend != "process":
            fn = unshare_function(fn)
            iterables = [map(unshare, it) for it in iterables]
        args = zip(*iterables)
        if self.backend == "serial":
            self._backend.check()
            return _serial_map(self._backend, fn, args, timeout, bar)
        if len(iterables) == 1:  # items travel bare, not as 1-tuples: called as fn(x)
            return _MapIterator(self, fn, iterables[0], timeout, chunksize, ordered, star=False, bar=bar,
                                length=length)
        return _MapIterator(self, fn, args, timeout, chunksize, ordered, bar=bar, length=length)

    def starmap(self, fn, iterable, timeout=None, chunksize=None, ordered=True, progress=False):
        """Like :meth:`map`, with each item of ``iterable`` unpacked as the arguments."""
        self._check_open()
        bar = None
        if progress is not False:
            bar = _progress_for(progress, (iterable,), "starmap")
        length = _known_length(iterable)
        if self.backend != "process":
            fn = unshare_function(fn)
            iterable = (tuple(map(unshare, a)) for a in iterable)
        if self.backend == "serial":
            self._backend.check()
            return _serial_map(self._backend, fn, (tuple(a) for a in iterable), timeout, bar)
        return _MapIterator(self, fn, (tuple(a) for a in iterable), timeout, chunksize, ordered, bar=bar,
                            length=length)

    def sweep(self, fn, params, runs=1, seed=None, product=True, progress=False, errors="raise",
              stream=False):
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
        failed task into a row with an ``error`` column instead of raising.
        See docs/api.md for the details."""
        self._check_open()
        from ._sweep import sweep

        return sweep(self, fn, params, runs=runs, seed=seed, product=product, progress=progress,
                     errors=errors, stream=stream)

    def agents(self, cls, init_args, *, checkpoint=False):
        """Builds one ``cls`` agent per item of ``init_args`` (a dict: keyword arguments, a
        tuple: positional ones, anything else: the one argument) inside the workers, spread
        evenly and kept in place; returns a :class:`shoal.AgentGroup` to call them in parallel.
        ``checkpoint=True`` saves each agent's state after every call so that agents whose
        worker dies are rebuilt on its replacement (process backend). See docs/api.md."""
        from ._agents import AgentGroup

        return AgentGroup(self, cls, init_args, checkpoint=checkpoint)

    def worker_pids(self):
        """Process ids of the live workers (process backend; empty otherwise)."""
        return self._backend.worker_pids()

    # -------------------------------------------------------------- lifetime

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stops accepting tasks. Queued tasks still run unless ``cancel_futures``;
        ``wait`` blocks until they are done and the workers have exited."""
        with self._lock:
            self._shutdown = True
        if wait and not cancel_futures:
            self._finish_agent_operations()
        with self._lock:
            self._stopping = True
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
            last = group._last_operation()
            if last is not None:
                try:
                    last.future.exception()
                except BaseException:  # noqa: BLE001 - it failed or was cancelled: it is done
                    pass

    def _terminate(self):
        """Cancels what is queued and stops the workers now (Ctrl-C, interpreter exit)."""
        self._shutdown = self._stopping = True
        self._backend.cancel_all()
        self._backend.shutdown(True, kill=True)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._terminate()
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


def _serial_map(backend, fn, args, timeout=None, bar=None):
    """Runs each item when it is asked for, in the caller. `timeout` is checked between
    items (a running item cannot be interrupted in the caller's own thread)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    call = backend.call
    try:
        for a in args:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError()
            y = call(fn, a, {})
            if bar is not None:
                bar.update(1)
            yield y
    finally:
        if bar is not None:
            bar.close()


def _raise_chunk_error(err):
    exc, tb = err
    if tb is not None:
        exc.__cause__ = RemoteTraceback(tb)
    raise exc


class _MapWindow:
    """Keeps a bounded window of chunks in flight for one map() call."""

    def __init__(self, executor, fn, args, timeout, chunksize, ordered, star=True, bar=None, length=None):
        self._backend = executor._backend
        self._left = length  # items not yet submitted, when the input's length is known
        self._item_bytes = 0  # the most bytes per item (arguments + results) a chunk has held
        self._fn = fn
        self._star = star
        self._bar = bar
        self._args = iter(args)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._fixed = chunksize
        self._size = chunksize or 1
        self._ordered = ordered
        self._window = 4 * executor.max_workers
        self._target = _TARGET_CHUNK_S
        self._slots = 2 * executor.max_workers  # a chunk is at most 1/slots of what is left
        if executor.concurrency > 1 and is_coroutine_function(fn):
            # Enough chunks to keep `concurrency` running in every worker, and as many queued.
            self._window = max(self._window, 2 * executor.concurrency * executor.max_workers)
            # A chunk's items are awaited one after another, and its time is mostly waiting:
            # longer chunks would leave slots idle (500 waits of 20 ms in chunks of 2 take
            # three rounds of 40 ms on 100 slots, not five of 20).
            self._target = _TARGET_COROUTINE_CHUNK_S
            self._slots = executor.concurrency * executor.max_workers
        self._pending = collections.deque()   # ordered: futures in input order
        self._done = queue.SimpleQueue()       # unordered: futures as they finish
        self._outstanding = 0
        self._exhausted = False
        self._fill()  # start now, so errors in pickling arguments show at the call

    def _learn(self, n_items, seconds, nbytes=0):
        if self._fixed or n_items == 0:
            return
        per_item = max(seconds / n_items, 1e-8)
        target = int(self._target / per_item)
        if nbytes:
            self._item_bytes = max(self._item_bytes, nbytes / n_items)
        if self._item_bytes:
            target = min(target, int(_MAX_CHUNK_BYTES / self._item_bytes))
        if self._left is not None:  # at most a share of what is left: the workers finish together
            target = min(target, -(-self._left // self._slots))
        self._size = max(1, min(_MAX_CHUNK, target, self._size * 8))

    def _fill(self):
        while not self._exhausted and self._outstanding < self._window:
            items = list(itertools.islice(self._args, self._size))
            if not items:
                self._exhausted = True
                break
            if self._left is not None:
                self._left -= len(items)
            fut = self._backend.submit_chunk(self._fn, items, self._star)
            fut._shoal_items = items
            self._outstanding += 1
            if self._ordered:
                self._pending.append(fut)
            else:
                fut.add_done_callback(self._done.put)
            # Chunks grow only from measured times (_learn): a blind ramp would hand one
            # worker 32 items of a task that turns out to take a second each.

    def _remaining(self):
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        return left

    def _next_done(self):
        """The next finished chunk's future (its items in ``fut._shoal_items``), taken out
        of the window, or None at the end. Its result may still be an exception."""
        if self._outstanding == 0:
            self._fill()
            if self._outstanding == 0:
                return None
        try:
            if self._ordered:
                fut = self._pending[0]
                fut.exception(self._remaining())  # waits; raises only on timeout or cancel
                self._pending.popleft()
            else:
                fut = self._done.get(timeout=self._remaining())
        except (concurrent.futures.TimeoutError, queue.Empty):
            raise TimeoutError() from None
        self._outstanding -= 1
        return fut

    def _next_chunk(self):
        """The next finished chunk's (packed results, error or None, arena buffers), or None
        at the end."""
        fut = self._next_done()
        if fut is None:
            return None
        results, err, elapsed, buffers = fut.result()
        self._learn(len(fut._shoal_items), elapsed, getattr(fut, "_shoal_nbytes", 0))
        self._fill()
        return results, err, buffers

    def close(self):
        """Cancels chunks not yet handed to a worker."""
        self._exhausted = True
        for fut in self._pending:
            fut.cancel()
        self._pending.clear()

    def __iter__(self):
        # itertools.chain hands out the items at C speed; the generator runs once per chunk
        # (a generator's `yield from` cost ~30 ns per item, as much as pickling it).
        return itertools.chain.from_iterable(self._chunks())

    def _chunks(self):
        """Each finished chunk's results (a list, or an iterator that loads them one by one),
        in order; a chunk's error is raised after its good results."""
        bar = self._bar
        try:
            while True:
                chunk = self._next_chunk()
                if chunk is None:
                    return
                results, err, buffers = chunk
                per_item, data = results
                if bar is not None:
                    bar.update(len(data))
                yield iter_items(results, buffers) if per_item else data
                if err is not None:
                    _raise_chunk_error(err)
        finally:
            if bar is not None:
                bar.close()
            self.close()


def _MapIterator(executor, fn, args, timeout, chunksize, ordered, star=True, bar=None, length=None):
    return iter(_MapWindow(executor, fn, args, timeout, chunksize, ordered, star, bar, length))
