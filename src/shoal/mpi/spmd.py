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

from . import _wire

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
        from .__main__ import _cores, _ignore_failure_notices, _leaders_on_node

        import mpi4py

        keep = None
        rank = _wire.env_rank()
        if rank != 0:
            import shoal

            keep = shoal.Executor(max_workers=1, backend="process")  # the zygote, before MPI_Init if we can
        MPI = _wire.init_mpi()
        _ignore_failure_notices()
        comm = MPI.COMM_WORLD
        per_node = _leaders_on_node(MPI, comm)
        if comm.Get_rank() != 0:
            from .leader import Leader

            try:
                Leader(comm, MPI, self._workers or max(1, _cores() // per_node), self._timeout).serve()
            finally:
                keep.shutdown(wait=False)
            return None
        if keep is not None:
            keep.shutdown(wait=False)
        import shoal

        from . import hub as _hub

        if comm.Get_size() > 1:
            self._hub = _hub.Hub(comm, MPI, timeout=self._timeout)
            _hub._hub = self._hub
        self._executor = shoal.Executor(backend="mpi", **self._kwargs)
        del mpi4py
        return self._executor

    def __exit__(self, exc_type, exc, tb):
        if self._executor is not None:
            self._executor.__exit__(exc_type, exc, tb)
        if self._hub is not None:
            from . import hub as _hub

            failed = exc_type is not None
            self._hub.stop(timeout=3.0 if failed else 10.0, kill=failed, finalize=False)
            _hub._hub = None
            sys.stdout.flush()
        return False
