"""The errors of the MPI backend."""
from concurrent.futures import BrokenExecutor

__all__ = ["LeaderLostError", "NoLeadersError"]


class LeaderLostError(BrokenExecutor):
    """Raised for the tasks a node leader held when it died or stopped answering (no heartbeat
    within the timeout). ``rank`` and ``host`` name it. The other leaders keep working."""

    def __init__(self, message, *, rank=None, host=None):
        super().__init__(message)
        self.rank = rank
        self.host = host

    def __reduce__(self):
        return (_rebuild, (str(self), self.rank, self.host))


def _rebuild(message, rank, host):
    return LeaderLostError(message, rank=rank, host=host)


class NoLeadersError(RuntimeError):
    """Raised when ``backend="mpi"`` is used outside ``mpiexec ... python -m shoal.mpi`` (or
    ``shoal.mpi.MPIExecutor``), or when no leader rank is left to run tasks."""
