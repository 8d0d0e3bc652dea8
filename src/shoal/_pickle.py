"""How shoal turns functions, arguments, results and exceptions into bytes and back."""
import itertools
import pickle
import traceback

PROTOCOL = 5


def dumps(obj):
    """Pickles with the C pickler; objects it cannot handle by reference (lambdas, closures,
    classes defined in ``__main__`` or a notebook) go through cloudpickle. An object neither
    can pickle raises the C pickler's error."""
    try:
        data = pickle.dumps(obj, PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as first:
        import cloudpickle  # only when needed: workers rarely do

        try:
            return cloudpickle.dumps(obj, PROTOCOL)
        except Exception:
            raise first from None
    # Classes and functions of __main__ pickle by reference, which a worker cannot resolve:
    # those go by value. (A mere string "__main__" in the data costs only the slower path.)
    if b"__main__" in data:
        import cloudpickle

        return cloudpickle.dumps(obj, PROTOCOL)
    return data


# Values whose pickles cannot fail to load: a chunk of only these travels as one pickle;
# any other chunk is pickled item by item, so one bad item fails alone.
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})


_TUPLE_OR_PLAIN = _PLAIN | {tuple}
_TUPLE = frozenset({tuple})


def pack_items(items):
    """A chunk's items for pickling: (False, items) when all are plain (or tuples of plain
    values), else (True, [pickle of each item]). The type checks run at C speed."""
    types = set(map(type, items))
    if types <= _PLAIN:
        return (False, items)
    if types == _TUPLE:  # map()'s argument tuples: look inside them
        if set(map(type, itertools.chain.from_iterable(items))) <= _PLAIN:
            return (False, items)
    elif types <= _TUPLE_OR_PLAIN:
        inner = set(map(type, itertools.chain.from_iterable(i for i in items if type(i) is tuple)))
        if inner <= _PLAIN:
            return (False, items)
    return (True, [dumps(i) for i in items])


def iter_items(packed):
    """Yields a chunk's items; an item that fails to load raises at its place."""
    per_item, data = packed
    if not per_item:
        yield from data
    else:
        for blob in data:
            yield loads(blob)


def dumps_function(fn):
    """Functions always go through cloudpickle: by reference when importable, by value
    when defined in ``__main__``, a notebook, or a closure."""
    import cloudpickle

    return cloudpickle.dumps(fn, PROTOCOL)


loads = pickle.loads


def dumps_exception(exc):
    """(exception, traceback text) as bytes; an exception that cannot be pickled is
    replaced by a RuntimeError naming it, so the caller always hears of the failure."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return dumps((exc, tb))
    except Exception:
        sub = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
                           "(the exception itself could not be pickled)")
        return dumps((sub, tb))
