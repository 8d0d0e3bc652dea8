"""The process backend's agent transport: blocks of agents live in worker processes, one block per
worker slot, and every frame of a block is pinned to its slot.

    driver (AgentGroup operation)                          worker slot k
    prepare: header per block (+ shared tail, once)  ──►   agent_worker.serve(block k)
    launch:  ProcessBackend.submit_pinned(slot k)    ◄──   AgentReply (results, errors, states)
    outcome: errors unpickled, stacked rows split

The frame layout is in protocol.py ("Agent frames").
"""
import pickle
import threading
import time
import weakref

from .. import _agent_ops as ops
from .. import _core
from .._agent_ops import split_blocks
from .._backend import AgentTransport
from .._errors import RemoteTraceback
from .._pickle import loads
from .agent_worker import unstack
from .protocol import AgentHeader, AgentReply, encode_agent_frame, encode_agent_tail


class ProcessAgentTransport(AgentTransport):
    """One group's blocks in the worker processes of a :class:`ProcessBackend`."""

    def __init__(self, group, backend):
        self.group = group
        self.backend = backend
        self.retries = backend.retries
        self.blocks = split_blocks(len(group), backend.slots)
        # Close frames of groups dropped without close(), sent by the next operation of any
        # group of this executor (a finalizer may run inside a lock; it only appends here).
        self.dropped = backend.dropped_agent_frames

    def _header(self, b, op, name, extra, ntail=0):
        _, start, stop = self.blocks[b]
        group = self.group
        return AgentHeader(op, group._id, start, stop, name, extra, group._checkpoint, ntail)

    def _frame(self, b, op, name, extra, ntail=0):
        """(payload, arena refs, what keeps them alive) of block b's header. Per-agent values
        (init arguments, call_each arguments, set values, states) have their large buffers
        placed in the arena for this block's frame only."""
        if extra is None:
            return encode_agent_frame(self._header(b, op, name, None, ntail)), None, None
        _, start, stop = self.blocks[b]
        bufs = self.backend.buffers()
        payload = encode_agent_frame(self._header(b, op, name, extra[start:stop], ntail), b"", bufs)
        if bufs is None or not bufs.refs:
            return payload, None, None
        return payload, bufs.refs, bufs.keep

    def prepare(self, operation, extra, args, kwargs):
        op = operation.op
        if op != ops.OP_CALL:
            return [self._frame(b, op, operation.name, extra) for b in range(len(self.blocks))]
        # The shared arguments: pickled once; the same bytes follow every block's header, and
        # their large buffers are in the arena once for all the workers (each worker takes
        # one copy of its own for its agents: see agent_worker._own).
        bufs = self.backend.buffers()
        tail = encode_agent_tail(args, kwargs, bufs)
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
        if operation.limit is None:
            return self.backend.submit_pinned(self.group._cls, payload, stop - start, slot, refs, keep)
        name = f"{getattr(self.group._cls, '__qualname__', '?')}.{operation.name}"
        return self.backend.submit_pinned(self.group._cls, payload, stop - start, slot, refs, keep,
                                          (operation.limit, name))

    def outcome(self, fut):
        reply = AgentReply._make(fut.result())  # raises WorkerCrashedError, BrokenExecutor...
        status, results, errors, states = reply
        if status == ops.REPLY_STACKED:
            status, results = ops.REPLY_OK, unstack(results)
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
        bufs = self.backend.buffers()
        payload = encode_agent_frame(self._header(b, ops.OP_RESTORE, "", (blobs, entries)), b"", bufs)
        refs, keep = (bufs.refs, bufs.keep) if bufs is not None and bufs.refs else (None, None)
        self.backend.submit_pinned(self.group._cls, payload, stop - start, slot, refs, keep)

    def finalizer(self):
        """Frees the agents in the workers if the group is dropped without close(): the close
        frames go out with the executor's next agent operation."""
        frames = [(self.group._cls, self._frame(b, ops.OP_CLOSE, "", None)[0], stop - start, slot)
                  for b, (slot, start, stop) in enumerate(self.blocks)]
        f = weakref.finalize(self.group, self.dropped.extend, frames)
        f.atexit = False
        return f

    def operation_finished(self):
        if len(self.group) >= TRIM_AGENTS:
            trim_soon()


def _load_error(blob):
    try:
        exc, tb = loads(blob)
    except Exception as load_error:  # noqa: BLE001 - the exception's class is unknown here
        return RuntimeError(f"an agent raised an exception that cannot be unpickled here: {load_error!r}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


# The frames and results of thousands of agents come and go through the driver's heap, and
# glibc keeps freed memory (measured: ~20 MB after 20 calls on 10,000 agents, more than the
# workers' own overhead). Allocators such as jemalloc and mimalloc return it on a timer; so
# does shoal, for the driver: shortly after an operation on a large group (once the caller
# has had time to drop the previous results), malloc_trim returns the free pages (~0.3 ms).
TRIM_AGENTS = 1000   # groups at least this large
TRIM_DELAY_S = 0.05  # after the last such operation
trimmer = None       # the _Trimmer thread, once started
_trimmer_lock = threading.Lock()


def trim_soon():
    global trimmer
    t = trimmer
    if t is None or not t.is_alive():  # first use, or a forked driver
        with _trimmer_lock:
            if trimmer is None or not trimmer.is_alive():
                trimmer = _Trimmer()
                trimmer.start()
            t = trimmer
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
                time.sleep(TRIM_DELAY_S)
            _core.trim_heap()
            self.trims += 1
