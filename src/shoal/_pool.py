"""shoal.Pool: the API of multiprocessing.pool.Pool on shoal's backends (the same seam as Executor).

A call's path:

    apply / apply_async ─ Backend.submit ─────────────► Future ─► ApplyResult (callbacks)
    map / starmap       ─ MapWindow, iterated in the caller ─► list
    map_async, imap, imap_unordered, starmap_async
                        ─ a "shoal-pool-map" thread drives a MapWindow ─► MapResult or IMapIterator

Like multiprocessing's task handler, the thread behind the asynchronous forms keeps the workers
busy whether or not the caller reads the results yet, so close() + join() waits for them.
What differs from multiprocessing.Pool (docs/migrating.md has the whole list): the workers are
forked from shoal's zygote whatever ``context`` says; a worker that dies fails its task with
WorkerCrashedError instead of hanging the pool; a failing initializer raises InitializerError
instead of restarting workers forever; a map stops at its first failing item (the items after it
may not run) and raises that item's exception; ``chunksize=None`` adapts chunks to the measured
task time; after terminate(), results not yet ready fail with ExecutorShutdownError instead of
never becoming ready.
"""
import atexit
import collections
import concurrent.futures
import itertools
import multiprocessing
import os
import threading
import weakref

from ._arena import DEFAULT_THRESHOLD
from ._backend import BACKEND_NAMES, BackendConfig, make_backend
from ._errors import ExecutorShutdownError, RemoteTraceback
from ._mapping import MapWindow
from ._pickle import iter_items

__all__ = ["Pool", "ApplyResult", "AsyncResult", "MapResult", "IMapIterator", "IMapUnorderedIterator"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"

_live = weakref.WeakSet()


@atexit.register
def _terminate_live_pools():
    """At exit, as multiprocessing's finalizers do for its pools: the workers are stopped."""
    for pool in list(_live):
        try:
            pool.terminate()
        except BaseException:  # noqa: BLE001 - never block interpreter exit on one pool
            pass


class Pool:
    """A process pool with the API of ``multiprocessing.pool.Pool``, on shoal's workers.

    ``Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None, context=None)``
    as in multiprocessing (``context`` is accepted and ignored: the workers are forked from
    shoal's zygote). shoal's own options are keyword-only: ``backend`` ("process", "thread" or
    "serial"), ``retries`` (how often a task whose worker died runs again) and ``preload``
    (modules the workers import before the first task).

    Not picklable; its methods may be called from any thread. The exit of ``with Pool() as p:``
    calls terminate(), as multiprocessing's does: read the results inside the block."""

    def __init__(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None,
                 context=None, *, backend="process", retries=2, preload=()):
        self._state = None  # __del__ and repr work even if the checks below raise
        self._backend = None
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        if not isinstance(backend, str) or backend not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}, not {backend!r}")
        if isinstance(preload, str):
            preload = (preload,)
        self._processes = processes  # the name multiprocessing uses; some libraries read it
        self._backend = make_backend(backend, BackendConfig(
            max_workers=processes, initializer=initializer, initargs=tuple(initargs), retries=retries,
            preload=tuple(preload), max_tasks_per_worker=maxtasksperchild,
            buffer_threshold=DEFAULT_THRESHOLD))
        # Work not finished yet (results and map threads): join() waits until there is none.
        self._busy = 0
        self._idle = threading.Condition(threading.Lock())
        self._results = weakref.WeakSet()  # async results not ready: terminate() fails them
        self._state = _RUN
        _live.add(self)

    def __repr__(self):
        return f"<shoal.Pool state={self._state} pool_size={self._processes}>"

    def __reduce__(self):
        raise NotImplementedError('pool objects cannot be passed between processes or pickled')

    # ------------------------------------------------------------------ bookkeeping

    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _begin(self):
        with self._idle:
            self._busy += 1

    def _end(self):
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    # ------------------------------------------------------------------ single calls

    def apply(self, func, args=(), kwds={}):
        """``func(*args, **kwds)`` in a worker; returns its result or raises its exception."""
        self._check_running()
        self._begin()
        try:
            fut = self._backend.submit(*self._backend.prepare(func, tuple(args), dict(kwds)))
            return fut.result()
        finally:
            self._end()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        """Schedules ``func(*args, **kwds)``; returns an :class:`ApplyResult`. ``callback``
        gets the result, ``error_callback`` the exception (on a shoal thread: keep them short)."""
        self._check_running()
        result = ApplyResult(self, callback, error_callback)
        try:
            fut = self._backend.submit(*self._backend.prepare(func, tuple(args), dict(kwds)))
        except BaseException:
            result._abandon()
            raise
        result._follow(fut)
        return result

    # ------------------------------------------------------------------ maps

    def _window(self, func, items, star, chunksize, ordered, length):
        if star:
            func, items = self._backend.prepare_star_items(func, items)
        else:
            func, (items,) = self._backend.prepare_items(func, (items,))
        return MapWindow(self._backend, func, items, timeout=None, chunksize=chunksize, ordered=ordered,
                         star=star, length=length, max_workers=self._processes)

    def _map_now(self, func, iterable, star, chunksize):
        self._check_running()
        _check_chunksize(chunksize, allow_none=True)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        items = (tuple(a) for a in iterable) if star else iterable
        self._begin()
        try:
            # In the caller, as Executor.map does: no thread hop between the results and the caller.
            return list(self._window(func, items, star, chunksize, True, len(iterable)))
        finally:
            self._end()

    def map(self, func, iterable, chunksize=None):
        """``[func(x) for x in iterable]`` on the workers, in order. ``chunksize=None`` adapts
        the chunks to the measured task time. The first failing item's exception is raised."""
        return self._map_now(func, iterable, False, chunksize)

    def starmap(self, func, iterable, chunksize=None):
        """``[func(*args) for args in iterable]`` on the workers, in order."""
        return self._map_now(func, iterable, True, chunksize)

    def _map_async(self, func, iterable, star, chunksize, callback, error_callback):
        self._check_running()
        _check_chunksize(chunksize, allow_none=True)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        items = [tuple(a) for a in iterable] if star else iterable
        result = MapResult(self, len(items), callback, error_callback)
        if len(items) == 0:
            result._set(True, [])
            return result
        try:
            window = self._window(func, items, star, chunksize, True, len(items))
        except BaseException:
            result._abandon()
            raise
        self._drive(window, result._chunk, result._finish)
        return result

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Like :meth:`map`; returns a :class:`MapResult` at once."""
        return self._map_async(func, iterable, False, chunksize, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """Like :meth:`starmap`; returns a :class:`MapResult` at once."""
        return self._map_async(func, iterable, True, chunksize, callback, error_callback)

    def _imap(self, func, iterable, chunksize, ordered):
        self._check_running()
        _check_chunksize(chunksize, allow_none=True)
        result = IMapIterator(self) if ordered else IMapUnorderedIterator(self)
        # chunksize=1 (multiprocessing's default): every item is its own task and a failing item
        # raises at its place while the others go on. Larger (or adaptive) chunks: the iteration
        # ends at the first failing item, as multiprocessing's chunked imap does.
        # A chosen chunksize > 1 fails as a whole, as multiprocessing's chunks do (their items
        # before the failing one are not returned); adaptive chunks return them.
        each = chunksize == 1
        whole = chunksize is not None and chunksize > 1
        items = _guarded(iter(iterable), result)
        try:
            window = self._window(func, items, False, chunksize, ordered, None)
        except BaseException:
            result._abandon()
            raise
        self._drive(window, lambda results, error: result._chunk(
            [] if whole and error is not None else results, error, each), result._finish)
        return result

    def imap(self, func, iterable, chunksize=1):
        """An iterator of ``func(x)`` for x in ``iterable``, in order, as they are ready; its
        ``next(timeout)`` raises multiprocessing.TimeoutError. ``chunksize=None`` adapts."""
        return self._imap(func, iterable, chunksize, True)

    def imap_unordered(self, func, iterable, chunksize=1):
        """Like :meth:`imap`, in the order the results are ready."""
        return self._imap(func, iterable, chunksize, False)

    def _drive(self, window, on_chunk, on_end):
        """Runs ``window`` to its end on a thread: ``on_chunk(results, error)`` per chunk (it
        returns False to stop), then ``on_end()``."""
        self._begin()
        thread = threading.Thread(target=_drive_window, args=(window, on_chunk, on_end, self._end),
                                  name="shoal-pool-map", daemon=True)
        try:
            thread.start()
        except BaseException:
            window.close()
            self._end()
            raise

    # ------------------------------------------------------------------ lifetime

    def close(self):
        """No more tasks; the ones given run to the end (join() waits for them)."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self):
        """Stops the workers now. Results not ready yet fail with ExecutorShutdownError."""
        if self._backend is None:
            return
        self._state = _TERMINATE
        self._backend.cancel_all()
        self._backend.shutdown(True, kill=True)
        for result in list(self._results):
            result._set(False, ExecutorShutdownError("shoal: the pool was terminated before the task finished"))

    def join(self):
        """Waits for the work given to finish and the workers to exit (after close() or
        terminate())."""
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        if self._state not in (_CLOSE, _TERMINATE):
            raise ValueError("In unknown state")
        with self._idle:
            while self._busy:
                self._idle.wait(0.1)  # short waits: Ctrl-C stays responsive
        self._backend.shutdown(True)

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()

    def __del__(self):
        try:
            if self._state == _RUN and self._backend is not None:
                self._backend.shutdown(False)
        except Exception:
            pass

    # ------------------------------------------------------------------ shoal's additions

    def worker_pids(self):
        """Process ids of the live workers (process backend; empty otherwise)."""
        return self._backend.worker_pids()


def _check_chunksize(chunksize, allow_none):
    if chunksize is None and allow_none:
        return
    if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")


def _guarded(items, result):
    """The items; if iterating them raises, the iteration ends and ``result`` reports the
    exception at that place (multiprocessing does the same)."""
    try:
        yield from items
    except Exception as exc:  # noqa: BLE001 - the caller's iterable: reported, not lost
        result._input_failed(exc)


def _chunk_error(err):
    exc, tb = err
    if tb is not None:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def _terminated(exc):
    """A chunk cancelled by terminate() fails as the other unfinished work does."""
    if isinstance(exc, concurrent.futures.CancelledError):
        return ExecutorShutdownError("shoal: the pool was terminated before the task ran")
    return exc


def _drive_window(window, on_chunk, on_end, done):
    """A map thread: the results of each chunk of ``window``, in its order, to ``on_chunk``."""
    try:
        while True:
            try:
                finished = window.next_finished()
            except BaseException as exc:  # noqa: BLE001 - e.g. the pool was terminated mid-submit
                on_chunk([], _terminated(exc))
                return
            if finished is None:
                return
            fut, items = finished
            try:
                outcome = fut.result()
            except BaseException as exc:  # noqa: BLE001 - a crashed worker, a terminated pool
                if on_chunk([], _terminated(exc)) is False:
                    return
                continue
            try:
                per_item, data = outcome.results
                results = list(iter_items(outcome.results, outcome.buffers)) if per_item else data
                error = None if outcome.error is None else _chunk_error(outcome.error)
            except BaseException as exc:  # noqa: BLE001 - a result that cannot be unpickled
                results, error = [], exc
            refill_error = None
            try:
                window.learned(len(items), outcome)  # refills the window before delivering
            except BaseException as exc:  # noqa: BLE001 - submitting after terminate()
                refill_error = exc
            if on_chunk(results, error) is False:
                return
            if refill_error is not None:
                on_chunk([], refill_error)
                return
    finally:
        try:
            window.close()
        finally:
            try:
                on_end()
            finally:
                done()


# ---------------------------------------------------------------------- results


class ApplyResult:
    """The result of :meth:`Pool.apply_async` (``multiprocessing.pool.ApplyResult``'s API):
    ``get(timeout)``, ``wait(timeout)``, ``ready()``, ``successful()``."""

    def __init__(self, pool, callback, error_callback):
        self._pool = pool
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callback = callback
        self._error_callback = error_callback
        self._future = None
        self._success = None
        self._value = None
        pool._begin()
        pool._results.add(self)

    def __repr__(self):
        state = "ready" if self.ready() else "pending"
        return f"<{type(self).__module__}.{type(self).__qualname__} {state}>"

    def ready(self):
        """True once the result (or exception) is there."""
        return self._event.is_set()

    def successful(self):
        """Whether the call returned without raising; ValueError if not ready yet."""
        if not self.ready():
            raise ValueError("{0!r} not ready".format(self))
        return self._success

    def wait(self, timeout=None):
        """Waits until the result is ready, or ``timeout`` seconds."""
        fut = self._future
        if fut is not None and not self._event.is_set():
            try:
                fut.exception(timeout)  # shoal's futures fetch their result in this thread
            except BaseException:  # noqa: BLE001 - timed out or cancelled: the event says which
                pass
            if fut.done():
                timeout = None  # the callback that sets the event is running or has run
        self._event.wait(timeout)

    def get(self, timeout=None):
        """The result; raises the call's exception, or multiprocessing.TimeoutError if it is
        not ready within ``timeout`` seconds."""
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value

    # ---- set by the pool

    def _follow(self, fut):
        self._future = fut
        fut.add_done_callback(self._from_future)

    def _from_future(self, fut):
        if fut.cancelled():
            self._set(False, ExecutorShutdownError("shoal: the pool was terminated before the task ran"))
            return
        exc = fut.exception()
        if exc is None:
            self._set(True, fut.result())
        else:
            self._set(False, exc)

    def _set(self, success, value):
        """Once only: later calls (terminate() racing the result) are ignored."""
        with self._lock:
            if self._success is not None:
                return
            self._success, self._value = success, value
        try:
            if success and self._callback is not None:
                self._callback(value)
            elif not success and self._error_callback is not None:
                self._error_callback(value)
        finally:
            self._event.set()
            pool, self._pool = self._pool, None
            if pool is not None:
                pool._results.discard(self)
                pool._end()

    def _abandon(self):
        """The task could not be scheduled (the caller got the exception)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._results.discard(self)
            pool._end()


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of :meth:`Pool.map_async`/``starmap_async``: a list, or the exception of the
    first item that failed (``callback`` gets the list, ``error_callback`` the exception)."""

    def __init__(self, pool, length, callback, error_callback):
        super().__init__(pool, callback, error_callback)
        self._parts = []
        self._length = length
        self._error = None

    def _chunk(self, results, error):
        self._parts.append(results)
        if error is not None:
            self._error = error
            return False
        return True

    def _finish(self):
        if self._error is not None:
            self._set(False, self._error)
            return
        value = list(itertools.chain.from_iterable(self._parts))
        self._parts = None
        if len(value) != self._length:  # the map thread ended early without an error
            self._set(False, ExecutorShutdownError("shoal: the map ended before all its items ran"))
        else:
            self._set(True, value)


class IMapIterator:
    """The iterator of :meth:`Pool.imap`: ``next(timeout=None)`` (multiprocessing.TimeoutError
    when nothing is ready in time); a failing item raises its exception at its place."""

    def __init__(self, pool):
        self._pool = pool
        self._cond = threading.Condition(threading.Lock())
        self._items = collections.deque()  # (success, value), filled by the map thread
        self._ready = collections.deque()  # taken by the reader from _items, under the lock
        self._finished = False
        self._stopped = False  # an error ended the iteration
        pool._begin()
        pool._results.add(self)

    def __iter__(self):
        return self

    def next(self, timeout=None):
        try:
            success, value = self._ready.popleft()  # no lock: what the map thread handed over
        except IndexError:
            with self._cond:
                if not self._items and not self._finished:
                    self._cond.wait_for(lambda: self._items or self._finished, timeout)
                if not self._items:
                    if self._finished:
                        raise StopIteration from None
                    raise multiprocessing.TimeoutError from None
                # Take everything there: the next items cost a deque pop each, not a lock.
                self._ready, self._items = self._items, collections.deque()
            success, value = self._ready.popleft()
        if success:
            return value
        raise value

    __next__ = next

    # ---- set by the pool's map thread

    def _chunk(self, results, error, each):
        with self._cond:
            if self._stopped:
                return False
            self._items.extend(zip(itertools.repeat(True), results))
            if error is not None:
                self._items.append((False, error))
                if not each:
                    self._stopped = True
            self._cond.notify_all()
        return not self._stopped

    def _input_failed(self, exc):
        with self._cond:
            self._pending_input_error = exc

    def _finish(self):
        with self._cond:
            error = self.__dict__.pop("_pending_input_error", None)
            if error is not None and not self._stopped:
                self._items.append((False, error))
            self._finished = True
            self._cond.notify_all()
        self._abandon()

    def _set(self, success, value):
        """terminate(): the results not there yet fail."""
        with self._cond:
            if not self._finished:
                if not success:
                    self._items.append((False, value))
                self._finished = self._stopped = True
                self._cond.notify_all()
        self._abandon()

    def _abandon(self):
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._results.discard(self)
            pool._end()


class IMapUnorderedIterator(IMapIterator):
    """The iterator of :meth:`Pool.imap_unordered`: results in the order they are ready."""
