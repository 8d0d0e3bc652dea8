"""The zygote: started once per driver process with posix_spawn; forks workers on request.

It is single-threaded, and its native thread pools stay so: before it imports anything, each
pool the user left unset is set to one thread (_threads.zygote_defaults; each worker then sizes
its own at setup, docs/threads.md). It imports what workers share (the worker loop, the preload modules,
and, once idle, cloudpickle), freezes the garbage collector so forked workers do not copy those
pages, and then serves fork and import requests from the driver's executors until the driver
is gone.
"""
import gc
import importlib
import os
import sys

# Importing cloudpickle takes ~15 ms: the first pool's workers are forked before it, and the
# zygote imports it once nothing has come for this long (workers forked later share it).
_IDLE_MS = 50


def _import_hint(name, origin):
    """Imports the module of an executor's first task function, so that its workers share it,
    but only if it is the driver's module: the same file, found from the zygote's sys.path."""
    if name in sys.modules:
        return
    if "." in name and name.partition(".")[0] not in sys.modules:
        return  # its top-level package was not found at the driver's file: not even that is imported
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is not None and spec.origin == origin:
        importlib.import_module(name)


def main(control_fd=3):
    from .. import _threads

    _threads.zygote_defaults()  # before anything that may load a BLAS or OpenMP runtime
    # A terminal's Ctrl-C is the driver's to handle; workers inherit this.
    import _signal  # not `signal`: it imports enum (~2 ms)

    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    from .. import _core, _import_guard
    from . import worker as _worker  # imported here so workers share it

    server = _core.ZygoteServer(control_fd)
    gc.freeze()
    warm = False  # cloudpickle imported?
    while True:
        action = server.next(-1 if warm else _IDLE_MS)
        if action.kind == "idle":
            # Functions defined in __main__ or a notebook load through cloudpickle: importing it
            # in each worker would cost every worker ~3.5 MB of its own memory.
            import cloudpickle  # noqa: F401

            warm = True
            gc.freeze()
        elif action.kind == "fork":
            pid = os.fork()
            if pid == 0:
                try:
                    channel, arena = server.become_worker(action)
                    _worker.run(channel, arena)
                finally:
                    os._exit(1)
            server.forked(action, pid)
        elif action.kind == "import":
            module = None
            try:
                for name in action.modules:
                    module, _, origin = name.partition("\t")  # a hint: "module<TAB>file"
                    # An executor the module creates raises: it would start a zygote that
                    # imports the module again, without end (see _import_guard.py).
                    with _import_guard.importing(f"the zygote importing {module!r} for its workers"):
                        if origin:
                            _import_hint(module, origin)
                        else:
                            importlib.import_module(module)
                _threads.zygote_imported()
            except BaseException:  # noqa: BLE001 - reported to the driver: the module, its traceback
                import traceback

                server.imported(action, False, f"{module}\n{traceback.format_exc()}")
            else:
                server.imported(action, True, "")
            gc.freeze()
        else:
            os._exit(0)


if __name__ == "__main__":
    sys.path[:] = sys.argv[1].split("\n")
    main()
