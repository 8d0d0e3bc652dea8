"""shoal's pool for code written against schwimmbad's pool interface (``map(worker, tasks,
callback=None)``, ``batched_map``, ``is_master``, ``wait``, ``enabled``)::

    from shoal.schwimmbad import ShoalPool
    with ShoalPool(4) as pool:          # instead of schwimmbad.MultiPool(4)
        results = pool.map(worker, tasks, callback=save)

It is a :class:`shoal.Pool` (the whole multiprocessing.Pool API) that is also a
``schwimmbad.pool.BasePool``. schwimmbad is needed only to import this module.
"""
from schwimmbad.pool import BasePool

from ._pool import Pool

__all__ = ["ShoalPool"]


class ShoalPool(Pool, BasePool):
    """schwimmbad's ``MultiPool`` interface on shoal's workers. ``size`` is the worker count;
    this process is the master (``rank`` 0)."""

    def __init__(self, processes=None, initializer=None, initargs=(), **kwargs):
        Pool.__init__(self, processes, initializer, initargs, **kwargs)
        self.rank = 0
        self.size = self._processes

    @staticmethod
    def enabled():
        return True

    def map(self, func, iterable, chunksize=None, callback=None):
        """``[func(x) for x in iterable]`` on the workers, in order; ``callback`` is called here
        with each result, in order, once all are in (as schwimmbad's MultiPool does)."""
        results = Pool.map(self, func, iterable, chunksize)
        if callback is not None:
            for result in results:
                callback(result)
        return results
