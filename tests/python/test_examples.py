"""The examples run and print what they promise."""
import pathlib
import re

import pytest

from helpers import run_python_file

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.timeout(120)
def test_cadcad_sweep_prints_a_summary_table():
    proc = run_python_file(EXAMPLES / "cadcad_sweep.py", "--runs", "3", "--steps", "60",
                           "--workers", "2", timeout=100)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "6 parameter sets x 3 runs x 60 steps on 2 process workers" in out
    rows = [ln for ln in out.splitlines() if re.match(r"\s+0\.\d{3}\s+0\.\d{4}\s+3\s", ln)]
    assert len(rows) == 6, out
    assert "18/18" in proc.stderr  # the progress bar


@pytest.mark.timeout(120)
def test_cadcad_sweep_is_the_same_on_every_backend():
    outputs = []
    for backend in ("serial", "thread", "process"):
        proc = run_python_file(EXAMPLES / "cadcad_sweep.py", "--runs", "2", "--steps", "40",
                               "--backend", backend, "--workers", "2", timeout=100)
        assert proc.returncode == 0, proc.stderr
        table = [ln for ln in proc.stdout.splitlines() if re.match(r"\s+0\.\d{3}\s", ln)]
        assert len(table) == 6, proc.stdout
        outputs.append(table)
    assert outputs[0] == outputs[1] == outputs[2]
