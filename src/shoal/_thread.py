"""The thread and serial backends: the same tasks, run on threads or in the caller."""
import queue
import threading
import time
import traceback

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


class ThreadBackend:
    """A pool of threads fed from one queue; the initializer runs once in each thread."""

    name = "thread"

    def __init__(self, max_workers, initializer, initargs, **_):
        self._queue = queue.SimpleQueue()
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
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            if self._init_error is not None:
                fut._fail(self._init_error)
                continue
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001
                if exc.__cause__ is None:
                    exc.__cause__ = RemoteTraceback(_traceback_text(exc))
                fut._fail(exc)
            else:
                fut._resolve(result)
            del fut, fn, args, kwargs, item

    def submit(self, fn, args, kwargs):
        fut = Future()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    def submit_chunk(self, fn, items, star=True):
        fut = Future()
        self._queue.put((fut, _run_chunk, (fn, items, star), {}))
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
            self._queue.put(None)
        if wait:
            for t in self._threads:
                while t.is_alive():
                    t.join(0.1)


class SerialBackend:
    """Runs each task in the caller at submit time: pdb and tracebacks work as in plain Python."""

    name = "serial"

    def __init__(self, max_workers, initializer, initargs, **_):
        self._init_error = None
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception as exc:  # noqa: BLE001
                err = InitializerError("the executor's initializer failed")
                err.__cause__ = exc
                self._init_error = err

    def submit(self, fn, args, kwargs):
        fut = Future()
        fut.set_running_or_notify_cancel()
        if self._init_error is not None:
            fut._fail(self._init_error)
            return fut
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # KeyboardInterrupt and SystemExit stop the caller, as in a loop
            fut._fail(exc)
        else:
            fut._resolve(result)
        return fut

    def submit_chunk(self, fn, items, star=True):
        return self.submit(_run_chunk, (fn, items, star), {})

    def worker_pids(self):
        return []

    def cancel_all(self):
        pass

    def check(self):
        if self._init_error is not None:
            raise self._init_error

    def shutdown(self, wait, kill=False):
        pass
