"""shoal.mpi.MPIExecutor: the SPMD form, for scripts started with plain ``mpiexec -n N python script.py``.

    with shoal.mpi.MPIExecutor() as ex:   # every rank runs this line
        if ex is not None:                # rank 0: an Executor(backend="mpi")
            print(list(ex.map(f, xs)))
                                          # ranks 1..N-1 served as leaders inside __enter__
                                          # until rank 0 left the block; for them ex is None

As mpi4py's MPICommExecutor. Start the executor before anything initialises MPI (before
``from mpi4py import MPI`` in the script), so that a leader's zygote starts before MPI_Init;
if MPI is already initialised, the zygote is started after it (it is spawned, not forked, so
this works with most transports).
"""
import os
import sys

from ._wire import env_rank, init_mpi

__all__ = ["MPIExecutor"]


class MPIExecutor:
    """An ``Executor(backend="mpi")`` on rank 0 and ``None`` on the other ranks, which serve as
    node leaders until rank 0 leaves the ``with`` block. Keyword arguments go to the executor;
    ``workers_per_rank`` sets the leaders' workers (default: the node's cores divided among its
    leaders), ``heartbeat_timeout`` the seconds after which a silent rank counts as lost."""

    def __init__(self, workers_per_rank=None, heartbeat_timeout=None, **executor_kwargs):
        self._workers = workers_per_rank
        self._timeout = heartbeat_timeout or float(os.environ.get("SHOAL_MPI_HEARTBEAT_TIMEOUT", "5"))
        self._kwargs = executor_kwargs
        self._executor = self._hub = None

    def __enter__(self):
        import mpi4py

        from ._launch import ignore_failure_notices, workers_per_leader

        keep = None
        rank = env_rank()
        if rank != 0:
            import shoal

            keep = shoal.Executor(max_workers=1, backend="process")  # the zygote, before MPI_Init if we can
        MPI = init_mpi()
        ignore_failure_notices()
        comm = MPI.COMM_WORLD
        workers = workers_per_leader(MPI, comm, self._workers)  # collective: every rank
        if comm.Get_rank() != 0:
            from .leader import Leader

            try:
                Leader(comm, MPI, workers, self._timeout).serve()
            finally:
                keep.shutdown(wait=False)
            return None
        if keep is not None:
            keep.shutdown(wait=False)
        import shoal

        from .hub import Hub, install

        if comm.Get_size() > 1:
            self._hub = Hub(comm, MPI, timeout=self._timeout)
            install(self._hub)
        self._executor = shoal.Executor(backend="mpi", **self._kwargs)
        del mpi4py
        return self._executor

    def __exit__(self, exc_type, exc, tb):
        if self._executor is not None:
            self._executor.__exit__(exc_type, exc, tb)
        if self._hub is not None:
            from .hub import install

            failed = exc_type is not None
            self._hub.stop(timeout=3.0 if failed else 10.0, kill=failed, finalize=False)
            install(None)
            sys.stdout.flush()
        return False
