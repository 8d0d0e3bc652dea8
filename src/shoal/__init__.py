"""shoal: a parallel execution engine for Python simulations.

One API runs the same code serially (for debugging), on threads, or on a pool of
worker processes forked from a zygote, with a C++ core moving tasks through
shared-memory rings.
"""
from ._errors import InitializerError, RemoteTraceback, WorkerCrashedError
from ._executor import Executor
from ._future import Future

__all__ = ["Executor", "Future", "WorkerCrashedError", "InitializerError", "RemoteTraceback"]
__version__ = "0.1.0"
