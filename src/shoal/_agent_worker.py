"""Agents where they live: the per-worker store and the one loop that runs an operation on a block.

A process worker keeps its agents in ``_store``, keyed by group id, each entry one contiguous
block of agent indices (so agent ``i`` of group ``g`` is ``_store[g].agents[i - start]``). The
driver sends one frame per worker per operation; ``serve`` runs it over the block in one Python
loop. The thread and serial backends keep their agents in the driver and call ``run_block`` on
slices of them directly: the same loop, no pickling.

Frame payload of an agent task (the task's function id is the agent class):

    pickle((AGENT, (op, group, start, stop, name, extra, checkpoint, ntail)))  +  tail

``tail`` (the last ``ntail`` bytes) is the call's shared ``(args, kwargs)``, pickled once by the
driver and the same bytes in every worker's frame; its large buffers are in the arena once, and
every frame refers to them (read-only). ``pickle.loads`` stops at the first pickle's STOP opcode,
so the header loads without looking at the tail.
"""
import _pickle as pickle  # the C pickler: pickle.py costs every worker ~3 ms of imports
import sys

from ._aio import is_coroutine_function
from ._pickle import dumps, dumps_exception, loads

# Operations (op); `extra` holds what each needs.
INIT = 0     # extra: [init arg per agent]            -> results: None each
CALL = 1     # extra: None; the tail holds (args, kwargs) shared by every agent
EACH = 2     # extra: [call arg per agent]             (a tuple: positional, a dict: keywords)
GET = 3      # extra: None; name is the attribute
SET = 4      # extra: [value per agent]
GATHER = 5   # extra: None                             -> results: the agents themselves
CLOSE = 6    # extra: None
RESTORE = 7  # extra: ([state buffers], [(buffer, offset, length) per agent]): rebuilds the block
             # unless this worker has it

# Reply status
OK = 0
MISSING = 1  # this worker does not hold the block (it replaced one that died)
STACKED = 2  # OK, and the results are the rows of one numpy array (see _stack)

MUTATING = frozenset({INIT, CALL, EACH, SET})  # after these, a checkpointing group saves state

_store = {}  # group id -> _Block


class _Block:
    __slots__ = ("start", "agents", "checkpoint")

    def __init__(self, start, agents, checkpoint):
        self.start = start
        self.agents = agents
        self.checkpoint = checkpoint


def _spread(arg):
    """An init or call_each argument as (args, kwargs): a tuple is positional, a dict keywords."""
    t = type(arg)
    if t is tuple:
        return arg, {}
    if t is dict:
        return (), arg
    return (arg,), {}


def run_block(agents, op, name, extra, args=(), kwargs=None, cls=None, catch=Exception):
    """Runs one operation over ``agents`` (a list; INIT: builds it from ``extra`` with ``cls``).
    Returns (results, errors, agents): ``errors`` is None or {position: exception}; a failed
    position has None in ``results``. An agent's exception never stops the others."""
    results = []
    append = results.append
    errors = None
    if op in (CALL, EACH) and agents and _is_async(agents[0], name):
        return _run_async(agents, op, name, extra, args, kwargs or {}, catch)
    if op == CALL:
        kwargs = kwargs or {}
        for pos, agent in enumerate(agents):
            try:
                append(getattr(agent, name)(*args, **kwargs))
            except catch as exc:
                append(None)
                if errors is None:
                    errors = {}
                errors[pos] = exc
        return results, errors, agents
    if op == INIT:
        agents = []
        for pos, arg in enumerate(extra):
            try:
                a, kw = _spread(arg)
                agents.append(cls(*a, **kw))
            except catch as exc:
                agents.append(None)
                if errors is None:
                    errors = {}
                errors[pos] = exc
            append(None)
        return results, errors, agents
    for pos, agent in enumerate(agents):
        try:
            if op == EACH:
                a, kw = _spread(extra[pos])
                append(getattr(agent, name)(*a, **kw))
            elif op == GET:
                append(getattr(agent, name))
            elif op == SET:
                setattr(agent, name, extra[pos])
                append(None)
            elif op == GATHER:
                append(agent)
            else:
                raise ValueError(f"unknown agent operation {op!r}")
        except catch as exc:
            append(None)
            if errors is None:
                errors = {}
            errors[pos] = exc
    return results, errors, agents


def _is_async(agent, name):
    """True if the agents' method is ``async def`` (asked of the block's first agent)."""
    try:
        method = getattr(agent, name)
    except Exception:  # noqa: BLE001 - each agent then fails on its own in the plain loop
        return False
    return is_coroutine_function(method)


def _run_async(agents, op, name, extra, args, kwargs, catch):
    """CALL or EACH of an ``async def`` method: every agent of the block is called, then all
    their coroutines run side by side on one event loop (an agent waiting on I/O does not hold
    up the others); per-agent results and errors as in the plain loop."""
    from types import CoroutineType

    from ._aio import run_concurrently

    results = [None] * len(agents)
    errors = None
    waiting, positions = [], []
    for pos, agent in enumerate(agents):
        try:
            if op == EACH:
                a, kw = _spread(extra[pos])
                value = getattr(agent, name)(*a, **kw)
            else:
                value = getattr(agent, name)(*args, **kwargs)
        except catch as exc:
            if errors is None:
                errors = {}
            errors[pos] = exc
            continue
        if type(value) is CoroutineType:
            waiting.append(value)
            positions.append(pos)
        else:
            results[pos] = value
    if waiting:
        for pos, (failed, value) in zip(positions, run_concurrently(waiting)):
            if not failed:
                results[pos] = value
            elif isinstance(value, catch):
                if errors is None:
                    errors = {}
                errors[pos] = value
            else:
                raise value  # e.g. KeyboardInterrupt in the caller on the serial backend
    return results, errors, agents


# ------------------------------------------------------------------ process workers


def serve(cls, data, payload, views, bufs):
    """Runs one agent frame in a worker; returns the reply pickled with ``bufs`` (its large
    buffers go to the arena): ``(status, results, {position: pickled (exc, traceback)} or None,
    [pickled state or None] or None)``. ``views`` are the frame's arena buffers."""
    if views:
        own = _own(views)
        if own is not views:  # load again, onto this worker's own copies
            data = loads(payload, own)[1]
            views = own
    op, group, start, stop, name, extra, checkpoint, ntail = data
    if op == INIT:
        # A failed construction leaves None in its place; the driver then closes the group.
        results, errors, agents = run_block(None, INIT, name, extra, cls=cls, catch=BaseException)
        block = _store[group] = _Block(start, agents, checkpoint)
        return _reply(block, op, results, errors, bufs)
    if op == CLOSE:
        _store.pop(group, None)
        return dumps((OK, None, None, None))
    block = _store.get(group)
    here = block is not None and block.start == start and len(block.agents) == stop - start
    if op == RESTORE:
        if not here:  # a second restore after the same death finds the block already rebuilt
            blobs, entries = extra
            _store[group] = _Block(start, [pickle.loads(memoryview(blobs[k])[o:o + n])
                                           for k, o, n in entries], checkpoint)
        return dumps((OK, None, None, None))
    if not here:
        return dumps((MISSING, None, None, None))
    if ntail:
        args, kwargs = loads(memoryview(payload)[len(payload) - ntail:], views)
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
    """The results of a STACKED reply: one independent array per agent."""
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
    if block.checkpoint and op in MUTATING and not (op == INIT and errors):
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
            return dumps((STACKED, stacked, None, states), bufs)
    try:
        return dumps((OK, results, packed, states), bufs)
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
        return dumps((OK, results, packed, states), bufs)
