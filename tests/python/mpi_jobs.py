"""Running a script as an MPI job of several "nodes" on this machine (see shoal.mpi.testing)."""
import json
import subprocess
import textwrap

import pytest

from shoal.mpi import testing


def skip_without_nodes():
    """Skips (saying why) when MPI or private mount namespaces are not available here."""
    if testing.mpiexec() is None:
        pytest.skip("no mpiexec: install the mpich wheel (make test does)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (make test installs it)")
    why = testing.unshare_permitted()
    if why is not None:
        print(f"skipped: {why}")
        pytest.skip(why)


def write_script(tmp_path, body, name="job.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def run_job(tmp_path, body, leaders=2, workers=1, timeout=120, args=(), name="job.py", **kw):
    """Runs ``body`` as rank 0's script; returns the finished process (text output)."""
    script = write_script(tmp_path, body, name)
    argv, env = testing.job(script, args, leaders=leaders, workers_per_rank=workers, **kw)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def results(proc):
    """The JSON values the script printed on lines starting with ``RESULT ``."""
    out = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert out, f"no RESULT line (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return out
