"""The loop a worker process runs: take a task frame, run it, send the result frame.

The payloads it reads and writes are described, beside the driver's side, in protocol.py.

A worker is forked from the zygote. It waits on its task ring in C++ with the GIL
released, runs each task under the GIL, and writes the result to its result ring.
It leaves with os._exit so nothing inherited from the zygote runs at exit.
"""
import functools
import io
import os
import signal
import sys
import time
from types import CoroutineType

from .. import _aio, _core, _threads
from .. import _import_guard
from .._import_guard import importing
from .._arena import COPY_ON_WRITE, DEFAULT_THRESHOLD, LENGTH, READ_ONLY, Buffers, set_worker_arena
from .._chunk import call_items
from .._errors import function_name
from .._pickle import dumps, iter_items, loads_function
from . import agent_worker
from .protocol import (OUTPUT_STDERR, OUTPUT_STDOUT, TASK_AGENTS, TASK_CALL, TASK_CHUNK, TRACED, decode_setup,
                       decode_task, encode_chunk_reply, encode_error, encode_timing, set_timing_pid)

in_worker = False  # True in a worker process (e.g. for joblib: no nested process pools)


class _Forward(io.TextIOBase):
    """sys.stdout / sys.stderr of a worker: text goes to the driver, line by line."""

    def __init__(self, channel, stream):
        self._channel = channel
        self._stream = stream
        self._parts = []
        self._size = 0

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._parts.append(s)
        self._size += len(s)
        if "\n" in s or self._size > 8192:
            self.flush()
        return len(s)

    def flush(self):
        if self._parts:
            text = "".join(self._parts)
            self._parts.clear()
            self._size = 0
            self._channel.send(_core.FRAME_OUTPUT, self._stream, 0, 0, 0, text.encode("utf-8", "replace"))


class _Functions(dict):
    """Function blobs by id, unpickled at first use (a bad pickle fails its tasks only)."""

    def get_function(self, fn_id):
        entry = self[fn_id]
        if isinstance(entry, bytes):
            entry = loads_function(entry)
            self[fn_id] = entry
        return entry


_threshold = DEFAULT_THRESHOLD  # the executor's buffer_threshold


def _initialize(channel, payload, arena):
    """Runs the executor's setup (cwd, sys.path, native thread pools, initializer); answers ready
    (with our id in the arena, so the driver can reclaim our blocks if we die) or init_failed."""
    global _threshold
    try:
        with importing("a worker loading the executor's initializer"):
            setup = decode_setup(payload)
        _threshold = setup.buffer_threshold
        _aio.set_event_loop(setup.event_loop)
        try:
            os.chdir(setup.cwd)
        except OSError:
            pass
        sys.path[:] = setup.path
        if os.environ != setup.env:  # the zygote was started before the driver changed it
            os.environ.clear()
            os.environ.update(setup.env)
        # Before the initializer: what it imports reads the variables set here.
        _threads.apply(setup.threads)
        if setup.initializer is not None:
            setup.initializer(*setup.initargs)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported
        channel.send(_core.FRAME_INIT_FAILED, 0, 0, 0, 0, encode_error(exc))
        _flush_streams()
        os._exit(1)
    channel.send(_core.FRAME_READY, 0, 0, 0 if arena is None else arena.owner, 0, b"")


def _flush_streams():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass


def _run_chunk(fn, packed, star, views):
    # SystemExit too is the task's failure: the worker stays alive.
    return call_items(fn, iter_items(packed, views) if packed[0] else packed[1], star)


def run(channel, arena=None):
    """Serves tasks until a shutdown frame; never returns."""
    global in_worker
    in_worker = True
    set_timing_pid()
    if arena is not None:
        set_worker_arena(arena)
    sys.stdout = _Forward(channel, OUTPUT_STDOUT)
    sys.stderr = _Forward(channel, OUTPUT_STDERR)
    coroutines = _aio.WorkerCoroutines(channel, functools.partial(_coroutine_done, channel, arena))
    handle = _frame_handler(channel, arena, coroutines)
    recv = channel.recv
    while True:
        frame = recv(-1.0)
        if frame is None:
            os._exit(70)  # the task stream is corrupt: let the driver replace us
        handle(frame)
        if coroutines.running:
            coroutines.serve(handle)  # the event loop, until no coroutine task is left


def _view(arena, offset, length):
    """A task's view of one arena reference: a fresh copy is writable, shared memory read-only,
    and a placement several tasks share copy-on-write (a private mapping of its pages)."""
    if length & COPY_ON_WRITE and not length & READ_ONLY:
        return arena.private_view(offset, length & LENGTH)
    return arena.view(offset, length & LENGTH, length >= READ_ONLY)


class _LazyViews:
    """A frame's views made as the pickle reaches each one: a chunk of many items passing one
    placement gets a copy-on-write mapping per item, and making them all up front would map the
    block once per item at the same time (past vm.max_map_count for a large chunk)."""

    __slots__ = ("_view", "_refs")

    def __init__(self, view, refs):
        self._view = view
        self._refs = refs

    def __len__(self):
        return len(self._refs)

    def __iter__(self):
        return (self._view(o, n) for o, n in self._refs)

    def __getitem__(self, i):
        if isinstance(i, slice):  # not self._refs[i]: a copy of the rest per item
            refs, view = self._refs, self._view
            return (view(*refs[k]) for k in range(*i.indices(len(refs))))
        o, n = self._refs[i]
        return self._view(o, n)


def _views(view, refs):
    for _, n in refs:
        if n & COPY_ON_WRITE and not n & READ_ONLY:
            return _LazyViews(view, refs)
    return [view(o, n) for o, n in refs]


def _frame_handler(channel, arena, coroutines):
    """handle(frame): runs a task (or starts it in the event loop if it is a coroutine),
    records a function, or shuts down."""
    view = None if arena is None else functools.partial(_view, arena)
    functions = _Functions()
    send = channel.send
    RESULT, TASK, FUNCTION, FORGET, SHUTDOWN = (_core.FRAME_RESULT, _core.FRAME_TASK,
                                                _core.FRAME_FUNCTION, _core.FRAME_FORGET,
                                                _core.FRAME_SHUTDOWN)
    ERROR = _core.FLAG_ERROR
    clock = time.perf_counter_ns
    # Loading a function or arguments may import their modules: executors they create raise.
    guard = _import_guard
    loading = "a worker loading a task's function and arguments"

    def handle(frame):
        kind, limit_ms, task_id, aux, count, payload, refs = frame  # a plain tuple in _core.Frame's order
        if kind == TASK:
            start = clock()
            flags = 0
            timing = None  # [start, loaded, ran] when the driver traces this task
            bufs = None if arena is None else Buffers(arena, _threshold, by_ref=False)
            try:
                views = None if refs is None else _views(view, refs)
                guard.loading = loading
                try:
                    fn = functions.get_function(aux)
                    mode, data = decode_task(payload, views)
                finally:
                    guard.loading = None
                if mode >= TRACED:
                    mode -= TRACED
                    timing = [start, clock(), 0]
                coroutine = limit_ms and _aio.is_coroutine_function(fn)
                if limit_ms:  # a task frame's flags hold its time limit (Pool::submit)
                    fn = _Limited(fn, limit_ms / 1000)
                if mode == TASK_CALL:
                    out = fn(*data[0], **data[1])
                    if type(out) is CoroutineType:  # the arguments' blocks live until it answers
                        coroutines.start(out, (task_id, count, start, mode, timing))
                        return
                    if timing is not None:
                        timing[2] = clock()
                    out = dumps(out, bufs)
                elif mode == TASK_AGENTS:
                    if limit_ms:  # the limit bounds the whole block's operation
                        out = fn.run(agent_worker.serve, fn.fn, data, payload, views, bufs)
                    else:
                        out = agent_worker.serve(fn, data, payload, views, bufs)
                elif coroutine or _aio.is_coroutine_function(fn):
                    _start_coroutine_chunk(coroutines, fn, data, mode, views, (task_id, count, start, mode, timing))
                    return
                else:
                    results, exc = _run_chunk(fn, data, mode == TASK_CHUNK, views)
                    if timing is not None:
                        timing[2] = clock()
                    out = encode_chunk_reply(results, exc, (clock() - start) / 1e9, bufs)
            except BaseException as exc:  # noqa: BLE001 - the task's failure, not ours
                flags = ERROR
                if bufs is not None:
                    bufs.truncate(0)  # frees what the result had placed
                out = encode_error(exc)
            views = data = None  # the driver frees the arguments' blocks once we answer
            sys.stdout.flush()
            sys.stderr.flush()
            if timing is not None:
                now = clock()
                out = encode_timing(out, start, timing[1], timing[2] or now, now)
            if bufs is not None and bufs.refs:
                send(RESULT, flags, task_id, clock() - start, count, out, bufs.refs)
                bufs.detach()
            else:
                send(RESULT, flags, task_id, clock() - start, count, out)
        elif kind == FUNCTION:
            if aux == 0:
                _initialize(channel, payload, arena)
            else:
                functions[aux] = payload
        elif kind == FORGET:
            functions.pop(aux, None)
        elif kind == SHUTDOWN:
            _flush_streams()
            os._exit(0)

    return handle


class _Limited:
    """A task's function under a time limit (each call: a task, or one item of a chunk).

    A plain call arms ITIMER_REAL for the limit and disarms it as soon as the call returns,
    before the result is sent: past the limit SIGALRM's default action kills this worker,
    whatever it is doing (a C loop holding the GIL included), and the driver, seeing the
    signal, fails this task with TaskTimeoutError and re-queues the tasks behind it. The
    disposition is reset to the default each time (a task may have set a handler). A call
    that returns a coroutine is instead bounded in the event loop (_aio.limited)."""

    __slots__ = ("fn", "seconds")

    def __init__(self, fn, seconds):
        self.fn = fn
        self.seconds = seconds

    def __call__(self, *args, **kwargs):
        out = self.run(self.fn, *args, **kwargs)
        if type(out) is CoroutineType:
            return _aio.limited(out, self.seconds, function_name(self.fn))
        return out

    def run(self, call, *args, **kwargs):
        """``call(*args, **kwargs)`` under this limit (an agent block's whole operation)."""
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        try:
            return call(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


# ---- coroutine tasks (the event loop itself is _aio.WorkerCoroutines)

def _start_coroutine_chunk(coroutines, fn, packed, mode, views, token):
    """A chunk of a coroutine function: its items are awaited one after another."""
    items = iter_items(packed, views) if packed[0] else packed[1]
    coroutines.start(_aio.await_items(fn, items, mode == TASK_CHUNK), token)


def _coroutine_done(channel, arena, token, failed, value):
    """Sends a coroutine task's result (as the plain path does for a plain task)."""
    task_id, count, start, mode, timing = token
    flags = 0
    bufs = None if arena is None else Buffers(arena, _threshold, by_ref=False)
    try:
        if failed:
            flags = _core.FLAG_ERROR
            out = encode_error(value)
        elif mode == TASK_CALL:
            out = dumps(value, bufs)
        else:
            results, exc = value
            out = encode_chunk_reply(results, exc, (time.perf_counter_ns() - start) / 1e9, bufs)
    except BaseException as exc:  # noqa: BLE001 - a result that cannot be pickled
        flags = _core.FLAG_ERROR
        if bufs is not None:
            bufs.truncate(0)
        out = encode_error(exc)
    value = None
    sys.stdout.flush()
    sys.stderr.flush()
    if timing is not None:  # a coroutine's run includes its waits in the event loop
        now = time.perf_counter_ns()
        out = encode_timing(out, start, timing[1], now, now)
    elapsed = time.perf_counter_ns() - start
    if bufs is not None and bufs.refs:
        channel.send(_core.FRAME_RESULT, flags, task_id, elapsed, count, out, bufs.refs)
        bufs.detach()
    else:
        channel.send(_core.FRAME_RESULT, flags, task_id, elapsed, count, out)
