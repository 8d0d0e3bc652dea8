"""The committed type stubs of shoal._core (src/shoal/_core.pyi) match the built module: they
are regenerated with the Makefile's own stubgen command and compared."""

import os
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STUB = ROOT / "src" / "shoal" / "_core.pyi"

pytestmark = pytest.mark.timeout(120)


def _stubgen_args():
    """The arguments of `make stubs` (the Makefile's STUBGEN), so that the two cannot differ."""
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("STUBGEN"):
            return shlex.split(line.split(":=", 1)[1])
    raise AssertionError("the Makefile defines no STUBGEN")


def test_committed_stubs_match_the_built_module(tmp_path):
    pytest.importorskip("nanobind.stubgen")
    import shoal._core

    out = tmp_path / "_core.pyi"
    # The module that is tested is the one on this interpreter's path (src/ in a checkout).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        str(pathlib.Path(shoal._core.__file__).parents[1]), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, *_stubgen_args(), "-o", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert STUB.exists(), "src/shoal/_core.pyi is missing: run `make stubs` and commit it"
    assert STUB.read_text() == out.read_text(), (
        "src/shoal/_core.pyi is stale (the bindings changed since it was generated): "
        "run `make stubs` and commit it")


def test_the_package_says_it_is_typed():
    assert (ROOT / "src" / "shoal" / "py.typed").exists()
