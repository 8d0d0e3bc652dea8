"""The process backend: tasks run in worker processes forked from the per-process zygote.

    submit ─► pickle args ─► _core.Pool.submit ─► (C++: scheduler, rings, workers)
                                                        │
    Future ◄─ _Completions thread ◄─ Pool.wait_completions ◄┘

Functions are pickled once per executor and cached in the workers by id.
"""
import importlib.util
import itertools
import os
import sys
import threading
import time
from collections import OrderedDict

from . import _core
from ._aio import is_coroutine_function
from ._arena import READ_ONLY, Buffers, arena
from ._errors import InitializerError, RemoteTraceback, WorkerCrashedError
from ._future import Future
from ._pickle import dumps, dumps_function, loads, pack_items
from ._worker import CALL, CHUNK, CHUNK1

from concurrent.futures import BrokenExecutor

_zygote = None
_zygote_lock = threading.Lock()
_zygote_pid = None  # the process that owns _zygote (a forked copy of the driver must not use it)


def zygote():
    """The zygote of this process, started on first use and kept for every later executor."""
    global _zygote, _zygote_pid
    with _zygote_lock:
        if _zygote is None or _zygote_pid != os.getpid() or not _zygote.alive():
            # sys.path travels one entry per line (json would cost the zygote 15 ms to import).
            code = ("import sys; sys.path[:] = sys.argv[1].split('\\n'); "
                    "import shoal._zygote as z; z.main()")
            # -S: no site (its .pth files cost several ms); sys.path is the driver's anyway.
            _zygote = _core.ZygoteClient([sys.executable, "-S", "-c", code, "\n".join(sys.path)])
            _zygote_pid = os.getpid()
        return _zygote


class _FunctionTable:
    """Function ids for this executor: each function is pickled and registered once.
    Functions with no task outstanding are forgotten past `capacity` (least recently used)."""

    def __init__(self, pool, arena, threshold, capacity=512):
        self._pool = pool
        self._arena = arena  # shared data the functions hold travels by reference
        self._threshold = threshold
        self._capacity = capacity
        self._by_obj = OrderedDict()  # id(fn) -> [fn, fn_id, outstanding]
        self._by_fn_id = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def acquire(self, fn):
        with self._lock:
            entry = self._by_obj.get(id(fn))
            if entry is not None and entry[0] is fn:
                self._by_obj.move_to_end(id(fn))
                entry[2] += 1
                return entry[1]
        blob = dumps_function(fn, self._arena, self._threshold)  # raises in the caller if it cannot
        with self._lock:
            fn_id = next(self._ids)
            self._pool.define_function(fn_id, blob)
            entry = [fn, fn_id, 1]
            old = self._by_obj.pop(id(fn), None)
            if old is not None:
                self._by_fn_id.pop(old[1], None)
                self._pool.forget_function(old[1]) if old[2] == 0 else None
            self._by_obj[id(fn)] = entry
            self._by_fn_id[fn_id] = entry
            self._evict()
            return fn_id

    def release(self, fn_id):
        with self._lock:
            entry = self._by_fn_id.get(fn_id)
            if entry is not None:
                entry[2] -= 1

    def _evict(self):
        while len(self._by_obj) > self._capacity:
            for key, entry in self._by_obj.items():
                if entry[2] == 0:
                    del self._by_obj[key]
                    del self._by_fn_id[entry[1]]
                    self._pool.forget_function(entry[1])
                    break
            else:
                return


class _State:
    """What the completion thread needs; kept apart from the Executor so an executor that
    is dropped without shutdown can still be collected (its __del__ closes the pool)."""

    def __init__(self, pool, retries):
        self.pool = pool
        self.retries = retries
        self.futures = {}  # task id -> (Future, fn_id, arena buffers kept alive or None, chunk?)
        self.lock = threading.Lock()
        self.functions = None
        self.order = threading.Condition()  # batches are delivered in the order taken
        self.delivered = 0


def _deliver(state, taken):
    """Delivers a batch from Pool.take in the order the batches were taken (a task's output
    before its result), whichever thread took it."""
    seq, batch = taken
    if not batch:
        return
    order = state.order
    if state.delivered != seq - 1:
        # Another thread holds the previous batch and delivers it at once; the timeout only
        # guards against one that was interrupted (Ctrl-C) between take and deliver.
        with order:
            order.wait_for(lambda: state.delivered >= seq - 1, timeout=1.0)
    # Batches are delivered one at a time: the holder of the next one waits for this one.
    try:
        _deliver_batch(state, batch)
    finally:
        with order:
            if state.delivered < seq:
                state.delivered = seq
            if order._waiters:
                order.notify_all()


def _deliver_batch(state, batch):
    futures = state.futures
    for kind, flags, task_id, _aux, status_kind, status_value, status_text, _w, payload, buffers in batch:
        if kind == _OUTPUT:
            stream = sys.stdout if flags == 1 else sys.stderr
            try:
                stream.write(payload.decode("utf-8", "replace"))
                stream.flush()
            except Exception:
                pass
            continue
        entry = futures.pop(task_id, None)  # atomic: no lock needed
        if entry is None:
            continue
        fut, fn_id, _kept, chunk = entry
        state.functions.release(fn_id)
        if kind == _RESULT:
            try:
                value = loads(payload, buffers)
            except BaseException as exc:  # noqa: BLE001 - fails this task only
                fut._fail(exc)
                continue
            if flags & _ERROR:
                exc, tb = value
                exc.__cause__ = RemoteTraceback(tb)
                fut._fail(exc)
            elif chunk:
                # What the chunk's arguments and results hold (map() caps chunks by it).
                fut._shoal_nbytes += len(payload) + (sum(map(len, buffers)) if buffers else 0)
                fut._resolve(value + (buffers,))
            else:
                fut._resolve(value)
        elif kind == _CRASHED:
            signaled = status_kind == _core.STATUS_SIGNALED
            fut._fail(WorkerCrashedError(
                f"the worker running this task {status_text} "
                f"(tried {1 + state.retries} time{'s' if state.retries else ''})",
                signal=status_value if signaled else None,
                exitcode=None if signaled else status_value))
        elif kind == _INIT_FAILED:
            err = InitializerError("the executor's initializer failed in a worker")
            try:
                cause, tb = loads(payload)
                cause.__cause__ = RemoteTraceback(tb)
                err.__cause__ = cause
            except Exception:
                pass
            fut._fail(err)
        else:
            reason = payload.decode("utf-8", "replace") or "the executor was shut down"
            fut._fail(BrokenExecutor(f"shoal: cannot run the task: {reason}"))


_RESULT, _OUTPUT, _CRASHED, _INIT_FAILED = (_core.COMPLETION_RESULT, _core.COMPLETION_OUTPUT,
                                            _core.COMPLETION_CRASHED, _core.COMPLETION_INIT_FAILED)
_ERROR = _core.FLAG_ERROR


def _complete(state):
    """Completion thread: delivers what no waiting caller has taken (callbacks, as_completed)."""
    take = state.pool.take
    interrupt = state.pool.interrupt
    while True:
        taken = take(-1.0, True)
        if taken is None:
            break
        if taken[1]:
            _deliver(state, taken)
            taken = None  # not held while waiting: results own arena blocks
            interrupt()  # a caller blocked in take() may be waiting for one of these
    # The pool is finished: nothing else will complete.
    with state.lock:
        rest = list(state.futures.values())
        state.futures.clear()
    for fut, *_ in rest:
        fut._fail(BrokenExecutor("shoal: the executor was shut down before the task ran"))


class _ProcessFuture(Future):
    """A future whose waiter, instead of sleeping until another thread delivers the result,
    takes results from the pool itself: one thread hop less per task."""

    def _canceller(self):
        state = self._shoal_state
        if not state.pool.cancel(self._shoal_id):
            return False  # already running
        entry = state.futures.pop(self._shoal_id, None)  # frees its arena buffers
        if entry is not None:
            state.functions.release(entry[1])
        return True

    def _help(self, timeout):
        state = self._shoal_state
        pool = state.pool
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            epoch = pool.epoch  # before the check: a delivery after it ends take() at once
            if self._state not in ("PENDING", "RUNNING"):
                return
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return
            taken = pool.take(left, False, epoch)  # short slices: Ctrl-C stays responsive
            if taken is None:
                return
            _deliver(state, taken)
            batch = taken[1]
            if len(batch) > 1 or (batch and batch[0][2] != self._shoal_id):
                pool.interrupt()  # other callers may wait for what we delivered

    def result(self, timeout=None):
        if self._state != "FINISHED":
            self._help(timeout)
        if self._state == "FINISHED" and self._exception is None:  # no lock needed to read it
            return self._result
        return super().result(timeout=0 if timeout is not None else None)

    def exception(self, timeout=None):
        self._help(timeout)
        return super().exception(timeout=0 if timeout is not None else None)


class ProcessBackend:
    name = "process"

    def __init__(self, max_workers, initializer, initargs, retries, preload, max_tasks_per_worker,
                 buffer_threshold, spin_us=100, task_ring_bytes=1 << 18, result_ring_bytes=1 << 18,
                 concurrency=1, event_loop="asyncio"):
        for name in preload:  # a typo fails here; an import error, at the first task
            if importlib.util.find_spec(name) is None:
                raise ModuleNotFoundError(f"shoal: no module named {name!r} to preload", name=name)
        threshold = buffer_threshold
        init = dumps((os.getcwd(), list(sys.path), initializer, tuple(initargs),
                      threshold if threshold is not None else 1 << 62, event_loop))
        self._arena = None if threshold is None else arena()
        self._threshold = threshold
        self._max_workers = max_workers
        self._retries = retries
        # The workers are forked at the first task, once the zygote has imported its function's
        # module (see docs/design.md, "The first task's module"); the zygote starts now.
        self._pool_args = (max_workers, retries, max_tasks_per_worker or 0, list(dict.fromkeys(preload)),
                           int(spin_us * 1000), task_ring_bytes, result_ring_bytes, init)
        self._concurrency = concurrency
        self._pool = self._state = self._functions = self._thread = None
        self._ids = itertools.count(1)
        self._start_lock = threading.Lock()
        self._closed = False
        zygote()

    def _start(self, fn=None):
        """Creates the pool (the zygote imports the preload modules and `fn`'s module, then
        forks the workers) and its completion thread; returns the pool. Once only."""
        with self._start_lock:
            if self._pool is None:
                if self._closed:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                pool = _core.Pool(zygote(), *self._pool_args, _module_hints(fn), self._arena,
                                  self._concurrency)
                self._state = _State(pool, self._retries)
                self._functions = self._state.functions = _FunctionTable(pool, self._arena, self._threshold)
                self._thread = threading.Thread(target=_complete, args=(self._state,),
                                                name="shoal-completions", daemon=True)
                self._thread.start()
                self._pool = pool
            return self._pool

    def _submit(self, fn, mode, data, count):
        if self._pool is None:
            self._start(fn)
        fn_id = self._functions.acquire(fn)
        bufs = None if self._arena is None else Buffers(self._arena, self._threshold)
        try:
            payload = dumps((mode, data if mode == CALL else pack_items(data, bufs)), bufs)
        except BaseException:
            self._functions.release(fn_id)
            raise
        task_id = next(self._ids)
        fut = _ProcessFuture()
        fut._shoal_state = self._state
        fut._shoal_id = task_id
        refs = bufs.refs if bufs is not None and bufs.refs else None
        if mode != CALL:  # bytes of the arguments (arena copies included), for map()'s chunk cap
            fut._shoal_nbytes = len(payload) + (sum(n for _, n in refs if n < READ_ONLY) if refs else 0)
        # The arguments' arena buffers live until the task completes (the entry is dropped).
        self._state.futures[task_id] = (fut, fn_id, bufs.keep if refs else None, mode != CALL)
        # A coroutine task counts against the per-worker `concurrency`, not the adaptive limit.
        if self._pool.submit(task_id, fn_id, count, payload, refs, is_coroutine_function(fn)):
            self._deliver_ready()
        return fut

    def _deliver_ready(self):
        """Delivers what the pool has drained: a thread submitting many tasks delivers their
        results between submits, instead of handing each to the completion thread (a thread
        wake-up and two GIL hand-overs per task)."""
        _deliver(self._state, self._pool.take_ready())
        self._pool.interrupt()  # callers blocked in result() may wait for these (cheap if none)

    def submit_pinned(self, fn, payload, count, worker, refs=None, keep=None):
        """Sends a ready-made task payload to worker slot ``worker`` only (agents live there).
        If that worker dies, the future fails with WorkerCrashedError: it is not retried.
        ``refs`` are the payload's arena buffers; ``keep`` keeps them alive until it completes."""
        if self._pool is None:
            self._start(fn)
        fn_id = self._functions.acquire(fn)
        task_id = next(self._ids)
        fut = _ProcessFuture()
        fut._shoal_state = self._state
        fut._shoal_id = task_id
        self._state.futures[task_id] = (fut, fn_id, keep, False)
        try:
            ready = self._pool.submit(task_id, fn_id, count, payload, refs, worker=worker)
        except BaseException:
            self._state.futures.pop(task_id, None)
            self._functions.release(fn_id)
            raise
        if ready:
            self._deliver_ready()
        return fut

    def buffers(self):
        """A collector for one payload's out-of-band buffers (None without an arena)."""
        return None if self._arena is None else Buffers(self._arena, self._threshold)

    @property
    def slots(self):
        """The number of worker slots (a slot keeps its index when its process is replaced)."""
        return self._max_workers

    def submit(self, fn, args, kwargs):
        return self._submit(fn, CALL, (args, kwargs), 1)

    def submit_chunk(self, fn, items, star=True):
        return self._submit(fn, CHUNK if star else CHUNK1, items, len(items))

    def worker_pids(self):
        if self._pool is None:
            if self._closed:
                return []
            self._start()
            deadline = time.monotonic() + 5.0  # the forks were just requested: wait for them
            while len(self._pool.worker_pids()) < self._max_workers and time.monotonic() < deadline:
                time.sleep(0.001)
        return [int(p) for p in self._pool.worker_pids()]

    def cancel_all(self):
        if self._pool is None:
            return
        ids = self._pool.cancel_all()
        with self._state.lock:
            entries = [self._state.futures.pop(i, None) for i in ids]
        for e in entries:
            if e is not None:
                e[0]._canceller = None  # already off the queue
                e[0].cancel()

    def shutdown(self, wait, kill=False):
        with self._start_lock:  # no pool is started after this
            closed, self._closed = self._closed, True
        if self._pool is None:
            return
        if not closed or kill:
            self._pool.close(kill)
        if wait:
            while self._thread.is_alive():
                self._thread.join(0.1)  # short joins: Ctrl-C stays responsive
            self._pool.join(5.0)

    def __del__(self):
        try:
            if not self._closed and self._pool is not None:
                self._pool.close(False)
        except Exception:
            pass


def _module_hints(fn):
    """For the zygote: "module<TAB>file" of the module `fn` is pickled by reference from (and
    of its top-level package first), so that the workers forked after it share that module
    instead of each importing it. Nothing for __main__, closures, lambdas, builtins and
    functions pickled by value."""
    fn = getattr(fn, "__func__", fn)  # a bound method: its function's module
    name = getattr(fn, "__module__", None)
    if not isinstance(name, str) or name in ("__main__", "builtins") or name in sys.builtin_module_names:
        return []
    if "<locals>" in getattr(fn, "__qualname__", "<locals>"):
        return []
    cp = sys.modules.get("cloudpickle.cloudpickle")
    top = name.partition(".")[0]
    if cp is not None and top in getattr(cp, "_PICKLE_BY_VALUE_MODULES", ()):
        return []
    hints = []
    for part in (top, name) if top != name else (name,):
        origin = getattr(getattr(sys.modules.get(part), "__spec__", None), "origin", None)
        if not isinstance(origin, str) or not os.path.isabs(origin):
            return []
        hints.append(f"{part}\t{origin}")
    return hints
