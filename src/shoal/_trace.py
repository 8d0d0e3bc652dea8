"""Tracing: what each task did, on which worker, and when; recorded only while a trace is on.

A backend holds ``tracer`` (None, or the executor's :class:`Recorder`). With it None the hot
path pays one attribute test per task. With it set, each task (a ``submit`` or one chunk of
``map``) gets a :class:`TaskRecord` at submit; the backend fills in where and when it ran:

    driver   submit ─ pickle ─►                               ◄─ done ─ unpickle ─► future
    worker                  start ─ loaded ─ (run) ─ ran ─ pickled ─►

All times are ``time.perf_counter_ns()``: CLOCK_MONOTONIC on Linux, one clock for the driver
and every worker process, so a worker's times need no translation. The process backend's
workers send theirs in a trailer after the reply's pickle (process/protocol.py, TRACED); the
thread and serial backends read the clock around the call. A sampler thread reads each
process's resident memory every ``SAMPLE_S`` (its unique memory, USS, every ``USS_EVERY``-th
time: it costs ~0.1 ms a process) and notes worker processes that disappear.

:class:`Trace` is what the user holds (``with ex.trace() as t``, ``ex.trace_data()``): the
tasks of its time window, as rows, a Chrome trace (``save``), and :func:`summary`'s text.
"""
import itertools
import json
import os
import threading
import time
from functools import partial

__all__ = ["Trace"]

clock = time.perf_counter_ns
SAMPLE_S = 0.05
USS_EVERY = 10  # rounds of SAMPLE_S between USS samples


def started_ns(proc, now):
    """When ``proc`` (a psutil.Process) started, in ``clock()``'s time (``now``: clock() at about
    the same moment); its system's start time has a resolution of about 10 ms."""
    return now - int((time.time() - proc.create_time()) * 1e9)


def unique_memory(proc):
    """The memory only this process holds (USS: pages no other process maps, such as the arena
    pages every worker maps), or None where it cannot be read."""
    try:
        return proc.memory_full_info().uss
    except Exception:  # noqa: BLE001 - no permission, or the process is gone
        return None


def function_name(fn):
    """What a trace calls ``fn``: its qualified name (a partial's function's, a method's)."""
    while isinstance(fn, partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None) or getattr(type(fn), "__qualname__", "?")
    return name


def _plain(value):
    """A sweep parameter as a trace can save it (JSON): numbers, strings, booleans and None
    as they are, anything else as its repr (shortened)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class TaskRecord:
    """One task or chunk. Times are perf_counter_ns; 0 where not (yet) known."""

    __slots__ = ("task", "name", "kind", "items", "worker", "pid", "submit", "pickle", "nbytes", "arena",
                 "start", "loaded", "ran", "pickled", "done", "unpickle", "result_bytes", "result_arena",
                 "status", "retries")

    def __init__(self, task, name, kind, items):
        self.task = task
        self.name = name
        self.kind = kind        # "call", "chunk", "item" (serial map), "agents"
        self.items = items
        self.worker = -1        # the slot (process), thread index (thread), 0 (serial)
        self.pid = 0
        self.pickle = self.nbytes = self.arena = 0  # driver: pickling time (ns), bytes, arena bytes
        self.start = self.loaded = self.ran = self.pickled = 0  # worker clock
        self.done = self.unpickle = 0                # driver: delivery, unpickling time (ns)
        self.result_bytes = self.result_arena = 0
        self.status = "pending"  # then "ok", "error", "crashed", "timed out", "killed", "failed"
        self.retries = 0
        self.submit = clock()    # last: the record's own set-up is not the task's time

    def ran_here(self, worker, start, end, status):
        """An in-process task: no pickling on either side."""
        self.worker = worker
        self.pid = _PID
        self.start = self.loaded = start
        self.ran = self.pickled = self.done = end
        self.status = status


_PID = os.getpid()


class Recorder:
    """Everything one executor's traces saw. Appends only (list.append is atomic), so
    backends may record from any thread; a Trace is a window over it."""

    def __init__(self, backend, max_workers):
        self.backend_name = backend.name
        self.max_workers = max_workers
        self.tasks = []
        self.memory = []    # (ns, pid, rss bytes)
        self.uss = []       # (ns, pid, uss bytes), every USS_EVERY-th sample
        self.started = {}   # worker pid -> when it started (ns; before the trace for most)
        self.events = []    # (ns, pid, name, text): worker deaths
        self.runs = []      # (ns, sweep function, run index, parameters, error text or None)
        self.pids = {}      # worker pid -> slot, learned from the tasks they ran
        self.driver_pid = os.getpid()
        self._ids = itertools.count()
        self._processes = backend.traced_processes
        self.places = backend.worker_places()  # worker -> where it runs (MPI: its node)
        self._stop = threading.Event()
        self._sampler = None

    def task(self, fn, kind, items):
        """A new record for a task of ``fn`` (submitted now)."""
        rec = TaskRecord(next(self._ids), function_name(fn), kind, items)
        self.tasks.append(rec)
        return rec

    def sweep_run(self, fn, index, params, error):
        """A sweep's run ``index`` came back (its row is made): its parameters, and the error
        text if it failed."""
        self.runs.append((clock(), function_name(fn), index, {k: _plain(v) for k, v in params.items()}, error))

    # ---- memory and deaths

    def start_sampling(self):
        self._sampler = threading.Thread(target=self._sample, name="shoal-trace-sampler", daemon=True)
        self._sampler.start()

    def stop_sampling(self):
        self._stop.set()
        sampler = self._sampler
        if sampler is not None and sampler is not threading.current_thread():
            sampler.join(1.0)

    def _sample(self):
        try:
            import psutil
        except ImportError:  # no memory samples; deaths are still seen below
            psutil = None
        handles = {}
        alive = set()
        rounds = itertools.count()
        while True:
            uss = next(rounds) % USS_EVERY == 0
            try:
                pids = self._processes()
            except Exception:  # noqa: BLE001 - the executor is going away
                pids = []
            now = clock()
            current = set(pids)
            for pid in alive - current:
                if not self._stop.is_set():
                    self.events.append((now, pid, "worker exited", f"process {pid} left the pool"))
            alive = current - {self.driver_pid}
            for pid in [self.driver_pid, *pids]:
                if psutil is None:
                    break
                proc = handles.get(pid)
                try:
                    if proc is None:
                        proc = handles[pid] = psutil.Process(pid)
                        if pid != self.driver_pid:
                            self.started[pid] = started_ns(proc, now)
                    self.memory.append((now, pid, proc.memory_info().rss))
                    if uss:
                        private = unique_memory(proc)
                        if private is not None:
                            self.uss.append((now, pid, private))
                except Exception:  # noqa: BLE001 - it exited between the list and the read
                    handles.pop(pid, None)
            if self._stop.wait(SAMPLE_S):
                return


class Trace:
    """The tasks an executor ran while this trace was on, where and when.

    Use ``with ex.trace() as t:`` around a region, or ``Executor(..., trace=True)`` and
    ``ex.trace_data()``. ``tasks()`` gives one row per task (a pandas DataFrame when pandas is
    importable), ``summary()`` where the time went, ``save(path)`` a Chrome trace (Perfetto,
    chrome://tracing) that ``python -m shoal report`` turns into an HTML page."""

    def __init__(self, recorder=None, on_exit=None, *, data=None):
        self._recorder = recorder
        self._on_exit = on_exit
        self._data = data       # a loaded trace: the saved "shoalTrace" dict
        if recorder is not None:
            self._first = len(recorder.tasks)
            self._t0 = clock()
        self._end = None        # (tasks index, ns) once stopped

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self):
        """Ends the window: later tasks are not part of this trace. Safe to call twice."""
        if self._end is None and self._recorder is not None:
            self._end = (len(self._recorder.tasks), clock())
            if self._on_exit is not None:
                self._on_exit()

    # ---- data

    def _records(self):
        rec = self._recorder
        stop = None if self._end is None else self._end[0]
        return rec.tasks[self._first:stop]

    def data(self):
        """Everything this trace holds, as plain values (seconds since the trace began); what
        ``save`` writes under the key ``shoalTrace``."""
        if self._data is not None:
            return self._data
        rec = self._recorder
        t0 = self._t0
        end = clock() if self._end is None else self._end[1]
        records = self._records()
        for r in records:
            if r.pid and r.worker >= 0 and r.pid != rec.driver_pid:
                rec.pids.setdefault(r.pid, r.worker)
        end = max([end] + [r.done for r in records])
        s = 1e-9
        rows = []
        for r in records:
            rows.append({
                "task": r.task, "function": r.name, "kind": r.kind, "items": r.items,
                "worker": r.worker, "pid": r.pid, "status": r.status, "retries": r.retries,
                "submitted": (r.submit - t0) * s,
                "started": (r.start - t0) * s if r.start else None,
                "loaded": (r.loaded - t0) * s if r.start else None,
                "ran": (r.ran - t0) * s if r.start else None,
                "ended": (r.pickled - t0) * s if r.start else None,
                "delivered": (r.done - t0) * s if r.done else None,
                "run_s": (r.ran - r.loaded) * s if r.start else None,
                "driver_pickle_s": r.pickle * s, "driver_unpickle_s": r.unpickle * s,
                "worker_unpickle_s": (r.loaded - r.start) * s if r.start else 0.0,
                "worker_pickle_s": (r.pickled - r.ran) * s if r.start else 0.0,
                "bytes_sent": r.nbytes, "arena_sent": r.arena,
                "bytes_received": r.result_bytes, "arena_received": r.result_arena,
            })
        pids = dict(rec.pids)
        workers = sorted({r["worker"] for r in rows if r["worker"] >= 0} | set(pids.values())
                         | set(range(rec.max_workers)))
        return {
            "version": 1, "backend": rec.backend_name, "max_workers": rec.max_workers,
            "duration": (end - t0) * s, "workers": workers, "driver_pid": rec.driver_pid,
            "pids": {str(p): w for p, w in pids.items()},
            "places": {str(w): place for w, place in rec.places.items()},
            "tasks": rows,
            # The sample just before the trace began too (the sampler starts before it), at 0.
            "memory": [(max(0, n - t0) * s, pid, rss) for n, pid, rss in rec.memory
                       if t0 - SAMPLE_S * 1e9 <= n <= end],
            "uss": [(max(0, n - t0) * s, pid, uss) for n, pid, uss in rec.uss
                    if t0 - SAMPLE_S * USS_EVERY * 1e9 <= n <= end],
            "events": [((n - t0) * s, pid, name, text) for n, pid, name, text in rec.events if t0 <= n <= end],
            # Each sampled worker's start (seconds since the trace began: < 0 before it).
            "started": {str(pid): (n - t0) * s for pid, n in list(rec.started.items()) if n <= end},
            # Each sweep run whose row was made while the trace was on: when, and its parameters.
            "runs": [{"sweep": name, "index": index, "params": params, "error": error, "done": (n - t0) * s}
                     for n, name, index, params, error in rec.runs if t0 <= n <= end],
        }

    def tasks(self):
        """One row per task or chunk: a pandas DataFrame when pandas is importable, else a list
        of dicts. Times are seconds since the trace began."""
        rows = self.data()["tasks"]
        try:
            import pandas
        except ImportError:
            return rows
        return pandas.DataFrame(rows)

    def summary(self, file=None):
        """Where the time went, in a few lines (also printed to ``file`` if given)."""
        from ._trace_summary import summary_text

        text = summary_text(self.data())
        if file is not None:
            print(text, file=file)
        return text

    def advice(self):
        """The one sentence of advice of ``summary`` (None when no clear cause stands out)."""
        from ._trace_summary import analyse

        return analyse(self.data())["advice"]

    def chrome(self):
        """The trace as a Chrome trace event dict (``{"traceEvents": [...], ...}``)."""
        from ._trace_chrome import to_chrome

        return to_chrome(self.data())

    def save(self, path):
        """Writes the Chrome trace event format (open it in https://ui.perfetto.dev or
        chrome://tracing; ``python -m shoal report`` makes an HTML page of it)."""
        with open(path, "w") as f:
            json.dump(self.chrome(), f, separators=(",", ":"))

    @classmethod
    def load(cls, path):
        """A trace saved by :meth:`save`."""
        with open(path) as f:
            doc = json.load(f)
        data = doc.get("shoalTrace") if isinstance(doc, dict) else None
        if data is None:
            raise ValueError(f"{path}: not a trace saved by shoal (no 'shoalTrace' key)")
        return cls(data=data)

    def __repr__(self):
        d = self.data()
        return f"<shoal.Trace {len(d['tasks'])} tasks over {d['duration']:.3f} s on {len(d['workers'])} workers>"
