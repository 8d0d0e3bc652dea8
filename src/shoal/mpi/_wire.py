"""What crosses MPI between the driver and the leaders: batches of operations, buffers apart.

A message is one MPI message holding a pickled ``(ops, sizes)`` followed by one message per
out-of-band buffer (``sizes`` says how long each is; a buffer over ``_PART`` bytes travels in
several parts, so there is no 2 GiB limit). Messages between two ranks on one tag never overtake
each other, so the buffers that follow a header belong to it.

Payloads (a task's arguments, a function, a result) are pickled with protocol 5 where they are
made: buffers of at least ``threshold`` bytes (numpy arrays, ``shoal.share``d data) leave the
pickle and travel as their own MPI messages, with no copy into a pickle. Nothing here imports
mpi4py at module level.
"""
import os
import pickle
import sys

TAG_HEAD = 71   # a batch's header: pickle of (ops, buffer sizes)
TAG_BUF = 72    # one part of one buffer of the batch before it
_PART = 1 << 30  # at most this many bytes per MPI message (MPI counts are ints)
DEFAULT_THRESHOLD = 64 * 1024


def dumps(obj, threshold=DEFAULT_THRESHOLD, shares=None, placements=None):
    """(pickle bytes, [contiguous memoryview]): ``obj`` pickled with protocol 5, its buffers of
    at least ``threshold`` bytes out of band. Functions and classes of ``__main__`` (the
    driver's script) and closures go by value through shoal's cloudpickle pickler, as on one
    machine (their globals share one namespace where they run; open files are refused). Raises
    the C pickler's error for an object neither can pickle.

    With ``shares`` (a list), each ``shoal.share`` handle in ``obj`` is pickled as a reference
    by key and appended to ``shares``: it crosses to each node once (see Hub), not per task;
    so does a handle's ``value`` (a numpy array: the tasks get the node's read-only value).
    Without it, a handle travels whole (its buffers out of band).

    With ``placements`` (a call's :class:`CallPlacements`, and ``shares``), each large numpy
    array in ``obj`` crosses the same way: as a share made of it when the call first read it,
    so one that many items pass crosses to each node once per call."""
    import io

    from .._share import Shared

    bufs = []
    place = None
    if shares is not None and "numpy" in sys.modules:
        from .._share import handle_of

        def place(array):
            # A shoal.share handle's value (an argument, a table bound in a function) travels
            # as its handle; a call's other large arrays as its placements.
            handle = handle_of(array)
            if handle is not None:
                shares.append(handle)
                from ._shares import shared_value

                return shared_value, (share_key(handle),)
            if placements is not None:
                return placements.reduce(array, shares)
            return array.__reduce_ex__(5)

    def keep(pb):
        try:
            raw = pb.raw()
        except BufferError:  # not contiguous: stays in the pickle
            return True
        if raw.nbytes < threshold:
            return True
        bufs.append(raw)
        return False

    def run(cloud):
        out = io.BytesIO()
        if cloud:
            p = _by_value_pickler()(out, 5, buffer_callback=keep)
            p.shoal_shares = shares
            p.shoal_place = place
        else:
            import copyreg

            p = pickle.Pickler(out, 5, buffer_callback=keep)
            table = {**copyreg.dispatch_table, memoryview: _reduce_memoryview}
            if shares is not None:
                table[Shared] = lambda h: _reduce_shared(h, shares)
            if place is not None:
                numpy = sys.modules["numpy"]
                table[numpy.ndarray] = table[numpy.memmap] = place
            p.dispatch_table = table
        p.dump(obj)
        return out.getvalue()

    def again():
        bufs.clear()
        if shares is not None:
            del shares[:]
        return run(True)

    try:
        data = run(False)
    except (pickle.PicklingError, AttributeError, TypeError) as first:
        try:
            data = again()
        except Exception as second:
            from .._errors import CannotSendError

            if isinstance(second, CannotSendError):
                raise  # shoal's own answer: says what to do instead
            raise first from None
    else:
        # Classes and functions of __main__ pickle by reference, which a leader cannot resolve.
        if data.find(b"__main__") >= 0:
            data = again()
    return data, bufs


_Pickler = None


def _by_value_pickler():
    """shoal's cloudpickle Pickler (``_pickle.by_value_pickler``), which also sends ``shoal.share``
    handles by key when its ``shoal_shares`` is a list."""
    global _Pickler
    if _Pickler is None:
        from .._pickle import by_value_pickler
        from .._share import Shared

        class Pickler(by_value_pickler()):
            shoal_shares = None
            shoal_place = None  # a call's placements: numpy arrays -> CallPlacements.reduce

            def reducer_override(self, o):  # cloudpickle's comes before any dispatch table
                t = type(o)
                if t is Shared and self.shoal_shares is not None:
                    return _reduce_shared(o, self.shoal_shares)
                if t is memoryview:
                    return _reduce_memoryview(o)
                if self.shoal_place is not None and t.__module__ == "numpy" and t.__name__ in ("ndarray", "memmap"):
                    return self.shoal_place(o)
                return super().reducer_override(o)

        _Pickler = Pickler
    return _Pickler


def _reduce_memoryview(view):
    """A memoryview arrives as a memoryview of the same format and shape: its bytes travel out of
    band when large (protocol 5), as bytes in the pickle otherwise."""
    data = pickle.PickleBuffer(view) if view.c_contiguous else view.tobytes()
    return _memoryview, (data, view.format, view.shape)


def _memoryview(data, fmt, shape):
    return memoryview(data).cast("B").cast(fmt, list(shape))


class _Placed:
    """One large array of a call, copied when the call first read it. It crosses to each node
    once, as a share (Hub._register), while it lives: the call's placements and the tasks not
    yet sent hold it."""

    __slots__ = ("array", "__weakref__")

    def __init__(self, array):
        self.array = array

    def __reduce__(self):
        return self.array.__reduce_ex__(5)  # a leader receives the array itself


class CallPlacements:
    """The placements of one call (map, starmap, sweep, a joblib Parallel) on the MPI backend: a
    numpy array of at least ``above`` bytes that its items pass crosses to each node once per
    call, however many items pass it, and is placed in the node's arena there; tasks see it with
    ``view`` (copy-on-write for map, as on one machine). "The same array" is the same object with
    the same address, size, shape and strides (as _arena.Placements)."""

    def __init__(self, view, above):
        import threading

        self.view = view
        self.above = above
        self.made = 0
        self._entries = {}  # key -> (the source, or a weak reference to it; its _Placed)
        self._lock = threading.Lock()

    def reduce(self, array, shares):
        """The reduction of ``array`` in a task's pickle: a reference to its placement (appended
        to ``shares``), or its own reduction when it is small or holds objects."""
        if array.nbytes < self.above or array.dtype.hasobject:
            return array.__reduce_ex__(5)
        import weakref

        key = (id(array), array.__array_interface__["data"][0], array.nbytes, array.shape, array.strides)
        with self._lock:
            entry = self._entries.get(key)
            placed = entry[1] if entry is not None and entry[0]() is array else None
            if placed is None:
                placed = _Placed(array.copy(order="C"))  # captured now, as on one machine
                try:
                    source = weakref.ref(array)
                except TypeError:
                    source = lambda array=array: array  # noqa: E731 - held: its id stays its own
                self._entries[key] = (source, placed)
                self.made += 1
        shares.append(placed)
        from ._shares import placed_value

        # A read-only array (a shoal.share handle's value) reaches the tasks read-only, as it
        # would pickled; a writable one with the call's view.
        return placed_value, (share_key(placed), bool(array.flags.writeable))

    def close(self):
        """The call is over: each placement lives on only while a task not yet sent holds it."""
        with self._lock:
            self._entries.clear()


def _reduce_shared(handle, shares):
    from ._shares import shared_ref

    shares.append(handle)
    return shared_ref, (share_key(handle),)


_share_keys = None  # weakref.WeakKeyDictionary: Shared handle -> its key in this process
_next_key = [0]


def share_key(handle):
    """This process's key for a ``shoal.share`` handle (the same for as long as it lives)."""
    global _share_keys
    if _share_keys is None:
        import weakref

        _share_keys = weakref.WeakKeyDictionary()
    key = _share_keys.get(handle)
    if key is None:
        _next_key[0] += 1
        key = _share_keys[handle] = _next_key[0]
    return key


def loads(data, buffers=()):
    return pickle.loads(data, buffers=buffers)


def dumps_error(exc, tb=None):
    """(exception, traceback text) pickled; an exception that cannot be pickled becomes a
    RuntimeError naming it, so the caller always hears of the failure."""
    import pickle

    if tb is None:
        import traceback

        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return pickle.dumps((exc, tb), 5)
    except Exception:
        try:
            from .._pickle import by_value

            return by_value((exc, tb))
        except Exception:
            sub = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
                               "(the exception itself could not be pickled)")
            return pickle.dumps((sub, tb), 5)


class Outbox:
    """Non-blocking sends from one thread. Keeps every buffer alive until MPI is done with it."""

    def __init__(self, comm, MPI):
        self._comm = comm
        self._MPI = MPI
        self._pending = []  # (requests, objects kept alive)
        self.bytes_sent = 0

    def send(self, dest, ops, buffers=()):
        """Starts sending; raises MPI.Exception if ``dest`` is known to be gone."""
        comm = self._comm
        sizes = [b.nbytes for b in buffers]
        head = pickle.dumps((ops, sizes), 5)
        reqs = [comm.Isend(head, dest, TAG_HEAD)]
        self.bytes_sent += len(head)
        for b in buffers:
            b = b.cast("B") if b.format != "B" or b.ndim != 1 else b
            for at in range(0, b.nbytes, _PART):
                reqs.append(comm.Isend(b[at:at + _PART], dest, TAG_BUF))
            self.bytes_sent += b.nbytes
        self._pending.append((reqs, (head, buffers)))

    def progress(self):
        """Completes what MPI has sent; True while sends are pending."""
        if self._pending:
            Request = self._MPI.Request
            pending = []
            for p in self._pending:
                try:
                    if not Request.Testall(p[0]):
                        pending.append(p)
                except self._MPI.Exception:  # its peer is gone: the heartbeat reports it
                    pass
            self._pending = pending
        return bool(self._pending)

    def flush(self, timeout):
        import time

        deadline = time.monotonic() + timeout
        while self.progress() and time.monotonic() < deadline:
            time.sleep(0.0005)
        return not self._pending


def receive(comm, MPI, status, source=None):
    """The next waiting message as (source rank, ops, buffers), or None if none is waiting.
    Never blocks for a message that has not started to arrive."""
    src = MPI.ANY_SOURCE if source is None else source
    if not comm.Iprobe(src, TAG_HEAD, status):
        return None
    src = status.Get_source()
    head = bytearray(status.Get_count(MPI.BYTE))
    comm.Recv(head, src, TAG_HEAD)
    ops, sizes = pickle.loads(head)
    buffers = []
    for n in sizes:
        # The buffers were sent right after the header: they are already on their way.
        buf = bytearray(n)
        view = memoryview(buf)
        for at in range(0, n, _PART):
            comm.Recv(view[at:at + _PART], src, TAG_BUF)
        buffers.append(buf)
    if not sizes and not ops:
        ops = []
    return src, ops, buffers


_SPIN_S = float(os.environ.get("SHOAL_MPI_SPIN_S", "0"))
_SHORT_NAP = float(os.environ.get("SHOAL_MPI_SHORT_NAP", "0.00005"))
# The nap between probes after a second of idle. Each wake-up costs ~50-100 µs of CPU on a
# virtual machine, so 50 wake-ups a second are ~0.5 % of a core.
IDLE_NAP = 0.02


def backoff(idle):
    """How long to nap after ``idle`` seconds without traffic: almost nothing at first, so
    that a round trip stays fast, a few milliseconds once the traffic has stopped."""
    if idle < _SPIN_S:
        return 0.0
    if idle < 0.01:
        return _SHORT_NAP
    if idle < 0.1:
        return 0.0005
    if idle < 1.0:
        return 0.003
    return IDLE_NAP


def env_rank():
    """This process's rank from the launcher's environment (before MPI is initialised), or None."""
    import os

    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "PALS_RANKID"):
        v = os.environ.get(name)
        if v is not None and v.strip().isdigit():
            return int(v)
    return None


def init_mpi():
    """Initialises MPI (once) and returns the MPI module: a progress thread makes the calls."""
    import mpi4py

    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False  # finalized by the launcher, and only when no peer was lost
    from mpi4py import MPI

    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_MULTIPLE)
    # A peer that dies must be an error to handle here (a lost leader), not an abort of the job.
    MPI.COMM_WORLD.Set_errhandler(MPI.ERRORS_RETURN)
    return MPI


if sys.version_info < (3, 8):  # pragma: no cover
    raise ImportError("shoal.mpi needs pickle protocol 5 (Python 3.8+)")
