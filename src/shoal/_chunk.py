"""Running one chunk of map() items: the same loop for workers and threads."""
from itertools import starmap


def call_items(fn, items, star, catch=BaseException):
    """Calls fn on each item (fn(*item) when `star`). Returns (results, None), or the results
    before the first failure and its exception."""
    results = []
    try:
        # extend() iterates at C speed and keeps what was appended before a failure.
        results.extend(starmap(fn, items) if star else map(fn, items))
    except catch as exc:  # raised again at its item, in the caller
        return results, exc
    return results, None
