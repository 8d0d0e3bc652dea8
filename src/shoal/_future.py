"""shoal.Future: a concurrent.futures.Future that can also be awaited."""
import concurrent.futures

__all__ = ["Future"]


class Future(concurrent.futures.Future):
    """The result of a task. Works with ``concurrent.futures.wait``/``as_completed`` and
    ``await fut`` in asyncio. ``cancel()`` succeeds only while the task is still queued."""

    _canceller = None  # a backend's: returns True if it took the task off its queue

    def cancel(self):
        with self._condition:
            if self._state != "PENDING":
                return super().cancel()
        if self._canceller is not None and not self._canceller():
            return False  # already handed to a worker
        return super().cancel()

    def __await__(self):
        import asyncio  # imported on first use: it costs ~30 ms at startup

        return asyncio.wrap_future(self).__await__()

    # Used by the backends: complete unless the caller cancelled meanwhile.
    def _resolve(self, value):
        try:
            self.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass

    def _fail(self, exc):
        try:
            self.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass
