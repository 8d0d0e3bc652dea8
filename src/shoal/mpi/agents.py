"""Agents across nodes: one block of a group per leader, kept there in a group of the node's own.

    AgentGroup (driver) ─► MPIAgentTransport: one operation = one task per leader ─MPI─►
    leader: the block's local AgentGroup on the node's process pool (split over its workers)
    ◄─ (status, results, errors) per block ◄─────────────────────────────────────────────

A group call costs one MPI message each way per node. The node's group does what a group does on
one machine: its blocks live in the node's workers, and with ``checkpoint=True`` it checkpoints
in the node's arena and rebuilds the agents of a worker that died there. A node that is lost
takes its agents with it (``AgentsLostError`` names them).
"""
import weakref

from .._agent_ops import split_blocks
from .._backend import AgentTransport
from .._errors import RemoteTraceback, WorkerCrashedError
from ._errors import LeaderLostError, NoLeadersError
from ._wire import loads
from .hub import AGENT

__all__ = ["MPIAgentTransport"]


class MPIAgentTransport(AgentTransport):
    retries = 0                 # a lost node's agents are gone; a worker's are the node's business
    checkpoints_elsewhere = True

    def __init__(self, group, backend):
        self.group = group
        self.backend = backend
        self.ranks = [lead.rank for lead in backend._hub.live_leaders()]
        if not self.ranks:
            raise NoLeadersError("shoal: no MPI leader rank is left to hold agents")
        self.blocks = split_blocks(len(group), len(self.ranks))

    def prepare(self, operation, extra, args, kwargs):
        # Pickled now, block by block (its own per-agent values, the shared arguments once per
        # node): an argument that cannot be pickled raises here, in the caller.
        group = self.group
        return [self.backend._encode((group._id, operation.op, operation.name,
                                      None if extra is None else extra[start:stop], args, kwargs,
                                      group._checkpoint_asked, operation.limit))
                for _, start, stop in self.blocks]

    def launch(self, operation, b):
        return self.backend._submit_encoded(AGENT, self.group._cls, operation.prepared[b],
                                            rank=self.ranks[self.blocks[b][0]])

    def outcome(self, fut):
        try:
            status, results, errors = fut.result()
        except LeaderLostError as exc:
            raise WorkerCrashedError(f"{exc}: its agents were lost with it") from exc
        if errors:
            errors = {pos: _error(blob) for pos, blob in errors.items()}
        return status, results, errors or None, None

    def finalizer(self):
        return weakref.finalize(self.group, self.backend._hub.drop_agents, self.backend._sid,
                                self.group._id, list(self.ranks))


def _error(blob):
    exc, tb = loads(blob)
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def run_operation(sess, cls, payload):
    """On a leader, in a thread of its own: one operation on this node's block of a group.
    Returns ``(status, results, {position: pickled (exception, traceback)} or None)``."""
    from .. import _agent_ops as ops
    from .._errors import AgentError
    from ._wire import dumps_error

    gid, op, name, extra, args, kwargs, checkpoint, limit = payload
    groups = sess.groups
    results, errors = None, None
    try:
        if op == ops.OP_INIT:
            groups[gid] = sess.executor.agents(cls, extra, checkpoint=checkpoint)
            results = [None] * len(extra)
        elif op == ops.OP_CLOSE:
            g = groups.pop(gid, None)
            if g is not None:
                g.close()
        else:
            g = groups.get(gid)
            if g is None:
                raise RuntimeError(f"shoal.mpi: agent group {gid} is not on this node")
            if op == ops.OP_CALL:
                results = g.call(name, *args, task_timeout=limit, **kwargs)
            elif op == ops.OP_EACH:
                results = g.call_each(name, extra, task_timeout=limit)
            elif op == ops.OP_GET:
                results = g.get(name)
            elif op == ops.OP_SET:
                g.set(name, extra)
                results = [None] * len(g)
            elif op == ops.OP_GATHER:
                results = g.gather()
            else:
                raise ValueError(f"shoal.mpi: agent operation {op} is not relayed")
    except AgentError as exc:
        results = exc.results
        errors = {pos: dumps_error(e, _traceback_text(e)) for pos, e in exc.errors.items()}
    return ops.REPLY_OK, results, errors


def _traceback_text(exc):
    cause = exc.__cause__
    if type(cause) is RemoteTraceback:
        return cause.tb
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
