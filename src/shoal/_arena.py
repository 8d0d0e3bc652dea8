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
LENGTH = READ_ONLY - 1

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
    """{'used_bytes', 'file_bytes', 'limit_bytes'} of this process's arena, or None while this
    process has no arena yet (it is created by the first process executor or ``share``)."""
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
