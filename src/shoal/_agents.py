"""Agents: many stateful objects kept inside the workers and called in parallel.

One operation on a group (process backend):

    group.call("bid", prices)
      │  (args, kwargs) pickled once
      ▼
    one frame per worker slot: header (op, group id, block of agent indices, method name)
      │  + the same shared bytes          Pool.submit(..., worker=slot): pinned to the slot
      ▼                                   whose worker holds that block of agents
    worker: process/agent_worker.serve ─ one Python loop over its agents ─ one reply frame
      │  (results, per-agent errors with tracebacks, checkpoint states if enabled)
      ▼
    driver: replies joined in agent order ─► list, or AgentError carrying the rest

Agents are split into one contiguous block per worker slot and stay there. Operations on a
group run one after another, in the order they were made (each sees the state the previous
left). A worker that dies takes its block with it: with ``checkpoint=True`` the block is rebuilt
on the replacement worker from the states saved after each call, and the operation is retried;
without it the block is lost, which every later operation reports (AgentsLostError).

This module holds the group and its operations' state machine (launch per block, retry on a
crash, join the replies); how an operation reaches a block is the backend's AgentTransport
(process/agents.py for worker processes, _local.py for agents kept in the driver by the thread
and serial backends). Every transport runs a block with the same loop, _agent_ops.run_block.
"""
import collections
import concurrent.futures
import itertools
import threading
import time
from typing import Any, Callable, NamedTuple

from . import _agent_ops as ops
from ._errors import AgentError, AgentsLostError, TaskTimeoutError, WorkerCrashedError, check_task_timeout
from ._future import Future

__all__ = ["AgentGroup", "AgentHost"]

_group_ids = itertools.count(1)
_OP_NAMES = {ops.OP_INIT: "construction", ops.OP_CALL: "call", ops.OP_EACH: "call_each", ops.OP_GET: "get",
             ops.OP_SET: "set", ops.OP_GATHER: "gather", ops.OP_CLOSE: "close"}


class AgentHost(NamedTuple):
    """What a group needs of the executor that made it (built by Executor.agents)."""

    backend: Any                       # the executor's Backend: its agent transport carries the group
    check_open: Callable[[], None]     # raises RuntimeError once the executor is shut down
    is_shut_down: Callable[[], bool]
    name: str                          # the backend's name, for repr


class AgentGroup:
    """Agents built by :meth:`shoal.Executor.agents`, kept in place and called in parallel.

    ``len(group)`` is the number of agents. Every operation returns (or its future resolves to)
    a list in agent order. If it fails for some agents, it raises :class:`shoal.AgentError`
    with their exceptions and the others' results. Operations run in the order they were made.
    """

    def __init__(self, host, cls, init_args, checkpoint=False):
        if not callable(cls):
            raise TypeError(f"agents(): {cls!r} is not a class or callable")
        host.check_open()
        backend = host.backend
        init_args = list(init_args)
        self._host = host
        self._cls = cls
        self._n = len(init_args)
        self._id = next(_group_ids)
        self._checkpoint = bool(checkpoint) and backend.checkpoints
        self._checkpoint_asked = bool(checkpoint)
        self._states = [None] * self._n if self._checkpoint else None
        self._lock = threading.Lock()
        self._queue = collections.deque()  # operations not finished; the first one is running
        self._closed = False
        self._lost = {}                    # block number -> WorkerCrashedError (its worker died)
        self._transport = backend.agent_transport(self)
        self._finalizer = None
        try:
            self._wait(self._enqueue(_Operation(self, ops.OP_INIT, "", extra=init_args)))
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
                f"agents, backend={self._host.name!r}, {state}>")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def checkpoint(self):
        """True when each agent's state is saved after every call (process and MPI backends)."""
        return self._checkpoint or (self._checkpoint_asked and self._transport.checkpoints_elsewhere)

    @property
    def lost(self):
        """Sorted indices of the agents lost with a worker that died (empty with checkpoint=True)."""
        out = []
        for b in sorted(self._lost):
            _, start, stop = self._transport.blocks[b]
            out.extend(range(start, stop))
        return tuple(out)

    def call(self, method, /, *args, task_timeout=None, **kwargs):
        """Calls ``agent.method(*args, **kwargs)`` on every agent in parallel; returns the results
        in agent order. The arguments are pickled once for all agents.

        ``task_timeout`` (seconds): how long the call may run on each worker's block of agents.
        Past it that worker is killed and replaced, its agents are rebuilt from their checkpoint,
        and the call fails for them with :class:`shoal.TaskTimeoutError` (inside the
        :class:`shoal.AgentError`); the other blocks' results stand. Needs ``checkpoint=True``
        and the process backend (ValueError otherwise)."""
        return self._wait(self._submit(ops.OP_CALL, _name(method, "method"), args=args, kwargs=kwargs,
                                       limit=task_timeout))

    def call_each(self, method, args_list, *, task_timeout=None):
        """Calls ``method`` on every agent with its own argument: ``args_list[i]`` goes to agent
        ``i`` (a tuple: positional arguments, a dict: keyword arguments, anything else: the one
        argument). Returns the results in agent order. ``task_timeout``: as for :meth:`call`."""
        return self._wait(self._submit(ops.OP_EACH, _name(method, "method"),
                                       extra=self._per_agent(args_list, "args_list"), limit=task_timeout))

    def call_async(self, method, /, *args, task_timeout=None, **kwargs):
        """Like :meth:`call`, without waiting: returns a :class:`shoal.Future` of the list
        (``await``-able). The arguments are pickled now, so errors in them raise here."""
        return self._submit(ops.OP_CALL, _name(method, "method"), args=args, kwargs=kwargs,
                            limit=task_timeout).future

    def get(self, attr):
        """The value of attribute ``attr`` of every agent, in agent order."""
        return self._wait(self._submit(ops.OP_GET, _name(attr, "attr")))

    def set(self, attr, values):
        """Sets attribute ``attr`` of agent ``i`` to ``values[i]`` for every agent."""
        self._wait(self._submit(ops.OP_SET, _name(attr, "attr"), extra=self._per_agent(values, "values")))

    def gather(self):
        """The agent objects, in agent order: copies brought back from the workers on the
        process backend, the live objects themselves on the thread and serial backends."""
        return self._wait(self._submit(ops.OP_GATHER, ""))

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
            if self._host.is_shut_down():
                return
            try:
                self._wait(self._enqueue(_Operation(self, ops.OP_CLOSE, "")))
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

    def _submit(self, op, name, extra=None, args=(), kwargs=None, limit=None):
        if self._closed:
            raise RuntimeError("the agent group is closed")
        self._host.check_open()
        limit = check_task_timeout(limit)
        if limit is not None:
            self._host.backend.check_limit(limit)
            if not self.checkpoint:  # kept here, or by each MPI node's group
                raise ValueError("shoal: task_timeout on an agent call needs the group's checkpoint=True: "
                                 "the worker of a block past the limit is killed, and only a checkpoint "
                                 "can bring its agents back")
        return self._enqueue(_Operation(self, op, name, extra=extra, args=args, kwargs=kwargs, limit=limit))

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

    def last_operation_future(self):
        """The future of the last operation made and not finished (the others run before it),
        or None: Executor.shutdown waits for it before stopping the workers."""
        last = self._last_operation()
        return None if last is None else last.future

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

    def __init__(self, group, op, name, extra=None, args=(), kwargs=None, limit=None):
        self.group = group
        self.op = op
        self.name = name
        self.limit = limit  # task_timeout of each block's call (seconds), or None
        self.future = _GroupFuture(group)
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
        except TaskTimeoutError as exc:  # its worker was killed: the block is rebuilt, not retried
            transport.restore(b)
            for i in range(start, stop):
                self.errors[i] = exc
            results = errors = states = None
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
            if status == ops.REPLY_MISSING:
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
        if self.op == ops.OP_CLOSE:
            return False  # the agents are gone either way
        if self.op == ops.OP_INIT or group._checkpoint:
            if self.attempts[b] <= transport.retries:
                self.attempts[b] += 1
                if self.op != ops.OP_INIT:
                    transport.restore(b)
                self._launch(b)
                return True
            crash = WorkerCrashedError(f"{crash} (tried {self.attempts[b]} times"
                                       + ("" if self.op == ops.OP_INIT else
                                          "; the agents are rebuilt from their checkpoint") + ")",
                                       signal=crash.signal, exitcode=crash.exitcode)
            if self.op != ops.OP_INIT:
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
            group._transport.operation_finished()
            group._finished(self)


class _GroupFuture(Future):
    """The future of an operation: a thread that waits on it takes the pool's results itself.
    A started operation runs to its end: cancel() returns False once it is queued."""

    __slots__ = ("_group",)

    def __init__(self, group):
        super().__init__()
        self._group = group

    def _canceller(self):
        return False

    def result(self, timeout=None):
        self._group._help(self, timeout)
        return super().result(timeout=0 if timeout is not None else None)

    def exception(self, timeout=None):
        self._group._help(self, timeout)
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


