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
