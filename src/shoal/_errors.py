"""shoal's exceptions: each is rooted in the standard library's."""
from concurrent.futures import BrokenExecutor

__all__ = ["WorkerCrashedError", "InitializerError", "RemoteTraceback", "AgentError", "AgentsLostError"]


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


class AgentError(RuntimeError):
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
