"""How shoal turns functions, arguments, results and exceptions into bytes and back."""
import itertools
import sys
import threading
# The C pickler itself: pickle.py would also import re and enum, ~3 ms more at every worker start.
import _pickle as pickle

from . import _arena
from ._core import plain_items

PROTOCOL = 5


def dumps(obj, bufs=None):
    """Pickles with the C pickler; objects it cannot handle by reference (lambdas, closures,
    classes defined in ``__main__`` or a notebook) go through cloudpickle. An object neither
    can pickle raises the C pickler's error.

    With ``bufs`` (a :class:`shoal._arena.Buffers`), large buffers go out of band into the
    shared arena; the result then starts with a tag that :func:`loads` understands."""
    if bufs is None:
        try:
            data = pickle.dumps(obj, PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as first:
            return _cloudpickle_dumps(obj, first)
        # Classes and functions of __main__ pickle by reference, which a worker cannot resolve:
        # those go by value. (A mere string "__main__" in the data costs only the slower path.)
        if data.find(b"__main__") >= 0:  # not `in`: bytes first tries the operand as an int (a raised TypeError)
            return _by_value(obj)
        return data
    base = len(bufs.refs)
    reducers = None if bufs.placements is None else bufs.placements.reducers
    try:
        if reducers is None:
            data = pickle.dumps(obj, PROTOCOL, buffer_callback=bufs)
        else:
            data = _dumps_reducing(obj, bufs, reducers)
    except (pickle.PicklingError, AttributeError, TypeError) as first:
        bufs.truncate(base)
        if "memoryview" in str(first):  # only the moving pickler can: it must answer
            return _dumps_moving(obj, bufs, base, required=True)
        data = _cloudpickle_dumps(obj, first, bufs, base)
    else:
        if data.find(b"__main__") >= 0:
            bufs.truncate(base)
            data = _by_value(obj, bufs)
    if len(data) >= bufs.threshold and _large_bytes_in_band(data, bufs.threshold):
        moved = _dumps_moving(obj, bufs, base)
        if moved is not None:
            return moved
    if len(bufs.refs) > base:
        return b"O" + base.to_bytes(4, "little") + data
    return data


def _dumps_reducing(obj, bufs, reducers):
    """The C pickler with ``reducers`` (a dispatch table: type -> reduce function) in front of
    copyreg's, e.g. the joblib backend's numpy arrays as memmaps."""
    import copyreg
    import io

    out = io.BytesIO()
    p = pickle.Pickler(out, PROTOCOL, buffer_callback=bufs)
    p.dispatch_table = {**copyreg.dispatch_table, **reducers}
    p.dump(obj)
    return out.getvalue()


def _reducers_of(bufs):
    placements = getattr(bufs, "placements", None)
    return None if placements is None else placements.reducers


def _by_value(obj, buffer_callback=None):
    """cloudpickle's pickle of ``obj`` (functions and classes of ``__main__`` by value), with
    shoal's changes (see :func:`_pickler_class`)."""
    import io

    out = io.BytesIO()
    cls = _pickler_class()
    placements = getattr(buffer_callback, "placements", None)
    if placements is not None and placements.reducers is not None:
        # cloudpickle's Pickler reads its class's dispatch table when it is made: a subclass.
        sub = placements.picklers.get(cls)
        if sub is None:
            import collections

            sub = placements.picklers[cls] = type(
                "Pickler", (cls,), {"dispatch_table": collections.ChainMap(placements.reducers, cls.dispatch_table)})
        cls = sub
    cls(out, PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


def by_value(obj, buffer_callback=None):
    """``obj`` pickled by value with shoal's cloudpickle pickler (see :func:`by_value_pickler`);
    for transports that pickle outside the arena (the MPI backend)."""
    return _by_value(obj, buffer_callback)


def by_value_pickler():
    """shoal's cloudpickle Pickler class (see :func:`_pickler_class`), for transports that
    extend it (the MPI backend sends ``shoal.share`` handles by key)."""
    return _pickler_class()


_Pickler = None


def _pickler_class():
    """cloudpickle's Pickler with three changes, made once cloudpickle is needed:

    - Functions of ``__main__`` share one namespace in a worker (``_main_namespace.py``): their
      globals travel as a reference to it, and their values merge into it.
    - Open files raise CannotSendError, a TypeError (cloudpickle would send a StringIO snapshot
      of the contents); sys.stdout and sys.stderr still stand for the worker's own streams.
    - Code keeps its file name (cloudpickle writes "<dynamic-code>"), so that a worker's
      traceback names the script and shows the source line, as ProcessPoolExecutor's does."""
    global _Pickler
    if _Pickler is not None:
        return _Pickler
    import collections
    import io
    import types

    import cloudpickle
    from cloudpickle import cloudpickle as cp

    from . import _main_namespace

    class MainGlobals:
        """Pickles as a call of _main_namespace.main_globals in the receiving process."""

        def __reduce__(self):
            return (_main_namespace.main_globals, (getattr(sys.modules["__main__"], "__file__", None),))

    main_globals = MainGlobals()

    from ._errors import CannotSendError

    def refuse_file(f):
        if f is sys.stdout or f is sys.stderr:  # the worker's own stream (forwarded to ours)
            return getattr, (sys, "stdout" if f is sys.stdout else "stderr")
        raise CannotSendError(f"shoal: an open file ({getattr(f, 'name', f)!r}) cannot be sent to a "
                              "worker process: pass its path (or its contents) and open it in the task")

    def reduce_code(code):
        make, args = cp._code_reduce(code)
        return make, tuple(code.co_filename if type(a) is str and a == "<dynamic-code>" else a for a in args)

    class Pickler(cloudpickle.Pickler):
        dispatch_table = collections.ChainMap(
            {t: refuse_file for t in (io.TextIOWrapper, io.BufferedReader, io.BufferedWriter,
                                      io.BufferedRandom, io.FileIO)},
            {types.CodeType: reduce_code},
            cloudpickle.Pickler.dispatch_table)

        def _dynamic_function_reduce(self, func):
            if func.__globals__.get("__name__") != "__main__":
                return super()._dynamic_function_reduce(func)
            code, _, name, defaults, closure = self._function_getnewargs(func)
            state, slotstate = cp._function_getstate(func)
            slotstate["__globals__"] = _main_namespace.versioned(slotstate["__globals__"])
            return (cp._make_function, (code, main_globals, name, defaults, closure),
                    (state, slotstate), None, None, _main_namespace.function_setstate)

    _Pickler = Pickler
    return Pickler


def _cloudpickle_dumps(obj, first, bufs=None, base=0):
    try:
        return _by_value(obj, bufs)
    except Exception as second:
        if bufs is not None:
            bufs.truncate(base)
        from ._errors import CannotSendError  # here: it imports concurrent.futures (~10 ms)

        if isinstance(second, CannotSendError):
            raise  # shoal's own answer: says what to do instead
        raise first from None


def _large_bytes_in_band(data, threshold):
    """True if the pickle holds a bytes or bytearray object of at least `threshold` bytes.
    Cheap: protocol 5 pickles are a series of frames, and the C pickler writes every object
    of 64 KiB or more outside them, so only the gaps between frames are looked at."""
    pos, n = 2, len(data)
    while pos < n:
        op = data[pos]
        if op == 0x95:  # FRAME
            pos += 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
        elif op == 0x42:  # BINBYTES
            if int.from_bytes(data[pos + 1:pos + 5], "little") >= threshold:
                return True
            pos += 5 + int.from_bytes(data[pos + 1:pos + 5], "little")
        elif op in (0x8E, 0x96):  # BINBYTES8, BYTEARRAY8
            if int.from_bytes(data[pos + 1:pos + 9], "little") >= threshold:
                return True
            pos += 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
        elif op == 0x58:  # BINUNICODE: text stays in the pickle
            pos += 5 + int.from_bytes(data[pos + 1:pos + 5], "little")
        elif op == 0x8D:  # BINUNICODE8
            pos += 9 + int.from_bytes(data[pos + 1:pos + 9], "little")
        else:
            return False
    return False


class _MovingPickler(pickle.Pickler):
    """Moves what protocol 5 keeps in band into the arena: bytes, bytearray, memoryview, and
    numpy arrays that are not contiguous (copied once, straight into the arena)."""

    def __init__(self, file, bufs, callback):
        super().__init__(file, PROTOCOL, buffer_callback=callback)
        self._bufs = bufs
        self.moved = False

    def persistent_id(self, obj):
        t = type(obj)
        bufs = self._bufs
        if t is bytes or t is bytearray:
            if len(obj) >= bufs.threshold:
                self.moved = True
                return ("b" if t is bytes else "y", bufs.add(memoryview(obj), obj))
        elif t is memoryview:
            if obj.nbytes >= bufs.threshold and obj.contiguous:
                self.moved = True
                return ("m", bufs.add(obj.cast("B") if obj.c_contiguous else memoryview(obj.tobytes()), obj),
                        obj.format, obj.shape)
            return ("M", obj.tobytes(), obj.format, obj.shape)
        elif t.__name__ == "ndarray" and t.__module__ == "numpy":
            if (obj.nbytes >= bufs.threshold and not obj.dtype.hasobject
                    and not (obj.flags.c_contiguous or obj.flags.f_contiguous)):
                import numpy

                block = bufs.arena.allocate(obj.nbytes)
                numpy.ndarray(obj.shape, obj.dtype, buffer=block)[...] = obj  # the one copy
                self.moved = True
                return ("a", bufs.add_block(block, obj.nbytes), obj.dtype, obj.shape)
        return None


def _dumps_moving(obj, bufs, base, required=False):
    """The slow path: None when nothing was worth moving (the fast pickle stands), unless
    ``required`` (the fast pickle failed: a memoryview, which only this pickler handles).
    Layout: b"S", the count and frame indices of the buffers protocol 5 handed out (in the
    order the pickle consumes them), then the pickle, whose persistent ids name the rest."""
    import io

    bufs.truncate(base)
    indices = []

    def callback(pickle_buffer):
        n = len(bufs.refs)
        in_band = bufs(pickle_buffer)
        if not in_band:
            indices.append(n)
        return in_band

    out = io.BytesIO()
    p = _MovingPickler(out, bufs, callback)
    reducers = _reducers_of(bufs)
    if reducers is not None:
        import copyreg

        p.dispatch_table = {**copyreg.dispatch_table, **reducers}
    try:
        p.dump(obj)
    except (pickle.PicklingError, AttributeError, TypeError):
        bufs.truncate(base)
        raise
    if not p.moved and not indices and not required:
        return None
    head = [b"S", len(indices).to_bytes(4, "little")]
    head.extend(i.to_bytes(4, "little") for i in indices)
    return b"".join(head) + out.getvalue()


class _MovedUnpickler(pickle.Unpickler):
    def __init__(self, file, views, in_order):
        super().__init__(file, buffers=in_order)
        self._views = views

    def persistent_load(self, pid):
        kind = pid[0]
        if kind == "M":
            return memoryview(pid[1]).cast("B").cast(pid[2], pid[3])
        view = self._views[pid[1]]
        if kind == "b":
            return bytes(view)
        if kind == "y":
            return bytearray(view)
        if kind == "m":
            return memoryview(view).cast(pid[2], pid[3])
        if kind == "a":
            import numpy

            return numpy.ndarray(pid[3], pid[2], buffer=view)
        raise pickle.UnpicklingError(f"unknown out-of-band reference {kind!r}")


def pack_items(items, bufs=None):
    """A chunk's items (a list) for pickling: (False, items) when all are plain (or tuples of
    plain values), else (True, [pickle of each item]). The type check runs in C."""
    if type(items) is not list:
        items = list(items)
    # Values of these types cannot fail to load: such a chunk travels as one pickle; any
    # other chunk is pickled item by item, so one bad item fails alone.
    if plain_items(items):
        return (False, items)
    return (True, [dumps(i, bufs) for i in items])


def iter_items(packed, buffers=None):
    """An iterator over a chunk's items; an item that fails to load raises at its place,
    and the iterator goes on with the next item if asked (unlike a generator)."""
    per_item, data = packed
    return _Loads(data, buffers) if per_item else iter(data)


class _Loads:
    __slots__ = ("_blobs", "_buffers")

    def __init__(self, blobs, buffers):
        self._blobs = iter(blobs)
        self._buffers = buffers

    def __iter__(self):
        return self

    def __next__(self):
        return loads(next(self._blobs), self._buffers)


def dumps_function(fn, arena=None, threshold=None, keep=None):
    """By reference when importable (the C pickler: no cloudpickle import for a function in
    a module); by value through cloudpickle when defined in ``__main__``, a notebook, a
    closure or a lambda, or in a module registered with ``cloudpickle.register_pickle_by_value``.

    With ``arena``, large buffers (at least ``threshold`` bytes) the function holds leave the
    pickle. Those already in the arena (a table bound with
    ``functools.partial(model, shoal.share(t))`` or ``share(t).value``) travel as references:
    the workers map them, read-only, instead of each unpickling a copy. numpy arrays that are not in the
    arena are copied into it once per distinct array (:func:`_arena_copy`: a new lambda or
    closure per call over the same array costs no new copy), and each worker copies them once
    into memory numpy allocates, shared by every function of that worker that holds the same
    array (huge pages where the kernel gives them: a table read at random is ~3 % faster than
    on the small pages of a bytes object). ``keep`` (a list) receives what must stay alive
    while any worker may load the pickle: views of the arena buffers it refers to and its
    arena copies (the caller holds them, and so that memory). Other buffers stay in the pickle."""
    refs = None if arena is None else _FunctionBuffers(arena, threshold)
    cp = sys.modules.get("cloudpickle.cloudpickle")
    if cp is not None and getattr(cp, "_PICKLE_BY_VALUE_MODULES", None):
        data = _by_value(fn, refs)
    elif refs is None:
        return dumps(fn)
    else:
        try:
            data = pickle.dumps(fn, PROTOCOL, buffer_callback=refs)
        except (pickle.PicklingError, AttributeError, TypeError) as first:
            refs.truncate(0)
            data = _cloudpickle_dumps(fn, first, refs, 0)
        else:
            if data.find(b"__main__") >= 0:
                refs.truncate(0)
                data = _by_value(fn, refs)
    if not refs or not refs.refs:
        return data
    if keep is not None:
        keep.extend(held for offset, _, held, _ in refs.refs if offset != _INLINE)
    # b"R", count, (offset or _INLINE, length, copy id or 0) each, the pickle's length, the
    # pickle, then the inline buffers one after another.
    head = [b"R", len(refs.refs).to_bytes(4, "little")]
    for offset, length, _, copy in refs.refs:
        head.append(offset.to_bytes(8, "little") + length.to_bytes(8, "little")
                    + (0 if copy is None else copy.uid).to_bytes(8, "little"))
    head.append(len(data).to_bytes(8, "little"))
    head.append(data)
    head.extend(raw for offset, _, raw, _ in refs.refs if offset == _INLINE)
    return b"".join(head)


_INLINE = (1 << 64) - 1  # a function buffer that follows the pickle (the arena was full)


class _FunctionBuffers:
    """pickle's buffer_callback for a function (see :func:`dumps_function`)."""

    __slots__ = ("arena", "threshold", "refs")

    def __init__(self, arena, threshold):
        self.arena = arena
        self.threshold = threshold
        # (offset or _INLINE, length, what holds the buffer's memory (a view of it, or its
        # _ArenaCopy), _ArenaCopy or None)
        self.refs = []

    def __call__(self, pickle_buffer):
        try:
            raw = pickle_buffer.raw()
        except BufferError:
            return True
        if raw.nbytes < self.threshold:
            return True
        offset = self.arena.locate(raw)
        if offset >= 0:
            self.refs.append((offset, raw.nbytes, raw, None))  # the view keeps the block alive
            return False
        if type(raw.obj).__name__ == "ndarray":
            copy = _arena_copy(self.arena, raw)
            if copy is None:
                self.refs.append((_INLINE, raw.nbytes, raw, None))
            else:
                self.refs.append((copy.block.offset, raw.nbytes, copy, copy))
            return False
        return True

    def truncate(self, n):
        del self.refs[n:]


class _ArenaCopy:
    """A copy in the arena of an array some function holds; lives while a function pickle
    that refers to it may be loaded (the executor's function table keeps it)."""

    __slots__ = ("block", "uid", "source", "arena", "__weakref__")


_copies = {}  # id(the array) -> weakref to its _ArenaCopy
_copy_ids = itertools.count(1)
_copies_lock = threading.Lock()


def _arena_copy(arena, raw):
    """The arena copy of the array exporting ``raw``: the one made for an earlier function
    if that array still holds the same bytes (checked at memory speed: a mutated array gets
    a new copy), else a new one. None if the arena is full."""
    import weakref

    import numpy

    source = raw.obj
    with _copies_lock:
        ref = _copies.get(id(source))
    copy = None if ref is None else ref()
    if (copy is not None and copy.arena is arena and copy.source() is source
            and copy.block.length == raw.nbytes
            and numpy.array_equal(numpy.frombuffer(copy.block, numpy.uint8), numpy.frombuffer(raw, numpy.uint8))):
        return copy
    try:
        block = arena.copy_in(raw)
    except MemoryError:  # ArenaFull: the array travels in the function's frame instead
        return None
    copy = _ArenaCopy()
    copy.block, copy.uid, copy.arena = block, next(_copy_ids), arena
    try:
        copy.source = weakref.ref(source)
    except TypeError:  # cannot be watched: not reused
        copy.source = lambda: None
        return copy
    key = id(source)

    def forget(r, key=key):
        with _copies_lock:
            if _copies.get(key) is r:
                del _copies[key]

    with _copies_lock:
        _copies[key] = weakref.ref(copy, forget)
    return copy


# Worker: each arena copy, copied once more into this worker's own memory, while a function
# holds it (by copy id; a WeakValueDictionary, made at first use: weakref costs an import).
_own_copies = None


def loads_function(data):
    """The inverse of :func:`dumps_function`, in a worker (its arena is the driver's)."""
    if data[:1] != b"R":
        return loads(data)
    count = int.from_bytes(data[1:5], "little")
    entries = []
    for i in range(count):
        at = 5 + 24 * i
        entries.append((int.from_bytes(data[at:at + 8], "little"),
                        int.from_bytes(data[at + 8:at + 16], "little"),
                        int.from_bytes(data[at + 16:at + 24], "little")))
    at = 5 + 24 * count
    size = int.from_bytes(data[at:at + 8], "little")
    body = memoryview(data)[at + 8:at + 8 + size]
    tail = at + 8 + size
    views = []
    for offset, length, uid in entries:
        if offset == _INLINE:
            import numpy

            if tail + length > len(data):
                raise pickle.UnpicklingError("shoal: a function's buffers are cut short")
            own = numpy.empty(length, numpy.uint8)  # numpy's memory: huge pages where given
            own[:] = numpy.frombuffer(data, numpy.uint8, length, tail)
            tail += length
            views.append(own)
        elif uid:
            global _own_copies
            if _own_copies is None:
                import weakref

                _own_copies = weakref.WeakValueDictionary()
            own = _own_copies.get(uid)
            if own is None or len(own) != length:
                import numpy

                shared = _arena.worker_arena().view(offset, length, True)  # bounds checked
                own = numpy.empty(length, numpy.uint8)  # the worker's own, writable, as unpickled
                own[:] = numpy.frombuffer(shared, numpy.uint8)
                _own_copies[uid] = own
            views.append(own)
        else:
            views.append(_arena.worker_arena().view(offset, length, True))  # bounds checked
    return pickle.loads(body, buffers=views)


def loads(data, buffers=None):
    """The inverse of :func:`dumps`; `buffers` are the frame's arena views, in order."""
    tag = data[:1]
    if tag == b"O":
        base = int.from_bytes(data[1:5], "little")
        return pickle.loads(memoryview(data)[5:], buffers=buffers[base:])
    if tag == b"S":
        import io

        count = int.from_bytes(data[1:5], "little")
        in_order = [buffers[int.from_bytes(data[5 + 4 * i:9 + 4 * i], "little")] for i in range(count)]
        f = io.BytesIO(data)
        f.seek(5 + 4 * count)
        return _MovedUnpickler(f, buffers, in_order).load()
    return pickle.loads(data)


def dumps_exception(exc):
    """(exception, traceback text) as bytes; an exception that cannot be pickled is
    replaced by a RuntimeError naming it, so the caller always hears of the failure."""
    import traceback  # here: it imports ~10 modules, and most workers never need it

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return dumps((exc, tb))
    except Exception:
        sub = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
                           "(the exception itself could not be pickled)")
        return dumps((sub, tb))
