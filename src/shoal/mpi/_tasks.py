"""What a leader's local workers run for MPI tasks: one chunk of map() items, timed."""
import time

from .._chunk import call_items


def run_chunk(fn, star, items):
    """(results, pickled (exception, traceback) of the failing item or None, seconds)."""
    start = time.perf_counter()
    results, exc = call_items(fn, items, star)
    err = None
    if exc is not None:
        from ._wire import dumps_error

        err = dumps_error(exc)
    return results, err, time.perf_counter() - start


_shared = {}  # on a leader: driver's share key -> this node's shoal.share handle


def shared_ref(key):
    """On a leader: the node's own handle for the driver's ``shoal.share``d object ``key``
    (placed in this node's arena once, when it first arrived)."""
    try:
        return _shared[key]
    except KeyError:
        raise RuntimeError(f"shoal.mpi: shared object {key} has not reached this node") from None
