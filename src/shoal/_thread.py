"""The thread and serial backends: the same tasks, run on threads or in the caller."""
import queue
import threading
import time
import traceback
from types import CoroutineType

from . import _aio
from ._chunk import call_items
from ._errors import InitializerError, RemoteTraceback
from ._future import Future


def _traceback_text(exc):
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _run_chunk(fn, items, star=True):
    """((False, results), None, seconds) or, at the first failure, the results before it
    and (exc, traceback text)."""
    start = time.perf_counter()
    results, exc = call_items(fn, items, star, Exception)
    err = None if exc is None else (exc, _traceback_text(exc))
    return (False, results), err, time.perf_counter() - start, None


async def _run_chunk_async(fn, items, star=True):
    """_run_chunk for a coroutine function: the items are awaited one after another."""
    start = time.perf_counter()
    results, exc = await _aio.await_items(fn, items, star)
    if exc is not None and not isinstance(exc, Exception):
        raise exc  # as call_items(..., Exception) lets it through
    err = None if exc is None else (exc, _traceback_text(exc))
    return (False, results), err, time.perf_counter() - start, None


class ThreadBackend:
    """A pool of threads fed from one queue; the initializer runs once in each thread.
    Coroutine tasks run in each thread's own event loop, up to `concurrency` at once."""

    name = "thread"

    def __init__(self, max_workers, initializer, initargs, concurrency=1, event_loop="asyncio", **_):
        self._queue = queue.SimpleQueue()
        self._event_loop = event_loop
        self._wakers = set()  # event loops of threads running coroutines, with room for more
        self._concurrency = concurrency
        self._init_error = None
        self._threads = []
        for i in range(max_workers):
            t = threading.Thread(target=self._serve, args=(initializer, initargs),
                                 name=f"shoal-thread-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, initializer, initargs):
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:  # noqa: BLE001 - breaks the executor
                err = InitializerError("the executor's initializer failed in a thread")
                err.__cause__ = exc
                self._init_error = err
        coroutines = None
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                started = self._run_item(item)
                del item
                if started is not None:  # a coroutine: this thread's event loop takes over
                    if coroutines is None:
                        coroutines = _aio.ThreadCoroutines(self._queue, self._wakers,
                                                           self._concurrency, self._run_item,
                                                           self._event_loop)
                    coroutines.start(*started)
                    del started
                    if coroutines.serve():
                        return
        finally:
            if coroutines is not None:
                coroutines.close()

    def _run_item(self, item):
        """Runs one queued task; returns (coroutine, future) when it is a coroutine still to
        be run by the thread's event loop, else None."""
        fut, fn, args, kwargs = item
        if self._init_error is not None:
            fut._fail(self._init_error)
            return None
        if not fut.set_running_or_notify_cancel():
            return None
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            if exc.__cause__ is None:
                exc.__cause__ = RemoteTraceback(_traceback_text(exc))
            fut._fail(exc)
        else:
            if type(result) is CoroutineType:
                return result, fut
            fut._resolve(result)
        return None

    def _put(self, item):
        self._queue.put(item)
        if self._wakers:
            for wake in list(self._wakers):
                try:
                    wake()
                except RuntimeError:  # that loop has just closed
                    pass

    def submit(self, fn, args, kwargs):
        fut = Future()
        self._put((fut, fn, args, kwargs))
        return fut

    def submit_chunk(self, fn, items, star=True):
        fut = Future()
        run = _run_chunk_async if _aio.is_coroutine_function(fn) else _run_chunk
        self._put((fut, run, (fn, items, star), {}))
        return fut

    def worker_pids(self):
        return []

    def cancel_all(self):
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[0].cancel()

    def shutdown(self, wait, kill=False):
        if kill:
            self.cancel_all()
        for _ in self._threads:
            self._put(None)
        if wait:
            for t in self._threads:
                while t.is_alive():
                    t.join(0.1)


class SerialBackend:
    """Runs each task in the caller at submit time: pdb and tracebacks work as in plain Python.
    A coroutine task runs to completion on the executor's own event loop (see
    _aio.SerialCoroutines for a caller that is itself inside a running loop)."""

    name = "serial"

    def __init__(self, max_workers, initializer, initargs, event_loop="asyncio", **_):
        self._init_error = None
        self._coroutines = None
        self._event_loop = event_loop
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception as exc:  # noqa: BLE001
                err = InitializerError("the executor's initializer failed")
                err.__cause__ = exc
                self._init_error = err

    def call(self, fn, args, kwargs):
        """fn(*args, **kwargs), awaited on the executor's loop when it returns a coroutine."""
        result = fn(*args, **kwargs)
        if type(result) is CoroutineType:
            if self._coroutines is None:
                self._coroutines = _aio.SerialCoroutines(self._event_loop)
            result = self._coroutines.run(result)
        return result

    def submit(self, fn, args, kwargs):
        fut = Future()
        fut.set_running_or_notify_cancel()
        if self._init_error is not None:
            fut._fail(self._init_error)
            return fut
        try:
            result = self.call(fn, args, kwargs)
        except Exception as exc:  # KeyboardInterrupt and SystemExit stop the caller, as in a loop
            fut._fail(exc)
        else:
            fut._resolve(result)
        return fut

    def submit_chunk(self, fn, items, star=True):
        run = _run_chunk_async if _aio.is_coroutine_function(fn) else _run_chunk
        return self.submit(run, (fn, items, star), {})

    def worker_pids(self):
        return []

    def cancel_all(self):
        pass

    def check(self):
        if self._init_error is not None:
            raise self._init_error

    def shutdown(self, wait, kill=False):
        if self._coroutines is not None:
            self._coroutines.close()
