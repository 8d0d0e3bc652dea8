"""The one module namespace that functions and classes from the driver's ``__main__`` share in a
worker (docs/decisions/2026-12-05-main-functions-share-globals.md).

cloudpickle sends a function defined in ``__main__`` (a script, a notebook) by value, with the
globals it reads, and by default gives each unpickled function a dict of its own: an initializer
that sets a global, or a cache two functions share, was invisible to the other functions. shoal's
pickler (``_pickle._Pickler``) instead sends such a function's globals as a reference to
:func:`main_globals` and its globals' values as a state that :func:`function_setstate` merges:

- in a worker, every such function runs in one synthetic ``__main__`` module, created at first
  use and installed as ``sys.modules["__main__"]`` (as ``multiprocessing`` does with the
  re-imported main module);
- in the driver (a function coming back in a result) it is the real ``__main__``.

Merging. The driver numbers each global's bindings (:func:`versioned`: a new number when the
name is bound to another object than when it was last sent), and a worker keeps the number of
what it installed. A name the namespace lacks takes the driver's value. A name the driver has
not rebound since keeps the worker's object, mutated or rebound there (a cache, a model an
initializer loaded). A name the driver has rebound (a lambda per parameter set reading a global
set in a loop) takes the driver's new value, unless the worker's own code has rebound it too:
then the worker's value stands, from then on.

The worker loads this module only when a ``__main__`` function arrives: cloudpickle is not needed.
"""
import builtins
import itertools
import sys
import threading

__all__ = ["versioned", "main_globals", "function_setstate", "keep_apart"]

_namespace = None   # this process's namespace of the driver's __main__
_installed = {}     # worker: name -> (driver's version, the object installed for it)
_sent = {}          # driver: name -> (version, the value last sent for it)
_versions = itertools.count(1)
_lock = threading.Lock()
_MISSING = object()


def versioned(values):
    """Driver: ``{name: (version, value)}`` for the globals a ``__main__`` function reads."""
    out = {}
    with _lock:
        for name, value in values.items():
            last = _sent.get(name)
            if last is None or last[1] is not value:  # held: its id is not reused meanwhile
                last = _sent[name] = (next(_versions), value)
            out[name] = (last[0], value)
    return out


def main_globals(file=None):
    """The globals of functions from the driver's ``__main__`` in this process. ``file`` is the
    driver's ``__main__.__file__`` (set once, if the namespace has none)."""
    global _namespace
    ns = _namespace
    if ns is None:
        worker = sys.modules.get("shoal.process.worker")
        if worker is not None and worker.in_worker:
            module = type(sys)("__main__")
            module.__builtins__ = builtins
            sys.modules["__main__"] = module  # `import __main__` in a task sees it too
        else:
            module = sys.modules["__main__"]
        ns = _namespace = module.__dict__
    if file is not None and "__file__" not in ns:
        ns["__file__"] = file
    return ns


def keep_apart():
    """In a process that relays the driver's ``__main__`` functions to workers without being the
    driver (an MPI node leader, whose real ``__main__`` is its launcher), those functions share a
    module of their own, so the script's globals never land in the relay's ``__main__``."""
    global _namespace
    module = type(sys)("__main__")
    module.__builtins__ = builtins
    _namespace = module.__dict__


def function_setstate(func, state):
    """cloudpickle's ``_function_setstate``, with the globals merged as described above."""
    state, slotstate = state
    func.__dict__.update(state)
    values = slotstate.pop("__globals__")
    cells = slotstate.pop("__closure__")
    slotstate.pop("_cloudpickle_submodules")  # unpickling them imported them: their only purpose
    ns = func.__globals__
    for name, (version, value) in values.items():
        current = ns.get(name, _MISSING)
        seen = _installed.get(name)
        if current is _MISSING or (seen is not None and seen[0] != version and current is seen[1]):
            ns[name] = value  # new here, or rebound by the driver and not by the worker
            _installed[name] = (version, value)
        elif seen is not None and seen[0] != version:
            del _installed[name]  # rebound on both sides: the worker's value stands
    ns.setdefault("__builtins__", builtins)
    if cells is not None:
        for i, cell in enumerate(cells):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            func.__closure__[i].cell_contents = value
    for name, value in slotstate.items():
        setattr(func, name, value)
