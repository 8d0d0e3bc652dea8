"""What the launcher and the SPMD form share: the node's cores and leaders, and MPI's notices."""
import os
import signal

__all__ = ["cores", "leaders_on_node", "ignore_failure_notices", "workers_per_leader"]


def ignore_failure_notices():
    """MPICH's mpiexec, run with -disable-auto-cleanup, tells the surviving ranks that a rank
    died with SIGUSR1, whose default action ends the process: the driver must live to report it."""
    try:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread: the launcher's own setting stands
        pass


def leaders_on_node(MPI, comm):
    """The number of leader ranks on this node (rank 0 is not one). Collective: every rank calls it."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        ranks = node.allgather(comm.Get_rank())
    finally:
        node.Free()
    return max(1, sum(1 for r in ranks if r != 0))


def cores():
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def workers_per_leader(MPI, comm, requested=None):
    """``requested``, else this node's cores divided among its leader ranks. Collective."""
    per_node = leaders_on_node(MPI, comm)
    return requested or max(1, cores() // per_node)
