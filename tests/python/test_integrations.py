"""shoal with the simulation libraries that take a pool or build one: emcee, schwimmbad, Mesa's
batch_run and radCAD's engine (real libraries from PyPI), each giving the same results as the
library's own pool with the same seeds; and shoal.patch_pools / `python -m shoal run`.

The library runs are the examples in examples/, run as a user runs them (a fresh process each),
once on the library's own pool and once on shoal's; their output is compared line by line."""
import concurrent.futures
import importlib.util
import multiprocessing
import multiprocessing.pool
import pathlib
import re

import pytest

import shoal
from helpers import run_argv, run_python_file

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def results_of(proc):
    """The example's output less the lines that name the pool or give a time."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines, proc.stderr
    return [ln for ln in lines if not re.match(r"(pool|first step|batch_run|experiment\.run):", ln)]


def timing(proc, label):
    m = re.search(rf"^{label}: ([\d.]+) s", proc.stdout, re.M)
    return float(m.group(1)) if m else None


def shoal_run(path, *args, timeout):
    return run_argv(["-m", "shoal", "run", str(path), *args], timeout=timeout)


def needs(module):
    """Skip unless ``module`` is installed, without importing it here: the examples import it in
    their own process (Mesa's batchrunner sets multiprocessing's start method to spawn for the
    whole process at import, which would change later tests that fork)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


# ---------------------------------------------------------------- libraries that take a pool

@pytest.mark.timeout(180)
def test_emcee_sampler_with_a_shoal_pool_gives_the_same_chain():
    needs("emcee")
    runs = {pool: run_python_file(EXAMPLES / "emcee_pool.py", "--pool", pool, "--steps", "150", timeout=150)
            for pool in ("none", "multiprocessing", "shoal")}
    outputs = {pool: results_of(proc) for pool, proc in runs.items()}
    assert outputs["shoal"] == outputs["multiprocessing"] == outputs["none"]
    assert "pool: shoal" in runs["shoal"].stdout


@pytest.mark.timeout(120)
def test_schwimmbad_interface_on_shoal_gives_the_same_results():
    needs("schwimmbad")
    outputs = {pool: results_of(run_python_file(EXAMPLES / "schwimmbad_pool.py", "--pool", pool, timeout=100))
               for pool in ("serial", "multipool", "shoal")}
    assert outputs["shoal"] == outputs["multipool"] == outputs["serial"]
    assert "callbacks: 200 in order: True" in outputs["shoal"]


def test_shoal_schwimmbad_pool_is_a_schwimmbad_pool_and_a_shoal_pool():
    pytest.importorskip("schwimmbad")
    from schwimmbad.pool import BasePool

    from shoal.schwimmbad import ShoalPool

    with ShoalPool(2) as pool:
        assert isinstance(pool, BasePool) and isinstance(pool, shoal.Pool)
        assert pool.enabled() and pool.is_master() and not pool.is_worker() and pool.size == 2
        seen = []
        assert pool.map(abs, [-1, -2, 3], callback=seen.append) == [1, 2, 3] == seen
        assert sorted(pool.imap_unordered(abs, [-4, 5])) == [4, 5]


# ---------------------------------------------------------------- libraries that build their own pool

@pytest.mark.timeout(240)
def test_mesa_batch_run_on_shoal_matches_its_own_pool():
    needs("mesa")
    own = run_python_file(EXAMPLES / "mesa_batch_run.py", "--steps", "20", timeout=200)
    ours = shoal_run(EXAMPLES / "mesa_batch_run.py", "--steps", "20", timeout=200)
    assert "pool: multiprocessing" in own.stdout and "pool: shoal" in ours.stdout, ours.stderr
    assert results_of(ours) == results_of(own)
    print(f"Mesa batch_run, 2 calls: own pool {timing(own, 'batch_run')} s, "
          f"shoal {timing(ours, 'batch_run')} s")


@pytest.mark.timeout(180)
def test_radcad_engine_on_shoal_matches_its_own_pool():
    needs("radcad")
    own = run_python_file(EXAMPLES / "radcad_engine.py", "--runs", "6", "--steps", "100", timeout=150)
    ours = shoal_run(EXAMPLES / "radcad_engine.py", "--runs", "6", "--steps", "100", timeout=150)
    assert "pool: multiprocessing" in own.stdout and "pool: shoal" in ours.stdout, ours.stderr
    assert results_of(ours) == results_of(own)
    assert "failed runs: 0" in ours.stdout
    print(f"radCAD experiment.run: own pool {timing(own, 'experiment.run')} s, "
          f"shoal {timing(ours, 'experiment.run')} s")


# ---------------------------------------------------------------- the patch itself

def double(x):
    return 2 * x


def test_patch_pools_covers_the_standard_constructors_and_undoes():
    original_pool, original_ppe = multiprocessing.Pool, concurrent.futures.ProcessPoolExecutor
    with shoal.patch_pools() as patch:
        assert shoal.patch_pools() is patch  # once in force, the same patch
        for make in (lambda: multiprocessing.Pool(2), lambda: multiprocessing.get_context("spawn").Pool(2),
                     lambda: multiprocessing.get_context("fork").Pool(processes=2)):
            with make() as pool:
                assert isinstance(pool, shoal.Pool)
                assert pool.map(double, range(5)) == [0, 2, 4, 6, 8]
        with concurrent.futures.ProcessPoolExecutor(max_workers=2) as ex:
            assert isinstance(ex, shoal.Executor)
            assert list(ex.map(double, range(5), chunksize=2)) == [0, 2, 4, 6, 8]
        from concurrent.futures.process import ProcessPoolExecutor

        assert issubclass(ProcessPoolExecutor, shoal.Executor)
        # Not covered: the class itself (and so its subclasses) stays multiprocessing's.
        assert multiprocessing.pool.Pool.__module__ == "multiprocessing.pool"
    assert multiprocessing.Pool is original_pool
    assert concurrent.futures.ProcessPoolExecutor is original_ppe
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert type(pool) is multiprocessing.pool.Pool


@pytest.mark.timeout(60)
def test_shoal_run_runs_the_script_as_main_with_its_arguments(tmp_path):
    script = tmp_path / "uses_pools.py"
    script.write_text(
        "import concurrent.futures, multiprocessing, sys\n"
        "def square(x):\n"
        "    return x * x\n"
        "if __name__ == '__main__':\n"
        "    with multiprocessing.get_context('spawn').Pool(2) as p:\n"
        "        print(type(p).__module__, p.map(square, range(int(sys.argv[1]))))\n"
        "    with concurrent.futures.ProcessPoolExecutor(2) as ex:\n"
        "        print(type(ex).__module__, list(ex.map(square, [5])))\n"
        "    print(sys.argv[1:])\n")
    proc = shoal_run(script, "4", "--flag", timeout=50)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["shoal._pool [0, 1, 4, 9]", "shoal._patch [25]", "['4', '--flag']"]
    plain = run_python_file(script, "3", timeout=50)
    assert plain.stdout.splitlines()[0] == "multiprocessing.pool [0, 1, 4]"


def test_shoal_run_without_a_script_prints_usage():
    proc = run_argv(["-m", "shoal", "run"], timeout=30)
    assert proc.returncode == 2 and "python -m shoal run script.py" in proc.stdout
