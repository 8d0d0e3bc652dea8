"""Nothing shoal holds keeps a function, or what it references, alive once its tasks are done and
the user let it go: not the driver, not the workers. A bound method of one object is one function."""
import gc
import os
import time
import weakref

import numpy as np
import psutil
import pytest

import shoal
from helpers import wait_until

pytestmark = pytest.mark.timeout(120)


class Model:
    """A model with a large table; in a worker, its __del__ leaves a mark in ``marks``."""

    def __init__(self, marks, nbytes=5 << 20):
        self.table = np.ones(nbytes // 8)
        self.marks = marks

    def predict(self, x):
        return float(self.table[0]) * x

    def __del__(self):
        if os.environ.get("SHOAL_TEST_IN_WORKER") == str(os.getpid()):
            with open(os.path.join(self.marks, f"{os.getpid()}.del"), "a") as f:
                f.write("x")


def mark_worker():
    os.environ["SHOAL_TEST_IN_WORKER"] = str(os.getpid())
    return os.getpid()


def test_bound_methods_of_one_object_are_sent_once(make_process_executor, tmp_path):
    ex = make_process_executor(max_workers=2)
    model = Model(str(tmp_path))
    table = ex._backend._functions if ex._backend._functions is not None else None
    assert ex.submit(model.predict, 1).result(timeout=30) == 1.0
    table = ex._backend._functions
    before = len(table)
    rss = psutil.Process().memory_info().rss
    futures = [ex.submit(model.predict, i) for i in range(100)]
    assert [f.result(timeout=30) for f in futures] == [float(i) for i in range(100)]
    assert len(table) == before  # the same object and function: no new entry
    # 100 pickles of a 5 MB model would have grown the driver by ~500 MB
    assert psutil.Process().memory_info().rss - rss < 100 << 20


def test_a_dropped_model_is_freed_in_the_driver_and_the_workers(make_process_executor, tmp_path):
    ex = make_process_executor(max_workers=2)
    pids = {f.result(timeout=30) for f in [ex.submit(mark_worker) for _ in range(8)]}
    model = Model(str(tmp_path))
    alive = weakref.ref(model)
    futures = [ex.submit(model.predict, i) for i in range(20)]
    [f.result(timeout=30) for f in futures]
    del model, futures
    gc.collect()
    assert alive() is None, gc.get_referrers(alive())
    # The workers that loaded it drop it (a FORGET frame): its __del__ runs there.
    assert wait_until(lambda: any(p.endswith(".del") for p in os.listdir(tmp_path)), 20), os.listdir(tmp_path)
    assert ex.submit(abs, -3).result(timeout=30) == 3  # the pool is fine
    assert pids


def test_a_closure_is_freed_once_its_task_is_done(backend):
    with shoal.Executor(2, backend=backend) as ex:
        big = np.ones(1 << 20)
        fn = (lambda a: lambda: float(a.sum()))(big)
        alive = weakref.ref(big)
        assert ex.submit(fn).result(timeout=30) == float(1 << 20)
        del big, fn
        gc.collect()
        assert wait_until(lambda: (gc.collect(), alive() is None)[1], 10)


def node_arena_used():
    """In a task: the bytes in use in its node's arena (every process's blocks), 0 without one."""
    stats = shoal.arena_stats()
    return 0 if stats is None else stats["used_bytes"]


def test_functions_let_go_free_their_data_where_the_tasks_ran(backend):
    # Each lambda holds its own 4 MB array. Where tasks run in other processes, the function's
    # pickle and its arrays are held there (the arena of the node: the MPI leader's, or the
    # driver's) only while the function lives: 60 of them would hold 240 MB.
    with shoal.Executor(2, backend=backend) as ex:
        before = ex.submit(node_arena_used).result(timeout=30)
        for i in range(60):
            a = np.full(1 << 19, float(i))
            assert ex.submit(lambda a=a: float(a[0])).result(timeout=30) == float(i)
            del a
        gc.collect()
        used = ex.submit(node_arena_used).result(timeout=30)
        assert used - before < 64 << 20, (before, used)



def square(x):
    return x * x


def test_a_lambda_per_call_does_not_grow_the_table(make_process_executor):
    ex = make_process_executor(max_workers=2)
    for i in range(200):
        assert ex.submit(lambda x=i: x + 1).result(timeout=30) == i + 1
    gc.collect()
    assert len(ex._backend._functions) < 20  # dropped lambdas are forgotten as they go


def test_builtins_and_module_functions_stay_registered(make_process_executor):
    ex = make_process_executor(max_workers=1)
    assert ex.submit(square, 3).result(timeout=30) == 9
    assert ex.submit(pow, 2, 3).result(timeout=30) == 8
    n = len(ex._backend._functions)
    for _ in range(50):
        ex.submit(square, 3).result(timeout=30)
        ex.submit(pow, 2, 3).result(timeout=30)
    assert len(ex._backend._functions) == n


def test_sweeps_of_one_function_send_it_once(make_process_executor):
    ex = make_process_executor(max_workers=2)

    def model(a, rng):
        return a + rng.random()

    ex.sweep(model, {"a": [1, 2]}, seed=1)
    n = len(ex._backend._functions)
    ex.sweep(model, {"a": [1, 2, 3]}, seed=1)
    assert len(ex._backend._functions) == n
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
    time.sleep(0.1)


def table_sum(table, i):
    return float(table[:1000].sum())


def test_shared_memory_a_dropped_function_holds_lives_until_the_workers_forget_it(make_process_executor):
    """partial(model, share(t)): the user drops both right after submit, before the worker has
    loaded the function; the shared block must not be reused under it."""
    import functools

    ex = make_process_executor(max_workers=1)
    ex.submit(time.sleep, 0.01).result(timeout=30)
    busy = ex.submit(time.sleep, 1.0)
    h = shoal.share(np.ones(1 << 20))
    f = functools.partial(table_sum, h)
    fut = ex.submit(f, 0)
    del f, h
    gc.collect()
    other = shoal.share(np.full(1 << 20, 7.0))  # would take the freed block
    assert fut.result(timeout=30) == 1000.0
    busy.result(timeout=30)
    del other
