"""The guard that stops an executor from being created while shoal imports a module for the driver.

The zygote imports the module of a task's function (so that its workers share it), and a worker
imports it again when it loads the function (or the initializer, or an argument pickled by
reference). A module that creates an executor when it is imported, with no
``if __name__ == "__main__":`` guard, would then start an executor in the zygote or the worker,
whose own zygote and workers import the module again, without end. While shoal imports on the
driver's behalf, :func:`check` (called first thing by ``Executor()``) raises instead, naming the
module. Executors created by a task's own code, while it runs, are not affected.
"""
import sys

__all__ = ["importing", "check", "loading"]

# While set: what this process is loading for the driver (for the message). `importing` sets
# it; a worker's task loop sets and clears it directly around each task's loading (the context
# manager's two calls cost ~0.1 µs per task).
loading = None


class importing:
    """``with importing("loading a task's function"):`` marks code that imports for the driver.
    Single-threaded use only (the zygote, and a worker's task loop)."""

    __slots__ = ("_what", "_outer")

    def __init__(self, what):
        self._what = what

    def __enter__(self):
        global loading
        self._outer, loading = loading, self._what

    def __exit__(self, *exc):
        global loading
        loading = self._outer
        return False


def check():
    """Raises ImportTimeExecutorError if shoal is importing a module on the driver's behalf."""
    if loading is None:
        return
    from ._errors import ImportTimeExecutorError

    name, path = _module_being_imported()
    where = f"module {name!r}" + (f" ({path})" if path else "")
    raise ImportTimeExecutorError(
        f"shoal: an Executor was created while {where} was being imported by shoal in a "
        f"{'zygote' if 'zygote' in loading else 'worker'} process ({loading}). A module that creates "
        "an executor when it is imported would start one in every process that imports it, "
        "and so on without end. Create the executor under `if __name__ == \"__main__\":` (or "
        "inside a function the script calls), so that importing the module only defines its "
        "functions.", module=name)


def _module_being_imported():
    """(name, file) of the innermost module whose top-level code is running, outside shoal."""
    frame = sys._getframe(2)
    while frame is not None:
        g = frame.f_globals
        name = g.get("__name__")
        if frame.f_code.co_name == "<module>" and isinstance(name, str) and not (
                name == "shoal" or name.startswith("shoal.")):
            return name, g.get("__file__")
        frame = frame.f_back
    return "?", None
