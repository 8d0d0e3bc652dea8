"""``mpiexec -n N python -m shoal.mpi [--workers-per-rank W] script.py [args...]``

Rank 0 runs ``script.py`` as ``__main__``; in it, ``shoal.Executor(backend="mpi")`` runs tasks
on ranks 1..N-1, one leader per node, each with a local pool of shoal workers. A leader starts
its zygote *before* MPI is initialised: the workers are forked from it, never from a process
that has MPI state (forking after MPI_Init is unsafe with several transports).
"""
import argparse
import os
import signal
import sys
import time
import traceback

from ._wire import env_rank, init_mpi
from ._launch import ignore_failure_notices, workers_per_leader


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m shoal.mpi", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers-per-rank", type=int, default=None, metavar="W",
                   help="workers per leader rank (default: the node's cores divided among its leaders)")
    p.add_argument("--heartbeat-timeout", type=float, default=None, metavar="S",
                   help="seconds without a message after which a leader (or the driver) counts as lost "
                        "(default 5)")
    p.add_argument("script", help="the Python script rank 0 runs as __main__")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    return p.parse_args(argv)


def _supervise(argv):
    """Runs this rank's leader as a child process and returns its exit status as an exit code.

    mpiexec (MPICH's hydra, even with -disable-auto-cleanup) ends the whole job when one of its
    own children dies of a signal, so the driver would be killed before it could report the lost
    leader. The leader therefore runs one process below the rank mpiexec started: if it dies,
    this process exits with 128 + the signal, and the other ranks live on. The child inherits
    the launcher's environment and descriptors, so it is the MPI process of this rank."""
    import subprocess

    env = dict(os.environ, SHOAL_MPI_SUPERVISED="1")
    child = subprocess.Popen([sys.executable, "-m", "shoal.mpi"] + argv, env=env, close_fds=False)  # PMI_FD

    def forward(signum, frame):
        try:
            child.send_signal(signum)
        except OSError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait()
            break
        except KeyboardInterrupt:
            continue
    return 128 - code if code < 0 else code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = _parse(argv)
    timeout = opts.heartbeat_timeout or float(os.environ.get("SHOAL_MPI_HEARTBEAT_TIMEOUT", "5"))
    ignore_failure_notices()
    rank = env_rank()
    if rank is not None and rank != 0 and not os.environ.get("SHOAL_MPI_SUPERVISED"):
        return _supervise(argv)
    keep = None
    if rank != 0:
        # A leader (or a rank that cannot tell yet): its zygote starts now, before MPI_Init.
        import shoal

        keep = shoal.Executor(max_workers=1, backend="process")
    MPI = init_mpi()
    ignore_failure_notices()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() < 2 and rank == 0:
        sys.stderr.write("shoal.mpi: no leader ranks (run with mpiexec -n 2 or more); "
                         "backend='mpi' will raise NoLeadersError\n")
    workers = workers_per_leader(MPI, comm, opts.workers_per_rank)  # collective: every rank
    if rank == 0:
        return _drive(MPI, comm, opts, timeout)
    return _lead(MPI, comm, workers, timeout, keep)


def _lead(MPI, comm, workers, timeout, keep):
    from .leader import Leader

    leader = Leader(comm, MPI, workers, timeout)
    try:
        finalize = leader.serve()
    except KeyboardInterrupt:
        leader._close_all(kill=True)
        os._exit(130)
    finally:
        keep.shutdown(wait=False)
    sys.stdout.flush()
    sys.stderr.flush()
    if finalize:
        MPI.Finalize()
        return 0
    # The driver will not finalize (or is gone): MPI_Finalize would wait for it forever.
    os._exit(0 if finalize is False else 1)


def _drive(MPI, comm, opts, timeout):
    from .hub import Hub, install

    hub = None
    if comm.Get_size() > 1:
        hub = Hub(comm, MPI, timeout=timeout)
        install(hub)
    path = opts.script
    sys.argv = [path] + list(opts.args)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    rc = 0
    try:
        import runpy

        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            rc = 0
        elif isinstance(code, int):
            rc = code
        else:
            sys.stderr.write(f"{code}\n")
            rc = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        rc = 130
    except BaseException:  # noqa: BLE001 - shown once, here, and the job fails
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if hub is None:
        MPI.Finalize()
        return rc
    for backend in hub.backends():  # executors the script left open: their tasks finish first
        try:
            backend.shutdown(wait=rc == 0, kill=rc != 0)
        except BaseException:  # noqa: BLE001 - ending anyway
            pass
    finalize = rc == 0 and not hub.lost
    hub.stop(timeout=10.0 if rc == 0 else 3.0, kill=rc != 0, finalize=finalize)
    install(None)
    sys.stdout.flush()
    sys.stderr.flush()
    if not finalize or hub.lost:
        # A lost peer can make MPI_Finalize wait forever; the leaders left were told to quit.
        os._exit(rc or 1)
    MPI.Finalize()
    return rc


if __name__ == "__main__":
    sys.exit(main())
