"""Agent operations: their codes and the one loop that runs an operation over a block of agents.

An agent group (``_agents.py``) is split into blocks, one per worker slot. Every backend runs an
operation on a block with :func:`run_block`: the thread and serial backends on the agents they
keep in the driver, the process backend in a worker (``process/agent_worker.py``), on the block
that worker keeps.
"""
from ._aio import is_coroutine_function

# Operations (op); `extra` holds what each needs.
OP_INIT = 0     # extra: [init arg per agent]            -> results: None each
OP_CALL = 1     # extra: None; the tail holds (args, kwargs) shared by every agent
OP_EACH = 2     # extra: [call arg per agent]             (a tuple: positional, a dict: keywords)
OP_GET = 3      # extra: None; name is the attribute
OP_SET = 4      # extra: [value per agent]
OP_GATHER = 5   # extra: None                             -> results: the agents themselves
OP_CLOSE = 6    # extra: None
OP_RESTORE = 7  # extra: ([state buffers], [(buffer, offset, length) per agent]): rebuilds the
                # block unless this worker has it (process backend)

# Reply status: the first field of a block's reply (status, results, errors, states)
REPLY_OK = 0
REPLY_MISSING = 1  # this worker does not hold the block (it replaced one that died)
REPLY_STACKED = 2  # REPLY_OK, and the results are the rows of one numpy array (process/agent_worker.py)

MUTATING = frozenset({OP_INIT, OP_CALL, OP_EACH, OP_SET})  # after these, a checkpointing group saves state

def _spread(arg):
    """An init or call_each argument as (args, kwargs): a tuple is positional, a dict keywords."""
    t = type(arg)
    if t is tuple:
        return arg, {}
    if t is dict:
        return (), arg
    return (arg,), {}


def run_block(agents, op, name, extra, args=(), kwargs=None, cls=None, catch=Exception):
    """Runs one operation over ``agents`` (a list; OP_INIT: builds it from ``extra`` with ``cls``).
    Returns (results, errors, agents): ``errors`` is None or {position: exception}; a failed
    position has None in ``results``. An agent's exception never stops the others."""
    results = []
    append = results.append
    errors = None
    if op in (OP_CALL, OP_EACH) and agents and _is_async(agents[0], name):
        return _run_async(agents, op, name, extra, args, kwargs or {}, catch)
    if op == OP_CALL:
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
    if op == OP_INIT:
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
            if op == OP_EACH:
                a, kw = _spread(extra[pos])
                append(getattr(agent, name)(*a, **kw))
            elif op == OP_GET:
                append(getattr(agent, name))
            elif op == OP_SET:
                setattr(agent, name, extra[pos])
                append(None)
            elif op == OP_GATHER:
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
    """OP_CALL or OP_EACH of an ``async def`` method: every agent of the block is called, then all
    their coroutines run side by side on one event loop (an agent waiting on I/O does not hold
    up the others); per-agent results and errors as in the plain loop."""
    from types import CoroutineType

    from ._aio import run_concurrently

    results = [None] * len(agents)
    errors = None
    waiting, positions = [], []
    for pos, agent in enumerate(agents):
        try:
            if op == OP_EACH:
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


def split_blocks(n, parts):
    """[(part, start, stop)] splitting range(n) into `parts` contiguous blocks; empty ones dropped."""
    out = []
    for k in range(parts):
        start, stop = k * n // parts, (k + 1) * n // parts
        if stop > start:
            out.append((k, start, stop))
    return out
