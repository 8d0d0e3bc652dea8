"""shoal: a parallel execution engine for Python simulations.

One API runs the same code serially (for debugging), on threads, or on a pool of
worker processes forked from a zygote, with a C++ core moving tasks through
shared-memory rings.
"""
__all__ = ["Executor", "Future", "AgentGroup", "ShoalError", "WorkerCrashedError", "InitializerError",
           "PreloadError", "ExecutorShutdownError", "WorkersUnavailableError", "TaskTimeoutError", "ExecutorClosedError",
           "InheritedExecutorError", "ImportTimeExecutorError", "CannotSendError", "DeadlockError", "RemoteTraceback", "AgentError",
           "AgentsLostError", "share", "Shared", "ArenaFull", "set_arena_limit", "arena_stats",
           "Progress", "Pool", "patch_pools", "Trace"]
__version__ = "0.1.0"

# The names load on first use, so that a worker process (which imports shoal._worker)
# does not pay for the executor machinery.
_where = {
    "Executor": "._executor",
    "Future": "._future",
    "ShoalError": "._errors",
    "WorkerCrashedError": "._errors",
    "ExecutorShutdownError": "._errors",
    "WorkersUnavailableError": "._errors",
    "TaskTimeoutError": "._errors",
    "ExecutorClosedError": "._errors",
    "InheritedExecutorError": "._errors",
    "InitializerError": "._errors",
    "ImportTimeExecutorError": "._errors",
    "PreloadError": "._errors",
    "CannotSendError": "._errors",
    "DeadlockError": "._errors",
    "RemoteTraceback": "._errors",
    "share": "._share",
    "Shared": "._share",
    "set_arena_limit": "._arena",
    "arena_stats": "._arena",
    "ArenaFull": "._core",
    "Progress": "._progress",
    "AgentError": "._errors",
    "AgentsLostError": "._errors",
    "AgentGroup": "._agents",
    "Pool": "._pool",
    "patch_pools": "._patch",
    "Trace": "._trace",
}


def __getattr__(name):
    module = _where.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
