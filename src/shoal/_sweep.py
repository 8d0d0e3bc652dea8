"""Executor.sweep: a parameter grid times Monte Carlo runs, with reproducible random streams.

Task ``i`` (parameter set ``i // runs``, run ``i % runs``) calls
``fn(**parameters, rng=Generator(PCG64(SeedSequence(entropy, spawn_key=key + (i,)))))``,
where ``entropy`` and ``key`` come from ``SeedSequence(seed)``: the same stream as
``SeedSequence(seed).spawn(n)[i]``, a function of the seed and the task index only. So the
rows do not depend on the backend, the number of workers or the order tasks finish in.

The tasks run on the executor's map machinery (chunks adapt to the measured task time, a
bounded window of chunks in flight). Each item is ``(i, parameters, entropy, key, keep)``;
the function travels once per executor as ``_SweepCall(fn)`` (a second sweep of the same
function does not send it again: see ``_SweepCall.__shoal_identity__``).
"""
import collections.abc
import itertools
import traceback

from ._errors import RemoteTraceback, TaskTimeoutError, WorkerCrashedError
from ._mapping import MapWindow
from ._pickle import loads

__all__ = ["sweep"]

_RESERVED = ("rng", "run")
_ERRORS = ("raise", "keep")


class _Failed:
    """What a task that failed under errors="keep" returns: the error's text and traceback."""

    __slots__ = ("text", "traceback")

    def __init__(self, text, tb=None):
        self.text = text
        self.traceback = tb

    def __reduce__(self):
        return (_Failed, (self.text, self.traceback))


def _error_text(exc):
    return f"{type(exc).__name__}: {exc}"


def _generator(entropy, spawn_key):
    from numpy.random import PCG64, Generator, SeedSequence

    return Generator(PCG64(SeedSequence(entropy, spawn_key=spawn_key)))


class _SweepCall:
    """The function a sweep's workers run: builds the task's generator, calls ``fn``."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    @property
    def __wrapped__(self):  # messages name the user's function (_errors.function_name)
        return self.fn

    def __shoal_identity__(self):
        """Two sweeps of one function are the same function for a backend's function table:
        it (and what it holds, e.g. a large table) is sent once while the function lives."""
        return (_SweepCall, self.fn)

    def __call__(self, item):
        index, kwargs, entropy, key, keep = item
        rng = _generator(entropy, key + (index,))
        if not keep:
            return self.fn(**kwargs, rng=rng)
        try:
            return self.fn(**kwargs, rng=rng)
        except Exception as exc:  # noqa: BLE001 - becomes the task's row
            return _Failed(_error_text(exc),
                           "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


# ------------------------------------------------------------------- checks


def _values(name, values):
    if isinstance(values, (str, bytes, collections.abc.Mapping, collections.abc.Set)) or \
            not isinstance(values, collections.abc.Iterable):
        kind = type(values).__name__
        raise TypeError(f"params[{name!r}] must be a list of values, not a {kind}; "
                        f"for one value write [{values!r}]")
    values = list(values)
    if not values:
        raise ValueError(f"params[{name!r}] is empty: the sweep would have no tasks")
    return values


def _parameter_sets(params, product):
    """(names, [tuple of values per parameter set]) from ``params``, checked."""
    if params is None:
        params = {}
    if not isinstance(params, collections.abc.Mapping):
        raise TypeError("params must be a dict mapping each parameter name to a list of values, "
                        f"not a {type(params).__name__}")
    names = list(params)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"parameter names must be str (they are passed as keyword "
                            f"arguments), not {name!r}")
        if name in _RESERVED:
            raise ValueError(f"{name!r} cannot be a parameter name: the sweep passes "
                             f"{'rng' if name == 'rng' else 'the run number'} itself")
    columns = [_values(n, params[n]) for n in names]
    if not names:
        return names, [()]
    if product:
        return names, list(itertools.product(*columns))
    lengths = {n: len(c) for n, c in zip(names, columns)}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{n} has {k}" for n, k in lengths.items())
        raise ValueError(f"with product=False every list in params must have the same length "
                         f"({detail})")
    return names, list(zip(*columns))


def _seed_root(seed):
    """(entropy, spawn_key) of SeedSequence(seed)."""
    try:
        from numpy.random import SeedSequence
    except ImportError:
        raise ImportError("Executor.sweep needs numpy (pip install numpy) for its random "
                          "generators") from None
    if isinstance(seed, SeedSequence):
        return seed.entropy, tuple(seed.spawn_key)
    if isinstance(seed, bool):
        raise TypeError(f"seed must be None, an int >= 0, a sequence of them or a "
                        f"numpy.random.SeedSequence, not {seed!r}")
    try:
        root = SeedSequence(seed)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"seed must be None, an int >= 0, a sequence of them or a "
                        f"numpy.random.SeedSequence, not {seed!r} ({exc})") from None
    return root.entropy, tuple(root.spawn_key)


def _check(fn, runs, product, errors, stream):
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise ValueError(f"runs must be an int >= 1, not {runs!r}")
    if errors not in _ERRORS:
        raise ValueError(f"errors must be 'raise' or 'keep', not {errors!r}")
    if not isinstance(product, bool):
        raise TypeError(f"product must be True or False, not {product!r}")
    if not isinstance(stream, bool):
        raise TypeError(f"stream must be True or False, not {stream!r}")


# ---------------------------------------------------------------------- run


class _Sweep:
    """One sweep call: its tasks, and the rows their results become."""

    def __init__(self, backend, fn, names, sets, runs, entropy, key, keep, max_workers=1, concurrency=1,
                 limit=None):
        self.backend = backend
        self.limit = limit  # task_timeout of each run, or None
        self.max_workers = max_workers
        self.concurrency = concurrency
        self.fn = fn
        self.names = names
        self.sets = sets
        self.runs = runs
        self.entropy = entropy
        self.key = key
        self.keep = keep
        self.n = len(sets) * runs

    def kwargs(self, index):
        return dict(zip(self.names, self.sets[index // self.runs]))

    def items(self):
        entropy, key, keep = self.entropy, self.key, self.keep
        prepare = self.backend.prepare_value  # e.g. a shoal.share handle stands for its value
        for i in range(self.n):
            yield (i, {k: prepare(v) for k, v in self.kwargs(i).items()}, entropy, key, keep)

    def describe(self, index):
        params = ", ".join(f"{k}={v!r}" for k, v in self.kwargs(index).items())
        sep = ", " if params else ""
        return f"sweep task {index} ({params}{sep}run={index % self.runs})"

    def row(self, index, value):
        row = self.kwargs(index)
        row["run"] = index % self.runs
        if isinstance(value, _Failed):
            row["error"] = value.text
            return row
        if isinstance(value, collections.abc.Mapping):
            for k, v in value.items():
                if k in row or (self.keep and k == "error"):
                    raise ValueError(f"{self.describe(index)} returned the key {k!r}, which is "
                                     f"also a {'parameter' if k in self.names else 'column the sweep adds'}; "
                                     f"rename it")
                row[k] = v
        else:
            row["result"] = value
        if self.keep:
            row["error"] = None
        return row

    def failed(self, index, exc):
        """Raises ``exc`` (errors="raise") or returns the row that records it."""
        if not self.keep:
            if hasattr(exc, "add_note"):
                exc.add_note(f"in {self.describe(index)}")
            raise exc
        return self.row(index, _Failed(_error_text(exc)))

    # ----------------------------------------------------------- backends

    def rows_serial(self, bar):
        """The serial backend: every task in the caller, in order; a failing fn raises here
        with its own traceback (pdb works as in a loop)."""
        call = _SweepCall(self.fn)
        for item in self.items():
            index = item[0]
            try:
                value = call(item)
            except Exception as exc:
                yield index, self.failed(index, exc)
            else:
                yield index, self.row(index, value)
            if bar is not None:
                bar.update(1)

    def rows_parallel(self, ordered, bar):
        """Starts the tasks now (an argument that cannot be pickled raises here, in the
        caller) and returns the generator of their rows."""
        call = _SweepCall(self.fn)
        window = MapWindow(self.backend, call, self.items(), timeout=None, chunksize=None, ordered=ordered,
                           star=False, length=self.n, max_workers=self.max_workers,
                           concurrency=self.concurrency, limit=self.limit)
        return self._collect(window, call, bar)

    def _collect(self, window, call, bar):
        try:
            while True:
                finished = window.next_finished()
                if finished is None:
                    return
                fut, items = finished
                for index, row in self._settle(window, call, fut, items, True):
                    yield index, row
                    if bar is not None:
                        bar.update(1)
        finally:
            window.close()

    def _settle(self, window, call, fut, items, learn):
        """(index, row) for each item of a finished chunk. Under errors="keep", the items
        behind one whose result could not travel run again, and a chunk whose worker died
        runs again item by item, so that only the task that crashed is charged for it. A run
        past the time limit is a row (or the error) of its own: with a limit, chunks hold one
        item."""
        try:
            outcome = fut.result()
        except (WorkerCrashedError, TaskTimeoutError) as exc:
            if not self.keep and len(items) > 1:
                if hasattr(exc, "add_note"):
                    exc.add_note(f"in one of sweep tasks {items[0][0]}..{items[-1][0]} (one chunk)")
                raise
            if len(items) == 1:
                yield items[0][0], self.failed(items[0][0], exc)
                return
            for item in items:
                yield from self._settle(window, call, window.submit_chunk([item]),
                                        [item], False)
            return
        if learn:
            window.learned(len(items), outcome)
        packed, err, buffers = outcome.results, outcome.error, outcome.buffers
        per_item, data = packed
        for item, value in zip(items, data):
            index = item[0]
            if per_item:
                try:
                    value = loads(value, buffers)
                except Exception as exc:  # noqa: BLE001 - this result only
                    yield index, self.failed(index, exc)
                    continue
            yield index, self.row(index, value)
        if err is not None:
            exc, tb = err
            if tb is not None:
                exc.__cause__ = RemoteTraceback(tb)
            done = len(data)
            yield items[done][0], self.failed(items[done][0], exc)
            rest = items[done + 1:]
            if rest:
                yield from self._settle(window, call, window.submit_chunk(rest),
                                        rest, False)

    def rows(self, ordered, bar):
        rows = self.backend.sweep_rows(self, ordered, bar)  # the tasks start here, in the caller
        tracer = self.backend.tracer
        return rows if tracer is None else self._traced(rows, tracer)

    def _traced(self, rows, tracer):
        """The rows, each run recorded in the trace with its parameters as its row is made."""
        for index, row in rows:
            tracer.sweep_run(self.fn, index, self.kwargs(index), row.get("error"))
            yield index, row


def _table(rows, sweep):
    """A pandas DataFrame (parameters, run, values, error last) when pandas is importable,
    else the list of row dicts."""
    try:
        import pandas as pd
    except ImportError:
        return rows
    columns = list(sweep.names) + ["run"]
    seen = set(columns)
    for row in rows:
        for k in row:
            if k not in seen:
                seen.add(k)
                columns.append(k)
    if "error" in seen:
        columns.remove("error")
        columns.append("error")
    frame = pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    if "error" in seen and rows:
        # None where the task succeeded, as documented (pandas 3 would infer a string column: NaN).
        frame["error"] = pd.Series([row.get("error") for row in rows], index=frame.index, dtype=object)
    frame.attrs["seed_entropy"] = sweep.entropy
    return frame


def sweep(backend, fn, params, runs=1, seed=None, product=True, progress=False, errors="raise",
          stream=False, max_workers=1, concurrency=1, limit=None):
    """Executor.sweep on ``backend`` (see its docstring and docs/api.md)."""
    _check(fn, runs, product, errors, stream)
    names, sets = _parameter_sets(params, product)
    entropy, key = _seed_root(seed)
    fn = backend.prepare(fn, (), {})[0]  # e.g. a bound shoal.share handle stands for its value
    job = _Sweep(backend, fn, names, sets, runs, entropy, key, errors == "keep", max_workers, concurrency, limit)
    bar = None
    if progress is not False:
        from ._progress import progress_for

        bar = progress_for(progress, job.n, "sweep")
    try:
        produced = job.rows(not stream, bar)
    except BaseException:
        if bar is not None:
            bar.close()
        raise
    if stream:
        return _stream(produced, bar)
    rows = [None] * job.n
    try:
        for index, row in produced:
            rows[index] = row
    finally:
        produced.close()
        if bar is not None:
            bar.close()
    return _table(rows, job)


def _stream(produced, bar):
    try:
        for _, row in produced:
            yield row
    finally:
        produced.close()
        if bar is not None:
            bar.close()

