"""The function table: each function a backend's tasks call is pickled and sent to the workers
once, known there by an id, and forgotten once it is gone and no task uses it.

    acquire(fn) ─ new: encode(fn) ─► define(fn_id, pickle)   (the workers learn it, once)
    release(fn_id) when a task is done
    fn collected (weakref callback), or the table past its capacity, and no task uses it
      ─► forget(fn_id)                                        (the workers drop it)

The process backend defines into its pool (FUNCTION and FORGET frames); the MPI backend into its
hub, which sends each function once to each leader that needs it and tells them to forget it.
"""
import itertools
import os
import threading
import weakref
from collections import OrderedDict, deque
from types import MethodType

from ._aio import is_coroutine_function

__all__ = ["FunctionTable", "FunctionEntry", "function_identity"]


def function_identity(fn):
    """The objects that make two callables the same function for the table. A bound method is
    its object and its function (every ``obj.method`` access makes a new method object); a
    wrapper of shoal's (a sweep's call) says what it wraps; anything else is itself."""
    if type(fn) is MethodType:
        return (fn.__self__, fn.__func__)
    identity = getattr(type(fn), "__shoal_identity__", None)
    return identity(fn) if identity is not None else (fn,)


class FunctionEntry:
    """A function registered with the pool: its id in the workers, how many tasks use it, and
    weak references to what identifies it (strong ones only for objects that cannot be
    weakly referenced, such as builtins)."""

    __slots__ = ("key", "fn_id", "coroutine", "outstanding", "refs", "first", "dead", "held")

    def __init__(self, key, fn_id, coroutine, refs, held, own):
        self.key = key
        self.fn_id = fn_id
        self.coroutine = coroutine  # an async function: its tasks count against `concurrency`
        self.outstanding = 1
        self.refs = refs  # each called returns its object, or None once it is gone
        # acquire()'s fast path: returns the callable itself when the entry is identified by
        # it alone (``own``), else None.
        self.first = refs[0] if own else _nothing
        self.dead = False  # an object it refers to is gone: forgotten once no task uses it
        # What holds the arena memory the function's pickle refers to (views of a shoal.share
        # handle's buffers, the arena copies of arrays it holds; see dumps_function): held
        # until the workers forget it, since they map that memory.
        self.held = held

    def matches(self, identity):
        for ref, obj in zip(self.refs, identity):
            if ref() is not obj:
                return False
        return True


class FunctionTable:
    """Function ids for this executor: each function is pickled and registered once, and
    forgotten (here and in every worker) once it is gone and no task uses it.

    The table keeps no function alive: entries hold weak references, and when the function (or
    a bound method's object) is collected, a FORGET frame drops it from the workers. Functions
    that cannot be weakly referenced (builtins) stay until the table is past its capacity."""

    # Past this many functions, unused ones are forgotten (least recently used first). A larger
    # table keeps more such functions alive; a smaller one pickles and sends again functions
    # that come back after a while.
    CAPACITY = 512

    def __init__(self, encode, define, forget, capacity=CAPACITY):
        self._encode = encode  # (fn, held) -> its pickle; appends to held what must outlive it
        self._define = define  # (fn_id, pickle): the workers learn the function
        self._forget = forget  # (fn_id): the workers drop it
        self._capacity = capacity
        self._by_key = OrderedDict()  # id of the identity (one object), or a tuple of ids -> FunctionEntry
        self._by_fn_id = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._dead = deque()  # keys whose objects were collected (appended by weakref callbacks)
        self._pid = os.getpid()  # a fork()ed copy of the driver must never touch the workers

    def acquire(self, fn):
        """The FunctionEntry of ``fn`` (its id in the workers: ``fn_id``), registered now if
        new; one more task uses it."""
        # Keyed by the id of what identifies it: one object (a plain function: the common case,
        # kept cheap) or a tuple of ids (a bound method: its object and function).
        key = id(fn)
        with self._lock:
            entry = self._by_key.get(key)
            # An entry identified by fn alone (a plain function: the common case). A dead
            # entry's object is gone: its reference returns None.
            if entry is not None and entry.first() is fn:
                self._by_key.move_to_end(key)
                entry.outstanding += 1
                return entry
        identity = function_identity(fn)
        if identity[0] is not fn or len(identity) > 1:  # identified by other objects
            key = id(identity[0]) if len(identity) == 1 else tuple(map(id, identity))
            with self._lock:
                entry = self._by_key.get(key)
                if entry is not None and not entry.dead and entry.matches(identity):
                    self._by_key.move_to_end(key)
                    entry.outstanding += 1
                    return entry
        held = []
        blob = self._encode(fn, held)  # raises here if it cannot be pickled
        table = weakref.ref(self)  # the callbacks must not keep the table (and its pool) alive

        def died(_ref, key=key):
            t = table()
            if t is not None:
                t._died(key)

        refs = tuple(_weak(obj, died) for obj in identity)
        with self._lock:
            fn_id = next(self._ids)
            self._define(fn_id, blob)
            entry = FunctionEntry(key, fn_id, is_coroutine_function(fn), refs, held or None,
                                  own=identity[0] is fn and len(identity) == 1)
            old = self._by_key.pop(key, None)
            if old is not None:  # an object that was collected, its id now reused
                old.dead = True
                if old.outstanding == 0:
                    self._drop(old)
            self._by_key[key] = entry
            self._by_fn_id[fn_id] = entry
            self._evict()
            self._reap()
        return entry

    def release(self, fn_id):
        """A task of function ``fn_id`` is done."""
        with self._lock:
            entry = self._by_fn_id.get(fn_id)
            if entry is not None:
                entry.outstanding -= 1
                if entry.dead and entry.outstanding == 0:
                    self._drop(entry)
            if self._dead:
                self._reap()

    def __len__(self):
        return len(self._by_fn_id)

    def _died(self, key):
        """From a weakref callback: may run in any thread, at any point (even inside this
        table's own lock in the same thread), so it only queues the key, then reaps if it can."""
        if os.getpid() != self._pid:
            return
        self._dead.append(key)
        if self._lock.acquire(blocking=False):
            try:
                self._reap()
            finally:
                self._lock.release()

    def _reap(self):
        while self._dead:
            entry = self._by_key.get(self._dead.popleft())
            if entry is not None and not entry.dead:
                entry.dead = True
                if entry.outstanding == 0:
                    self._drop(entry)

    def _drop(self, entry):
        if self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]
        if self._by_fn_id.pop(entry.fn_id, None) is not None:
            try:
                self._forget(entry.fn_id)
            except Exception:  # noqa: BLE001 - the pool is closed: the workers are gone anyway
                pass

    def _evict(self):
        while len(self._by_key) > self._capacity:
            for entry in self._by_key.values():
                if entry.outstanding == 0:
                    self._drop(entry)
                    break
            else:
                return


def _nothing():
    return None


def _weak(obj, callback):
    """A reference to ``obj``: called, it returns obj (or None once obj is gone)."""
    try:
        return weakref.ref(obj, callback)
    except TypeError:  # builtins, and objects without __weakref__: held while in the table
        return lambda: obj
