"""shoal's exceptions: each is rooted in the standard library's."""
from concurrent.futures import BrokenExecutor

__all__ = ["WorkerCrashedError", "InitializerError", "RemoteTraceback"]


class WorkerCrashedError(BrokenExecutor):
    """Raised when the worker running a task died (a signal, ``os._exit``, out of memory)
    and the task used up its retries. ``signal`` or ``exitcode`` says how it ended.
    The executor itself keeps working: a new worker has been started."""

    def __init__(self, message, *, signal=None, exitcode=None):
        super().__init__(message)
        self.signal = signal
        self.exitcode = exitcode


class InitializerError(BrokenExecutor):
    """Raised for every task of an executor whose ``initializer`` failed in a worker;
    the initializer's own exception is the ``__cause__``."""


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of a task's exception: ``str()`` is the worker's traceback."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb
