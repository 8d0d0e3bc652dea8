"""shoal on many machines: ``mpiexec -n N python -m shoal.mpi script.py`` (see docs/mpi.md).

Rank 0 runs the script; ranks 1..N-1 are node leaders that run its tasks on local shoal
workers. In the script, ``shoal.Executor(backend="mpi")`` is the executor as always.
"""
__all__ = ["MPIExecutor", "LeaderLostError", "NoLeadersError"]

from ._errors import LeaderLostError, NoLeadersError


def __getattr__(name):  # MPIExecutor loads on first use: workers import this package too
    if name == "MPIExecutor":
        from .spmd import MPIExecutor

        return MPIExecutor
    raise AttributeError(f"module 'shoal.mpi' has no attribute {name!r}")
