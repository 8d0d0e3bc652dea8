"""shoal.Pool against multiprocessing.Pool: the same calls give the same results and raise the
same exceptions. Each comparison runs a real multiprocessing pool (fork, as on Linux by default)
beside shoal.Pool on every backend; the last tests cover what shoal adds."""
import multiprocessing
import os
import pickle
import threading
import time

import pytest

import shoal

pytestmark = pytest.mark.timeout(60)

BACKENDS = ("serial", "thread", "process")


# ---------------------------------------------------------------- tasks (module level: both pools)

def square(x):
    return x * x


def add(a, b):
    return a + b


def kw(a, b=0, *, c=0):
    return (a, b, c)


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def raise_key(x):
    raise KeyError(x)


def sleep_then(x, seconds=0.5):
    time.sleep(seconds)
    return x


_configured = None


def configure(value):
    global _configured
    _configured = value


def configured(_):
    return _configured


def pid(_):
    time.sleep(0.01)
    return os.getpid()


def die(_):
    os._exit(7)


def numbers(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("the input broke")
        yield i


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def mp_pool():
    pool = multiprocessing.get_context("fork").Pool(2)
    yield pool
    pool.terminate()
    pool.join()


@pytest.fixture(scope="module", params=BACKENDS)
def pool(request):
    p = shoal.Pool(2, backend=request.param)
    yield p
    p.terminate()
    p.join()


def outcome(call):
    """("ok", value) or ("raised", type, args) of a call."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - compared, not swallowed
        return ("raised", type(exc), exc.args)


def drain(iterator):
    """Every item of an imap iterator, an exception counting as an item (multiprocessing's
    chunksize=1 iterators go on after a failing item)."""
    out = []
    while True:
        try:
            out.append(("ok", next(iterator)))
        except StopIteration:
            return out
        except Exception as exc:  # noqa: BLE001
            out.append(("raised", type(exc), exc.args))
            if not hasattr(iterator, "next"):  # a generator (chunked imap) is finished
                return out


CALLS = {
    "apply": lambda p: p.apply(square, (7,)),
    "apply_kwds": lambda p: p.apply(kw, (1,), {"b": 2, "c": 3}),
    "apply_raises": lambda p: p.apply(fail_on, (3,)),
    "apply_async": lambda p: p.apply_async(add, (2, 3)).get(10),
    "apply_async_raises": lambda p: p.apply_async(raise_key, ("k",)).get(10),
    "map": lambda p: p.map(square, range(100)),
    "map_chunk1": lambda p: p.map(square, range(30), chunksize=1),
    "map_chunk7": lambda p: p.map(square, range(30), 7),
    "map_generator": lambda p: p.map(square, (i for i in range(50))),
    "map_empty": lambda p: p.map(square, []),
    "map_raises": lambda p: p.map(fail_on, range(10)),
    "map_raises_chunked": lambda p: p.map(fail_on, range(10), chunksize=4),
    "starmap": lambda p: p.starmap(add, [(i, 2 * i) for i in range(40)]),
    "starmap_raises": lambda p: p.starmap(fail_on, [(i, 5) for i in range(10)]),
    "map_async": lambda p: p.map_async(square, range(60)).get(10),
    "map_async_raises": lambda p: p.map_async(fail_on, range(10)).get(10),
    "starmap_async": lambda p: p.starmap_async(add, [(1, 2), (3, 4)], 1).get(10),
    "imap": lambda p: list(p.imap(square, range(40))),
    "imap_chunked": lambda p: list(p.imap(square, range(40), 6)),
    "imap_unordered": lambda p: sorted(p.imap_unordered(square, range(40))),
    "imap_unordered_chunked": lambda p: sorted(p.imap_unordered(square, range(40), chunksize=5)),
    "imap_raises_each": lambda p: drain(p.imap(fail_on, range(8))),
    "imap_raises_chunked": lambda p: drain(p.imap(fail_on, range(8), chunksize=2)),
    "imap_unordered_raises_each": lambda p: sorted(drain(p.imap_unordered(fail_on, range(8))), key=repr),
    "imap_input_raises": lambda p: drain(p.imap(square, numbers(6, fail_at=4))),
    "imap_bad_chunksize": lambda p: p.imap(square, range(3), 0),
    "map_unpicklable_result": lambda p: p.apply(threading.Lock, ()),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_same_result_or_exception_as_multiprocessing(name, pool, mp_pool):
    if name == "map_unpicklable_result" and pool._backend.name != "process":
        pytest.skip("threads and the serial loop return the lock itself: nothing is pickled")
    call = CALLS[name]
    expected = outcome(lambda: call(mp_pool))
    got = outcome(lambda: call(pool))
    if name == "map_unpicklable_result":  # both refuse; the messages name the pickler's wording
        assert expected[0] == got[0] == "raised" and got[1] is TypeError, got
        return
    assert got == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_task_exception_carries_the_workers_traceback(backend):
    with shoal.Pool(2, backend=backend) as p:
        with pytest.raises(ValueError, match="bad item 3") as info:
            p.map(fail_on, range(6))
    if backend == "process":
        assert "fail_on" in str(info.value.__cause__)


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_results_behave_as_multiprocessing(backend, mp_pool):
    with shoal.Pool(2, backend=backend) as p:
        for pool in (mp_pool, p):
            slow = pool.apply_async(sleep_then, (1, 0.5))
            if backend != "serial" or pool is mp_pool:  # the serial backend runs it at submit
                with pytest.raises(ValueError, match="not ready"):
                    slow.successful()
                with pytest.raises(multiprocessing.TimeoutError):
                    slow.get(timeout=0.01)
                assert not slow.ready()
            slow.wait(5)
            assert slow.ready() and slow.successful() and slow.get() == 1
            bad = pool.apply_async(fail_on, (3,))
            bad.wait(5)
            assert bad.ready() and not bad.successful()


@pytest.mark.parametrize("backend", BACKENDS)
def test_callbacks_get_the_value_or_the_exception(backend, mp_pool):
    def run(pool):
        got = []
        done = threading.Event()
        r1 = pool.map_async(square, range(10), callback=got.append)
        r2 = pool.apply_async(fail_on, (3,), error_callback=lambda e: (got.append(repr(e)), done.set()))
        r3 = pool.starmap_async(fail_on, [(5, 5)], error_callback=lambda e: got.append(type(e).__name__))
        r4 = pool.apply_async(add, (1, 1), callback=got.append)
        for r in (r1, r2, r3, r4):
            r.wait(10)
        done.wait(10)
        return sorted(map(repr, got))

    with shoal.Pool(2, backend=backend) as p:
        assert run(p) == run(mp_pool)


@pytest.mark.parametrize("backend", BACKENDS)
def test_imap_next_with_a_timeout(backend, mp_pool):
    if backend == "serial":
        pytest.skip("the serial backend runs each item when it is submitted: nothing to wait for")
    with shoal.Pool(2, backend=backend) as p:
        for pool in (mp_pool, p):
            it = pool.imap(sleep_then, [5, 6])
            with pytest.raises(multiprocessing.TimeoutError):
                it.next(timeout=0.05)
            assert it.next(timeout=10) == 5 and next(it) == 6
            with pytest.raises(StopIteration):
                next(it)


def test_constructor_errors_are_multiprocessings():
    cases = [dict(processes=0), dict(processes=-1), dict(processes=1, maxtasksperchild=0),
             dict(processes=1, maxtasksperchild=1.5), dict(processes=1, initializer=3)]
    fork = multiprocessing.get_context("fork")
    for kwargs in cases:
        expected = outcome(lambda: fork.Pool(**kwargs))
        got = outcome(lambda: shoal.Pool(**kwargs))
        assert expected[0] == "raised" and got == expected, kwargs


@pytest.mark.parametrize("backend", BACKENDS)
def test_lifecycle_errors_are_multiprocessings(backend):
    fork = multiprocessing.get_context("fork")
    for make in (lambda: fork.Pool(2), lambda: shoal.Pool(2, backend=backend)):
        pool = make()
        with pytest.raises(ValueError, match="Pool is still running"):
            pool.join()
        with pytest.raises(NotImplementedError, match="cannot be passed between processes or pickled"):
            pickle.dumps(pool)
        late = pool.map_async(square, range(20))
        pool.close()
        for call in (lambda: pool.apply(square, (1,)), lambda: pool.map(square, [1]),
                     lambda: pool.imap(square, [1]), lambda: pool.apply_async(square, (1,)),
                     lambda: pool.__enter__()):
            with pytest.raises(ValueError, match="Pool not running"):
                call()
        pool.join()  # waits for what was given before close()
        assert late.ready() and late.get() == [i * i for i in range(20)]
        pool.close()  # twice is fine
        pool.terminate()


@pytest.mark.parametrize("backend", BACKENDS)
def test_leaving_the_with_block_terminates(backend):
    with shoal.Pool(2, backend=backend) as p:
        assert p.map(square, [1, 2]) == [1, 4]
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(square, (2,))
    p.join()


@pytest.mark.parametrize("backend", BACKENDS)
def test_initializer_runs_in_every_worker(backend):
    fork = multiprocessing.get_context("fork")
    results = []
    for make in (fork.Pool, lambda *a, **k: shoal.Pool(*a, backend=backend, **k)):
        with make(2, initializer=configure, initargs=("ready",)) as pool:
            results.append(pool.map(configured, range(20), chunksize=1))
    assert results[0] == results[1] == ["ready"] * 20


def test_maxtasksperchild_replaces_workers():
    with shoal.Pool(2, maxtasksperchild=2) as p:
        pids = p.map(pid, range(12), chunksize=1)
    assert len(set(pids)) >= 4  # 12 tasks, 2 per worker


def test_close_then_join_finishes_imap_that_was_never_read():
    p = shoal.Pool(2)
    it = p.imap_unordered(square, range(500))
    p.close()
    p.join()
    assert sorted(it) == [i * i for i in range(500)]


# ---------------------------------------------------------------- what shoal adds

def test_a_crashed_worker_raises_instead_of_hanging():
    with shoal.Pool(2, retries=0) as p:
        with pytest.raises(shoal.WorkerCrashedError):
            p.apply(die, (1,))
        with pytest.raises(shoal.WorkerCrashedError):
            p.map(die, range(3))
        assert p.map(square, range(5)) == [0, 1, 4, 9, 16]  # a new worker took its place


def test_terminate_fails_results_that_are_not_ready():
    p = shoal.Pool(1)
    slow = p.apply_async(sleep_then, (1, 30))
    queued = p.map_async(sleep_then, [2, 3])
    it = p.imap(sleep_then, [4, 5])
    time.sleep(0.2)
    p.terminate()
    for result in (slow, queued):
        with pytest.raises(shoal.ExecutorShutdownError):
            result.get(10)
    with pytest.raises(shoal.ExecutorShutdownError):
        list(it)
    p.join()


def test_lambdas_and_closures_work():
    offset = 10
    with shoal.Pool(2) as p:
        assert p.map(lambda x: x + offset, range(5)) == [10, 11, 12, 13, 14]


def test_large_arrays_travel_through_the_arena():
    np = pytest.importorskip("numpy")
    arrays = [np.full(200_000, i, dtype=np.float64) for i in range(4)]
    with shoal.Pool(2) as p:
        sums = p.map(np.sum, arrays)
        doubled = p.starmap(np.multiply, [(a, 2) for a in arrays])
    assert sums == [200_000.0 * i for i in range(4)]
    assert all((d == 2 * a).all() for d, a in zip(doubled, arrays))


def test_adaptive_chunks_for_imap():
    with shoal.Pool(2) as p:
        assert list(p.imap(square, range(5000), chunksize=None)) == [i * i for i in range(5000)]
        assert sorted(p.imap_unordered(square, range(5000), chunksize=None)) == [i * i for i in range(5000)]
