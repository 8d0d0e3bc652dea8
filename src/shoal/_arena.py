"""The shared-memory arena of this process (shoal.share's handles: _share.py).

Large buffers (numpy arrays, bytes, anything with the buffer protocol) do not travel through
the rings: pickle protocol 5 hands them to a :class:`Buffers` collector, which places them in
the arena (one copy) or, when they are already there (a shared handle, an earlier result),
refers to them where they are (no copy). A frame carries (offset, length) references; the
receiver unpickles onto views of the arena.

There is one arena per driver process, created on first use and shared by all its executors
and workers (like the zygote).
"""
import os
import threading

from . import _core

__all__ = ["set_arena_limit", "arena_stats"]

DEFAULT_THRESHOLD = 64 * 1024  # buffers at least this large go through the arena
# In a task frame's reference, this bit of the length marks memory the task only reads (a
# shared handle, an earlier result): its view is read-only. A fresh copy is the task's own.
READ_ONLY = 1 << 63
# ... and this bit a copy-on-write view of a placement several tasks share (Placements): the
# task may write to it, and its writes stay in its own private mapping of the pages.
COPY_ON_WRITE = 1 << 62
LENGTH = COPY_ON_WRITE - 1

_lock = threading.Lock()
_arena = None
_arena_pid = None
_limit = None  # bytes; None: SHOAL_ARENA_LIMIT or physical memory


def _parse_size(text):
    original = text
    text = str(text).strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    for suffix in ("IB", "B"):
        if text.endswith(suffix) and text[:-len(suffix)][-1:] in units:
            text = text[:-len(suffix)]
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise ValueError(f"the arena limit must be a number of bytes or a size such as '512M' or "
                         f"'8G' (units K, M, G, T; KiB, MB and the like also read), not {original!r}") from None


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
    """{'used_bytes', 'file_bytes', 'limit_bytes', 'blocks'} of this process's arena, or None
    while this process has no arena yet (it is created by the first process executor or
    ``share``). ``blocks``: blocks in use by every process of the arena."""
    a = _arena if _arena_pid == os.getpid() else None
    if a is None:
        return None
    return {"used_bytes": a.used_bytes, "file_bytes": a.file_bytes, "limit_bytes": a.limit_bytes,
            "blocks": a.blocks}


class Buffers:
    """The out-of-band buffers of one frame, as pickle's ``buffer_callback``.

    Buffers below ``threshold`` stay in the pickle. Larger ones are copied into a new block,
    or, with ``by_ref``, referred to in place when they already lie in the arena. ``refs`` are
    the frame's (offset, length) references; ``keep`` holds what must stay alive until the
    receiver is done (blocks, or the objects exporting arena memory)."""

    __slots__ = ("arena", "threshold", "by_ref", "refs", "keep", "placements", "copied")

    def __init__(self, arena, threshold=DEFAULT_THRESHOLD, by_ref=True, placements=None):
        self.arena = arena
        self.threshold = threshold
        self.by_ref = by_ref
        self.refs = []
        self.keep = []
        self.placements = placements  # the call's Placements, or None: a copy per frame
        self.copied = 0  # bytes this frame copied into the arena (not those it shares)

    def __call__(self, pickle_buffer):
        try:
            raw = pickle_buffer.raw()
        except BufferError:  # not contiguous: in band
            return True
        if raw.nbytes < self.threshold:
            p = self.placements
            if p is None or p.arrays_above is None or raw.nbytes <= p.arrays_above or not _is_array(raw.obj):
                return True
        self.add(raw, pickle_buffer)
        return False

    def add(self, raw, holder):
        """Places a contiguous buffer; returns its index among the frame's references."""
        if self.by_ref:
            offset = self.arena.locate(raw)
            if offset >= 0:
                # Read-only (a shoal.share handle's value) stays so; a writable one takes the
                # call's ``located`` view (an MPI node's copy of the call's array).
                flags = READ_ONLY if self.placements is None or raw.readonly else self.placements.located
                self.refs.append((offset, raw.nbytes | flags))
                self.keep.append(holder)
                return len(self.refs) - 1
        p = self.placements
        if p is not None and (p.arrays_above is None or (raw.nbytes > p.arrays_above and _is_array(raw.obj))):
            hold, flags, new = p.place(raw)
            if new:
                self.copied += raw.nbytes
            self.refs.append((hold.block.offset, raw.nbytes | flags))
            self.keep.append(hold)
            return len(self.refs) - 1
        block = self.arena.copy_in(raw)
        return self.add_block(block, raw.nbytes)

    def add_block(self, block, nbytes):
        self.copied += nbytes
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


def _is_array(obj):
    t = type(obj)
    return t.__module__ == "numpy" and t.__name__ in ("ndarray", "memmap")


class _Hold:
    """One placement: a block holding a copy of a buffer that several tasks of one call pass.
    Each frame that refers to it keeps it (``Buffers.keep``) until its task completes; the block
    is freed when nothing holds it any more."""

    __slots__ = ("block", "source", "__weakref__")


class _HeldSource:
    """The source of a placement that holds it (not weakly referenceable): None once freed."""

    __slots__ = ("hold",)

    def __init__(self, hold_ref):
        self.hold = hold_ref

    def __call__(self):
        h = self.hold()
        return None if h is None else h.source


class _Entry:
    __slots__ = ("source", "hold", "sticky", "weak")


class Placements:
    """The placements of one call (a ``map``, ``starmap``, ``sweep``, or a joblib ``Parallel``):
    a large buffer that several of its items pass is copied into the arena once, when the call
    first pickles it, and every task refers to that one block.

    "The same buffer" is the same exporting object with the same address, length, shape and
    strides. A placement lives while a task in flight uses it; one that a second item used
    (``sticky``) also lives while the call is open and its source object is alive, so items read
    after the earlier tasks finished still find it. A source that cannot be weakly referenced
    (bytes) is held by its placement, so that its id is not reused while the placement lives.
    A buffer changed by the caller after the call first read it is not seen again: the tasks
    see it as it was then.

    ``view`` is how tasks see a placement: COPY_ON_WRITE (a private mapping each: a task that
    writes to its argument changes nothing others see), READ_ONLY, or 0 (writable and shared by
    the call's tasks, joblib's ``mmap_mode="r+"``). ``arrays_above``: numpy arrays larger than
    this many bytes are placed even below the executor's threshold (joblib's ``max_nbytes``).
    ``reducers``: a pickler dispatch table used while this call pickles (joblib's memmaps).
    ``located``: the view flags of a writable buffer that already lies in the arena, referred to
    in place (READ_ONLY by default, as outside a call; an MPI leader passes the call's ``view``
    for its node's copy of the driver's array). A read-only one (a ``shoal.share`` handle's
    value) is always referred to read-only.

    Thread-safe: joblib submits batches from several threads."""

    def __init__(self, arena, view=COPY_ON_WRITE, arrays_above=None, reducers=None, located=READ_ONLY):
        self.arena = arena
        self.view = view
        self.located = located
        self.arrays_above = arrays_above
        self.reducers = reducers
        self.picklers = {}  # pickler class -> its subclass with `reducers` (_pickle._by_value)
        self.made = 0  # placements made (for tests and statistics)
        self._entries = {}
        self._dead = []  # keys of entries whose source died (queued by weakref callbacks)
        self._lock = threading.Lock()
        self._closed = False

    def place(self, raw):
        """(the _Hold of ``raw``'s placement, the reference's view flags, whether it is new)."""
        import weakref

        source = raw.obj
        try:
            shape, strides = source.shape, source.strides
        except AttributeError:
            shape = strides = None
        key = (id(source), _core.buffer_address(raw), raw.nbytes, shape, strides)
        with self._lock:
            self._reap()
            entry = self._entries.get(key)
            if entry is not None and entry.source() is not source:
                entry = None  # another object that took a dead one's id: a new placement
            hold = None
            if entry is not None:
                hold = entry.hold if entry.sticky else entry.hold()
            if hold is not None:
                if not entry.sticky and entry.weak:
                    entry.sticky, entry.hold = True, hold  # a second item: kept for the call
                return hold, self.view, False
            hold = _Hold()
            hold.block = self.arena.copy_in(raw)
            hold.source = None
            self.made += 1
            if self._closed:
                return hold, self.view, True
            dead = self._dead
            if entry is not None:  # seen before, and freed since: it recurs, keep it for the call
                entry.sticky, entry.hold = True, hold
                return hold, self.view, True
            entry = _Entry()
            entry.sticky = False
            try:
                entry.source = weakref.ref(source, lambda r, key=key: dead.append(key))
                entry.weak = True
                entry.hold = weakref.ref(hold)
            except TypeError:  # e.g. bytes: the placement holds it, so its id stays its own
                hold.source = source
                entry.weak = False
                entry.hold = weakref.ref(hold, lambda r, key=key: dead.append(key))
                entry.source = _HeldSource(entry.hold)
            self._entries[key] = entry
        return hold, self.view, True

    def _reap(self):
        while self._dead:
            key = self._dead.pop()
            entry = self._entries.get(key)
            if entry is not None and entry.source() is None:
                del self._entries[key]  # its source (or, held, its placement) is gone

    def close(self):
        """The call is over: placements live on only while tasks in flight use them."""
        with self._lock:
            self._closed = True
            self._entries.clear()
            self._dead.clear()
