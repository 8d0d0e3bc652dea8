"""The process backend, driver side: tasks run in worker processes forked from the zygote.

A task's path (the threads and calls that exist; payload layouts: protocol.py):

    caller thread                                   C++ (cpp/src/pool.cpp, no GIL)
    ProcessBackend.submit
      FunctionTable.acquire(fn) ─ first time: Pool.define_function (FUNCTION frame, once)
      protocol.encode_task ─ large buffers into the arena (Buffers)
      Pool.submit ──────────────────────────────►  scheduler ─► a worker's task ring
                                                              worker.py: run ─► result ring
      ◄─ True when results are ready: _deliver_ready  ◄──────  drained by whichever thread
                                                               calls into the pool
    Future.result() ─ _ProcessFuture._help: Pool.take ─► _deliver ─► Future resolved
    (nobody waiting: the "shoal-completions" thread's Pool.take(background=True) delivers)

Completions are delivered in the order they were taken (a task's output before its result),
whichever thread took them: Pool.take stores each batch in _State.pending before it returns, and
any thread's next _deliver resumes there, so a Ctrl-C between taking and delivering loses nothing. Functions are pickled once per executor and cached in the workers
by id; an entry is forgotten once no task uses it and the table is past its capacity.
"""
import functools
import importlib.util
import itertools
import os
import sys
import threading
import time
import weakref
from collections import deque

from .. import _core, _threads
from .._arena import COPY_ON_WRITE, LENGTH, READ_ONLY, Buffers, Placements, arena
from .._backend import Backend, BackendConfig, ChunkOutcome
from .._errors import (ExecutorClosedError, ExecutorShutdownError, InheritedExecutorError, InitializerError,
                       PreloadError, RemoteTraceback, TaskTimeoutError, WorkerCrashedError, WorkersUnavailableError,
                       function_name, timeout_message)
from .._functions import FunctionTable
from .._future import Future
from .._pickle import dumps_function
from .agents import ProcessAgentTransport
from .protocol import (OUTPUT_STDOUT, TASK_CALL, TASK_CHUNK, TASK_CHUNK1, WorkerSetup, decode_reply,
                       decode_timing, encode_setup, encode_task)

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
                    "import shoal.process.zygote as z; z.main()")
            # The driver's interpreter flags, so the workers' interpreter is set up as the
            # driver's is: `site` runs unless the driver ran without it (a virtualenv's prefix,
            # sysconfig paths and .pth files; ~5-10 ms, once per driver process, since the
            # workers are forked from the zygote after it).
            argv = [sys.executable, *_interpreter_flags(), "-c", code, "\n".join(sys.path)]
            _zygote = _core.ZygoteClient(argv)
            _zygote_pid = os.getpid()
        return _zygote


def _interpreter_flags():
    """Command-line options that reproduce this interpreter's sys.flags and -X/-W options."""
    import subprocess  # only when a zygote starts

    return subprocess._args_from_interpreter_flags()


# This process's id, kept current across os.fork() (a system call per task saved).
_this_pid = os.getpid()


def _forked():
    global _this_pid
    _this_pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class TaskEntry:
    """A task the pool has not completed: its future, function, and what must live until it
    completes (its arguments' arena buffers)."""

    __slots__ = ("future", "fn_id", "keep", "chunk", "nbytes", "limit", "trace")

    def __init__(self, future, fn_id, keep, chunk, nbytes=0, limit=None, trace=None):
        self.future = future
        self.fn_id = fn_id
        self.keep = keep      # arena buffers of the arguments, or None
        self.chunk = chunk    # a map() chunk: resolves to a ChunkOutcome
        self.nbytes = nbytes  # a chunk's argument bytes (arena copies included)
        self.limit = limit    # (seconds, function name) of a task with a time limit, or None
        self.trace = trace    # its _trace.TaskRecord while a trace is on, else None


class _State:
    """What the completion thread needs; kept apart from the Executor so an executor that
    is dropped without shutdown can still be collected (its __del__ closes the pool)."""

    def __init__(self, pool, retries):
        self.pool = pool
        self.retries = retries
        self.futures = {}  # task id -> TaskEntry
        self.lock = threading.Lock()
        self.functions = None
        # Batches taken from the pool and not yet fully delivered: seq -> [batch, next index].
        # The binding puts each batch here before control returns to Python, so a
        # KeyboardInterrupt (raised only in the main thread, at any bytecode) cannot lose one:
        # whoever delivers next (a caller, the completion thread, shutdown) resumes it.
        self.pending = {}
        self.delivered = 0  # the last batch delivered whole
        # Whose turn it is to deliver (see _deliver): taken without waiting, in C, so that
        # `with` cannot leak it to an interrupt.
        self.delivering = _core.TurnLock()
        # A weak reference to the backend, for its unkillable(): why no worker may be killed
        # now (weak: this state must not keep the executor alive).
        self.backend = lambda: None


def _deliver(state):
    """Delivers the pending batches in the order they were taken (a task's output before its
    result), whichever thread took them; returns how many completions it delivered. Safe to
    interrupt anywhere: each step is redone or skipped by the next delivery, never lost
    (docs/decisions/2026-12-06-taken-batches-survive-ctrl-c.md).

    One thread delivers at a time, and no thread waits for its turn: while another delivers,
    this returns at once and that thread delivers what this one stored, since it looks again
    once it has let go of the turn. Waiting would hang a thread that holds a lock which a
    done-callback being run by the delivering thread waits for (joblib's dispatch lock: its
    callback dispatches the next batch)
    (docs/decisions/2026-12-06-delivery-never-waits-for-its-turn.md)."""
    pending = state.pending
    n = 0
    while pending:
        with state.delivering as mine:  # re-entrant: a callback that submits delivers here too
            if not mine:
                return n
            pending.pop(state.delivered, None)  # left by an interrupted delivery, already done
            while True:
                seq = state.delivered + 1
                record = pending.get(seq)
                if record is None:
                    break  # the thread that took it has not stored it yet: it delivers it next
                n += _deliver_batch(state, record)
                if state.delivered < seq:  # a callback's delivery may have gone further
                    state.delivered = seq
                pending.pop(seq, None)
        # Stored by a thread that found the turn taken while this one held it.
        if pending.get(state.delivered + 1) is None:
            return n
    return n


def _deliver_batch(state, record):
    """Delivers record = [batch, next index] from its next index on; returns the batch's
    length. A completion's future is set before its entry leaves `futures`, and setting it
    twice is harmless, so an interrupted delivery redone from the same index loses nothing.
    A done-callback that submits may deliver (re-entering _deliver in this thread) from the
    current completion on: this frame then goes on from where that delivery left the index."""
    batch = record[0]
    count = len(batch)
    futures = state.futures
    while True:
        i = record[1]
        if i >= count:
            return count
        # Each completion is a plain tuple in _core.Completion's order, which names and
        # documents its items. Unpacked here once per task: a tuple unpacks faster than the record.
        kind, flags, task_id, _aux, status_kind, status_value, status_text, worker, payload, buffers = batch[i]
        if kind == _OUTPUT:
            record[1] = i + 1  # at most once: a line is not written twice
            stream = sys.stdout if flags == OUTPUT_STDOUT else sys.stderr
            try:
                stream.write(payload.decode("utf-8", "replace"))
                stream.flush()
            except Exception:
                pass
            continue
        entry = futures.get(task_id)
        if entry is not None:
            if kind == _RESULT and not flags and entry.trace is None and not entry.chunk:
                # The common case inline (a call's value); anything unusual goes to _finish.
                try:
                    value = decode_reply(payload, buffers)
                except Exception:  # noqa: BLE001 - e.g. a result that cannot be unpickled: _finish says
                    _finish(state, entry, kind, flags, status_kind, status_value, status_text, payload, buffers)
                except BaseException:  # noqa: BLE001
                    if threading.current_thread() is threading.main_thread():
                        raise  # a signal's (Ctrl-C): the next delivery decodes it again
                    _finish(state, entry, kind, flags, status_kind, status_value, status_text, payload, buffers)
                else:
                    entry.future._resolve(value)
            else:
                if entry.trace is not None and not entry.trace.done:
                    _traced(state, entry.trace, kind, flags, status_value, worker, payload, buffers)
                _finish(state, entry, kind, flags, status_kind, status_value, status_text, payload, buffers)
            if futures.pop(task_id, None) is not None:  # then its function is released (once)
                state.functions.release(entry.fn_id)
        if record[1] == i:  # else a callback (one that submits) delivered further from here
            record[1] = i + 1


def _finish(state, entry, kind, flags, status_kind, status_value, status_text, payload, buffers):
    """Sets entry's future from one completion (a second call finds it set and does nothing)."""
    fut = entry.future
    if kind == _RESULT:
        try:
            value = decode_reply(payload, buffers)
        except Exception as exc:  # noqa: BLE001 - fails this task only
            fut._fail(exc)
            return
        except BaseException as exc:  # noqa: BLE001
            if threading.current_thread() is threading.main_thread():
                raise  # a signal's (Ctrl-C): the next delivery decodes it again
            fut._fail(exc)
            return
        finally:
            if entry.trace is not None:
                entry.trace.unpickle = _clock() - entry.trace.done
        if flags & _ERROR:
            exc, tb = value
            exc.__cause__ = RemoteTraceback(tb)
            fut._fail(exc)
        elif entry.chunk:
            # What the chunk's arguments and results hold (map() caps chunks by it).
            nbytes = entry.nbytes + len(payload) + (sum(map(len, buffers)) if buffers else 0)
            results, error, seconds = value
            fut._resolve(ChunkOutcome(results, error, seconds, buffers, nbytes))
        else:
            fut._resolve(value)
    elif kind == _CRASHED:
        signaled = status_kind == _core.STATUS_SIGNALED
        fut._fail(WorkerCrashedError(
            f"the worker running this task {'was ' if status_text.startswith('killed') else ''}{status_text} "
            f"(tried {1 + state.retries} time{'s' if state.retries else ''})",
            signal=status_value if signaled else None,
            exitcode=None if signaled else status_value))
    elif kind == _TIMED_OUT:
        seconds, name = entry.limit or (0.0, "the task")
        fut._fail(TaskTimeoutError(timeout_message(seconds, name), limit=seconds, function=name))
    elif kind == _KILLED:
        fut._killed()
    elif kind == _INIT_FAILED:
        err = InitializerError("the executor's initializer failed in a worker")
        try:
            cause, tb = decode_reply(payload)
            cause.__cause__ = RemoteTraceback(tb)
            err.__cause__ = cause
        except Exception:
            pass
        fut._fail(err)
    elif payload:  # the pool cannot keep workers: the payload says why
        reason = payload.decode("utf-8", "replace")
        fut._fail(WorkersUnavailableError(f"shoal: cannot run the task: {reason}"))
    else:
        fut._fail(ExecutorShutdownError("shoal: cannot run the task: the executor was shut down"))


def _traced(state, rec, kind, flags, status_value, worker, payload, buffers):
    """Fills in a traced task's record as its completion arrives (before it is unpickled)."""
    rec.done = _clock()
    rec.worker = worker
    if kind == _RESULT:
        rec.status = "error" if flags & _ERROR else "ok"
        rec.retries = status_value  # a result's: how many times it ran again after a death
        timing = decode_timing(payload)
        if timing is not None:
            rec.start, rec.loaded, rec.ran, rec.pickled, rec.pid = timing
        rec.result_bytes = len(payload)
        rec.result_arena = sum(map(len, buffers)) if buffers else 0
    else:
        rec.status = _TRACE_STATUS.get(kind, "failed")
        if kind == _CRASHED:
            rec.retries = state.retries


_clock = time.perf_counter_ns

_RESULT, _OUTPUT, _CRASHED, _INIT_FAILED = (_core.COMPLETION_RESULT, _core.COMPLETION_OUTPUT,
                                            _core.COMPLETION_CRASHED, _core.COMPLETION_INIT_FAILED)
_TIMED_OUT, _KILLED = _core.COMPLETION_TIMED_OUT, _core.COMPLETION_KILLED
_TRACE_STATUS = {_CRASHED: "crashed", _TIMED_OUT: "timed out", _KILLED: "killed"}
_MAX_LIMIT_MS = 2**32 - 1  # the limit travels in a task frame's 32-bit flags
_ERROR = _core.FLAG_ERROR


def _complete(state):
    """Completion thread: delivers what no waiting caller has taken (callbacks, as_completed)."""
    take = state.pool.take
    interrupt = state.pool.interrupt
    pending = state.pending
    while True:
        if take(-1.0, True, 0, pending) is None:
            break
        if _deliver(state):
            interrupt()  # a caller blocked in take() may be waiting for one of these
    # The pool is finished: nothing else will complete. What an interrupted caller left is
    # delivered first, after a delivery another thread is making (a callback may take long).
    _deliver(state)
    while state.delivering.taken and pending.get(state.delivered + 1) is not None:
        time.sleep(0.001)
        _deliver(state)
    with state.lock:
        rest = list(state.futures.values())
        state.futures.clear()
    for entry in rest:
        entry.future._fail(ExecutorShutdownError("shoal: the executor was shut down before the task ran"))


class _ProcessFuture(Future):
    """A future whose waiter, instead of sleeping until another thread delivers the result,
    takes results from the pool itself: one thread hop less per task."""

    __slots__ = ("_state_", "_task_id")

    def __init__(self, state, task_id):
        # Future.__init__, inlined: one per task on the submit path.
        self._state = "PENDING"  # concurrent.futures' state names
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []
        self._state_ = state     # the backend's _State
        self._task_id = task_id

    def _canceller(self):
        state = self._state_
        if not state.pool.cancel(self._task_id):
            return False  # already running
        entry = state.futures.pop(self._task_id, None)  # frees its arena buffers
        if entry is not None:
            state.functions.release(entry.fn_id)
        return True

    def kill(self):
        state = self._state_
        if self.done():
            return self.cancelled()
        backend = state.backend()
        reason = backend.unkillable() if backend is not None else None
        if reason is not None:
            raise RuntimeError(f"shoal: cannot kill a running task: {reason}")
        how = state.pool.kill(self._task_id)
        if how == 0:
            return self.cancelled()  # it finished meanwhile
        if how == 1:  # still queued: a plain cancel
            entry = state.futures.pop(self._task_id, None)
            if entry is not None:
                state.functions.release(entry.fn_id)
            self._canceller = None
            return self.cancel()
        return True  # its worker is being killed: the future is cancelled when it is gone

    def _help(self, timeout):
        try:
            self._take_until_done(timeout)
        except BaseException:
            # A Ctrl-C that came as a take returned: what it took is delivered before the
            # exception leaves, so that nobody depends on a later delivery (a second signal
            # during this one leaves the rest for the next).
            if self._state_.pending:
                _deliver(self._state_)
            raise

    def _take_until_done(self, timeout):
        state = self._state_
        pool = state.pool
        deadline = None if timeout is None else time.monotonic() + timeout
        if state.pending:
            # Left by a delivery that a Ctrl-C interrupted (perhaps this caller's last wait,
            # whose signal came with its take): delivered before anything else.
            if _deliver(state):
                pool.interrupt()
        while True:
            epoch = pool.epoch  # before the check: a delivery after it ends take() at once
            if self._state not in ("PENDING", "RUNNING"):
                return
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                return
            # Short slices: Ctrl-C stays responsive. A batch taken waits in state.pending.
            if pool.take(left, False, epoch, state.pending) is None:
                _deliver(state)
                return
            n = _deliver(state)  # also what an interrupted delivery left
            if n > 1 or (n and self._state in ("PENDING", "RUNNING")):
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


class ProcessBackend(Backend):
    """Tasks run in worker processes forked from this process's zygote (see the diagram above)."""

    name = "process"
    checkpoints = True  # a worker can die: agents can be rebuilt from checkpoints
    stops_tasks = True  # task_timeout and Future.kill() stop a running task by killing its worker

    # The worker spins this long on an empty task ring before it sleeps on its futex: a task
    # that comes sooner starts without a wake-up (~5-10 µs), at the cost of up to this much
    # CPU per idle period.
    SPIN_US = 100
    # Each worker's task and result rings. A frame larger than a ring goes in fragments; larger
    # rings hold more small tasks in flight per worker, and cost that much shared memory each.
    RING_BYTES = 1 << 18
    # worker_pids() waits this long after the pool started for the workers being forked.
    WORKERS_START_S = 5.0

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        for name in config.preload:  # a typo fails here; an import error, at the first task
            if importlib.util.find_spec(name) is None:
                raise ModuleNotFoundError(f"shoal: no module named {name!r} to preload", name=name)
        threshold = config.buffer_threshold
        self._setup = encode_setup(WorkerSetup(
            cwd=os.getcwd(), path=list(sys.path), initializer=config.initializer, initargs=config.initargs,
            buffer_threshold=threshold if threshold is not None else 1 << 62, event_loop=config.event_loop,
            env=dict(os.environ),
            threads=_threads.worker_plan(config.threads_per_worker, config.max_workers)))
        self._arena = None if threshold is None else arena()
        self._threshold = threshold
        # Buffers collectors that collected nothing (most tasks pass no large buffer), used
        # again by the next submit: making one costs ~0.2 µs. A list: pop and append are atomic.
        self._spare_buffers = []
        # Close frames of agent groups dropped unclosed (process/agents.py), sent with the next
        # agent operation.
        self.dropped_agent_frames = deque()
        self._pool = self._state = self._functions = self._thread = None
        self._ids = itertools.count(1)
        self._start_lock = threading.Lock()
        self._closed = False
        self._broken = None  # the PreloadError every task raises once a preload module failed
        self._owner = os.getpid()  # a fork()ed child must not use this executor (see _check_owner)
        # The workers are forked at the first task, once the zygote has imported its function's
        # module (docs/design.md, "Zygote"); the zygote starts now.
        zygote()

    def _start(self, fn=None):
        """Creates the pool (the zygote imports the preload modules and `fn`'s module, then
        forks the workers) and its completion thread; returns the pool. Once only."""
        with self._start_lock:
            if self._pool is None:
                if self._closed:
                    raise ExecutorClosedError("cannot schedule new futures after shutdown")
                if self._broken is not None:
                    raise self._broken  # a preload module failed: not tried again
                config = self.config
                try:
                    pool = _core.Pool(
                        zygote(), workers=config.max_workers, retries=config.retries,
                        max_items_per_worker=config.max_tasks_per_worker or 0,
                        preload=list(dict.fromkeys(config.preload)), spin_ns=self.SPIN_US * 1000,
                        task_ring_bytes=self.RING_BYTES, result_ring_bytes=self.RING_BYTES,
                        init_payload=self._setup, hints=_module_hints(fn), arena=self._arena,
                        concurrency=config.concurrency)
                except RuntimeError as exc:
                    self._broken = _preload_error(exc)
                    if self._broken is None:
                        raise
                if self._broken is not None:
                    raise self._broken  # its __cause__: the import's traceback in the zygote
                self._state = _State(pool, config.retries)
                self._state.backend = weakref.ref(self)
                arena_, threshold = self._arena, self._threshold
                self._functions = self._state.functions = FunctionTable(
                    lambda fn, held: dumps_function(fn, arena_, threshold, held),
                    pool.define_function, pool.forget_function)
                self._thread = threading.Thread(target=_complete, args=(self._state,),
                                                name="shoal-completions", daemon=True)
                self._thread.start()
                self._started = time.monotonic()
                self._pool = pool
            return self._pool

    def _check_owner(self):
        """Raises InheritedExecutorError in a fork()ed child, before the arena (the parent's)
        or the pool is touched; the pool checks its own entry points too."""
        if self._owner != _this_pid:
            raise InheritedExecutorError(
                f"shoal: this executor belongs to process {self._owner}; process {os.getpid()} is a "
                "fork()ed child of it and cannot use it (its workers, rings and locks are the "
                "parent's): make a new executor in the child")

    def _submit(self, fn, mode, data, count, limit=None, placements=None, alone=False):
        if self._owner != _this_pid:
            self._check_owner()
        limit_ms = 0
        if limit is not None:
            reason = self.unkillable()
            if reason is not None:
                raise ValueError(f"shoal: task_timeout cannot be used now: {reason}")
            limit_ms = min(_MAX_LIMIT_MS, max(1, int(limit * 1000 + 0.5)))
            limit = (limit, function_name(fn))
        if self._pool is None:
            self._start(fn)
        rec = self.tracer
        if rec is not None:
            rec = rec.task(fn, "call" if mode == TASK_CALL else "chunk", count)
        function = self._functions.acquire(fn)
        fn_id = function.fn_id
        if self._arena is None:
            bufs = None
        elif placements is None and self._spare_buffers:
            try:
                bufs = self._spare_buffers.pop()
            except IndexError:  # another thread took the last one
                bufs = Buffers(self._arena, self._threshold)
        else:
            bufs = Buffers(self._arena, self._threshold, placements=placements)
        try:
            payload = encode_task(mode, data, bufs, rec is not None)
        except BaseException:
            self._functions.release(fn_id)
            if rec is not None:
                rec.status = "failed"
            raise
        if bufs is None:
            refs = None
        elif bufs.refs:
            refs = bufs.refs
        else:
            refs = None
            if placements is None and not bufs.copied and len(self._spare_buffers) < 4:
                self._spare_buffers.append(bufs)  # it holds nothing: the next submit's
        if refs is not None and len(refs) > _core.MAX_FRAME_BUFFERS:
            self._functions.release(fn_id)
            raise ValueError(f"shoal: a task of {count} item(s) passes {len(refs)} large buffers; one frame "
                             f"carries at most {_core.MAX_FRAME_BUFFERS}: use a smaller chunksize")
        task_id = next(self._ids)
        fut = _ProcessFuture(self._state, task_id)
        chunk = mode != TASK_CALL
        # A chunk's argument bytes (its own arena copies included, shared placements not), for
        # map()'s chunk cap.
        nbytes = len(payload) + (bufs.copied if refs else 0) if chunk else 0
        # The arguments' arena buffers live until the task completes (the entry is dropped).
        if rec is not None:
            rec.pickle = _clock() - rec.submit
            rec.nbytes = len(payload)
            rec.arena = sum(n & LENGTH for _, n in refs) if refs else 0
        self._state.futures[task_id] = TaskEntry(fut, fn_id, bufs.keep if refs else None, chunk, nbytes, limit, rec)
        # A coroutine task counts against the per-worker `concurrency`, not the adaptive limit.
        if self._pool.submit(task_id, fn_id, count, payload, refs, function.coroutine, -1, limit_ms, alone):
            self._deliver_ready()
        return fut

    def _deliver_ready(self):
        """Delivers what the pool has drained: a thread submitting many tasks delivers their
        results between submits, instead of handing each to the completion thread (a thread
        wake-up and two GIL hand-overs per task)."""
        self._pool.take_ready(self._state.pending)
        _deliver(self._state)
        self._pool.interrupt()  # callers blocked in result() may wait for these (cheap if none)

    def submit_pinned(self, fn, payload, count, worker, refs=None, keep=None, limit=None):
        """Sends a ready-made task payload to worker slot ``worker`` only (agents live there).
        If that worker dies, the future fails with WorkerCrashedError: it is not retried.
        ``refs`` are the payload's arena buffers; ``keep`` keeps them alive until it completes.
        ``limit``: (seconds, name) of a time limit: past it the worker is killed and the future
        fails with TaskTimeoutError."""
        self._check_owner()
        limit_ms = 0
        if limit is not None:
            reason = self.unkillable()
            if reason is not None:
                raise ValueError(f"shoal: task_timeout cannot be used now: {reason}")
            limit_ms = min(_MAX_LIMIT_MS, max(1, int(limit[0] * 1000 + 0.5)))
        if self._pool is None:
            self._start(fn)
        rec = self.tracer
        if rec is not None:  # the driver's side only: agent frames carry no timing
            rec = rec.task(fn, "agents", count)
            rec.nbytes = len(payload)
        fn_id = self._functions.acquire(fn).fn_id
        task_id = next(self._ids)
        fut = _ProcessFuture(self._state, task_id)
        self._state.futures[task_id] = TaskEntry(fut, fn_id, keep, False, 0, limit, rec)
        try:
            ready = self._pool.submit(task_id, fn_id, count, payload, refs, worker=worker, limit_ms=limit_ms)
        except BaseException:
            self._state.futures.pop(task_id, None)
            self._functions.release(fn_id)
            raise
        if ready:
            self._deliver_ready()
        return fut

    def buffers(self):
        """A collector for one payload's out-of-band buffers (None without an arena). Agent
        operations take it before they encode: the owner check comes first here too."""
        self._check_owner()
        return None if self._arena is None else Buffers(self._arena, self._threshold)

    def submit(self, fn, args, kwargs, limit=None, alone=False, placements=None):
        return self._submit(fn, TASK_CALL, (args, kwargs), 1, limit, placements, alone)

    def submit_chunk(self, fn, items, star=True, limit=None, placements=None):
        return self._submit(fn, TASK_CHUNK if star else TASK_CHUNK1, items, len(items), limit, placements)

    def placements(self, view=COPY_ON_WRITE, arrays_above=None, reducers=None, located=READ_ONLY):
        """A call's Placements (None without an arena): see _arena.Placements."""
        if self._arena is None:
            return None
        return Placements(self._arena, view, arrays_above, reducers, located)

    def agent_transport(self, group):
        return ProcessAgentTransport(group, self)

    def worker_pids(self):
        """The workers' pids. Right after the pool starts (its first task), the workers being
        forked are waited for (up to WORKERS_START_S), so the list is never empty then."""
        if self._pool is None:
            if self._closed:
                return []
            self._start()
        pids = self._pool.worker_pids()
        if len(pids) < self.slots and not self._closed:
            deadline = self._started + self.WORKERS_START_S
            while len(pids) < self.slots and time.monotonic() < deadline:
                time.sleep(0.001)
                pids = self._pool.worker_pids()
        return [int(p) for p in pids]

    def traced_processes(self):
        if self._pool is None or self._closed:
            return []
        return [int(p) for p in self._pool.worker_pids()]

    def cancel_all(self):
        if self._pool is None:
            return
        ids = self._pool.cancel_all()
        with self._state.lock:
            entries = [self._state.futures.pop(i, None) for i in ids]
        for e in entries:
            if e is not None:
                e.future._canceller = None  # already off the queue
                e.future.cancel()

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


_PRELOAD_FAILED = "shoal: preload failed in the zygote: "  # cpp/src/pool.cpp; then "module\ntraceback"


def _preload_error(exc):
    """The PreloadError for the Pool's RuntimeError when a preload module failed (else None)."""
    text = str(exc)
    if not text.startswith(_PRELOAD_FAILED):
        return None
    module, _, tb = text[len(_PRELOAD_FAILED):].partition("\n")
    err = PreloadError(f"shoal: the preload module {module!r} failed to import in the zygote, so "
                       f"no worker can start: {tb.strip().splitlines()[-1] if tb.strip() else '?'}",
                       module=module)
    err.__cause__ = RemoteTraceback(tb)
    err.__suppress_context__ = True
    return err


def _module_hints(fn):
    """For the zygote: "module<TAB>file" of the module `fn` is pickled by reference from (and
    of its top-level package first), so that the workers forked after it share that module
    instead of each importing it. Nothing for __main__, closures, lambdas, builtins and
    functions pickled by value."""
    while isinstance(fn, functools.partial):  # a partial (Mesa's batch_run): its function's module
        fn = fn.func
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
