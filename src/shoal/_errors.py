"""shoal's exceptions, by cause. Each derives from :class:`ShoalError` (catch that for anything
shoal raises for its own reasons) and from the standard library class a user of
``concurrent.futures`` already catches:

    ShoalError
    ├── WorkerCrashedError      BrokenExecutor   a task's worker died and its retries are used up
    ├── InitializerError        BrokenExecutor   the executor's initializer failed in a worker
    │   └── PreloadError                         ... or a `preload` module failed to import
    ├── ExecutorShutdownError   BrokenExecutor   the executor was shut down before the task ran
    ├── WorkersUnavailableError BrokenExecutor   the pool could not start or keep its workers
    ├── TaskTimeoutError        TimeoutError     a task ran past its task_timeout and was stopped
    ├── ExecutorClosedError     RuntimeError     submit()/map()/agents() after shutdown()
    ├── ImportTimeExecutorError RuntimeError     an executor created by a module shoal imports for a worker
    ├── CannotSendError         TypeError        an open file, an executor or a future sent to a worker
    ├── DeadlockError           RuntimeError     every thread waits inside a task for its own executor
    ├── InheritedExecutorError  RuntimeError     a fork()ed child used its parent's process executor
    ├── AgentError              RuntimeError     an agent operation failed for some agents
    │   └── AgentsLostError                      ... and agents were lost with their worker
    └── ArenaFull               MemoryError      the shared arena has no room (shoal._core)

A task's own exception is not wrapped: it reaches the caller with its type, the worker's
traceback as its ``__cause__`` (:class:`RemoteTraceback`).
"""
from concurrent.futures import BrokenExecutor

from ._core import ShoalError

__all__ = ["ShoalError", "WorkerCrashedError", "InitializerError", "PreloadError", "ExecutorShutdownError",
           "WorkersUnavailableError", "TaskTimeoutError", "ExecutorClosedError", "InheritedExecutorError",
           "ImportTimeExecutorError", "CannotSendError", "DeadlockError", "RemoteTraceback", "AgentError", "AgentsLostError", "traceback_text"]


class WorkerCrashedError(ShoalError, BrokenExecutor):
    """Raised when the worker running a task died (a signal, ``os._exit``, out of memory)
    and the task used up its retries. ``signal`` or ``exitcode`` says how it ended.
    The executor itself keeps working: a new worker has been started."""

    def __init__(self, message, *, signal=None, exitcode=None):
        super().__init__(message)
        self.signal = signal
        self.exitcode = exitcode


class InitializerError(ShoalError, BrokenExecutor):
    """Raised for every task of an executor whose ``initializer`` failed in a worker;
    the initializer's own exception is the ``__cause__``."""


class PreloadError(InitializerError):
    """Raised by the first task (and every later one) of a process executor whose ``preload``
    module failed to import: the workers cannot start. ``module`` names it; the
    ``__cause__`` (a :class:`RemoteTraceback`) holds the import's traceback."""

    def __init__(self, message, *, module=None):
        super().__init__(message)
        self.module = module

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, {"module": self.module}))


class ExecutorShutdownError(ShoalError, BrokenExecutor):
    """Raised for a task (or agent operation) that had not run when its executor was shut down
    with ``cancel_futures=True``, killed, or garbage collected."""


class WorkersUnavailableError(ShoalError, BrokenExecutor):
    """Raised for the tasks of a pool that could not start or keep its workers (its zygote
    died, or forking failed); the message says why."""


class TaskTimeoutError(ShoalError, TimeoutError):
    """Raised for a task (or one item of a map chunk) that ran longer than its ``task_timeout``:
    its worker was killed and replaced (a coroutine task: the coroutine was cancelled in its
    event loop). It is not retried. ``limit`` is the limit in seconds, ``function`` the task's
    function's name."""

    def __init__(self, message, *, limit=None, function=None):
        super().__init__(message)
        self.limit = limit
        self.function = function

    def __reduce__(self):  # raised in a worker (coroutine tasks), it reaches the caller whole
        return (_rebuild, (type(self), self.args, {"limit": self.limit, "function": self.function}))


def check_task_timeout(value):
    """``task_timeout`` as a float of seconds, or None; ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 4e6:
        raise ValueError(f"task_timeout must be a number of seconds > 0 (below 4e6) or None, not {value!r}")
    return float(value)


def timeout_message(limit, function):
    """The message of the TaskTimeoutError of a task of ``function`` (its name) past ``limit`` s."""
    return (f"shoal: {function} ran longer than its task_timeout of {limit:g} s and was stopped "
            f"(not retried)")


class ExecutorClosedError(ShoalError, RuntimeError):
    """Raised by ``submit``, ``map``, ``sweep``, ``agents`` and agent operations made after
    ``shutdown()`` (``concurrent.futures`` raises a RuntimeError there too)."""


class ImportTimeExecutorError(ShoalError, RuntimeError):
    """Raised when an executor is created while shoal imports a module in its zygote or in a
    worker (to load a task's function, the initializer or a ``preload`` module): the module
    creates an executor at import time, with no ``if __name__ == "__main__":`` guard, and
    would otherwise start processes that import it again without end. ``module`` names it.
    (``multiprocessing`` raises a RuntimeError in the same case.)"""

    def __init__(self, message, *, module=None):
        super().__init__(message)
        self.module = module

    def __reduce__(self):  # raised in a worker, it reaches the caller with its module
        return (_rebuild, (type(self), self.args, {"module": self.module}))


class CannotSendError(ShoalError, TypeError):
    """Raised when a task's function, arguments or result hold something that cannot be sent to
    another process: an open file (cloudpickle would send a snapshot of its contents), an
    executor or one of its futures. The message says what to send instead."""


class DeadlockError(ShoalError, RuntimeError):
    """Raised by ``result()`` or ``exception()`` called inside a task of a thread-backend
    executor, on a future of that same executor, once every thread of the executor is waiting
    like this: no thread is left to run the tasks they wait for (``ThreadPoolExecutor`` hangs)."""


class InheritedExecutorError(ShoalError, RuntimeError):
    """Raised when a fork()ed child of the process that made a process executor uses that
    executor (``submit``, ``map``, a future's ``result``): its workers, rings and locks are the
    parent's, which keeps using them. Nothing of the parent's is touched; the child must make
    an executor of its own. Shutting the inherited executor down, or dropping it, is allowed
    and leaves the parent's alone."""


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of a task's exception: ``str()`` is the worker's traceback."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


class AgentError(ShoalError, RuntimeError):
    """Raised by an operation on an agent group (``call``, ``get``, ...) when it failed for some
    agents: a method raised, an argument or result could not be pickled, or the agents' worker
    died. The other agents' results are kept.

    - ``errors``: {agent index: exception}. A method's own exception keeps its type; on the
      process backend its ``__cause__`` is a :class:`RemoteTraceback` with the worker's
      traceback. Agents whose worker died map to a :class:`WorkerCrashedError`.
    - ``results``: one entry per agent, in agent order; ``None`` where the agent failed.
    - ``lost``: sorted indices of agents that no longer exist (see :class:`AgentsLostError`).
    """

    def __init__(self, message, *, errors=None, results=None, lost=()):
        super().__init__(message)
        self.errors = dict(errors or {})
        self.results = results
        self.lost = tuple(lost)


class AgentsLostError(AgentError):
    """Raised by every operation on an agent group that has lost agents: their worker died and
    the group was created without ``checkpoint=True``. ``lost`` names them; the operation still
    ran on the others, whose results are in ``results``."""


def function_name(fn):
    """The name a message gives a task's function: the wrapped function's for a partial or a
    wrapper of shoal's (a sweep's call), else its qualified name or repr."""
    import functools

    for _ in range(8):  # a wrapper of a wrapper ...; bounded: __wrapped__ could be anything
        inner = fn.func if isinstance(fn, functools.partial) else getattr(fn, "__wrapped__", None)
        if inner is None or inner is fn:
            break
        fn = inner
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else repr(fn)


def _rebuild(cls, args, kwargs):
    return cls(*args, **kwargs)


def traceback_text(exc):
    """The formatted traceback of ``exc``, as a worker sends it."""
    import traceback  # here: it imports ~10 modules, and most workers never need it

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
