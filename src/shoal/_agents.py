"""Agents: many stateful objects kept inside the workers and called in parallel.

One operation on a group (process backend):

    group.call("bid", prices)
      │  (args, kwargs) pickled once
      ▼
    one frame per worker slot: header (op, group id, block of agent indices, method name)
      │  + the same shared bytes          Pool.submit(..., worker=slot): pinned to the slot
      ▼                                   whose worker holds that block of agents
    worker: _agent_worker.serve ─ one Python loop over its agents ─ one reply frame
      │  (results, per-agent errors with tracebacks, checkpoint states if enabled)
      ▼
    driver: replies joined in agent order ─► list, or AgentError carrying the rest

Agents are split into one contiguous block per worker slot and stay there. Operations on a
group run one after another, in the order they were made (each sees the state the previous
left). A worker that dies takes its block with it: with ``checkpoint=True`` the block is rebuilt
on the replacement worker from the states saved after each call, and the operation is retried;
without it the block is lost, which every later operation reports (AgentsLostError).

The thread backend keeps the agents in the driver and runs each operation as one task per
thread over a block; the serial backend runs it in the caller. Both use the same loop.
"""
import collections
import concurrent.futures
import itertools
import pickle
import threading
import time
import weakref

from . import _agent_worker as _aw
from . import _core
from ._arena import unshare
from ._errors import AgentError, AgentsLostError, RemoteTraceback, WorkerCrashedError
from ._future import Future
from ._pickle import dumps, loads

__all__ = ["AgentGroup"]

_group_ids = itertools.count(1)
_OP_NAMES = {_aw.INIT: "construction", _aw.CALL: "call", _aw.EACH: "call_each", _aw.GET: "get",
             _aw.SET: "set", _aw.GATHER: "gather", _aw.CLOSE: "close"}


def _blocks(n, parts):
    """[(part, start, stop)] splitting range(n) into `parts` contiguous blocks; empty ones dropped."""
    out = []
    for k in range(parts):
        start, stop = k * n // parts, (k + 1) * n // parts
        if stop > start:
            out.append((k, start, stop))
    return out


class AgentGroup:
    """Agents built by :meth:`shoal.Executor.agents`, kept in place and called in parallel.

    ``len(group)`` is the number of agents. Every operation returns (or its future resolves to)
    a list in agent order. If it fails for some agents, it raises :class:`shoal.AgentError`
    with their exceptions and the others' results. Operations run in the order they were made.
    """

    def __init__(self, executor, cls, init_args, checkpoint=False):
        if not callable(cls):
            raise TypeError(f"agents(): {cls!r} is not a class or callable")
        executor._check_open()
        backend = executor._backend
        if getattr(executor, "_max_tasks_per_worker", None):
            raise ValueError("agents cannot live in an executor with max_tasks_per_worker: a worker "
                             "retired after that many tasks would take its agents with it")
        init_args = list(init_args)
        self._executor = executor
        self._cls = cls
        self._n = len(init_args)
        self._id = next(_group_ids)
        self._checkpoint = bool(checkpoint) and backend.name == "process"
        self._states = [None] * self._n if self._checkpoint else None
        self._lock = threading.Lock()
        self._queue = collections.deque()  # operations not finished; the first one is running
        self._closed = False
        self._lost = {}                    # block number -> WorkerCrashedError (its worker died)
        if backend.name == "process":
            self._transport = _ProcessTransport(self, backend)
        elif backend.name == "thread":
            self._transport = _LocalTransport(self, backend, executor.max_workers)
        else:
            self._transport = _LocalTransport(self, None, 1)
        self._finalizer = None
        executor._agent_groups.add(self)
        try:
            self._wait(self._enqueue(_Operation(self, _aw.INIT, "", extra=init_args)))
        except BaseException:
            try:
                self.close()  # nothing half-built stays behind in the workers
            except Exception:
                pass
            raise
        self._finalizer = self._transport.finalizer()

    # ------------------------------------------------------------------ public API

    def __len__(self):
        return self._n

    def __repr__(self):
        state = "closed" if self._closed else f"{len(self.lost)} lost" if self._lost else "live"
        return (f"<shoal.AgentGroup of {self._n} {getattr(self._cls, '__qualname__', self._cls)!s} "
                f"agents, backend={self._executor.backend!r}, {state}>")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def checkpoint(self):
        """True when each agent's state is saved after every call (process backend only)."""
        return self._checkpoint

    @property
    def lost(self):
        """Sorted indices of the agents lost with a worker that died (empty with checkpoint=True)."""
        out = []
        for b in sorted(self._lost):
            _, start, stop = self._transport.blocks[b]
            out.extend(range(start, stop))
        return tuple(out)

    def call(self, method, /, *args, **kwargs):
        """Calls ``agent.method(*args, **kwargs)`` on every agent in parallel; returns the results
        in agent order. The arguments are pickled once for all agents."""
        return self._wait(self._submit(_aw.CALL, _name(method, "method"), args=args, kwargs=kwargs))

    def call_each(self, method, args_list):
        """Calls ``method`` on every agent with its own argument: ``args_list[i]`` goes to agent
        ``i`` (a tuple: positional arguments, a dict: keyword arguments, anything else: the one
        argument). Returns the results in agent order."""
        return self._wait(self._submit(_aw.EACH, _name(method, "method"),
                                       extra=self._per_agent(args_list, "args_list")))

    def call_async(self, method, /, *args, **kwargs):
        """Like :meth:`call`, without waiting: returns a :class:`shoal.Future` of the list
        (``await``-able). The arguments are pickled now, so errors in them raise here."""
        return self._submit(_aw.CALL, _name(method, "method"), args=args, kwargs=kwargs).future

    def get(self, attr):
        """The value of attribute ``attr`` of every agent, in agent order."""
        return self._wait(self._submit(_aw.GET, _name(attr, "attr")))

    def set(self, attr, values):
        """Sets attribute ``attr`` of agent ``i`` to ``values[i]`` for every agent."""
        self._wait(self._submit(_aw.SET, _name(attr, "attr"), extra=self._per_agent(values, "values")))

    def gather(self):
        """The agent objects, in agent order: copies brought back from the workers on the
        process backend, the live objects themselves on the thread and serial backends."""
        return self._wait(self._submit(_aw.GATHER, ""))

    def close(self):
        """Frees the agents (after the operations already made). Later operations raise
        RuntimeError. Closing twice, or after the executor shut down, does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._finalizer is not None:
            self._finalizer.detach()
        try:
            if self._executor._shutdown:
                return
            try:
                self._wait(self._enqueue(_Operation(self, _aw.CLOSE, "")))
            except (concurrent.futures.BrokenExecutor, AgentError):
                pass  # a worker died, or all did: their agents are gone already
            self._transport.discard()
        finally:
            if self._states is not None:
                self._states = [None] * self._n  # the checkpoints' arena blocks are freed

    # ------------------------------------------------------------------ machinery

    def _per_agent(self, values, what):
        values = list(values)
        if len(values) != self._n:
            raise ValueError(f"{what} has {len(values)} items for {self._n} agents")
        return values

    def _submit(self, op, name, extra=None, args=(), kwargs=None):
        if self._closed:
            raise RuntimeError("the agent group is closed")
        self._executor._check_open()
        return self._enqueue(_Operation(self, op, name, extra=extra, args=args, kwargs=kwargs))

    def _enqueue(self, operation):
        with self._lock:
            self._queue.append(operation)
            first = len(self._queue) == 1
        if first:
            try:
                operation.start()
            except BaseException as exc:  # e.g. Ctrl-C in an agent on the serial backend
                operation.future._fail(exc)
                self._finished(operation)
                raise
        return operation

    def _finished(self, operation):
        """The head operation is done: start the next one."""
        with self._lock:
            if self._queue and self._queue[0] is operation:
                self._queue.popleft()
            nxt = self._queue[0] if self._queue else None
        if nxt is not None:
            nxt.start()

    def _wait(self, operation):
        return operation.future.result()

    def _last_operation(self):
        """The last operation made and not finished (the others run before it), or None."""
        with self._lock:
            return self._queue[-1] if self._queue else None

    def _help(self, fut, timeout):
        """Waits until `fut` is done or `timeout` passes, taking results from the pool in this
        thread where it can (a caller blocked on a result receives it with no thread hop)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not fut.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            with self._lock:
                head = self._queue[0] if self._queue else None
            pending = [f for f in (head.inflight() if head is not None else ()) if not f.done()]
            try:
                if pending:
                    pending[0].exception(left)
                else:
                    Future.exception(fut, 0.05 if left is None else min(0.05, left))
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                pass


def _name(name, what):
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    return name


class _Operation:
    """One operation on every live block of a group: its frames, retries and joined result."""

    def __init__(self, group, op, name, extra=None, args=(), kwargs=None):
        self.group = group
        self.op = op
        self.name = name
        self.future = _GroupFuture()
        self.future._shoal_group = group
        self.future._canceller = _never  # a started operation runs to its end
        blocks = group._transport.blocks
        self.parts = [None] * len(blocks)      # block -> results list
        self.errors = {}                       # agent index -> exception
        self.attempts = [1] * len(blocks)
        self.inner = {}                        # block -> future in flight
        self.broken = None
        self.remaining = 0
        self._lock = threading.Lock()
        # Pickled now, in the caller: an argument that cannot be pickled raises here.
        self.prepared = group._transport.prepare(self, extra, args, kwargs or {})

    def inflight(self):
        with self._lock:
            return list(self.inner.values())

    def start(self):
        group = self.group
        live = [b for b in range(len(group._transport.blocks)) if b not in group._lost]
        with self._lock:
            self.remaining = len(live)
        if not live:
            self._finish()
            return
        for b in live:
            self._launch(b)

    def _launch(self, b):
        try:
            fut = self.group._transport.launch(self, b)
        except Exception as exc:  # noqa: BLE001 - e.g. the executor was shut down
            fut = Future()
            fut.set_running_or_notify_cancel()
            fut._fail(exc)
        with self._lock:
            self.inner[b] = fut
        fut.add_done_callback(lambda f, b=b: self._block_done(b, f))

    def _block_done(self, b, fut):
        group = self.group
        transport = group._transport
        _, start, stop = transport.blocks[b]
        crash = None
        try:
            status, results, errors, states = transport.outcome(fut)
        except WorkerCrashedError as exc:
            crash = _crash(exc, start, stop)
        except (concurrent.futures.BrokenExecutor, concurrent.futures.CancelledError) as exc:
            if not isinstance(exc, concurrent.futures.BrokenExecutor):
                exc = concurrent.futures.BrokenExecutor("shoal: the executor was shut down")
            self.broken = self.broken or exc
            results = errors = states = None
        except BaseException as exc:  # noqa: BLE001 - this block failed as a whole
            for i in range(start, stop):
                self.errors[i] = exc
            results = errors = states = None
        else:
            if status == _aw.MISSING:
                crash = WorkerCrashedError(
                    f"the worker holding agents {start}..{stop - 1} died between operations "
                    f"and was replaced")
        if crash is not None:
            if self._retry(b, crash):
                return
        else:
            if results is not None:
                self.parts[b] = results
            if errors:
                for pos, exc in errors.items():
                    self.errors[start + pos] = exc
            if states is not None:
                # (buffer, offset, length) per agent: the buffer is one arena block for the
                # whole slot, freed when no agent's saved state refers to it any more.
                blob, lengths = states
                saved = group._states
                offset = 0
                for pos, n in enumerate(lengths):
                    if n >= 0:
                        saved[start + pos] = (blob, offset, n)
                        offset += n
        with self._lock:
            self.inner.pop(b, None)
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            self._finish()

    def _retry(self, b, crash):
        """A block's worker died during this operation. True if the operation was sent again."""
        group = self.group
        transport = group._transport
        _, start, stop = transport.blocks[b]
        if self.op == _aw.CLOSE:
            return False  # the agents are gone either way
        if self.op == _aw.INIT or group._checkpoint:
            if self.attempts[b] <= transport.retries:
                self.attempts[b] += 1
                if self.op != _aw.INIT:
                    transport.restore(b)
                self._launch(b)
                return True
            crash = WorkerCrashedError(f"{crash} (tried {self.attempts[b]} times"
                                       + ("" if self.op == _aw.INIT else
                                          "; the agents are rebuilt from their checkpoint") + ")",
                                       signal=crash.signal, exitcode=crash.exitcode)
            if self.op != _aw.INIT:
                transport.restore(b)  # the group stays whole; this operation failed on the block
        else:
            group._lost[b] = crash
        for i in range(start, stop):
            self.errors[i] = crash
        return False

    def _finish(self):
        group = self.group
        try:
            if self.broken is not None:
                self.future._fail(self.broken)
                return
            results = []
            for b, (_, start, stop) in enumerate(group._transport.blocks):
                part = self.parts[b]
                results.extend(part if part is not None else [None] * (stop - start))
            for b, crash in group._lost.items():
                _, start, stop = group._transport.blocks[b]
                for i in range(start, stop):
                    self.errors.setdefault(i, crash)
            if not self.errors:
                self.future._resolve(results)
                return
            lost = group.lost
            kind = AgentsLostError if lost else AgentError
            err = kind(_message(self, lost), errors=self.errors, results=results, lost=lost)
            err.__cause__ = self.errors[min(self.errors)]  # tracebacks show where it began
            self.future._fail(err)
        finally:
            self.prepared = None
            if group._n >= _TRIM_AGENTS and group._executor._backend.name == "process":
                _trim_soon()
            group._finished(self)


# The frames and results of thousands of agents come and go through the driver's heap, and
# glibc keeps freed memory (measured: ~20 MB after 20 calls on 10,000 agents, more than the
# workers' own overhead). Allocators such as jemalloc and mimalloc return it on a timer; so
# does shoal, for the driver: shortly after an operation on a large group (once the caller
# has had time to drop the previous results), malloc_trim returns the free pages (~0.3 ms).
_TRIM_AGENTS = 1000   # groups at least this large
_TRIM_DELAY_S = 0.05  # after the last such operation
_trimmer = None
_trimmer_lock = threading.Lock()


def _trim_soon():
    global _trimmer
    t = _trimmer
    if t is None or not t.is_alive():  # first use, or a forked driver
        with _trimmer_lock:
            if _trimmer is None or not _trimmer.is_alive():
                _trimmer = _Trimmer()
                _trimmer.start()
            t = _trimmer
    t.event.set()


class _Trimmer(threading.Thread):
    def __init__(self):
        super().__init__(name="shoal-trim-heap", daemon=True)
        self.event = threading.Event()
        self.trims = 0

    def run(self):
        event = self.event
        while True:
            event.wait()
            while event.is_set():  # until no operation finished for a while
                event.clear()
                time.sleep(_TRIM_DELAY_S)
            _core.trim_heap()
            self.trims += 1


def _never():
    return False


class _GroupFuture(Future):
    """The future of an operation: a thread that waits on it takes the pool's results itself."""

    def result(self, timeout=None):
        self._shoal_group._help(self, timeout)
        return super().result(timeout=0 if timeout is not None else None)

    def exception(self, timeout=None):
        self._shoal_group._help(self, timeout)
        return super().exception(timeout=0 if timeout is not None else None)


def _crash(exc, start, stop):
    """The pool's WorkerCrashedError, reworded for a block of agents (it was not retried)."""
    if exc.signal is not None:
        import signal as _signal

        try:
            how = f"was killed by {_signal.Signals(exc.signal).name}"
        except ValueError:
            how = f"was killed by signal {exc.signal}"
    elif exc.exitcode is not None:
        how = f"exited with status {exc.exitcode}"
    else:
        how = "died"
    return WorkerCrashedError(f"the worker holding agents {start}..{stop - 1} {how}",
                              signal=exc.signal, exitcode=exc.exitcode)


def _message(operation, lost):
    what = _OP_NAMES.get(operation.op, "operation")
    if operation.name:
        what = f"{what} of {operation.name!r}"
    errors = operation.errors
    n = operation.group._n
    parts = []
    if lost:
        crash = next(iter(operation.group._lost.values()))
        parts.append(f"{len(lost)} agents lost with their worker ({_span(lost)}; {crash})")
    gone = set(lost)
    failed = sorted(i for i in errors if i not in gone)
    if failed:
        # Runs of agents that share one exception (a block whose worker died) show once.
        runs = []
        for i in failed:
            if runs and runs[-1][1] == i - 1 and errors[i] is errors[runs[-1][0]]:
                runs[-1][1] = i
            else:
                runs.append([i, i])
        shown = "; ".join((f"agent {a}" if a == b else f"agents {a}..{b}") +
                          f": {type(errors[a]).__name__}: {errors[a]}" for a, b in runs[:3])
        more = f"; and {len(runs) - 3} more" if len(runs) > 3 else ""
        parts.append(f"{len(failed)} of {n} agents failed ({shown}{more})")
    return f"{what}: " + "; ".join(parts)


def _span(indices):
    """'0..4999' or '3, 7, 9' for a sorted index tuple."""
    if len(indices) > 3 and indices[-1] - indices[0] + 1 == len(indices):
        return f"agents {indices[0]}..{indices[-1]}"
    return "agents " + ", ".join(map(str, indices[:10])) + (", ..." if len(indices) > 10 else "")


# ---------------------------------------------------------------------- transports


class _ProcessTransport:
    """Blocks live in the worker processes, one per slot; frames are pinned to their slot."""

    def __init__(self, group, backend):
        self.group = group
        self.backend = backend
        from ._worker import AGENT  # the worker's task mode for agent frames

        self.retries = backend._retries
        self.blocks = _blocks(group._n, backend.slots)
        self.mode = AGENT
        # Close frames of groups dropped without close(), sent by the next operation of any
        # group of this executor (a finalizer may run inside a lock; it only appends here).
        self.dropped = backend.__dict__.setdefault("_shoal_dropped_agents", collections.deque())

    def _frame(self, b, op, name, extra, ntail=0):
        """(payload, arena refs, what keeps them alive) of block b's header. Per-agent values
        (init arguments, call_each arguments, set values, states) have their large buffers
        placed in the arena for this block's frame only."""
        _, start, stop = self.blocks[b]
        group = self.group
        if extra is None:
            return dumps((self.mode, (op, group._id, start, stop, name, None, group._checkpoint, ntail))), None, None
        header = (op, group._id, start, stop, name, extra[start:stop], group._checkpoint, ntail)
        bufs = self.backend.buffers()
        payload = dumps((self.mode, header), bufs)
        if bufs is None or not bufs.refs:
            return payload, None, None
        return payload, bufs.refs, bufs.keep

    def prepare(self, operation, extra, args, kwargs):
        op = operation.op
        if op != _aw.CALL:
            return [self._frame(b, op, operation.name, extra) for b in range(len(self.blocks))]
        # The shared arguments: pickled once; the same bytes follow every block's header, and
        # their large buffers are in the arena once for all the workers (each worker takes
        # one copy of its own for its agents: see _agent_worker._own).
        bufs = self.backend.buffers()
        tail = dumps((args, kwargs), bufs)
        refs = keep = None
        if bufs is not None and bufs.refs:
            refs, keep = bufs.refs, bufs.keep
        return [(self._frame(b, op, operation.name, None, len(tail))[0] + tail, refs, keep)
                for b in range(len(self.blocks))]

    def launch(self, operation, b):
        dropped = self.dropped
        while dropped:
            cls, payload, count, slot = dropped.popleft()
            self.backend.submit_pinned(cls, payload, count, slot)
        slot, start, stop = self.blocks[b]
        payload, refs, keep = operation.prepared[b]
        return self.backend.submit_pinned(self.group._cls, payload, stop - start, slot, refs, keep)

    def outcome(self, fut):
        status, results, errors, states = fut.result()  # raises WorkerCrashedError, BrokenExecutor...
        if status == _aw.STACKED:
            status, results = _aw.OK, _aw.unstack(results)
        if errors:
            errors = {pos: _load_error(blob) for pos, blob in errors.items()}
        return status, results, errors, states

    def restore(self, b):
        """Rebuilds block b from its saved states on the slot's (new) worker; the next frame
        pinned to the slot runs after it."""
        slot, start, stop = self.blocks[b]
        # The saved states stay where they are (arena blocks the driver holds): the frame
        # refers to them, read-only, and the new worker unpickles each agent from its slice.
        blobs, entries, index = [], [], {}
        for blob, offset, n in self.group._states[start:stop]:
            k = index.get(id(blob))
            if k is None:
                k = index[id(blob)] = len(blobs)
                blobs.append(pickle.PickleBuffer(blob))
            entries.append((k, offset, n))
        header = (_aw.RESTORE, self.group._id, start, stop, "", (blobs, entries), True, 0)
        bufs = self.backend.buffers()
        payload = dumps((self.mode, header), bufs)
        refs, keep = (bufs.refs, bufs.keep) if bufs is not None and bufs.refs else (None, None)
        self.backend.submit_pinned(self.group._cls, payload, stop - start, slot, refs, keep)

    def finalizer(self):
        """Frees the agents in the workers if the group is dropped without close(): the close
        frames go out with the executor's next agent operation."""
        frames = [(self.group._cls, self._frame(b, _aw.CLOSE, "", None)[0], stop - start, slot)
                  for b, (slot, start, stop) in enumerate(self.blocks)]
        f = weakref.finalize(self.group, self.dropped.extend, frames)
        f.atexit = False
        return f

    def discard(self):
        pass


def _load_error(blob):
    try:
        exc, tb = loads(blob)
    except Exception as load_error:  # noqa: BLE001 - the exception's class is unknown here
        return RuntimeError(f"an agent raised an exception that cannot be unpickled here: {load_error!r}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class _LocalTransport:
    """Agents in the driver: the serial backend runs a block in the caller, the thread backend
    runs one block per thread."""

    retries = 0

    def __init__(self, group, backend, parts):
        self.group = group
        self.backend = backend  # None: serial, in the caller
        self.blocks = _blocks(group._n, parts)
        self.agents = [None] * group._n

    def prepare(self, operation, extra, args, kwargs):
        # Objects, not frames: a shoal.share handle stands for its value (as in submit).
        args = tuple(map(unshare, args))
        kwargs = {k: unshare(v) for k, v in kwargs.items()}
        if extra is not None and operation.op in (_aw.EACH, _aw.INIT):
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
        executor = self.group._executor
        with executor._lock:  # shutdown() sets the flag under it, then stops the threads
            if executor._stopping:
                raise concurrent.futures.BrokenExecutor(
                    "shoal: the executor was shut down before this agent operation started")
            return self.backend.submit(_run_local, call, {})

    def outcome(self, fut):
        return fut.result()

    def restore(self, b):
        raise AssertionError("agents in the driver cannot be lost")

    def finalizer(self):
        return None

    def discard(self):
        self.agents = [None] * self.group._n


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
    if op == _aw.CLOSE:
        agents[start:stop] = [None] * (stop - start)
        return _aw.OK, None, None, None
    block = None if op == _aw.INIT else agents[start:stop]
    results, errors, built = _aw.run_block(block, op, name, sub, args, kwargs, cls)
    if op == _aw.INIT:
        agents[start:stop] = built
    return _aw.OK, results, errors, None
