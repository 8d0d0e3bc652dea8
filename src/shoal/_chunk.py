"""Running one chunk of map() items: the same loop for workers and threads."""


def call_items(fn, items, star, catch=BaseException):
    """Calls fn on each item (fn(*item) when `star`). Returns (results, None), or the results
    before the first failure and its exception."""
    results = []
    append = results.append
    try:
        if star:
            for args in items:
                append(fn(*args))
        else:
            for x in items:
                append(fn(x))
    except catch as exc:  # raised again at its item, in the caller
        return results, exc
    return results, None
