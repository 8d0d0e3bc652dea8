"""shoal.share: objects whose large buffers are placed in the shared arena once, and the handles
that stand for them in tasks.

On the process backend a handle pickles as references to its arena blocks (each worker maps
them read-only, no copy); backends that run tasks in the driver's process pass the object
itself (:func:`unshare`).
"""
import functools
import weakref
from _pickle import PickleBuffer  # the C module: pickle.py would cost a worker ~3 ms to import

from . import _core
from ._arena import DEFAULT_THRESHOLD, Buffers, arena
from ._pickle import dumps, loads

__all__ = ["share", "Shared"]


class Shared:
    """A handle to an object whose buffers live in the shared arena (see :func:`share`).

    Pass it to ``submit``, ``map`` and friends in place of the object: each task receives the
    object itself, rebuilt on read-only views of the arena, with no copy. ``value`` is the same
    object in the caller. The memory is freed when the handle is garbage collected and no
    task still uses it."""

    __slots__ = ("_data", "_blocks", "_value", "nbytes", "__weakref__")

    def __init__(self, obj):
        if type(obj).__name__ == "ndarray" and obj.dtype.hasobject:
            raise TypeError("shoal.share: an array of dtype object holds references to Python "
                            "objects, which cannot live in shared memory (each task would get "
                            "its own copy); share an array of a numeric or fixed-size dtype")
        a = arena()
        bufs = Buffers(a, DEFAULT_THRESHOLD, by_ref=False)
        self._data = dumps(obj, bufs)
        self._blocks = list(bufs.keep)
        # Shared data is read many times, often at random (a table looked up by every task):
        # back it with huge pages, as private memory of that size gets by default (see
        # docs/design.md, "Shared buffers in huge pages").
        huge = _core.Arena.huge_page_bytes
        for b in self._blocks:
            if type(b) is _core.Block and b.length >= 2 * huge:
                a.collapse(b.offset, b.length)
        self.nbytes = sum(length for _, length in bufs.refs)
        self._value = None
        if not self.nbytes:
            import warnings

            warnings.warn(f"shoal.share: {type(obj).__name__} object has no buffer of at least "
                          f"{DEFAULT_THRESHOLD // 1024} KiB (numpy arrays, bytes, bytearray, memoryview, "
                          "also inside lists, dicts and tuples): nothing was placed in shared memory, "
                          "each task gets its own copy and .value is a writable copy", RuntimeWarning,
                          stacklevel=3)

    @property
    def value(self):
        """The object, on read-only views of the arena (built once, then cached)."""
        if self._value is None:
            value = loads(self._data, [memoryview(b).toreadonly() for b in self._blocks])
            self._value = (value,)
            _by_value[id(value)] = self
        return self._value[0]

    def _writable_value(self):
        """The object on writable views of the same arena memory, built anew: an MPI leader
        passes a call's array (its node's copy) to its workers through it, copy-on-write, and
        never writes to it itself (the views keep the memory alive, as ``value``'s do)."""
        return loads(self._data, [memoryview(b) for b in self._blocks])

    def __reduce__(self):
        # Read-only buffers: a task's views of them are read-only whatever view a call gives
        # the arena buffers it passes (see _arena.Placements.located).
        return (_load_shared, (self._data, *[PickleBuffer(memoryview(b).toreadonly()) for b in self._blocks]))

    def __repr__(self):
        return f"<shoal.Shared {len(self._blocks)} buffer(s), {self.nbytes} bytes in the arena>"


def _load_shared(data, *views):
    return loads(data, list(views))


# id(handle.value) -> handle, while the handle lives: a value passed instead of its handle (an
# MPI task's argument, a function's bound table) still travels as the handle (handle_of).
_by_value = weakref.WeakValueDictionary()


def handle_of(obj):
    """The live handle whose ``value`` is ``obj``, or None."""
    handle = _by_value.get(id(obj))
    if handle is not None and handle._value is not None and handle._value[0] is obj:
        return handle
    return None


def share(obj):
    """Places ``obj``'s large buffers (numpy arrays, bytes, ...) in the shared arena once and
    returns a :class:`Shared` handle. Passing the handle to any number of tasks costs no copy:
    in a worker (and in ``handle.value``) the arrays are read-only views of the arena.

    What shares: buffers of at least 64 KiB that pickle protocol 5 hands out of band (numpy
    arrays of numeric or fixed-size dtypes, bytes, bytearray, memoryview, pandas columns backed
    by numpy), alone or inside containers. The rest of ``obj`` is pickled and rebuilt in each
    task. An array of dtype object raises TypeError; an object with nothing to share warns
    (RuntimeWarning) and is copied to each task as usual.

    To keep only the shared copy in memory, drop your own reference to ``obj`` afterwards."""
    if isinstance(obj, Shared):
        return obj
    return Shared(obj)


def unshare(x):
    """The object behind a handle (thread and serial backends pass objects, not frames)."""
    return x.value if type(x) is Shared else x


def unshare_function(fn):
    """``fn`` with the handles it binds (a ``functools.partial`` of ``shoal.share`` handles)
    replaced by their values, for the thread and serial backends; a process worker gets the
    values when it loads the function (their buffers mapped from the arena)."""
    if type(fn) is functools.partial and (any(type(a) is Shared for a in fn.args)
                                          or any(type(v) is Shared for v in fn.keywords.values())):
        return functools.partial(fn.func, *map(unshare, fn.args),
                                 **{k: unshare(v) for k, v in fn.keywords.items()})
    return fn
