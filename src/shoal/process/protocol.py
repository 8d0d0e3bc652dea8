"""The process backend's wire protocol: both ends of every message, side by side.

A frame (its binary header: ``cpp/include/shoal/frame.hpp``) has a kind, flags, a task id, an
``aux`` field, an item count, a payload and arena references (``(offset, length)`` of the
out-of-band buffers, in pickling order). The C++ core moves frames and never looks inside a
payload; this module says what the payloads hold, with the driver's encoder beside the
worker's decoder:

    kind        direction         aux            payload
    FUNCTION    driver -> worker  fn id (>= 1)   dumps_function(fn)
    FUNCTION    driver -> worker  0              encode_setup(WorkerSetup)         (first frame)
    FORGET      driver -> worker  fn id          -
    TASK        driver -> worker  fn id          encode_task(mode, data)           (modes below);
                                                 flags: the task's time limit in ms, 0 for none
    RESULT      worker -> driver  run time (ns)  the reply of the task's mode; FLAG_ERROR: encode_error
    OUTPUT      worker -> driver  -              UTF-8 text; flags: OUTPUT_STDOUT or OUTPUT_STDERR
    READY       worker -> driver  arena owner    -
    INIT_FAILED worker -> driver  -              encode_error(the initializer's exception)
    SHUTDOWN    driver -> worker  -              -

Task modes (the first field of a TASK payload) and their replies:

    TASK_CALL    (args, kwargs)                  -> pickle of the result
    TASK_CHUNK   packed [args tuple, ...]        -> encode_chunk_reply: (packed results, error, seconds)
    TASK_CHUNK1  packed [x, ...], called fn(x)   -> the same
    TASK_AGENTS  AgentHeader, then the call's shared (args, kwargs) as a tail of ``ntail`` bytes
                 (fn id: the agent class)        -> AgentReply (process/agent_worker.py)

Every payload is pickled by ``_pickle.dumps`` (protocol 5): large buffers travel in the arena,
and the frame's references give their place.

Tracing: a task whose mode has the ``TRACED`` bit gets a reply followed by a ``TIMING`` trailer
(the worker's clock when the frame arrived, the arguments were loaded, the function returned,
the reply was pickled, and the worker's pid). The unpickler stops at the pickle's STOP opcode,
so the reply decodes as usual; a pickle ends with STOP (".") and the trailer with
``TIMING_MAGIC``, so the two cannot be confused.
"""
import collections
import os
import struct

from .._pickle import dumps, dumps_exception, loads, pack_items

# ------------------------------------------------------------------ worker setup (function 0)

WorkerSetup = collections.namedtuple(
    "WorkerSetup", "cwd path initializer initargs buffer_threshold event_loop env threads")
WorkerSetup.__doc__ = """The executor's setup, run by each worker before its first task: working
directory, sys.path, initializer and its arguments, the out-of-band buffer threshold in bytes,
the event loop for coroutine tasks (see _aio.check_event_loop), the driver's environment
variables when the executor was made, and the sizes of the native thread pools
(``(variables, limits)`` of _threads.worker_plan, applied after the environment)."""


def encode_setup(setup):
    """Driver: the payload of FUNCTION 0."""
    return dumps(tuple(setup))


def decode_setup(payload):
    """Worker: the :class:`WorkerSetup` of a FUNCTION 0 payload."""
    return WorkerSetup._make(loads(payload))


# ------------------------------------------------------------------ tasks

TASK_CALL = 0    # (args, kwargs) -> result
TASK_CHUNK = 1   # packed [args, ...] -> (packed results, None or (exc, tb), seconds)
TASK_CHUNK1 = 2  # the same with one argument per item: packed [x, ...], each called as fn(x)
TASK_AGENTS = 3  # an operation on this worker's agents; the function is the agent class

TRACED = 16      # bit or-ed into the mode: reply with a TIMING trailer (tracing is on)

OUTPUT_STDOUT = 1  # flags of an OUTPUT frame: which stream the text was written to
OUTPUT_STDERR = 2


def encode_task(mode, data, bufs=None, traced=False):
    """Driver: the payload of a TASK_CALL or chunk task; ``bufs`` collects its large buffers.
    ``traced``: the worker answers with a TIMING trailer."""
    return dumps((mode | TRACED if traced else mode, data if mode == TASK_CALL else pack_items(data, bufs)),
                 bufs)


# Worker: (mode, data) of a TASK payload, on the frame's arena ``views``: decode_task(payload,
# views). The unpickler itself, not a wrapper: one Python call less per task.
decode_task = loads


def encode_chunk_reply(results, exc, seconds, bufs=None):
    """Worker: a chunk's reply, ``(packed results, (exc, tb) or None, seconds)``. A result that
    cannot be pickled ends the chunk there, with the pickling error as its error."""
    err = None if exc is None else loads(dumps_exception(exc))
    try:
        return dumps((pack_items(results, bufs), err, seconds), bufs)
    except BaseException:  # noqa: BLE001 - find the first result that does not pickle
        if bufs is not None:
            bufs.truncate(0)
        good = []
        for r in results:
            try:
                good.append(dumps(r, bufs))
            except BaseException as pickling_error:  # noqa: BLE001
                err = loads(dumps_exception(pickling_error))
                break
        return dumps(((True, good), err, seconds), bufs)


# Driver: a RESULT payload (of any mode) or an INIT_FAILED one, on its arena ``buffers``:
# decode_reply(payload, buffers=None). The unpickler itself: one Python call less per task.
decode_reply = loads


TIMING = struct.Struct("<5q8s")
TIMING_MAGIC = b"shoaltrc"
_PID = os.getpid()  # set again in each worker by set_timing_pid


def set_timing_pid():
    """Worker: after the fork, the pid the trailers carry."""
    global _PID
    _PID = os.getpid()


def encode_timing(reply, start, loaded, ran, pickled):
    """Worker: ``reply`` followed by its TIMING trailer (perf_counter_ns times)."""
    return bytes(reply) + TIMING.pack(start, loaded, ran, pickled, _PID, TIMING_MAGIC)


def decode_timing(payload):
    """Driver: (start, loaded, ran, pickled, pid) of a traced reply, or None if it has no
    trailer (the task failed before it was decoded)."""
    n = len(payload)
    if n < TIMING.size:
        return None
    fields = TIMING.unpack_from(payload, n - TIMING.size)
    return fields[:5] if fields[5] == TIMING_MAGIC else None


encode_error = dumps_exception  # (exception, traceback text); see _pickle.dumps_exception


# ------------------------------------------------------------------ agent frames

AgentHeader = collections.namedtuple("AgentHeader", "op group start stop name extra checkpoint ntail")
AgentHeader.__doc__ = """The header of a TASK_AGENTS payload: operation (_agent_ops.OP_*), group
id, the block's agent indices ``start..stop-1``, the method or attribute name, per-agent values
of this block (``extra``), whether the group checkpoints, and the length of the shared tail."""

AgentReply = collections.namedtuple("AgentReply", "status results errors states")
AgentReply.__doc__ = """A worker's reply to an agent frame: status (_agent_ops.REPLY_*), results
in block order, ``{position: encode_error(...)}`` or None, and the block's saved states
(``(PickleBuffer of the joined states, [length or -1 per agent])``) or None."""


def encode_agent_frame(header, tail=b"", bufs=None):
    """Driver: header (an :class:`AgentHeader`) then ``tail`` (the call's shared arguments,
    pickled once for every block: ``pickle.loads`` stops at the header's STOP opcode)."""
    return dumps((TASK_AGENTS, tuple(header)), bufs) + tail


def encode_agent_tail(args, kwargs, bufs=None):
    """Driver: the shared ``(args, kwargs)`` of an OP_CALL, once for all blocks."""
    return dumps((args, kwargs), bufs)


def decode_agent_tail(payload, ntail, views):
    """Worker: the shared ``(args, kwargs)`` at the end of an agent frame."""
    return loads(memoryview(payload)[len(payload) - ntail:], views)
