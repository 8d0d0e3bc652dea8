"""Several "nodes" on one machine, for shoal's tests and benchmarks.

Each leader rank runs in its own mount namespace with a private, empty ``/dev/shm``
(``unshare -m`` and a fresh tmpfs) and MPI is forced onto TCP (MPICH: ``MPIR_CVAR_NOLOCAL=1``),
so that nothing passes between the "nodes" but MPI messages.
"""
import os
import shlex
import shutil
import subprocess
import sys

__all__ = ["mpiexec", "node_command", "unshare_permitted", "job"]


def mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH, else None."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def unshare_permitted():
    """None if a private /dev/shm can be made here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    try:
        r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -m failed: {exc}"
    if r.returncode != 0:
        return f"unshare -m / mount tmpfs on /dev/shm not permitted: {r.stderr.strip()}"
    return None


def node_command(argv):
    """``argv`` run in its own mount namespace with a private /dev/shm."""
    inner = "mount -t tmpfs tmpfs /dev/shm && exec " + " ".join(map(shlex.quote, argv))
    return ["unshare", "-m", "sh", "-c", inner]


def job(script, args=(), leaders=2, workers_per_rank=None, python=None, module="shoal.mpi",
        launcher_args=(), private_shm=True, fault_tolerant=True):
    """(argv, env) of ``mpiexec``: rank 0 runs ``python -m shoal.mpi script args``, ranks
    1..leaders the same in their own namespaces. ``fault_tolerant``: a rank that dies does not
    take the job down with it (MPICH's ``-disable-auto-cleanup``), so the driver can report it."""
    python = python or sys.executable
    extra = list(launcher_args)
    if workers_per_rank is not None and module == "shoal.mpi":
        extra = ["--workers-per-rank", str(workers_per_rank)] + extra
    launcher = [python, "-m", module] if module else [python]  # None: plain `python script.py` (SPMD)
    rank_argv = launcher + extra + [str(script)] + [str(a) for a in args]
    argv = [mpiexec()]
    if fault_tolerant:
        argv.append("-disable-auto-cleanup")
    argv += ["-n", "1"] + rank_argv
    if leaders:
        argv += [":", "-n", str(leaders)] + (node_command(rank_argv) if private_shm else rank_argv)
    env = dict(os.environ)
    env["MPIR_CVAR_NOLOCAL"] = "1"   # TCP between every pair of ranks, as between machines
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return argv, env
