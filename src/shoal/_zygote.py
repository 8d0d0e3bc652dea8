"""The zygote: started once per driver process with posix_spawn; forks workers on request.

It is single-threaded. It imports what workers share (the worker loop, cloudpickle, the
preload modules), freezes the garbage collector so forked workers do not copy those pages, and
then serves fork and import requests from the driver's executors until the driver is gone.
"""
import gc
import importlib
import os
import signal
import sys


def main(control_fd=3):
    # A terminal's Ctrl-C is the driver's to handle; workers inherit this.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from . import _core, _worker  # noqa: F401 - imported here so workers share them
    # Functions defined in __main__ or a notebook load through cloudpickle: importing it in
    # each worker would cost every worker ~3.5 MB of its own memory.
    import cloudpickle  # noqa: F401

    server = _core.ZygoteServer(control_fd)
    gc.freeze()
    while True:
        action = server.next()
        if action.kind == "fork":
            pid = os.fork()
            if pid == 0:
                try:
                    channel, arena = server.become_worker(action)
                    _worker.run(channel, arena)
                finally:
                    os._exit(1)
            server.forked(action, pid)
        elif action.kind == "import":
            try:
                for name in action.modules:
                    importlib.import_module(name)
            except BaseException as exc:  # noqa: BLE001 - reported to the driver
                server.imported(action, False, f"{type(exc).__name__}: {exc}")
            else:
                server.imported(action, True, "")
            gc.freeze()
        else:
            os._exit(0)


if __name__ == "__main__":
    sys.path[:] = sys.argv[1].split("\n")
    main()
