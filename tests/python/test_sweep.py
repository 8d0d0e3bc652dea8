"""Executor.sweep: parameter grid x runs, reproducible generators, rows, stream, errors.
Each shared body runs under the serial, thread and process backends."""

import itertools
import os
import sys
import threading

import numpy as np
import pandas as pd
import pytest

import shoal

# --- tasks (module level: importable by workers) ---------------------------------------


def walk(alpha, beta, rng):
    """A small stochastic model: a random walk with drift alpha and step size beta."""
    steps = rng.normal(alpha, beta, size=50)
    path = np.cumsum(steps)
    return {"final": float(path[-1]), "peak": float(path.max()), "draw": int(rng.integers(1 << 30))}


def draw(rng):
    return float(rng.random())


def draw_a(a, rng):
    return float(rng.random())


def picky(alpha, rng):
    if alpha == 2:
        raise ValueError(f"alpha={alpha} is not allowed")
    return {"value": alpha + rng.random()}


def dies_on_two(alpha, rng):
    if alpha == 2:
        os._exit(9)
    return alpha


def returns_run(alpha, rng):
    return {"run": 1}


def unpicklable_on_two(alpha, rng):
    if alpha == 2:
        return threading.Lock()  # a result that cannot be pickled (process backend)
    return alpha


PARAMS = {"alpha": [0.0, 0.5, 1.0], "beta": [1.0, 2.0]}


def expected_rows(params, runs, seed, product=True, fn=walk):
    """The rows computed without shoal: task i uses SeedSequence(seed).spawn(n)[i]."""
    names = list(params)
    sets = list(itertools.product(*params.values()) if product else zip(*params.values()))
    n = len(sets) * runs
    children = np.random.SeedSequence(seed).spawn(n)
    rows = []
    for i in range(n):
        kwargs = dict(zip(names, sets[i // runs]))
        value = fn(**kwargs, rng=np.random.Generator(np.random.PCG64(children[i])))
        row = dict(kwargs, run=i % runs)
        row.update(value if isinstance(value, dict) else {"result": value})
        rows.append(row)
    return rows


# --- rows and reproducibility ----------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_rows_are_bit_identical_on_every_backend_and_worker_count(backend, workers):
    with shoal.Executor(workers, backend=backend) as ex:
        table = ex.sweep(walk, PARAMS, runs=4, seed=2024)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["alpha", "beta", "run", "final", "peak", "draw"]
    assert table.to_dict("records") == expected_rows(PARAMS, 4, 2024)  # exact float equality
    assert table.attrs["seed_entropy"] == 2024


@pytest.mark.timeout(60)
def test_product_false_zips_the_lists(executor):
    params = {"alpha": [0.0, 1.0, 2.0], "beta": [5.0, 6.0, 7.0]}
    table = executor.sweep(walk, params, runs=2, seed=3, product=False)
    assert [(r["alpha"], r["beta"]) for r in table.to_dict("records")] == \
        [(0.0, 5.0), (0.0, 5.0), (1.0, 6.0), (1.0, 6.0), (2.0, 7.0), (2.0, 7.0)]
    assert table.to_dict("records") == expected_rows(params, 2, 3, product=False)


@pytest.mark.timeout(60)
def test_scalar_results_are_stored_as_result_and_no_params_means_one_set(executor):
    table = executor.sweep(draw, {}, runs=5, seed=11)
    assert list(table.columns) == ["run", "result"]
    assert table.to_dict("records") == expected_rows({}, 5, 11, fn=draw)


@pytest.mark.timeout(60)
def test_a_seed_sequence_and_a_list_seed_are_accepted(executor):
    root = np.random.SeedSequence([1, 2, 3])
    a = executor.sweep(draw, {}, runs=3, seed=root)
    b = executor.sweep(draw, {}, runs=3, seed=[1, 2, 3])
    assert a.equals(b)
    expected = [np.random.Generator(np.random.PCG64(c)).random() for c in root.spawn(3)]
    assert list(a["result"]) == expected


@pytest.mark.timeout(60)
def test_seed_none_draws_fresh_entropy_that_reproduces_the_sweep(executor):
    first = executor.sweep(draw, {}, runs=4)
    again = executor.sweep(draw, {}, runs=4, seed=first.attrs["seed_entropy"])
    other = executor.sweep(draw, {}, runs=4)
    assert first.equals(again)
    assert not first.equals(other)


@pytest.mark.timeout(60)
def test_without_pandas_the_rows_are_a_list_of_dicts(executor, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    rows = executor.sweep(walk, PARAMS, runs=2, seed=5)
    assert isinstance(rows, list)
    assert rows == expected_rows(PARAMS, 2, 5)


@pytest.mark.timeout(60)
def test_stream_yields_every_row_once(executor):
    stream = executor.sweep(walk, PARAMS, runs=3, seed=8, stream=True)
    assert not isinstance(stream, (list, pd.DataFrame))
    rows = list(stream)
    key = lambda r: (r["alpha"], r["beta"], r["run"])  # noqa: E731
    assert sorted(rows, key=key) == sorted(expected_rows(PARAMS, 3, 8), key=key)


@pytest.mark.timeout(60)
def test_stream_closed_early_leaves_the_executor_usable(executor):
    stream = executor.sweep(walk, PARAMS, runs=20, seed=8, stream=True)
    first = next(stream)
    assert set(first) == {"alpha", "beta", "run", "final", "peak", "draw"}
    stream.close()
    assert executor.submit(sum, [1, 2]).result(timeout=30) == 3


@pytest.mark.timeout(120)
def test_many_tiny_tasks(executor):
    table = executor.sweep(draw_a, {"a": list(range(50))}, runs=40, seed=1)
    assert len(table) == 2000
    children = np.random.SeedSequence(1).spawn(2000)
    assert list(table["result"]) == [np.random.Generator(np.random.PCG64(c)).random() for c in children]
    assert list(table["a"]) == [i // 40 for i in range(2000)]


# --- errors ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_errors_raise_raises_the_tasks_exception_naming_the_task(executor):
    with pytest.raises(ValueError, match="alpha=2 is not allowed") as info:
        executor.sweep(picky, {"alpha": [1, 2, 3]}, runs=2, seed=0)
    notes = "".join(getattr(info.value, "__notes__", []))
    if sys.version_info >= (3, 11):
        assert "alpha=2" in notes and "run=0" in notes
    assert executor.submit(sum, [1, 2]).result(timeout=30) == 3  # still usable


@pytest.mark.timeout(60)
def test_errors_keep_gives_a_row_with_the_error(executor):
    table = executor.sweep(picky, {"alpha": [1, 2, 3]}, runs=2, seed=0, errors="keep")
    assert list(table.columns) == ["alpha", "run", "value", "error"]
    rows = table.to_dict("records")
    assert [r["alpha"] for r in rows] == [1, 1, 2, 2, 3, 3]
    for r in rows:
        if r["alpha"] == 2:
            assert r["error"] == "ValueError: alpha=2 is not allowed"
            assert pd.isna(r["value"])
        else:
            assert pd.isna(r["error"])
            assert r["alpha"] <= r["value"] < r["alpha"] + 1


@pytest.mark.timeout(60)
def test_errors_keep_values_match_the_seeded_streams(executor):
    rows = executor.sweep(picky, {"alpha": [1, 2, 3]}, runs=2, seed=0, errors="keep").to_dict("records")
    children = np.random.SeedSequence(0).spawn(6)
    for i, r in enumerate(rows):
        if r["alpha"] != 2:
            assert r["value"] == r["alpha"] + np.random.Generator(np.random.PCG64(children[i])).random()


@pytest.mark.timeout(60)
def test_returned_key_that_clashes_with_a_column_is_refused(executor):
    with pytest.raises(ValueError, match="'run'"):
        executor.sweep(returns_run, {"alpha": [1]}, seed=0)


@pytest.mark.timeout(90)
def test_errors_keep_charges_a_worker_crash_to_its_task_only(make_process_executor):
    ex = make_process_executor(retries=0)
    table = ex.sweep(dies_on_two, {"alpha": [1, 2, 3, 4]}, runs=3, seed=0, errors="keep")
    rows = table.to_dict("records")
    assert len(rows) == 12
    for r in rows:
        if r["alpha"] == 2:
            assert r["error"].startswith("WorkerCrashedError")
        else:
            assert r["result"] == r["alpha"] and pd.isna(r["error"])


@pytest.mark.timeout(90)
def test_errors_raise_on_a_worker_crash(make_process_executor):
    ex = make_process_executor(retries=0)
    with pytest.raises(shoal.WorkerCrashedError):
        ex.sweep(dies_on_two, {"alpha": [1, 2, 3]}, seed=0)


@pytest.mark.timeout(60)
def test_errors_keep_a_result_that_cannot_travel(make_process_executor):
    ex = make_process_executor()
    rows = ex.sweep(unpicklable_on_two, {"alpha": [1, 2, 3, 4]}, runs=2, seed=0,
                    errors="keep").to_dict("records")
    assert [r["alpha"] for r in rows] == [1, 1, 2, 2, 3, 3, 4, 4]
    for r in rows:
        if r["alpha"] == 2:
            assert r["error"] and "pickle" in r["error"].lower()
        else:
            assert r["result"] == r["alpha"]


# --- bad input -------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("params, runs, kwargs, error, match", [
    ([1, 2], 1, {}, TypeError, "params must be a dict"),
    ({"alpha": 0.5}, 1, {}, TypeError, r"params\['alpha'\] must be a list"),
    ({"alpha": "abc"}, 1, {}, TypeError, r"params\['alpha'\] must be a list"),
    ({"alpha": {1, 2}}, 1, {}, TypeError, r"params\['alpha'\] must be a list"),
    ({"alpha": []}, 1, {}, ValueError, "is empty"),
    ({1: [1]}, 1, {}, TypeError, "parameter names must be str"),
    ({"rng": [1]}, 1, {}, ValueError, "'rng' cannot be a parameter"),
    ({"run": [1]}, 1, {}, ValueError, "'run' cannot be a parameter"),
    ({"a": [1, 2], "b": [1]}, 1, {"product": False}, ValueError, "a has 2, b has 1"),
    ({"a": [1]}, 0, {}, ValueError, "runs must be an int >= 1"),
    ({"a": [1]}, 2.5, {}, ValueError, "runs must be an int >= 1"),
    ({"a": [1]}, True, {}, ValueError, "runs must be an int >= 1"),
    ({"a": [1]}, 1, {"errors": "ignore"}, ValueError, "errors must be 'raise' or 'keep'"),
    ({"a": [1]}, 1, {"seed": -1}, ValueError, "seed must be"),
    ({"a": [1]}, 1, {"seed": "abc"}, TypeError, "seed must be"),
    ({"a": [1]}, 1, {"seed": True}, TypeError, "seed must be"),
    ({"a": [1]}, 1, {"progress": "yes"}, TypeError, "progress must be"),
    ({"a": [1]}, 1, {"stream": 1}, TypeError, "stream must be True or False"),
])
def test_bad_input_is_refused_clearly(executor, params, runs, kwargs, error, match):
    with pytest.raises(error, match=match):
        executor.sweep(draw, params, runs=runs, **kwargs)


@pytest.mark.timeout(60)
def test_fn_must_be_callable(executor):
    with pytest.raises(TypeError, match="not callable"):
        executor.sweep(42, {"a": [1]})


@pytest.mark.timeout(60)
def test_sweep_after_shutdown_raises(backend):
    ex = shoal.Executor(2, backend=backend)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.sweep(draw, {})


@pytest.mark.timeout(60)
def test_tuples_ranges_and_arrays_are_lists_of_values(executor):
    table = executor.sweep(walk, {"alpha": (0.0, 1.0), "beta": np.array([1.0, 2.0])}, seed=4)
    assert len(table) == 4
    assert table.to_dict("records") == expected_rows({"alpha": [0.0, 1.0], "beta": [1.0, 2.0]}, 1, 4)


# --- progress --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_progress_bar_on_stderr(executor, capfd):
    table = executor.sweep(walk, PARAMS, runs=2, seed=1, progress=True)
    err = capfd.readouterr().err
    assert "sweep" in err and "12/12" in err
    assert table.to_dict("records") == expected_rows(PARAMS, 2, 1)


class Counter:
    def __init__(self):
        self.n = 0

    def update(self, n=1):
        self.n += n


@pytest.mark.timeout(60)
def test_progress_accepts_the_callers_bar(executor):
    bar = Counter()
    list(executor.sweep(walk, PARAMS, runs=2, seed=1, progress=bar, stream=True))
    assert bar.n == 12


def table_sum(table, k, rng):
    return {"total": float(table[:k].sum()), "writable": bool(table.flags.writeable)}


@pytest.mark.timeout(60)
def test_a_shared_handle_as_a_parameter_value(executor):
    table = np.arange(100_000, dtype=np.float64)
    handle = shoal.share(table)
    rows = executor.sweep(table_sum, {"table": [handle], "k": [10, 1000]}, seed=0).to_dict("records")
    assert [r["total"] for r in rows] == [float(table[:10].sum()), float(table[:1000].sum())]
    assert not any(r["writable"] for r in rows)  # read-only views of the arena (or h.value)
