"""The shared-memory arena of this process, and shoal.share.

Large buffers (numpy arrays, bytes, anything with the buffer protocol) do not travel through
the rings: pickle protocol 5 hands them to a :class:`Buffers` collector, which places them in
the arena (one copy) or, when they are already there (a shared handle, an earlier result),
refers to them where they are (no copy). A frame carries (offset, length) references; the
receiver unpickles onto views of the arena.

There is one arena per driver process, created on first use and shared by all its executors
and workers (like the zygote).
"""
import functools
import os
import threading

from . import _core

__all__ = ["share", "Shared", "set_arena_limit", "arena_stats"]

DEFAULT_THRESHOLD = 64 * 1024  # buffers at least this large go through the arena
# In a task frame's reference, this bit of the length marks memory the task only reads (a
# shared handle, an earlier result): its view is read-only. A fresh copy is the task's own.
READ_ONLY = 1 << 63
LENGTH = READ_ONLY - 1

_lock = threading.Lock()
_arena = None
_arena_pid = None
_limit = None  # bytes; None: SHOAL_ARENA_LIMIT or physical memory


def _parse_size(text):
    text = str(text).strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    for suffix in ("IB", "B"):
        if text.endswith(suffix) and text[:-len(suffix)][-1:] in units:
            text = text[:-len(suffix)]
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def set_arena_limit(nbytes):
    """Caps the shared arena at ``nbytes`` (an int, or a string like ``"8G"``). Must be called
    before the arena is first used (the first process executor or ``share``); the default is
    the ``SHOAL_ARENA_LIMIT`` environment variable, else the machine's physical memory.
    Past the limit, placing a buffer raises :class:`shoal.ArenaFull`, naming the limit."""
    global _limit
    value = _parse_size(nbytes)
    if value <= 0:
        raise ValueError(f"the arena limit must be positive, not {nbytes!r}")
    with _lock:
        if _arena is not None and _arena_pid == os.getpid():
            if value != _arena.limit_bytes:
                raise RuntimeError("the arena of this process already exists with a limit of "
                                   f"{_arena.limit_bytes} bytes; call set_arena_limit before "
                                   "the first executor or share()")
            return
        _limit = value


def arena():
    """This process's arena: the worker's attached one, or the driver's (created now)."""
    global _arena, _arena_pid
    a = _arena
    if a is not None and _arena_pid == os.getpid():
        return a
    with _lock:
        if _arena is None or _arena_pid != os.getpid():  # a forked copy makes its own
            limit = _limit
            if limit is None:
                env = os.environ.get("SHOAL_ARENA_LIMIT")
                limit = _parse_size(env) if env else 0
            _arena = _core.Arena.create(limit)
            _arena_pid = os.getpid()
        return _arena


def set_worker_arena(a):
    """In a worker: the arena the driver handed over at fork."""
    global _arena, _arena_pid
    _arena = a
    _arena_pid = os.getpid()


def worker_arena():
    """The arena a worker was handed (RuntimeError if this process has none)."""
    a = _arena
    if a is None or _arena_pid != os.getpid():
        raise RuntimeError("shoal: a reference to shared memory was loaded in a process that "
                           "does not map the arena it points into")
    return a


def arena_stats():
    """{'used_bytes', 'file_bytes', 'limit_bytes'} of this process's arena (None if unused)."""
    a = _arena if _arena_pid == os.getpid() else None
    if a is None:
        return None
    return {"used_bytes": a.used_bytes, "file_bytes": a.file_bytes, "limit_bytes": a.limit_bytes}


class Buffers:
    """The out-of-band buffers of one frame, as pickle's ``buffer_callback``.

    Buffers below ``threshold`` stay in the pickle. Larger ones are copied into a new block,
    or, with ``by_ref``, referred to in place when they already lie in the arena. ``refs`` are
    the frame's (offset, length) references; ``keep`` holds what must stay alive until the
    receiver is done (blocks, or the objects exporting arena memory)."""

    __slots__ = ("arena", "threshold", "by_ref", "refs", "keep")

    def __init__(self, arena, threshold=DEFAULT_THRESHOLD, by_ref=True):
        self.arena = arena
        self.threshold = threshold
        self.by_ref = by_ref
        self.refs = []
        self.keep = []

    def __call__(self, pickle_buffer):
        try:
            raw = pickle_buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if raw.nbytes < self.threshold:
            return True
        self.add(raw, pickle_buffer)
        return False

    def add(self, raw, holder):
        """Places a contiguous buffer; returns its index among the frame's references."""
        if self.by_ref:
            offset = self.arena.locate(raw)
            if offset >= 0:
                self.refs.append((offset, raw.nbytes | READ_ONLY))
                self.keep.append(holder)
                return len(self.refs) - 1
        block = self.arena.copy_in(raw)
        return self.add_block(block, raw.nbytes)

    def add_block(self, block, nbytes):
        self.refs.append((block.offset, nbytes))
        self.keep.append(block)
        return len(self.refs) - 1

    def truncate(self, n):
        del self.refs[n:]
        del self.keep[n:]

    def detach(self):
        """After the frame was sent by a worker: the driver owns the blocks now."""
        for b in self.keep:
            if type(b) is _core.Block:
                b.detach()
        self.keep.clear()


class Shared:
    """A handle to an object whose buffers live in the shared arena (see :func:`share`).

    Pass it to ``submit``, ``map`` and friends in place of the object: each task receives the
    object itself, rebuilt on read-only views of the arena, with no copy. ``value`` is the same
    object in the caller. The memory is freed when the handle is garbage collected and no
    task still uses it."""

    __slots__ = ("_data", "_blocks", "_value", "nbytes", "__weakref__")

    def __init__(self, obj):
        from ._pickle import dumps

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

    @property
    def value(self):
        """The object, on read-only views of the arena (built once, then cached)."""
        if self._value is None:
            from ._pickle import loads

            self._value = (loads(self._data, [memoryview(b).toreadonly() for b in self._blocks]),)
        return self._value[0]

    def __reduce__(self):
        import pickle

        return (_load_shared, (self._data, *[pickle.PickleBuffer(b) for b in self._blocks]))

    def __repr__(self):
        return f"<shoal.Shared {len(self._blocks)} buffer(s), {self.nbytes} bytes in the arena>"


def _load_shared(data, *views):
    from ._pickle import loads

    return loads(data, list(views))


def share(obj):
    """Places ``obj``'s large buffers (numpy arrays, bytes, ...) in the shared arena once and
    returns a :class:`Shared` handle. Passing the handle to any number of tasks costs no copy:
    in a worker (and in ``handle.value``) the arrays are read-only views of the arena.

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
