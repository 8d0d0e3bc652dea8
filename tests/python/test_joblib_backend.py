"""shoal.joblib: joblib's own backend tests run against the "shoal" backend, plus ours.

The joblib tests are imported from the installed joblib (``joblib.test.test_parallel``,
BSD-3-Clause, Copyright (c) 2008-2021 the joblib developers) and called with
``backend="shoal"``. Those whose body hard-codes ``backend="loky"`` are vendored below in
adapted form, marked as such. Tests of that module that do not apply, and why:

- test_memmapping_leaks: it counts loky's memmap files in ``temp_folder``; shoal's backend
  memmaps arrays above ``max_nbytes`` as joblib does, but into its arena (a memfd, no folder).
  (test_auto_memmap_on_arrays_from_generator runs below; test_parallel_byteorder_corruption
  is vendored.)
- test_threadpool_limitation_in_child_*: shoal does not set the BLAS/OpenMP thread count
  variables in its workers (``supports_inner_max_num_threads`` is False).
- test_loky_reuse_workers, test_nested_loop_with_exception_with_loky,
  test_nested_parallel_warnings, test_thread_bomb_mitigation: loky's executor and its nesting
  rules (a shoal worker runs nested "shoal" loops with n_jobs=1, like joblib's
  multiprocessing backend, and joblib's default nesting is checked by
  test_nested_parallelism_limit below).
- test_background_thread_parallelism: its body ignores the backend argument (it runs the
  default backend in a thread, where a parallel_config of the main thread does not apply).
- test_parallel_thread_limit: needs joblib's compiled OpenMP test helper.
- test_nested_loop with a loky parent and a "shoal" child: a loky worker never imported
  shoal.joblib, so the name "shoal" is unknown there (the same holds for any third-party
  backend); a multiprocessing (fork) parent inherits the registration and is tested.
"""

import os
import sys
import time

import pytest

joblib = pytest.importorskip("joblib")
jt = pytest.importorskip("joblib.test.test_parallel")

import shoal  # noqa: E402
import shoal.joblib  # noqa: E402,F401  (registers "shoal")
from joblib import Parallel, delayed, parallel_config  # noqa: E402
from helpers import SRC  # noqa: E402

B = "shoal"


@pytest.fixture(autouse=True)
def _subprocesses_find_shoal(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


@pytest.fixture(autouse=True)
def _managers_from_a_forkserver(monkeypatch):
    # joblib's tests start multiprocessing Managers with the default context (fork on Linux),
    # which forks this many-threaded test process: a fork taken while another thread holds
    # a lock can leave the manager stuck before it answers (seen once under heavy load).
    # A forkserver context starts them from a clean single-threaded process instead.
    import multiprocessing

    monkeypatch.setattr(jt, "mp", multiprocessing.get_context("forkserver"))


# --- joblib's tests, called with backend="shoal" ---------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_jobs", [1, 2, -1, -2])
@pytest.mark.parametrize("verbose", [2, 11, 100])
def test_simple_parallel(n_jobs, verbose):
    jt.test_simple_parallel(B, n_jobs, verbose)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_parallel_pretty_print(n_jobs):
    jt.test_parallel_pretty_print(B, n_jobs)


@pytest.mark.timeout(60)
def test_main_thread_renamed_no_warning(monkeypatch):
    jt.test_main_thread_renamed_no_warning(B, monkeypatch)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("parent, child", [(B, "threading"), (B, "sequential"), (B, "loky"),
                                           (B, B), ("threading", B), ("sequential", B),
                                           ("multiprocessing", B)])
def test_nested_loop(parent, child):
    jt.test_nested_loop(parent, child)


@pytest.mark.timeout(60)
def test_parallel_as_context_manager():
    jt.test_parallel_as_context_manager(B)


@pytest.mark.timeout(60)
def test_parallel_timeout_success():
    jt.test_parallel_timeout_success(B)


@pytest.mark.timeout(60)
def test_parallel_timeout_fail():
    jt.test_parallel_timeout_fail(B)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_parallel_timeout_fail_with_generator(return_as):
    jt.test_parallel_timeout_fail_with_generator(B, return_as)


@pytest.mark.timeout(120)
def test_error_capture():
    jt.test_error_capture(B)


@pytest.mark.timeout(60)
def test_error_in_task_iterator():
    jt.test_error_in_task_iterator(B)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("batch_size, expected_queue", [
    (1, ["Produced 0", "Consumed 0", "Produced 1", "Consumed 1", "Produced 2", "Consumed 2",
         "Produced 3", "Consumed 3", "Produced 4", "Consumed 4", "Produced 5", "Consumed 5"]),
    (4, ["Produced 0", "Produced 1", "Produced 2", "Produced 3", "Consumed 0", "Consumed 1",
         "Consumed 2", "Consumed 3", "Produced 4", "Produced 5", "Consumed 4", "Consumed 5"]),
])
def test_dispatch_one_job(batch_size, expected_queue):
    jt.test_dispatch_one_job(B, batch_size, expected_queue)


@pytest.mark.timeout(60)
def test_dispatch_multiprocessing():
    jt.test_dispatch_multiprocessing(B)


@pytest.mark.timeout(60)
def test_batching_auto_subprocesses():
    jt.test_batching_auto_subprocesses(B)


@pytest.mark.timeout(60)
def test_invalid_njobs():
    jt.test_invalid_njobs(B)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_jobs", ["2", 2.3, 2])
def test_njobs_converted_to_int(n_jobs):
    jt.test_njobs_converted_to_int(B, n_jobs)


@pytest.mark.timeout(60)
def test_no_blas_crash_or_freeze_with_subprocesses():
    jt.test_no_blas_crash_or_freeze_with_subprocesses(B)


@pytest.mark.timeout(60)
def test_parallel_with_interactively_defined_functions():
    # The script is joblib's, with the import that registers the backend added.
    code = "import shoal.joblib\n" + jt.UNPICKLABLE_CALLABLE_SCRIPT_TEMPLATE_NO_MAIN.format(B)
    jt.check_subprocess_call([sys.executable, "-c", code], timeout=30,
                             stdout_regex=r"\[0, 1, 4, 9, 16\]")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("define_func", ["SQUARE_MAIN", "SQUARE_LOCAL", "SQUARE_LAMBDA"])
@pytest.mark.parametrize("callable_position", ["delayed", "args", "kwargs"])
def test_parallel_with_unpicklable_functions_in_args(define_func, callable_position, tmp_path):
    # joblib's script, with the import that registers the backend added.
    code = jt.UNPICKLABLE_CALLABLE_SCRIPT_TEMPLATE_MAIN.format(
        define_func=getattr(jt, define_func), backend=B, callable_position=callable_position,
        joblib_root_folder=os.path.dirname(os.path.dirname(joblib.__file__)))
    code = code.replace("from joblib import Parallel, delayed",
                        "import shoal.joblib\nfrom joblib import Parallel, delayed", 1)
    script = tmp_path / "unpicklable_func_script.py"
    script.write_text(code)
    jt.check_subprocess_call([sys.executable, str(script)], timeout=30,
                             stdout_regex=r"\[0, 1, 4, 9, 16\]")


@pytest.mark.timeout(60)
def test_parallel_with_interactively_defined_functions_and_classes(tmp_path):
    # joblib's test_parallel_with_interactively_defined_functions_loky, backend="shoal".
    code = jt.INTERACTIVE_DEFINED_FUNCTION_AND_CLASS_SCRIPT_CONTENT
    assert 'backend="loky"' in code
    code = code.replace('backend="loky"', f'backend="{B}"').replace(
        "from joblib import Parallel, delayed", "import shoal.joblib\nfrom joblib import Parallel, delayed", 1)
    script = tmp_path / "joblib_interactively_defined_function.py"
    script.write_text(code)
    jt.check_subprocess_call([sys.executable, str(script)], stdout_regex=r"\[0, 1, 4, 9, 16\]",
                             timeout=30)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_jobs", [2, 4])
def test_parallel_unordered_generator_returns_fastest_first(n_jobs):
    jt.test_parallel_unordered_generator_returns_fastest_first(B, n_jobs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_jobs", [1, 2, -2, -1])
def test_abort_backend(n_jobs):
    jt.test_abort_backend(n_jobs, B)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
@pytest.mark.parametrize("n_jobs", [1, 2, -2, -1])
def test_deadlock_with_generator(return_as, n_jobs):
    jt.test_deadlock_with_generator(B, return_as, n_jobs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
@pytest.mark.parametrize("n_jobs", [1, 2, -2, -1])
def test_multiple_generator_call(return_as, n_jobs):
    jt.test_multiple_generator_call(B, return_as, n_jobs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
@pytest.mark.parametrize("n_jobs", [1, 2, -2, -1])
def test_multiple_generator_call_managed(return_as, n_jobs):
    jt.test_multiple_generator_call_managed(B, return_as, n_jobs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as_1", ["generator", "generator_unordered"])
@pytest.mark.parametrize("return_as_2", ["generator", "generator_unordered"])
@pytest.mark.parametrize("n_jobs", [1, 2, -2, -1])
def test_multiple_generator_call_separated(return_as_1, return_as_2, n_jobs):
    jt.test_multiple_generator_call_separated(B, return_as_1, return_as_2, n_jobs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("return_as_1", ["generator", "generator_unordered"])
@pytest.mark.parametrize("return_as_2", ["generator", "generator_unordered"])
def test_multiple_generator_call_separated_gc(return_as_1, return_as_2):
    # error=False: unlike loky's shared executor, a call running at the same time as
    # another never shares its executor, so the first one's abort does not break the second.
    jt.test_multiple_generator_call_separated_gc(B, return_as_1, return_as_2, False)


@pytest.mark.timeout(60)
def test_lambda_expression():
    jt.test_lambda_expression(B)


@pytest.mark.timeout(60)
def test_backend_batch_statistics_reset():
    jt.test_backend_batch_statistics_reset(B)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("context", [jt.parallel_config, jt.parallel_backend])
def test_nested_parallelism_limit(context):
    jt.test_nested_parallelism_limit(context, B)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_jobs", [2, 4])
@pytest.mark.parametrize("context", [jt.parallel_config, jt.parallel_backend])
def test_initializer_context(n_jobs, context):
    jt.test_initializer_context(n_jobs, B, context)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_jobs", [2, 4])
def test_initializer_parallel(n_jobs):
    jt.test_initializer_parallel(n_jobs, B)


# joblib's tests that use the default backend: run under parallel_config(backend="shoal").


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name, args", [
    ("test_parallel_kwargs", (2,)), ("test_parallel_kwargs", (3,)),
    ("test_exception_dispatch", ()), ("test_parallel_with_exhausted_iterator", ()),
    ("test_globals_update_at_each_parallel_call", ()),
    ("test_dispatch_race_condition", (10, 2, "2 * n_jobs", 1)),
    ("test_dispatch_race_condition", (517, 2, "n_jobs", "auto")),
    ("test_dispatch_race_condition", (10, 2, "n_jobs", "auto")),
    ("test_dispatch_race_condition", (10, 4, "n_jobs", "auto")),
])
def test_default_backend_tests_under_parallel_config(name, args):
    with parallel_config(backend=B):
        assert type(Parallel()._backend).__name__ == "ShoalBackend"
        getattr(jt, name)(*args)


@pytest.mark.timeout(120)
def test_auto_memmap_on_arrays_from_generator():
    pytest.importorskip("numpy")
    jt.test_auto_memmap_on_arrays_from_generator(B)


# Vendored from joblib's test_parallel.py (they hard-code backend="loky"), adapted.


@pytest.mark.timeout(120)
@pytest.mark.parametrize("byteorder", ["<", ">", "="])
@pytest.mark.parametrize("max_nbytes", [1, "1M"])
def test_parallel_byteorder_corruption(byteorder, max_nbytes):
    np = pytest.importorskip("numpy")

    def inspect_byteorder(x):
        return x, x.dtype.byteorder

    x = np.arange(6).reshape((2, 3)).view(f"{byteorder}i4")
    initial_np_byteorder = x.dtype.byteorder
    result = Parallel(n_jobs=2, backend=B, max_nbytes=max_nbytes)(
        delayed(inspect_byteorder)(x) for _ in range(3))
    for x_returned, byteorder_in_worker in result:
        assert byteorder_in_worker == initial_np_byteorder
        assert byteorder_in_worker == x_returned.dtype.byteorder
        np.testing.assert_array_equal(x, x_returned)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("n_jobs", [2, 4])
def test_initializer_reused(n_jobs):
    # Workers are reused when the initializer arguments are the same.
    manager = jt.mp.Manager()
    status = manager.dict()
    pids = set()
    for _ in range(3):
        results = Parallel(backend=B, n_jobs=n_jobs, initializer=jt._set_initialized,
                           initargs=(status,))(
            delayed(jt._check_status)(status, n_jobs, wait_workers=True) for _ in range(n_jobs))
        pids |= set(results)
    assert len(pids) == n_jobs
    manager.shutdown()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("n_jobs", [2, 4])
def test_initializer_not_reused(n_jobs):
    # When the initializer arguments change, each call gets its own workers.
    manager = jt.mp.Manager()
    pids = set()
    for _ in range(3):
        status = manager.dict()
        results = Parallel(backend=B, n_jobs=n_jobs, initializer=jt._set_initialized,
                           initargs=(status,))(
            delayed(jt._check_status)(status, n_jobs, wait_workers=True) for _ in range(n_jobs))
        pids |= set(results)
    assert len(pids) == 3 * n_jobs
    manager.shutdown()


# --- ours ------------------------------------------------------------------------------


def worker_pid(x):
    return os.getpid()


def slow_square(x):
    time.sleep(0.001)
    return x * x


@pytest.mark.timeout(60)
def test_runs_in_shoal_workers_with_joblib_batching():
    with parallel_config(backend=B, n_jobs=2):
        p = Parallel()
        pids = set(p(delayed(worker_pid)(i) for i in range(200)))
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        backend = p._backend
        assert isinstance(backend, shoal.joblib.ShoalBackend)
        with Parallel() as managed:
            managed(delayed(slow_square)(i) for i in range(3000))
            assert managed._backend.compute_batch_size() > 1  # joblib's auto-batching at work
            assert set(managed._backend._workers.worker_pids()) >= set()


@pytest.mark.timeout(60)
def test_return_as_generator_is_lazy_and_ordered():
    with parallel_config(backend=B, n_jobs=2):
        gen = Parallel(return_as="generator")(delayed(slow_square)(i) for i in range(100))
        assert not isinstance(gen, list)
        assert next(gen) == 0
        assert list(gen) == [i * i for i in range(1, 100)]


@pytest.mark.timeout(60)
def test_executor_options_pass_through():
    # retries=0 and the thread backend are shoal.Executor options.
    with parallel_config(backend=shoal.joblib.ShoalBackend(backend="thread"), n_jobs=2):
        pids = set(Parallel()(delayed(worker_pid)(i) for i in range(20)))
    assert pids == {os.getpid()}
    with parallel_config(backend=B, n_jobs=2, retries=0, preload=("numpy",)):
        p = Parallel()
        assert p(delayed(abs)(-i) for i in range(5)) == [0, 1, 2, 3, 4]


def openblas_threads(_):
    import numpy  # noqa: F401
    import threadpoolctl

    return {d["internal_api"]: d["num_threads"] for d in threadpoolctl.threadpool_info()}.get("openblas")


@pytest.mark.timeout(60)
def test_inner_max_num_threads_sizes_the_workers_pools():
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    from shoal import _threads

    cores = _threads.available_cores()
    with parallel_config(backend=B, n_jobs=2):  # default: each worker's share of the cores
        assert set(Parallel()(delayed(openblas_threads)(i) for i in range(4))) == {max(1, cores // 2)}
    with parallel_config(backend=B, n_jobs=2, inner_max_num_threads=1):
        assert set(Parallel()(delayed(openblas_threads)(i) for i in range(4))) == {1}


@pytest.mark.timeout(60)
def test_a_worker_crash_fails_the_call_and_the_next_call_works():
    with parallel_config(backend=B, n_jobs=2, retries=0):
        with pytest.raises(shoal.WorkerCrashedError):
            Parallel()(delayed(os._exit)(3) for _ in range(2))
        assert Parallel()(delayed(abs)(-i) for i in range(4)) == [0, 1, 2, 3]


# --- memmapping: arrays above max_nbytes placed once per call, seen as joblib's memmaps ----


def array_view(a, i):
    import numpy as np

    from shoal import _arena

    return ("memmap" if isinstance(a, np.memmap) else type(a).__name__, bool(a.flags.writeable), getattr(a, "mode", None), float(a[i]),
            _arena.worker_arena().blocks, isinstance(a, np.memmap))


def scribble(a, i):
    before = float(a[0])
    a[0] = i
    return before


@pytest.mark.timeout(120)
def test_an_array_in_every_call_is_placed_once_and_read_only():
    np = pytest.importorskip("numpy")
    big = np.arange(2 << 20, dtype=float)  # 16 MB, above max_nbytes' default 1M
    before = shoal.arena_stats()
    before = 0 if before is None else before["blocks"]
    out = Parallel(n_jobs=2, backend=B, batch_size=1)(delayed(array_view)(big, i) for i in range(100))
    assert [o[:4] for o in out] == [("memmap", False, "r", float(i)) for i in range(100)]
    assert max(o[4] for o in out) == before + 1  # one placement for the 100 calls
    assert all(o[5] for o in out)
    # Below max_nbytes: an ordinary (writable) copy, as with loky.
    small = np.ones(1000)
    assert Parallel(n_jobs=2, backend=B)(delayed(array_view)(small, 0) for _ in range(2))[0][:3] == \
        ("ndarray", True, None)


@pytest.mark.timeout(120)
def test_mmap_mode_and_max_nbytes_none_are_honoured():
    np = pytest.importorskip("numpy")
    big = np.zeros(1 << 18)  # 2 MB
    # "c": copy-on-write, each batch sees the array as passed, the caller sees no change
    out = Parallel(n_jobs=2, backend=B, mmap_mode="c", batch_size=1)(delayed(scribble)(big, i + 1) for i in range(20))
    assert out == [0.0] * 20 and not big.any()
    # "r": writing raises, as on a read-only memmap
    with pytest.raises(ValueError):
        Parallel(n_jobs=2, backend=B)(delayed(scribble)(big, 1) for _ in range(2))
    # "r+": writable memmaps shared by the call's workers, the caller's array unchanged
    out = Parallel(n_jobs=2, backend=B, mmap_mode="r+")(delayed(array_view)(big, 0) for _ in range(2))
    assert out[0][:3] == ("memmap", True, "r+")
    assert not big.any()
    # max_nbytes=None: no memmapping, each batch unpickles its own writable array
    out = Parallel(n_jobs=2, backend=B, max_nbytes=None)(delayed(array_view)(big, 0) for _ in range(2))
    assert out[0][:3] == ("ndarray", True, None)


@pytest.mark.timeout(120)
def test_an_executors_task_timeout_keeps_the_calls_placements():
    np = pytest.importorskip("numpy")
    big = np.arange(2 << 20, dtype=float)
    before = shoal.arena_stats()
    before = 0 if before is None else before["blocks"]
    with parallel_config(backend="shoal", task_timeout=30):
        out = Parallel(n_jobs=2, batch_size=1)(delayed(array_view)(big, i) for i in range(20))
    assert [o[:4] for o in out] == [("memmap", False, "r", float(i)) for i in range(20)]
    # One placement for the 20 calls (a block the tests before left may be freed meanwhile).
    assert max(o[4] for o in out) <= before + 1
    with parallel_config(backend="shoal", task_timeout=0.5):
        with pytest.raises(shoal.TaskTimeoutError):
            Parallel(n_jobs=2, batch_size=1)(delayed(time.sleep)(s) for s in (0, 30))
