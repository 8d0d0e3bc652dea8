"""Coroutine tasks: how a worker process, a worker thread and the serial backend run them.

A task whose function is a coroutine function (``async def``) runs in an asyncio event loop
that belongs to the worker: one per worker process (created at its first coroutine task),
one per worker thread, one per serial executor. ``Executor(concurrency=K)`` lets each worker
run up to K coroutine tasks at once; plain functions still run one at a time, on the same
thread as the loop (a plain task holds the worker's coroutines while it runs).

``Executor(event_loop=...)`` picks the loop: ``"auto"`` (default) takes uvloop when it is
installed, as Ray's workers and uvicorn do, else asyncio's own; ``"asyncio"``, ``"uvloop"``,
or a function that returns a new loop.

asyncio is imported only when a coroutine task first runs (it costs ~30 ms).
"""
import functools
import threading
from types import CoroutineType, FunctionType

__all__ = ["is_coroutine_function", "await_items", "run_concurrently", "WorkerCoroutines",
           "ThreadCoroutines", "SerialCoroutines", "check_event_loop", "loop_factory",
           "set_event_loop"]

_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect


def is_coroutine_function(fn):
    """True for an ``async def`` function, a method or ``functools.partial`` of one, or an
    object whose ``__call__`` is one. (A plain function that returns a coroutine also has it
    awaited by the worker, but counts as a plain task for ``concurrency``.)"""
    if type(fn) is FunctionType:  # the common case, fast: submit() asks for every task
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    for _ in range(100):  # partials of partials; a cycle cannot loop forever
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__func__"):  # bound method
            fn = fn.__func__
        else:
            break
    code = getattr(fn, "__code__", None)
    if code is None and not isinstance(fn, type):
        call = getattr(type(fn), "__call__", None)
        code = getattr(getattr(call, "__func__", call), "__code__", None)
    return code is not None and bool(getattr(code, "co_flags", 0) & _CO_COROUTINE)


async def await_items(fn, items, star):
    """The coroutine version of _chunk.call_items: awaits fn on each item, one after another
    (a chunk is one task: it takes one of the worker's `concurrency` slots). Returns
    (results, None) or the results before the first failure and its exception."""
    results = []
    append = results.append
    try:
        for item in items:
            value = fn(*item) if star else fn(item)
            if type(value) is CoroutineType:
                value = await value
            append(value)
    except BaseException as exc:  # noqa: BLE001 - raised again at its item, in the caller
        return results, exc
    return results, None


async def limited(coro, seconds, name):
    """Awaits ``coro`` for at most ``seconds``; past that it is cancelled in its loop (its
    siblings keep running) and TaskTimeoutError is raised. Works on any asyncio loop."""
    import asyncio

    from ._errors import TaskTimeoutError, timeout_message

    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except BaseException:  # this task was cancelled: so is the coroutine
        task.cancel()
        raise
    if not done:
        task.cancel()
        try:
            await task
        except BaseException:  # noqa: BLE001 - its cancellation (or what it raised meanwhile)
            pass
        raise TaskTimeoutError(timeout_message(seconds, name), limit=seconds, function=name)
    return task.result()


async def _guarded(coro):
    """(False, value) or (True, exception): a task's failure, whatever it is, never leaves
    the loop (asyncio re-raises SystemExit and KeyboardInterrupt out of run_forever)."""
    try:
        return False, await coro
    except BaseException as exc:  # noqa: BLE001 - the task's failure, reported to the caller
        return True, exc


EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def check_event_loop(choice):
    """Executor(event_loop=...), checked in the driver: a bad name or a missing uvloop fails
    here, not at the first coroutine task. Returns the choice as the workers get it, "auto"
    resolved to the loop it picks ("uvloop" when installed, else "asyncio")."""
    if callable(choice):
        return choice
    if choice not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(map(repr, EVENT_LOOPS))} or a "
                         f"function returning a new event loop, not {choice!r}")
    if choice in ("auto", "uvloop"):
        import importlib.util

        if importlib.util.find_spec("uvloop") is not None:
            return "uvloop"
        if choice == "uvloop":
            raise ModuleNotFoundError("shoal: event_loop='uvloop' needs uvloop (pip install uvloop)",
                                      name="uvloop")
        return "asyncio"
    return choice


def loop_factory(choice):
    """The function that makes a new loop for an event_loop choice; None for asyncio's own."""
    if callable(choice):
        return choice
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


_process_choice = "asyncio"  # this process's loops outside an executor's (a worker: its executor's)


def set_event_loop(choice):
    """Sets the loop choice of this process (a worker process: its executor's event_loop)."""
    global _process_choice
    _process_choice = choice


def _new_loop(choice=None):
    factory = loop_factory(_process_choice if choice is None else choice)
    if factory is None:
        import asyncio

        return asyncio.new_event_loop()
    return factory()


def _loop_thread(name, choice=None):
    """(thread, loop): a new event loop running forever on a daemon thread of its own."""
    loop = _new_loop(choice)
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    return thread, loop


# ---------------------------------------------------------------- from synchronous code


_helper = None              # (pid, thread, loop) for callers inside a running loop
_helper_lock = threading.Lock()


def run_concurrently(coros):
    """Runs coroutines side by side until all are done, from synchronous code (an agent
    operation awaiting its agents' ``async def`` methods); returns ``[(failed, value)]`` in
    order. On a new loop in this thread; if a loop already runs in this thread (a
    worker's coroutine tasks, a caller inside ``async def``), on a helper thread's loop
    while this thread waits (as a plain task holds the worker's loop)."""
    import asyncio

    async def gather():
        return await asyncio.gather(*(_guarded(c) for c in coros))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = _new_loop()  # ~0.1 ms; a cached one would outlive its thread unclosed
        try:
            return loop.run_until_complete(gather())
        finally:
            loop.close()
    return asyncio.run_coroutine_threadsafe(gather(), _helper_loop()).result()


def _helper_loop():
    global _helper
    import os

    with _helper_lock:
        h = _helper
        if h is None or h[0] != os.getpid() or not h[1].is_alive():  # a forked process has no thread
            h = _helper = (os.getpid(), *_loop_thread("shoal-agents-loop"))
        return h[2]


# ---------------------------------------------------------------- worker process


class WorkerCoroutines:
    """A worker process's event loop and its coroutine tasks.

    The worker normally blocks in ``channel.recv`` (C++, GIL released: no added latency for
    plain tasks). When a task turns out to be a coroutine, the worker calls :meth:`serve`,
    which runs the loop until no coroutine is left. Meanwhile new frames must still be taken.
    The loop's selector (:class:`_RingSelector`) looks at the task ring before each select:
    a waiting frame is reported as ready at once; when the loop is about to sleep, the
    channel's watcher thread is armed to sleep on the ring's futex in the loop's place, and
    it makes ``channel.watch_fd()`` readable when a frame arrives. An idle worker with
    coroutines waiting on I/O therefore sleeps in epoll, never in a spin loop, and a loop
    that never sleeps costs no thread hand-over at all.

    Another loop (uvloop, or the user's) has no selector to look through: the ring is armed
    whenever the loop runs, and taken back only to read the frames the watcher signalled.
    """

    def __init__(self, channel, finish):
        self.channel = channel
        self.finish = finish  # finish(token, failed, value): sends the task's result
        self.tasks = set()  # the loop holds tasks weakly: an awaited stream could lose them
        self.loop = None
        self.polled = True  # the loop's selector looks at the ring (asyncio's own loop)
        self.handle = None  # the worker's frame handler, while serve() runs

    @property
    def running(self):
        return len(self.tasks)

    def start(self, coro, token):
        """Schedules one coroutine task; it runs when :meth:`serve` runs the loop."""
        loop = self.loop
        if loop is None:
            import asyncio

            factory = loop_factory(_process_choice)
            self.polled = factory is None
            if self.polled:
                loop = asyncio.SelectorEventLoop(_ring_selector(self.channel))
            else:
                loop = factory()
            asyncio.set_event_loop(loop)
            loop.add_reader(self.channel.watch_fd(), self._take_frames)
            self.loop = loop
        task = loop.create_task(_guarded(coro))
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._done, token))

    def _done(self, token, task):
        self.tasks.discard(task)
        failed, value = task.result()
        del task
        self.finish(token, failed, value)
        if self.running == 0:
            self.loop.stop()  # serve() goes round again if a frame started another meanwhile

    def serve(self, handle):
        """Runs the loop until no coroutine task is left; `handle(frame)` takes each frame
        that arrives meanwhile (a plain task runs inside it, holding the loop)."""
        self.handle = handle
        try:
            while self.running:
                if not self.polled:
                    self.loop.call_soon(self._take_frames)  # takes what waits, then arms
                self.loop.run_forever()
        finally:
            self.handle = None
            self.channel.disarm()  # the ring is the blocking recv's again

    def _take_frames(self):
        channel = self.channel
        if channel.armed:
            return  # the watcher still owns the ring (a stale wake-up of the descriptor)
        try:
            handle = self.handle
            try_recv = channel.try_recv
            while True:
                channel.clear_watch()
                while True:
                    frame = try_recv()
                    if frame is None:
                        break
                    handle(frame)
                # Another loop than asyncio's sleeps without asking us: the watcher must own
                # the ring meanwhile (arm() fails when a frame came in: take it first).
                if self.polled or not self.running or channel.arm():
                    break
        except BaseException:  # noqa: BLE001 - a corrupt stream: the driver replaces us
            import traceback

            traceback.print_exc()
            import os
            import sys

            sys.stderr.flush()
            os._exit(70)
        if self.running == 0 and self.loop.is_running():
            self.loop.stop()


def _ring_selector(channel):
    """The worker loop's selector: epoll, plus the task ring (see WorkerCoroutines)."""
    import selectors

    class _RingSelector(selectors.DefaultSelector):
        def __init__(self):
            super().__init__()
            self.watch_fd = channel.watch_fd()

        def select(self, timeout=None):
            if not channel.armed:
                # A frame waits (or arrives as we arm): report the descriptor without sleeping.
                if channel.pending() or ((timeout is None or timeout > 0) and not channel.arm()):
                    ready = super().select(0)
                    return ready + [(self.get_key(self.watch_fd), selectors.EVENT_READ)]
            return super().select(timeout)

    return _RingSelector()


# ---------------------------------------------------------------- worker thread


class ThreadCoroutines:
    """One worker thread's event loop: runs up to `limit` coroutine tasks at once and keeps
    taking items from the backend's queue while they run.

    The queue is the backend's ``queue.SimpleQueue``. A thread with coroutines running and
    room for more registers a waker in `wakers`; ``submit`` calls every waker after putting an
    item, and the loop then takes what it can with ``get_nowait``. A thread with no coroutine
    left leaves the loop and blocks in ``queue.get()`` again.
    """

    def __init__(self, queue, wakers, limit, run_item, event_loop="asyncio"):
        self.queue = queue
        self.wakers = wakers  # set of callables, shared by the backend's threads
        self.limit = limit
        self.run_item = run_item  # run_item(item) -> None, or a coroutine still to run
        self.tasks = set()  # the loop holds tasks weakly: an awaited stream could lose them
        self.closing = False  # took the shutdown sentinel: finish what runs, then leave
        self.loop = _new_loop(event_loop)
        self._waker = functools.partial(self.loop.call_soon_threadsafe, self._take)
        self._listening = False

    @property
    def running(self):
        return len(self.tasks)

    def start(self, coro, fut):
        task = self.loop.create_task(_guarded(coro))
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._done, fut))

    def _done(self, fut, task):
        self.tasks.discard(task)
        failed, value = task.result()
        del task
        if failed:
            _fail_with_traceback(fut, value)
        else:
            fut._resolve(value)
        del fut, value
        self._take()

    def _listen(self, on):
        if on != self._listening:
            self._listening = on
            if on:
                self.wakers.add(self._waker)
            else:
                self.wakers.discard(self._waker)

    def _take(self):
        """Takes items while there is room; leaves the loop when nothing runs."""
        import queue as queue_module

        while not self.closing and self.running < self.limit:
            self._listen(True)  # before looking: an item put after the look wakes us
            try:
                item = self.queue.get_nowait()
            except queue_module.Empty:
                break
            if item is None:
                self.closing = True
                break
            coro = self.run_item(item)
            if coro is not None:
                self.start(coro[0], coro[1])
        if self.closing or self.running >= self.limit:
            self._listen(False)
        if self.running == 0:
            self._listen(False)
            if self.loop.is_running():
                self.loop.stop()

    def serve(self):
        """Runs the loop until no coroutine is left. True when the thread must exit."""
        try:
            while True:
                self._take()
                if not self.running:
                    break
                # stop() may come with items taken in the same turn: then go round again.
                self.loop.run_forever()
        finally:
            self._listen(False)
        return self.closing

    def close(self):
        self._listen(False)
        self.loop.close()


def _fail_with_traceback(fut, exc):
    from ._errors import RemoteTraceback, traceback_text

    if exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(traceback_text(exc))
    fut._fail(exc)


# ---------------------------------------------------------------- serial backend


class SerialCoroutines:
    """The serial backend's event loop: a coroutine task runs to completion at submit time,
    in the caller's thread on the executor's own loop. When the caller's thread is already
    running an event loop (``await ex.submit(...)`` inside ``async def``), a loop cannot run
    inside it: the task runs on the executor's helper thread instead, and the caller blocks
    until it is done, as it does for any serial task. Either way the task never runs on the
    caller's own loop."""

    def __init__(self, event_loop="asyncio"):
        self._choice = event_loop
        self._loop = None
        self._helper = None  # (thread, loop) for callers inside a running loop
        self._lock = threading.Lock()

    def run(self, coro):
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is None:
                self._loop = _new_loop(self._choice)
            return self._loop.run_until_complete(coro)
        return asyncio.run_coroutine_threadsafe(coro, self._helper_loop()).result()

    def _helper_loop(self):
        with self._lock:
            if self._helper is None:
                self._helper = _loop_thread("shoal-serial-loop", self._choice)
            return self._helper[1]

    def close(self):
        if self._loop is not None and not self._loop.is_running():
            self._loop.close()
            self._loop = None
        with self._lock:
            helper, self._helper = self._helper, None
        if helper is not None:
            thread, loop = helper
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(5.0)
            if not thread.is_alive():
                loop.close()
