"""Native thread pools in workers (shoal/_threads.py): each worker's BLAS and OpenMP pools get
its share of the cores, the user's variables win, "inherit" leaves the pools as a fresh process
has them, and the driver's own pools are never touched.

Each process-backend case runs in a fresh driver, so that its zygote has (or has not) loaded
numpy and OpenMP as the case says; threadpoolctl reads the counts inside a worker."""
import ctypes.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

import shoal
from shoal import _threads

from helpers import kill_tree, subprocess_env

threadpoolctl = pytest.importorskip("threadpoolctl")
pytest.importorskip("numpy")

CORES = _threads.available_cores()
GOMP = ctypes.util.find_library("gomp")  # an OpenMP runtime to load beside OpenBLAS, if present
VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

# The driver of one case: argv[1] is its JSON config; prints one JSON line of what it saw.
DRIVER = textwrap.dedent(r"""
    import json, os, sys
    import numpy, threadpoolctl, psutil
    import shoal

    cfg = json.loads(sys.argv[1])
    VARS = cfg["vars"]

    def pools():
        return {d["internal_api"]: d["num_threads"] for d in threadpoolctl.threadpool_info()}

    def report(_):
        import ctypes, time
        if cfg["gomp"]:
            ctypes.CDLL(cfg["gomp"])  # loads the OpenMP runtime here if the zygote did not
        import numpy  # noqa: F811 - loads OpenBLAS here if the zygote did not
        time.sleep(0.05)  # every worker gets a task
        return os.getpid(), pools(), {v: os.environ.get(v) for v in VARS}

    driver_before = pools()
    kwargs = {"max_workers": cfg["workers"]}
    if cfg["threads"] is not None:
        kwargs["threads_per_worker"] = cfg["threads"]
    if cfg["preload"]:
        kwargs["preload"] = tuple(cfg["preload"])
    if cfg["late_env"]:
        # The zygote starts (with another executor) before the user sets the variables.
        with shoal.Executor(max_workers=1, preload=kwargs.get("preload", ())) as first:
            first.submit(int, 1).result()
        os.environ.update(cfg["late_env"])
    with shoal.Executor(**kwargs) as ex:
        seen = list(ex.map(report, range(4 * cfg["workers"]), chunksize=1))
        zygote = [p for p in psutil.Process().children()
                  if any("shoal.process.zygote" in part for part in p.cmdline())]
        z = zygote[0]
        maps = open(f"/proc/{z.pid}/maps").read()
        zyg = {"threads": z.num_threads(), "openblas": "openblas" in maps, "gomp": "libgomp" in maps}
    print(json.dumps({"workers": {str(pid): [p, e] for pid, p, e in seen}, "zygote": zyg,
                      "driver_before": driver_before, "driver_after": pools()}))
""")

GOMP_LOADER = "import ctypes, ctypes.util\nctypes.CDLL(ctypes.util.find_library('gomp'))\n"


def run_case(tmp_path, *, workers=2, threads=None, preload=False, env=None, late_env=None):
    """Runs DRIVER in a fresh interpreter; returns (worker pools, worker variables, zygote, driver)."""
    (tmp_path / "shoal_test_gomp_loader.py").write_text(GOMP_LOADER)
    modules = ["numpy"] + (["shoal_test_gomp_loader"] if GOMP else []) if preload else []
    cfg = {"workers": workers, "threads": threads, "preload": modules, "vars": list(VARS),
           "gomp": GOMP, "late_env": late_env or {}}
    child_env = subprocess_env()
    for v in _threads.VARIABLES:
        child_env.pop(v, None)  # the case says what the user set; OPENBLAS_CORETYPE is left alone
    child_env.update(env or {})
    child_env["PYTHONPATH"] = str(tmp_path) + os.pathsep + child_env["PYTHONPATH"]
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env, cwd=tmp_path,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"driver timed out\n{out}\n{err}")
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    seen = list(result["workers"].values())
    assert len(result["workers"]) == workers, "every worker ran a task"
    assert all(s == seen[0] for s in seen), f"workers of one executor differ: {seen}"
    pools, variables = seen[0]
    if preload:
        assert result["zygote"]["openblas"], "numpy was preloaded in the zygote"
        assert result["zygote"]["gomp"] == bool(GOMP)
    assert result["driver_after"] == result["driver_before"], "the driver's pools are untouched"
    return pools, variables, result["zygote"], result["driver_before"]


# Counts the tests ask for stay within the cores: OpenBLAS caps a count it reads from a variable
# at the cores it sees when it loads (a runtime limit is not capped).
needs_two_cores = pytest.mark.skipif(CORES < 2, reason="the counts to tell apart need 2 cores")


def expect(pools, count, openmp=None):
    assert pools.get("openblas") == count, pools
    if GOMP:
        assert pools.get("openmp") == (count if openmp is None else openmp), pools


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preload", [False, True], ids=["not-preloaded", "preloaded"])
@pytest.mark.parametrize("workers", [1, 2])
def test_default_is_the_workers_share_of_the_cores(tmp_path, preload, workers):
    share = max(1, CORES // workers)
    pools, variables, zygote, _ = run_case(tmp_path, workers=workers, preload=preload)
    expect(pools, share)
    assert variables["OMP_NUM_THREADS"] == variables["OPENBLAS_NUM_THREADS"] == str(share)
    # The zygote started no pool threads of its own when it loaded OpenBLAS (it would have
    # started CORES - 1 at load without its one-thread defaults).
    assert zygote["threads"] == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preload", [False, True], ids=["not-preloaded", "preloaded"])
@needs_two_cores
def test_an_int_sets_the_count(tmp_path, preload):
    pools, variables, _, _ = run_case(tmp_path, workers=2, threads=CORES, preload=preload)
    expect(pools, CORES)
    assert variables["OMP_NUM_THREADS"] == str(CORES)


@pytest.mark.timeout(120)
@needs_two_cores
def test_an_int_is_explicit_and_wins_over_the_variables(tmp_path):
    pools, variables, _, _ = run_case(tmp_path, workers=1, threads=1, preload=True,
                                      env={"OMP_NUM_THREADS": str(CORES), "OPENBLAS_NUM_THREADS": str(CORES)})
    expect(pools, 1)
    assert variables["OMP_NUM_THREADS"] == variables["OPENBLAS_NUM_THREADS"] == "1"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preload", [False, True], ids=["not-preloaded", "preloaded"])
@needs_two_cores
def test_the_users_variables_win(tmp_path, preload):
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": str(CORES)}
    pools, variables, _, driver = run_case(tmp_path, workers=2, preload=preload, env=env)
    expect(pools, 1, openmp=CORES)
    assert variables["OPENBLAS_NUM_THREADS"] == "1" and variables["OMP_NUM_THREADS"] == str(CORES)
    # MKL_NUM_THREADS unset: MKL reads OMP_NUM_THREADS then (the zygote's default is removed)
    assert variables["MKL_NUM_THREADS"] is None
    assert driver["openblas"] == 1


@pytest.mark.timeout(120)
@needs_two_cores
@pytest.mark.parametrize("preload", [False, True], ids=["not-preloaded", "preloaded"])
def test_omp_num_threads_alone_sizes_openblas_too(tmp_path, preload):
    pools, variables, _, _ = run_case(tmp_path, workers=2, preload=preload,
                                      env={"OMP_NUM_THREADS": str(CORES)})
    expect(pools, CORES)
    assert variables["OPENBLAS_NUM_THREADS"] is None  # OpenBLAS reads OMP_NUM_THREADS then


@pytest.mark.timeout(120)
@needs_two_cores
def test_variables_set_after_the_zygote_started_still_win(tmp_path):
    pools, variables, _, _ = run_case(tmp_path, workers=2, preload=True,
                                      late_env={"OPENBLAS_NUM_THREADS": str(CORES)})
    expect(pools, CORES, openmp=CORES // 2)
    assert variables["OPENBLAS_NUM_THREADS"] == str(CORES)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preload", [False, True], ids=["not-preloaded", "preloaded"])
def test_inherit_leaves_the_pools_as_a_fresh_process_has_them(tmp_path, preload):
    pools, variables, _, driver = run_case(tmp_path, workers=2, threads="inherit", preload=preload)
    expect(pools, driver["openblas"], openmp=CORES)  # the driver's numpy: a fresh process's count
    assert variables == {v: None for v in VARS}  # the zygote's defaults are gone


@pytest.mark.timeout(120)
@needs_two_cores
def test_inherit_keeps_the_users_variables(tmp_path):
    pools, variables, _, _ = run_case(tmp_path, workers=2, threads="inherit", preload=True,
                                      env={"OPENBLAS_NUM_THREADS": "1"})
    expect(pools, 1, openmp=CORES)
    assert variables["OPENBLAS_NUM_THREADS"] == "1" and variables["OMP_NUM_THREADS"] is None


# ---- in this process: agents, the thread and serial backends, the option's checks

def _openblas_threads(_=None):
    import numpy  # noqa: F401

    return {d["internal_api"]: d["num_threads"] for d in threadpoolctl.threadpool_info()}["openblas"]


class _PoolReporter:
    def threads(self):
        return _openblas_threads()


@pytest.mark.timeout(60)
def test_agents_workers_get_the_same_share():
    with shoal.Executor(max_workers=2, backend="process") as ex:
        group = ex.agents(_PoolReporter, [{}] * 4)
        assert group.call("threads") == [max(1, CORES // 2)] * 4
        group.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "serial"])
@pytest.mark.parametrize("threads", [None, 1, "inherit"])
def test_thread_and_serial_backends_leave_the_callers_pools_alone(backend, threads):
    before = _openblas_threads()
    with shoal.Executor(max_workers=2, backend=backend, threads_per_worker=threads) as ex:
        assert set(ex.map(_openblas_threads, range(4))) == {before}
    assert _openblas_threads() == before


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "all", "INHERIT"])
def test_bad_values_raise(bad):
    with pytest.raises(ValueError, match="threads_per_worker"):
        shoal.Executor(max_workers=1, backend="serial", threads_per_worker=bad)


def test_plan_follows_each_librarys_own_variables():
    variables, limits = _threads.worker_plan(None, 4, {"OMP_NUM_THREADS": "8,2", "MKL_NUM_THREADS": "2",
                                                       "NUMBA_NUM_THREADS": "oops"})
    n = max(1, CORES // 4)
    assert limits["openmp"] == limits["openblas"] == limits["blis"] == limits["numexpr"] == 8
    assert limits["mkl"] == 2 and "numba" not in limits  # not a count: left alone
    assert variables["OMP_NUM_THREADS"] == "8,2" and variables["OPENBLAS_NUM_THREADS"] is None
    assert variables["NUMBA_NUM_THREADS"] == "oops" and variables["VECLIB_MAXIMUM_THREADS"] == str(n)
    assert variables["GOTO_NUM_THREADS"] is None


def test_an_explicit_count_sets_every_pool():
    variables, limits = _threads.worker_plan(3, 4, {"OMP_NUM_THREADS": "8", "GOTO_NUM_THREADS": "5"})
    assert set(limits.values()) == {3} and set(limits) == set(_threads.CHAINS)
    assert "GOTO_NUM_THREADS" not in variables
    assert {variables[chain[0]] for chain in _threads.CHAINS.values()} == {"3"}


def test_inherit_plan_is_the_drivers_environment():
    variables, limits = _threads.worker_plan("inherit", 4, {"MKL_NUM_THREADS": "2"})
    assert variables == {v: ("2" if v == "MKL_NUM_THREADS" else None) for v in _threads.VARIABLES}
    assert limits["mkl"] == 2 and limits["openblas"] == CORES and limits["blis"] == 1


def test_zygote_defaults_only_where_unset():
    env = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": ""}
    done = _threads.zygote_defaults(env)
    assert env["OMP_NUM_THREADS"] == "3" and env["MKL_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in done and "NUMBA_NUM_THREADS" not in env
