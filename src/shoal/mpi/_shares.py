"""A leader's copies of the driver's ``shoal.share``d objects, each placed in the node's arena once.

A task's pickle names a shared object by the driver's key (``_wire.dumps`` with ``shares``); the
leader unpickles it to the node's own handle, which its workers map without a copy.
"""
_shared = {}  # on a leader: driver's share key -> this node's shoal.share handle


def place_shared(key, handle):
    """On a leader: ``handle`` (a share in this node's arena) stands for the driver's ``key``."""
    _shared[key] = handle


def drop_shared(key):
    """On a leader: the driver dropped its handle ``key``; the node's copy goes with the tasks'."""
    _shared.pop(key, None)


def shared_value(key):
    """On a leader: the value of the node's copy of the driver's ``shoal.share``d object ``key``
    (the caller passed ``handle.value``): read-only views of this node's arena."""
    return shared_ref(key).value


def placed_value(key, writable=True):
    """On a leader: the node's copy of a call's array, in its arena; the leader passes it to its
    workers in place. A writable one (on writable views here, so the workers' pickles do not
    mark it read-only) with the call's view (``_arena.Placements.located``: copy-on-write for
    map); a read-only one (the caller passed a read-only array) read-only."""
    handle = shared_ref(key)
    return handle._writable_value() if writable else handle.value


def shared_ref(key):
    """On a leader: the node's own handle for the driver's ``shoal.share``d object ``key``
    (placed in this node's arena once, when it first arrived)."""
    try:
        return _shared[key]
    except KeyError:
        raise RuntimeError(f"shoal.mpi: shared object {key} has not reached this node") from None
