"""A joblib parallel backend named ``"shoal"``: joblib's ``Parallel`` running on shoal workers.

    import joblib
    import shoal.joblib  # registers the backend

    with joblib.parallel_config(backend="shoal", n_jobs=4):
        ys = joblib.Parallel()(joblib.delayed(f)(x) for x in xs)

joblib keeps doing what it does (auto-batching, ``return_as="generator"`` and
``"generator_unordered"``, ``timeout``, pre-dispatch, error propagation); shoal runs the
batches. Keyword arguments given to ``parallel_config`` / ``Parallel`` beyond joblib's own
(for example ``preload=("numpy",)`` or ``retries=0``) go to :class:`shoal.Executor`; for the
thread backend pass an instance: ``parallel_config(backend=ShoalBackend(backend="thread"))``.

Like loky's, the executor is kept between ``Parallel`` calls with the same ``n_jobs`` and
options (its workers are reused), and shut down at interpreter exit.
"""
import os
import sys
import threading
import warnings

import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)
from joblib.parallel import cpu_count

from ._executor import Executor
from ._future import Future
from ._pickle import dumps, loads

__all__ = ["ShoalBackend", "register"]

# What Parallel passes to every backend's configure(); not options of shoal.Executor.
# max_nbytes and mmap_mode choose the arrays workers see as memmaps (_memmap_placements);
# temp_folder is loky's (shoal's arena is a memfd, no folder), context multiprocessing's.
_JOBLIB_OPTIONS = frozenset({"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context",
                             "idle_worker_timeout"})

_lock = threading.Lock()
_idle = None  # (n_jobs, options, Executor) that no Parallel call is using: the next one takes it


def _forget_after_fork():
    """A forked child (e.g. a multiprocessing worker) must not use its parent's executor."""
    global _idle, _lock
    _idle = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _in_shoal_worker():
    worker = sys.modules.get("shoal.process.worker")
    return worker is not None and worker.in_worker


def _run_batch(batch):
    """Runs one of joblib's batches (a BatchedCalls) in the worker. The batch travels as the
    task's argument, so the function registered with the executor is this one, once."""
    return batch()


def _worker_setup(authkey, user_init):
    """Runs first in each worker: takes the driver's multiprocessing authkey, so that
    multiprocessing Manager proxies passed as arguments can connect (loky's workers
    inherit it the same way), then the user's initializer. That one travels pickled, to be
    loaded once the authkey is set (its arguments may be such proxies)."""
    import multiprocessing

    multiprocessing.current_process().authkey = authkey
    if user_init is not None:
        initializer, initargs = loads(user_init)
        initializer(*initargs)


def _memmap_view(buffer, dtype, shape, order, mode):
    """In the worker: a numpy.memmap over an array's placement in the arena, as joblib's
    memmapping hands workers (read-only for mode "r", copy-on-write for "c", shared by the
    call's tasks for "r+" and "w+"; the view's writability comes with the reference)."""
    import numpy

    a = numpy.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).view(_memmap_class())
    a.mode = "r+" if mode == "w+" else mode  # as joblib: a worker never truncates
    return a


_ArenaMemmap = None


def _memmap_class():
    """numpy.memmap over arena memory. It (and any array derived from it) pickles as a plain
    ndarray: a memmap with no file pickles through numpy's generic path, which loses a
    non-native byte order (joblib's test_parallel_byteorder_corruption)."""
    global _ArenaMemmap
    if _ArenaMemmap is None:
        import numpy

        class ArenaMemmap(numpy.memmap):
            def __reduce_ex__(self, protocol):
                return numpy.asarray(self).__reduce_ex__(protocol)

        ArenaMemmap.__module__ = __name__
        ArenaMemmap.__qualname__ = "_ArenaMemmap"
        _ArenaMemmap = ArenaMemmap
    return _ArenaMemmap


def _array_reducer(max_nbytes, mode):
    """The reduce function of numpy arrays while a Parallel call pickles its batches: an array
    larger than ``max_nbytes`` travels as a memmap of its placement (placed once per call)."""
    import pickle

    import numpy

    def reduce(a):
        if a.nbytes <= max_nbytes or a.dtype.hasobject:
            return a.__reduce_ex__(5)
        if a.flags.c_contiguous:
            order = "C"
        elif a.flags.f_contiguous:
            order = "F"
        else:  # copied contiguous (a new array each time: not shared between items)
            a, order = numpy.ascontiguousarray(a), "C"
        return _memmap_view, (pickle.PickleBuffer(a), a.dtype, a.shape, order, mode)

    return reduce


def _memmap_placements(executor, max_nbytes, mmap_mode):
    """The Placements of one Parallel call (None: joblib's memmapping is off, or the executor
    runs tasks in this process, where they get the caller's arrays)."""
    if max_nbytes is None or mmap_mode is None or "numpy" not in sys.modules:
        return None
    import numpy

    from ._arena import COPY_ON_WRITE, READ_ONLY

    if mmap_mode not in ("r", "r+", "w+", "c"):
        raise ValueError(f"mmap_mode must be one of None, 'r', 'r+', 'w+', 'c', not {mmap_mode!r}")
    view = {"r": READ_ONLY, "c": COPY_ON_WRITE}.get(mmap_mode, 0)
    if isinstance(max_nbytes, str):
        from joblib.disk import memstr_to_bytes

        max_nbytes = memstr_to_bytes(max_nbytes)
    reduce = _array_reducer(int(max_nbytes), mmap_mode)
    return executor._backend.placements(view=view, arrays_above=int(max_nbytes),
                                        reducers={numpy.ndarray: reduce, numpy.memmap: reduce})


def _new_executor(n_jobs, options):
    import multiprocessing

    options = dict(options)
    initializer = options.pop("initializer", None)
    initargs = tuple(options.pop("initargs", ()))
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be callable")
    authkey = bytes(multiprocessing.current_process().authkey)
    user_init = None if initializer is None else dumps((initializer, initargs))
    # Every batch unpickles into joblib objects: the zygote imports joblib once, so workers
    # (also those that replace workers killed by an abort) start with it.
    preload = options.pop("preload", ())
    preload = (preload,) if isinstance(preload, str) else tuple(preload)
    preload = tuple(dict.fromkeys(preload + ("shoal.joblib",)))
    return Executor(max_workers=n_jobs, initializer=_worker_setup,
                    initargs=(authkey, user_init), preload=preload, **options)


def _acquire(n_jobs, options):
    """An executor for one Parallel call: the idle one when it matches (its workers are
    reused, as loky reuses its executor), else a new one. Calls running at the same time
    never share an executor, so aborting one never touches the other."""
    global _idle
    with _lock:
        idle, _idle = _idle, None
    if idle is not None:
        idle_n, idle_options, ex = idle
        if idle_n == n_jobs and idle_options == options and not ex._shutdown:
            return ex
        ex.shutdown(wait=False)
    return _new_executor(n_jobs, options)


def _release(n_jobs, options, ex):
    """The call is over: ``ex`` becomes the idle executor (a previous idle one is closed)."""
    global _idle
    with _lock:
        old, _idle = _idle, (n_jobs, dict(options), ex)
    if old is not None:
        old[2].shutdown(wait=False)


class _Dispatch:
    """Hands joblib's batches to one executor as joblib dispatches them (``pre_dispatch``
    bounds how many). Each is submitted ``alone``: it waits in the executor's queue until a
    worker is free, never in the ring of a worker busy with a long batch (loky's queue is as
    short), so with ``return_as="generator_unordered"`` the quick batches come back while a slow
    one runs. The queue is the engine's: a worker that frees up gets the next batch at once,
    already pickled, without waiting for this thread."""

    def __init__(self, executor, placements=None):
        self.executor = executor
        self.placements = placements  # the call's arrays, placed once (None: pickled per batch)
        self.inflight = set()  # the executor's futures of batches not finished
        self.lock = threading.Lock()
        self.closed = False

    def submit(self, batch, outer):
        if self.closed:
            outer.cancel()
            return
        try:
            inner = self.executor._submit_call(_run_batch, (batch,), {}, self.placements, alone=True)
        except BaseException as exc:  # noqa: BLE001 - e.g. a batch that cannot be pickled
            outer._fail(exc)
            return
        with self.lock:
            self.inflight.add(inner)
        inner.add_done_callback(lambda f: self._finished(f, outer))

    def _finished(self, inner, outer):
        with self.lock:
            self.inflight.discard(inner)
        if inner.cancelled():
            outer.cancel()
            return
        error = inner.exception()
        if error is not None:
            outer._fail(error)
        else:
            outer._resolve(inner.result())

    def close(self):
        """Cancels the batches that never started."""
        if self.placements is not None:
            self.placements.close()  # each lives on while a batch in flight uses it
        with self.lock:
            self.closed = True
            inflight = list(self.inflight)
        for inner in inflight:
            inner.cancel()  # a batch a worker has started runs on


class ShoalBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend running each batch as one shoal task. Options (``backend``,
    ``preload``, ``retries``, ``initializer``, ...) are passed to :class:`shoal.Executor`."""

    supports_retrieve_callback = True  # results and timeouts through future callbacks
    uses_threads = False
    supports_sharedmem = False
    supports_inner_max_num_threads = True  # the executor's threads_per_worker

    def __init__(self, nesting_level=None, inner_max_num_threads=None, **executor_options):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **executor_options)
        self._workers = None
        self.parallel = None

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if _in_shoal_worker():
            if n_jobs != 1:
                warnings.warn("shoal-backed parallel loops cannot be nested in a shoal worker "
                              "(it would start a pool per worker), setting n_jobs=1",
                              stacklevel=3)
            return 1
        if n_jobs < 0:
            return max(cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_kwargs):
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        options = {k: v for k, v in {**self.backend_kwargs, **backend_kwargs}.items()
                   if k not in _JOBLIB_OPTIONS}
        if self.inner_max_num_threads is not None:  # joblib's name for threads_per_worker
            options["threads_per_worker"] = self.inner_max_num_threads
        if self._workers is not None:  # configured again without terminate: keep one executor
            if self._dispatch.placements is not None:
                self._dispatch.placements.close()
            _release(*self._workers_key, self._workers)
        self._workers = _acquire(n_jobs, options)
        self._workers_key = (n_jobs, options)
        joblib_options = {**self.backend_kwargs, **backend_kwargs}
        placements = _memmap_placements(self._workers, joblib_options.get("max_nbytes", 1 << 20),
                                        joblib_options.get("mmap_mode", "r"))
        self._dispatch = _Dispatch(self._workers, placements)
        self.parallel = parallel
        return n_jobs

    def submit(self, func, callback=None):
        future = Future()
        if callback is not None:
            future.add_done_callback(callback)
        self._dispatch.submit(func, future)
        return future

    def retrieve_result_callback(self, future):
        return future.result()

    def terminate(self):
        # The executor stays alive for the next Parallel call (loky does the same).
        if self._workers is not None:
            self._dispatch.close()
            _release(*self._workers_key, self._workers)
            self._workers = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready=True):
        """An exception or a timeout ended the call: the running batches are killed with
        their workers (this call's executor only), and (``ensure_ready``) a fresh executor
        takes over."""
        if self._workers is not None:
            self._dispatch.close()
            self._workers.shutdown(wait=True, kill_workers=True)
            self._workers = None
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel,
                           **self.parallel._backend_kwargs)


def register():
    """Registers ``ShoalBackend`` with joblib under the name ``"shoal"`` (done on import)."""
    joblib.register_parallel_backend("shoal", ShoalBackend)


register()
