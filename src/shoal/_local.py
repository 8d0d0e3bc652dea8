"""The thread and serial backends: the same tasks, run on threads or in the caller.

Both run tasks in the driver's process, so tasks receive the caller's objects (no pickling):
a ``shoal.share`` handle is replaced by its value before the task is queued (``prepare``).
Agents stay in the driver too (:class:`LocalAgentTransport`).
"""
import concurrent.futures
import queue
import threading
import time
from concurrent.futures import BrokenExecutor
from types import CoroutineType

from . import _agent_ops as ops
from . import _aio
from ._agent_ops import split_blocks
from ._backend import AgentTransport, Backend, ChunkOutcome
from ._chunk import call_items
from ._errors import DeadlockError, InitializerError, RemoteTraceback, traceback_text
from ._future import Future
from ._share import unshare, unshare_function
from ._trace import clock


def _traced(rec, fn):
    """``fn`` that records, in ``rec``, when and on which thread slot it ran (tracing on)."""

    def call(*args, **kwargs):
        slot = getattr(threading.current_thread(), "shoal_slot", 0)
        start = clock()
        status = "error"
        try:
            out = fn(*args, **kwargs)
            status = "ok"
            return out
        finally:
            rec.ran_here(slot, start, clock(), status)

    return call


def _run_chunk(fn, items, star=True):
    """((False, results), None, seconds) or, at the first failure, the results before it
    and (exc, traceback text)."""
    start = time.perf_counter()
    results, exc = call_items(fn, items, star, Exception)
    err = None if exc is None else (exc, traceback_text(exc))
    return ChunkOutcome((False, results), err, time.perf_counter() - start)


async def _run_chunk_async(fn, items, star=True):
    """_run_chunk for a coroutine function: the items are awaited one after another."""
    start = time.perf_counter()
    results, exc = await _aio.await_items(fn, items, star)
    if exc is not None and not isinstance(exc, Exception):
        raise exc  # as call_items(..., Exception) lets it through
    err = None if exc is None else (exc, traceback_text(exc))
    return ChunkOutcome((False, results), err, time.perf_counter() - start)


class _InProcess(Backend):
    """What the thread and serial backends share: objects, not frames."""

    def prepare(self, fn, args, kwargs):
        if kwargs:
            kwargs = {k: unshare(v) for k, v in kwargs.items()}
        return unshare_function(fn), tuple(map(unshare, args)), kwargs

    def prepare_items(self, fn, iterables):
        return unshare_function(fn), [map(unshare, it) for it in iterables]

    def prepare_star_items(self, fn, items):
        return unshare_function(fn), (tuple(map(unshare, a)) for a in items)

    def prepare_value(self, value):
        return unshare(value)

    def worker_pids(self):
        return []


class ThreadBackend(_InProcess):
    """A pool of threads fed from one queue; the initializer runs once in each thread.
    Coroutine tasks run in each thread's own event loop, up to `concurrency` at once."""

    name = "thread"

    def __init__(self, config):
        super().__init__(config)
        initializer, initargs = config.initializer, config.initargs
        self._queue = queue.SimpleQueue()
        self._event_loop = config.event_loop
        self._wakers = set()  # event loops of threads running coroutines, with room for more
        self._concurrency = config.concurrency
        self._init_error = None
        self._threads = []
        self._lock = threading.Lock()
        self._stopping = False  # the stop sentinels are queued: nothing queued after them would run
        self._waiting = 0  # threads blocked in result() of one of our own futures (_wait_inside)
        for i in range(config.max_workers):
            t = threading.Thread(target=self._serve, args=(initializer, initargs),
                                 name=f"shoal-thread-{i}", daemon=True)
            t.shoal_backend = self  # _ThreadFuture: a task waiting on its own executor
            t.shoal_slot = i        # a trace's worker number
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
                exc.__cause__ = RemoteTraceback(traceback_text(exc))
            fut._fail(exc)
        else:
            if type(result) is CoroutineType:
                return result, fut
            fut._resolve(result)
        return None

    def _put(self, item):
        with self._lock:
            if self._stopping:
                raise BrokenExecutor("shoal: the executor was shut down before this task started")
            self._queue.put(item)
        self._wake_loops()

    def _wake_loops(self):
        if self._wakers:
            for wake in list(self._wakers):
                try:
                    wake()
                except RuntimeError:  # that loop has just closed
                    pass

    def submit(self, fn, args, kwargs, limit=None, alone=False):
        # ``alone`` holds for every task here: a thread takes the next task when it is free.
        self.check_limit(limit)
        fut = _ThreadFuture(self)
        if self.tracer is not None:
            fn = _traced(self.tracer.task(fn, "call", 1), fn)
        self._put((fut, fn, args, kwargs))
        return fut

    def _wait_inside(self, fut, timeout):
        """A task of ours waits for ``fut``, another of our tasks. If every thread is waiting
        like this, none is left to run what they wait for: DeadlockError, not a hang."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._waiting += 1
        try:
            while not fut.done():
                if self._waiting >= len(self._threads):
                    raise DeadlockError(
                        f"shoal: every thread of this executor ({len(self._threads)}) is waiting, inside "
                        "a task, for another task of the same executor: none is left to run them. "
                        "Submit the inner tasks to another executor, return them to the caller, or "
                        "use more threads than tasks that wait")
                left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                if left <= 0:
                    return
                concurrent.futures.wait([fut], left)
        finally:
            with self._lock:
                self._waiting -= 1

    def submit_chunk(self, fn, items, star=True, limit=None):
        self.check_limit(limit)
        fut = Future()
        run = _run_chunk_async if _aio.is_coroutine_function(fn) else _run_chunk
        if self.tracer is not None:
            run = _traced(self.tracer.task(fn, "chunk", len(items)), run)
        self._put((fut, run, (fn, items, star), {}))
        return fut

    def agent_transport(self, group):
        return LocalAgentTransport(group, self, self.slots)

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
        with self._lock:
            stopping, self._stopping = self._stopping, True
            if not stopping:
                for _ in self._threads:
                    self._queue.put(None)
        self._wake_loops()
        if wait:
            for t in self._threads:
                while t.is_alive():
                    t.join(0.1)


class _ThreadFuture(Future):
    """A thread-backend task's future: waited on inside a task of the same executor, it fails
    with DeadlockError instead of hanging once every thread waits like this."""

    def __init__(self, backend):
        super().__init__()
        self._backend = backend

    def _inside(self):
        return self._state != "FINISHED" and getattr(threading.current_thread(), "shoal_backend", None) is self._backend

    def result(self, timeout=None):
        if self._inside():
            self._backend._wait_inside(self, timeout)
            timeout = 0 if timeout is not None else None
        return super().result(timeout)

    def exception(self, timeout=None):
        if self._inside():
            self._backend._wait_inside(self, timeout)
            timeout = 0 if timeout is not None else None
        return super().exception(timeout)


class SerialBackend(_InProcess):
    """Runs each task in the caller at submit time: pdb and tracebacks work as in plain Python.
    A coroutine task runs to completion on the executor's own event loop (see
    _aio.SerialCoroutines for a caller that is itself inside a running loop)."""

    name = "serial"

    def __init__(self, config):
        super().__init__(config)
        self._init_error = None
        self._coroutines = None
        self._event_loop = config.event_loop
        if config.initializer is not None:
            try:
                config.initializer(*config.initargs)
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

    def submit(self, fn, args, kwargs, kind="call", items=1, name=None, limit=None, alone=False):
        # ``alone`` holds for every task here: each runs at once, in the caller.
        self.check_limit(limit)
        fut = Future()
        fut.set_running_or_notify_cancel()
        if self._init_error is not None:
            fut._fail(self._init_error)
            return fut
        if self.tracer is not None:
            fn = _traced(self.tracer.task(name or fn, kind, items), fn)
        try:
            result = self.call(fn, args, kwargs)
        except Exception as exc:  # KeyboardInterrupt and SystemExit stop the caller, as in a loop
            fut._fail(exc)
        else:
            fut._resolve(result)
        return fut

    def submit_chunk(self, fn, items, star=True, limit=None):
        self.check_limit(limit)
        run = _run_chunk_async if _aio.is_coroutine_function(fn) else _run_chunk
        return self.submit(run, (fn, items, star), {}, "chunk", len(items), fn)

    @property
    def slots(self):
        return 1  # agents: one block, run in the caller

    def map(self, fn, args, *, star, timeout, bar, limit=None, **_):
        """Each item runs when it is asked for, in the caller."""
        self.check_limit(limit)
        self.check()
        call = self.call
        if self.tracer is not None:  # each item is a task of its own in the trace
            rec = self.tracer

            def call(f, a, kw, call=self.call):
                return call(_traced(rec.task(f, "item", 1), f), a, kw)
        return _serial_map(call, fn, args if star else ((a,) for a in args), timeout, bar)

    def sweep_rows(self, job, ordered, bar):
        """Every task in the caller, in order: a failing fn raises with its own traceback."""
        self.check_limit(job.limit)
        self.check()
        return job.rows_serial(bar)

    def agent_transport(self, group):
        return LocalAgentTransport(group, None, 1)

    def cancel_all(self):
        pass

    def check(self):
        if self._init_error is not None:
            raise self._init_error

    def shutdown(self, wait, kill=False):
        if self._coroutines is not None:
            self._coroutines.close()


def _serial_map(call, fn, args, timeout=None, bar=None):
    """Runs each item when it is asked for, in the caller. `timeout` is checked between
    items (a running item cannot be interrupted in the caller's own thread)."""
    deadline = None if timeout is None else time.monotonic() + timeout
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


# ------------------------------------------------------------------ agents in the driver


class LocalAgentTransport(AgentTransport):
    """Agents in the driver: the serial backend runs a block in the caller, the thread backend
    runs one block per thread."""

    retries = 0

    def __init__(self, group, backend, parts):
        self.group = group
        self.backend = backend  # None: serial, in the caller
        self.blocks = split_blocks(len(group), parts)
        self.agents = [None] * len(group)

    def prepare(self, operation, extra, args, kwargs):
        # Objects, not frames: a shoal.share handle stands for its value (as in submit).
        args = tuple(map(unshare, args))
        kwargs = {k: unshare(v) for k, v in kwargs.items()}
        if extra is not None and operation.op in (ops.OP_EACH, ops.OP_INIT):
            extra = [_unshare_arg(a) for a in extra]
        elif extra is not None:
            extra = list(map(unshare, extra))
        return extra, args, kwargs

    def launch(self, operation, b):
        _, start, stop = self.blocks[b]
        call = (self.agents, start, stop, operation.op, operation.name, operation.prepared,
                self.group._cls)
        if self.backend is None:
            fut = Future()
            fut.set_running_or_notify_cancel()
            fut._resolve(_run_local(*call))  # an agent's exception is caught per agent
            return fut
        # After shutdown began this raises BrokenExecutor: the operation fails, never hangs.
        return self.backend.submit(_run_local, call, {})

    def outcome(self, fut):
        return fut.result()

    def discard(self):
        self.agents = [None] * len(self.group)


def _unshare_arg(a):
    """unshare inside an init or call_each argument (a tuple, a dict, or one value)."""
    t = type(a)
    if t is tuple:
        return tuple(map(unshare, a))
    if t is dict:
        return {k: unshare(v) for k, v in a.items()}
    return unshare(a)


def _run_local(agents, start, stop, op, name, prepared, cls):
    extra, args, kwargs = prepared
    sub = extra[start:stop] if extra is not None else None
    if op == ops.OP_CLOSE:
        agents[start:stop] = [None] * (stop - start)
        return ops.REPLY_OK, None, None, None
    block = None if op == ops.OP_INIT else agents[start:stop]
    results, errors, built = ops.run_block(block, op, name, sub, args, kwargs, cls)
    if op == ops.OP_INIT:
        agents[start:stop] = built
    return ops.REPLY_OK, results, errors, None
