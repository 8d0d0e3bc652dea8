"""How shoal turns functions, arguments, results and exceptions into bytes and back."""
import pickle
import traceback

import cloudpickle

PROTOCOL = 5


def dumps(obj):
    """Pickles with the C pickler; objects it cannot handle by reference (lambdas, closures,
    classes defined in ``__main__`` or a notebook) go through cloudpickle. An object neither
    can pickle raises the C pickler's error."""
    try:
        return pickle.dumps(obj, PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as first:
        try:
            return cloudpickle.dumps(obj, PROTOCOL)
        except Exception:
            raise first from None


def dumps_function(fn):
    """Functions always go through cloudpickle: by reference when importable, by value
    when defined in ``__main__``, a notebook, or a closure."""
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
