"""Agents in a process worker: the block store and the reply to one agent frame.

A worker keeps its agents in ``_store``, keyed by group id, each entry one contiguous block of
agent indices (agent ``i`` of group ``g`` is ``_store[g].agents[i - start]``). The driver sends
one frame per worker per operation (its layout: ``protocol.py``, "Agent frames"); ``serve`` runs
it over the block with the same loop as every backend (``_agent_ops.run_block``).
"""
import _pickle as pickle  # the C pickler: pickle.py costs every worker ~3 ms of imports
import sys

from .._agent_ops import (MUTATING, OP_CLOSE, OP_INIT, OP_RESTORE, REPLY_MISSING, REPLY_OK,
                          REPLY_STACKED, run_block)
from .._pickle import dumps, dumps_exception
from .protocol import AgentHeader, decode_agent_tail, decode_task

_store = {}  # group id -> _Block


class _Block:
    __slots__ = ("start", "agents", "checkpoint")

    def __init__(self, start, agents, checkpoint):
        self.start = start
        self.agents = agents
        self.checkpoint = checkpoint



def serve(cls, data, payload, views, bufs):
    """Runs one agent frame in a worker; returns the reply pickled with ``bufs`` (its large
    buffers go to the arena): ``(status, results, {position: pickled (exc, traceback)} or None,
    [pickled state or None] or None)``. ``views`` are the frame's arena buffers."""
    if views:
        own = _own(views)
        if own is not views:  # load again, onto this worker's own copies
            data = decode_task(payload, own)[1]
            views = own
    op, group, start, stop, name, extra, checkpoint, ntail = AgentHeader._make(data)
    if op == OP_INIT:
        # A failed construction leaves None in its place; the driver then closes the group.
        results, errors, agents = run_block(None, OP_INIT, name, extra, cls=cls, catch=BaseException)
        block = _store[group] = _Block(start, agents, checkpoint)
        return _reply(block, op, results, errors, bufs)
    if op == OP_CLOSE:
        _store.pop(group, None)
        return dumps((REPLY_OK, None, None, None))
    block = _store.get(group)
    here = block is not None and block.start == start and len(block.agents) == stop - start
    if op == OP_RESTORE:
        if not here:  # a second restore after the same death finds the block already rebuilt
            blobs, entries = extra
            _store[group] = _Block(start, [pickle.loads(memoryview(blobs[k])[o:o + n])
                                           for k, o, n in entries], checkpoint)
        return dumps((REPLY_OK, None, None, None))
    if not here:
        return dumps((REPLY_MISSING, None, None, None))
    if ntail:
        args, kwargs = decode_agent_tail(payload, ntail, views)
    else:
        args, kwargs = (), None
    results, errors, _ = run_block(block.agents, op, name, extra, args, kwargs, catch=BaseException)
    return _reply(block, op, results, errors, bufs)


def _stack(results):
    """Results that are all plain C-contiguous numpy arrays of one shape and dtype (a bid curve
    per agent) travel as one array: a pickle per array costs ~3 us at each end, the stacked
    array's one memcpy. The driver gives each agent its own copy of its row (unstack), so
    nothing is shared between results. None if the results are not like that."""
    np = sys.modules.get("numpy")  # never imported here for it
    if np is None or len(results) < 8 or type(results[0]) is not np.ndarray:
        return None
    first = results[0]
    shape, dtype = first.shape, first.dtype
    if dtype.hasobject or first.ndim == 0 or not first.flags.c_contiguous:
        return None
    ndarray = np.ndarray
    for r in results:
        if type(r) is not ndarray or r.shape != shape or r.dtype != dtype or not r.flags.c_contiguous:
            return None
    return np.stack(results)


def unstack(stacked):
    """The results of a REPLY_STACKED reply: one independent array per agent."""
    return [row.copy() for row in stacked]


def _own(views):
    """Agents keep what they are given, but an argument's arena copy lives only as long as the
    task (the driver frees it when the reply arrives): such buffers (the writable ones) are
    copied into this worker's memory, once per frame. Read-only ones are memory the driver
    keeps (a shoal.share handle): they stay views, with no copy."""
    if all(memoryview(v).readonly for v in views):
        return views
    return [v if memoryview(v).readonly else bytearray(v) for v in views]


def _reply(block, op, results, errors, bufs):
    packed = None if not errors else {pos: dumps_exception(exc) for pos, exc in errors.items()}
    states = None
    if block.checkpoint and op in MUTATING and not (op == OP_INIT and errors):
        # The block's states travel as one buffer: past the threshold it goes to the arena,
        # where the driver keeps it (it never crosses the rings nor lands in the driver's heap).
        blobs = []
        lengths = []
        for pos, agent in enumerate(block.agents):
            try:
                blob = dumps(agent)
            except BaseException as exc:  # noqa: BLE001 - that agent's call fails; its old state stays
                lengths.append(-1)
                if packed is None:
                    packed = {}
                packed.setdefault(pos, dumps_exception(exc))
                results[pos] = None
            else:
                blobs.append(blob)
                lengths.append(len(blob))
        states = (pickle.PickleBuffer(b"".join(blobs)), lengths)
    if not packed:
        stacked = _stack(results)
        if stacked is not None:
            return dumps((REPLY_STACKED, stacked, None, states), bufs)
    try:
        return dumps((REPLY_OK, results, packed, states), bufs)
    except BaseException:  # noqa: BLE001 - find the results that do not pickle; fail those only
        if bufs is not None:
            bufs.truncate(0)
        for pos, r in enumerate(results):
            try:
                dumps(r)
            except BaseException as exc:  # noqa: BLE001
                results[pos] = None
                if packed is None:
                    packed = {}
                packed[pos] = dumps_exception(exc)
        return dumps((REPLY_OK, results, packed, states), bufs)
