"""shoal.patch_pools(): the process pools that libraries build for themselves run on shoal's workers.

Opt-in only (``python -m shoal run script.py`` or ``shoal.patch_pools()``), for libraries that
construct their own pool instead of taking one (Mesa's ``batch_run``, radCAD's engine). While it
is in force:

- ``multiprocessing.Pool(...)``, ``multiprocessing.get_context(m).Pool(...)`` and ``ctx.Pool(...)``
  on any context object return a :class:`shoal.Pool` (``context`` and the start method are
  ignored: the workers are forked from shoal's zygote);
- ``concurrent.futures.ProcessPoolExecutor(...)`` (and ``concurrent.futures.process.``'s) returns
  a :class:`shoal.Executor` with the same arguments (``mp_context`` is ignored).

Patch before the library is imported: a name it bound earlier (``from multiprocessing import
Pool``, ``from concurrent.futures import ProcessPoolExecutor`` at its import) keeps the original
(``python -m shoal run`` patches before the script runs, so this holds there).

It does not cover: ``multiprocessing.pool.Pool(...)`` called on the class itself, and its
subclasses (schwimmbad's ``MultiPool``); names bound before the patch; ``multiprocessing.Process``;
``ThreadPool``; pathos, multiprocess, loky/joblib, dask, ray and other pools that do not go
through these constructors; and processes the script starts itself (the patch lives in this
process only: a task that builds a pool inside a worker gets multiprocessing's).
"""
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import multiprocessing.context
import threading

__all__ = ["patch_pools", "PoolPatch"]

_lock = threading.Lock()
_active = None  # the PoolPatch in force, or None


def _shoal_pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):
    """multiprocessing's ``BaseContext.Pool``, building a shoal.Pool instead."""
    from ._pool import Pool

    return Pool(processes, initializer, initargs, maxtasksperchild)


def _pool_function(processes=None, initializer=None, initargs=(), maxtasksperchild=None):
    """``multiprocessing.Pool`` while patched."""
    from ._pool import Pool

    return Pool(processes, initializer, initargs, maxtasksperchild)


def _process_pool_executor_class():
    from ._executor import Executor

    class ProcessPoolExecutor(Executor):
        """``concurrent.futures.ProcessPoolExecutor``'s constructor on a shoal.Executor."""

        def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(), *,
                     max_tasks_per_child=None):
            if max_workers is not None and max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            super().__init__(max_workers, initializer=initializer, initargs=initargs,
                             max_tasks_per_worker=max_tasks_per_child)

    return ProcessPoolExecutor


class PoolPatch:
    """The patch in force; ``undo()`` (or leaving its ``with`` block) puts the originals back."""

    def __init__(self):
        self._saved = [
            (multiprocessing.context.BaseContext, "Pool", multiprocessing.context.BaseContext.__dict__["Pool"]),
            (multiprocessing, "Pool", multiprocessing.Pool),
            (concurrent.futures, "ProcessPoolExecutor", concurrent.futures.ProcessPoolExecutor),
            (concurrent.futures.process, "ProcessPoolExecutor", concurrent.futures.process.ProcessPoolExecutor),
        ]
        executor = _process_pool_executor_class()
        for owner, name, _ in self._saved:
            if owner is multiprocessing.context.BaseContext:
                setattr(owner, name, _shoal_pool)
            elif owner is multiprocessing:
                setattr(owner, name, _pool_function)
            else:
                setattr(owner, name, executor)

    def undo(self):
        """Restores multiprocessing's and concurrent.futures' constructors. Pools already built
        stay shoal's."""
        global _active
        with _lock:
            if _active is not self:
                return
            for owner, name, original in self._saved:
                setattr(owner, name, original)
            _active = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()


def patch_pools():
    """Makes the process pools built through the standard constructors (see this module's
    docstring for which) shoal's, until ``undo()``; returns the :class:`PoolPatch`. Calling it
    again while in force returns the same patch."""
    global _active
    with _lock:
        if _active is None:
            _active = PoolPatch()
        return _active
