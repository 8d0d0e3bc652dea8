"""shoal.mpi launched by Slurm's `srun` (docs/mpi.md, "Launching"): a one-node Slurm of its own
(Debian's slurm-wlm, installed by `make slurm` as root; its daemons started here on private
ports, with a configuration in the test's folder and no authentication daemon), then
`srun -n 3 --mpi=pmi2 python -m shoal.mpi examples/mpi_sweep.py --check`: rank 0 the driver, two
leaders, the MPICH wheel's library talking to srun over PMI2."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]

CONF = """ClusterName=shoaltest
SlurmctldHost={host}
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=shoal Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
"""


@pytest.fixture
def slurm(tmp_path):
    """A one-node Slurm for this test; yields the environment that points srun at it."""
    missing = [t for t in ("srun", "sinfo", "slurmctld", "slurmd") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): `make slurm` as root installs it")
    if os.geteuid() != 0:
        pytest.skip("this test's slurmd runs jobs as root")
    (tmp_path / "state").mkdir()
    (tmp_path / "spool").mkdir()
    conf = tmp_path / "slurm.conf"
    conf.write_text(CONF.format(host=socket.gethostname().split(".")[0], dir=tmp_path, cpus=os.cpu_count()))
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = [subprocess.Popen([tool, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT) for tool in ("slurmctld", "slurmd")]
    try:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            logs = "".join((tmp_path / f).read_text()[-1500:] for f in ("slurmctld.log", "slurmd.log")
                           if (tmp_path / f).exists())
            pytest.fail(f"the test's Slurm did not come up (node state {state!r}):\n{logs}")
        yield env
    finally:
        for d in daemons:
            d.terminate()
        for d in daemons:
            try:
                d.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.kill()


def test_srun_launches_the_driver_and_the_leaders(slurm):
    env = dict(slurm, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(["srun", "-n", "3", "--overcommit", "--mpi=pmi2", sys.executable, "-m", "shoal.mpi",
                           "--workers-per-rank", "1", str(ROOT / "examples" / "mpi_sweep.py"), "--check"],
                          env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 workers across the leaders" in proc.stdout
    assert "rows identical to one machine's: True" in proc.stdout
