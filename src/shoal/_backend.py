"""The backend seam: what every backend implements, and the one table that builds them.

The executor, map, sweep, agents and the joblib backend talk to a backend only through
:class:`Backend` (and an agent group to its :class:`AgentTransport`). After construction no code
outside a backend asks which backend it drives. To add a backend, subclass :class:`Backend`,
implement every abstract method, and add one line to ``_TABLE`` (docs/design.md, "Adding a
backend", lists what each method must guarantee).
"""
import abc
import importlib
from typing import Any, Callable, NamedTuple

__all__ = ["Backend", "AgentTransport", "BackendConfig", "ChunkOutcome", "make_backend", "BACKEND_NAMES"]


class BackendConfig(NamedTuple):
    """What Executor(...) was given, checked; every backend is built from one of these."""

    max_workers: int
    initializer: Callable[..., Any] | None = None
    initargs: tuple = ()
    retries: int = 2
    preload: tuple = ()
    max_tasks_per_worker: int | None = None
    buffer_threshold: int | None = 64 * 1024
    concurrency: int = 1
    event_loop: Any = "asyncio"
    threads_per_worker: int | str | None = None  # native thread pools per worker (_threads.py)
    task_timeout: float | None = None  # seconds a task may run; None: no limit


class ChunkOutcome(NamedTuple):
    """What the future of :meth:`Backend.submit_chunk` resolves to.

    ``results`` is ``(per_item, data)``: ``data`` is the list of results when ``per_item`` is
    False, else one pickle per item to load with ``buffers`` (see ``_pickle.iter_items``).
    ``error`` is None, or ``(exception, traceback text or None)`` of the item after the last
    result (the items after it did not run). ``seconds`` is the chunk's run time in the worker;
    ``nbytes`` what its arguments and results held (map() caps the chunk size by it)."""

    results: tuple
    error: tuple | None
    seconds: float
    buffers: list | None = None
    nbytes: int = 0


class Backend(abc.ABC):
    """Where tasks run. One instance per executor, built by :func:`make_backend`.

    Threads: ``submit``, ``submit_chunk`` and the agent transport may be called from any thread
    at once; ``shutdown`` may race with them (a task submitted after shutdown began fails its
    future or raises RuntimeError, never hangs)."""

    name = "?"             # shown in reprs and messages only; never compared
    checkpoints = False    # agents' workers can die: a group can be rebuilt from checkpoints
    stops_tasks = False    # can stop a running task (task_timeout, Future.kill())
    # Why not, where stops_tasks is False (in the errors of task_timeout and Future.kill()).
    unstoppable = "it runs tasks on threads or in the caller, and a running thread cannot be stopped"
    # The executor's _trace.Recorder while a trace is on, else None: a backend then records each
    # task (Recorder.task at submit) and fills in where and when it ran (see _trace.py).
    tracer = None

    def __init__(self, config: BackendConfig):
        self.config = config
        self.check_limit(config.task_timeout)

    def check_limit(self, limit):
        """Raises ValueError if ``limit`` (a task_timeout, None for none) cannot be kept here."""
        if limit is not None and not self.stops_tasks:
            raise ValueError(f"shoal: task_timeout is not supported on the {self.name} backend: "
                             f"{self.unstoppable}; use backend='process' (its workers can be killed "
                             "and replaced)")

    def unkillable(self):
        """Why no worker may be killed now for a task's limit or Future.kill() (the executor
        replaces this with a check for agent groups without checkpoints), or None."""
        return None

    # ---- sizes

    @property
    def slots(self) -> int:
        """The number of worker slots; agents are split into one block per slot."""
        return self.config.max_workers

    @property
    def retries(self) -> int:
        """How often a task whose worker died is run again before it fails."""
        return self.config.retries

    # ---- tasks

    def prepare(self, fn, args, kwargs):
        """(fn, args, kwargs) as this backend's tasks receive them. A backend that runs tasks in
        the caller's process replaces ``shoal.share`` handles by their values here; one that
        pickles leaves them (a worker maps the shared buffers). Called in the caller."""
        return fn, args, kwargs

    def prepare_items(self, fn, iterables):
        """(fn, iterables) for map()/starmap(): the same replacement, item by item, lazily."""
        return fn, iterables

    def prepare_star_items(self, fn, items):
        """(fn, items) for starmap(): each item a tuple of arguments."""
        return fn, items

    def prepare_value(self, value):
        """One argument value (a sweep's parameter, an agent's argument), as tasks receive it."""
        return value

    @abc.abstractmethod
    def submit(self, fn, args, kwargs, limit=None, alone=False):
        """Schedules ``fn(*args, **kwargs)``; returns a :class:`shoal.Future`. Arguments that
        cannot be pickled raise here, in the caller. ``limit``: seconds the task may run
        (only where ``stops_tasks``); past it the future fails with TaskTimeoutError.
        ``alone``: the task starts only on a worker that has nothing else to run, never queued
        behind a task that may run long (a joblib batch: ``generator_unordered`` returns the
        quick ones first); it waits in the order it came while no worker is free."""

    @abc.abstractmethod
    def submit_chunk(self, fn, items, star=True, limit=None):
        """Schedules one chunk of map() items (``fn(*item)`` when ``star``, else ``fn(item)``);
        returns a future of a :class:`ChunkOutcome`. A worker that dies fails it with
        WorkerCrashedError once its retries are used up. ``limit`` applies to each item; an
        item past it fails the whole chunk with TaskTimeoutError."""

    def placements(self, **options):
        """A scope for one call (map, sweep, a joblib Parallel) in which a large buffer that
        several items pass is placed once (``_arena.Placements``), passed as ``placements=`` to
        ``submit``/``submit_chunk``; None (the default) where tasks get the caller's objects."""
        return None

    def map(self, fn, args, *, star, timeout, chunksize, ordered, bar, length, max_workers, concurrency,
            limit=None):
        """The iterator behind Executor.map: by default a bounded window of chunks in flight
        (see _mapping.MapWindow); a backend that runs in the caller overrides it."""
        from ._mapping import MapWindow

        return iter(MapWindow(self, fn, args, timeout=timeout, chunksize=chunksize, ordered=ordered,
                              star=star, bar=bar, length=length, max_workers=max_workers,
                              concurrency=concurrency, limit=limit))

    def sweep_rows(self, job, ordered, bar):
        """The (index, row) generator of a sweep: by default its tasks on map's window."""
        return job.rows_parallel(ordered, bar)

    # ---- agents

    @abc.abstractmethod
    def agent_transport(self, group):
        """The :class:`AgentTransport` that carries ``group``'s operations to its agents."""

    # ---- lifetime

    @abc.abstractmethod
    def worker_pids(self):
        """Process ids of the live workers (empty for backends without processes)."""

    @abc.abstractmethod
    def cancel_all(self):
        """Cancels every task not yet handed to a worker (their futures are cancelled)."""

    @abc.abstractmethod
    def shutdown(self, wait, kill=False):
        """Stops the workers once the queued tasks ran (``kill``: now, failing what is queued).
        ``wait``: returns once they are gone. Safe to call twice."""

    def worker_places(self):
        """{worker index: where it runs} for a trace's labels, where that says more than the
        index (the MPI backend: each worker's node); {} otherwise."""
        return {}

    def traced_processes(self):
        """Process ids whose memory a trace samples (besides the driver's), and whose exit it
        notes: the live workers' if they are processes. Never starts workers."""
        return []

    def check(self):
        """Raises the executor's InitializerError if its initializer failed (backends that
        report it per task do nothing here)."""


class AgentTransport(abc.ABC):
    """Carries one agent group's operations to the blocks of agents (see _agents.py).

    ``blocks`` is ``[(slot, start, stop)]``: block ``b`` holds agents ``start..stop-1`` on
    worker slot ``slot``. ``retries`` is how often an operation is sent again to a block whose
    worker died (checkpointed groups and construction only)."""

    blocks: list
    retries: int = 0
    # True where the far side keeps a group's checkpoints itself (MPI: each node's own group),
    # so the driver's group saves none and restores nothing, yet checkpoint=True holds.
    checkpoints_elsewhere: bool = False

    @abc.abstractmethod
    def prepare(self, operation, extra, args, kwargs):
        """Whatever :meth:`launch` needs for every block of ``operation``, built in the caller
        (an argument that cannot be pickled raises here)."""

    @abc.abstractmethod
    def launch(self, operation, b):
        """Sends ``operation`` to block ``b``; returns a Future of its reply."""

    @abc.abstractmethod
    def outcome(self, fut):
        """(status, results, {position: exception} or None, saved states or None) of a reply;
        raises WorkerCrashedError if the block's worker died."""

    def restore(self, b):
        """Rebuilds block ``b`` from its checkpoint on the slot's new worker (only for backends
        whose ``checkpoints`` is True)."""
        raise AssertionError("this backend's agents cannot be lost")

    def finalizer(self):
        """A weakref.finalize that frees the agents if the group is dropped unclosed, or None."""
        return None

    def discard(self):
        """The group was closed: drop what the transport holds of its agents."""

    def operation_finished(self):
        """Called after each operation on the group (e.g. to return freed memory)."""


# name -> "module:class", imported when first used: a worker never imports the driver side.
_TABLE = {
    "process": "shoal.process.driver:ProcessBackend",
    "thread": "shoal._local:ThreadBackend",
    "serial": "shoal._local:SerialBackend",
    "mpi": "shoal.mpi.backend:MPIBackend",
}
BACKEND_NAMES = tuple(_TABLE)


def make_backend(name, config: BackendConfig) -> Backend:
    """The one factory: the backend registered under ``name``, built from ``config``."""
    where = _TABLE.get(name) if isinstance(name, str) else None
    if where is None:
        raise ValueError(f"backend must be one of {', '.join(map(repr, _TABLE))}, not {name!r}")
    module, _, cls = where.partition(":")
    return getattr(importlib.import_module(module), cls)(config)
