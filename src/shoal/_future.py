"""shoal.Future: a concurrent.futures.Future that can also be awaited."""
import concurrent.futures
import threading

__all__ = ["Future"]

_PENDING, _RUNNING, _FINISHED = "PENDING", "RUNNING", "FINISHED"
_DONE = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", _FINISHED})


class Future(concurrent.futures.Future):
    """The result of a task. Works with ``concurrent.futures.wait``/``as_completed`` and
    ``await fut`` in asyncio. ``cancel()`` succeeds only while the task is still queued;
    ``kill()`` also stops a running one (process backend: its worker is killed and replaced).

    Its condition variable is made on first use: most futures are completed before anybody
    waits on them, add a callback, or passes them to ``wait``, and creating it for each task
    cost the caller about a microsecond (and more garbage-collector work) per task."""

    _canceller = None  # a backend's: returns True if it took the task off its queue

    def __init__(self):  # concurrent.futures.Future.__init__ less the condition
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []

    def __getattr__(self, name):
        if name == "_condition":
            # setdefault is atomic: two threads asking at once get the same condition.
            return self.__dict__.setdefault("_condition", threading.Condition())
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def done(self):
        return self._state in _DONE

    def __reduce__(self):
        from ._errors import CannotSendError

        raise CannotSendError("shoal: a Future cannot be sent to a task (it belongs to the process "
                              "that submitted it): pass its result, fut.result(), instead")

    def cancel(self):
        with self._condition:
            if self._state != _PENDING:
                return super().cancel()
        if self._canceller is not None and not self._canceller():
            return False  # already handed to a worker
        return super().cancel()

    def kill(self):
        """Stops the task, queued or running: a running task's worker is killed (SIGKILL) and
        replaced, and the future is cancelled (``result()`` raises CancelledError) once the
        worker is gone, within milliseconds. Other tasks queued on that worker run elsewhere,
        charged nothing. Returns True if the task was stopped (or already cancelled), False
        if it had finished (a result that arrives before its worker is gone still stands). Raises RuntimeError on the thread and serial backends (a thread
        cannot be stopped) and while an agent group without ``checkpoint=True`` lives in the
        executor (its agents would be lost with the worker)."""
        raise RuntimeError("shoal: Future.kill() is not supported on this executor's backend: it runs "
                           "tasks on threads or in the caller, and a thread cannot be stopped; use "
                           "backend='process'")

    def _killed(self):
        """Used by a backend: the task was stopped by kill(); cancelled, waiters told."""
        with self._condition:
            if self._state != _PENDING and self._state != _RUNNING:
                return
            self._state = "CANCELLED_AND_NOTIFIED"
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()

    def __await__(self):
        import asyncio  # imported on first use: it costs ~30 ms at startup

        return asyncio.wrap_future(self).__await__()

    # Used by the backends: complete unless the caller cancelled meanwhile.
    def _resolve(self, value):
        cond = self.__dict__.get("_condition")
        if cond is None:
            # Nobody has waited, added a callback or cancelled yet: each of those makes the
            # condition first, so none can be missed by looking for it again after the write.
            if self._state != _PENDING and self._state != _RUNNING:
                return
            self._result = value
            self._state = _FINISHED
            cond = self.__dict__.get("_condition")
            if cond is None:
                return
            # Someone arrived meanwhile: serialise with it, then tell it (unless it cancelled).
            with cond:
                if self._state != _FINISHED:
                    return
                self._tell_waiters(cond)
        else:
            with cond:
                if self._state != _PENDING and self._state != _RUNNING:
                    return  # cancelled (or already failed)
                self._result = value
                self._state = _FINISHED
                self._tell_waiters(cond)
        if self._done_callbacks:
            self._invoke_callbacks()

    def _tell_waiters(self, cond):
        """Under `cond`: what set_result does for wait()/as_completed() and result() callers."""
        for waiter in self._waiters:
            waiter.add_result(self)
        if cond._waiters:
            cond.notify_all()

    def _fail(self, exc):
        try:
            self.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            pass
