"""MPIBackend: an executor's tasks run on the node leaders of an MPI job (see hub.py)."""
import os
import sys
import threading
import time

from .._arena import COPY_ON_WRITE
from .._backend import Backend
from .._errors import ExecutorShutdownError, WorkerCrashedError
from .._functions import FunctionTable
from .._future import Future
from .hub import AGENT, ALONE, CALL, CHUNK, current
from ._wire import DEFAULT_THRESHOLD, CallPlacements, dumps

__all__ = ["MPIBackend"]


class _MPIFuture(Future):
    """A future whose waiter receives its result itself (see Hub.help)."""

    _shoal_hub = None

    def kill(self):
        raise RuntimeError("shoal: Future.kill() is not supported on the mpi backend yet: a leader "
                           "cannot be asked to stop one task; give the tasks a task_timeout (their "
                           "nodes stop them past it), or use backend='process'")

    def result(self, timeout=None):
        if self._state != "FINISHED" and self._shoal_hub is not None:
            self._shoal_hub.help(self, timeout)
        return super().result(timeout=0 if timeout is not None and not self.done() else timeout)

    def exception(self, timeout=None):
        if self._state != "FINISHED" and self._shoal_hub is not None:
            self._shoal_hub.help(self, timeout)
        return super().exception(timeout=0 if timeout is not None and not self.done() else timeout)


def _traced_done(rec, fut):
    """A traced task's record as its future completes: the driver sees no worker's clock."""
    rec.done = time.perf_counter_ns()
    if fut.cancelled():
        rec.status = "failed"
    else:
        exc = fut.exception()
        rec.status = "ok" if exc is None else "crashed" if isinstance(exc, WorkerCrashedError) else "error"


class MPIBackend(Backend):
    """Runs tasks on the leader ranks' local process pools. Built by ``make_backend("mpi", ...)``
    in a script started with ``mpiexec -n N python -m shoal.mpi script.py``.

    The workers per leader are the launcher's (``--workers-per-rank``); ``config.max_workers``
    does not change them. The other settings (initializer, retries, preload, ...) apply to every
    leader's local executor."""

    name = "mpi"
    stops_tasks = True  # task_timeout: each node's executor stops its tasks past the limit
    _tracer = None

    @property
    def tracer(self):
        return self._tracer

    @tracer.setter
    def tracer(self, recorder):
        """The executor's trace began or ended: the leaders sample their workers' memory
        while it is on (they send it; this process cannot see their processes)."""
        on = recorder is not None
        if on != (self._tracer is not None):
            self._hub.sample(self._sid, on)
        self._tracer = recorder

    def __init__(self, config):
        super().__init__(config)
        self._hub = current()
        self._threshold = config.buffer_threshold if config.buffer_threshold is not None else DEFAULT_THRESHOLD
        cfg = dict(initializer=config.initializer, initargs=tuple(config.initargs), retries=config.retries,
                   preload=tuple(config.preload), max_tasks_per_worker=config.max_tasks_per_worker,
                   buffer_threshold=config.buffer_threshold, concurrency=config.concurrency,
                   event_loop=config.event_loop, threads_per_worker=config.threads_per_worker, sys_path=[os.getcwd()] + list(sys.path))
        blob, bufs = dumps(cfg, self._threshold)  # an initializer that cannot be pickled raises here
        self._lock = threading.Lock()
        self._closed = False
        self._sid = self._hub.open_session(blob, bufs, self)
        sid, hub, threshold = self._sid, self._hub, self._threshold

        def encode(fn, held):
            shares = []
            blob, bufs = dumps(fn, threshold, shares)  # raises in the caller if it cannot be pickled
            return blob, bufs, shares

        # Each function is pickled once per executor and sent once to each leader that runs it;
        # forgotten (here and on the leaders) once it is gone and no task uses it.
        self._functions = FunctionTable(encode, lambda fn_id, encoded: hub.define(sid, fn_id, *encoded),
                                        lambda fn_id: hub.forget(sid, fn_id))

    @property
    def slots(self):
        return sum(lead.workers for lead in self._hub.live_leaders()) or 1

    def _encode(self, payload, placements=None):
        """(blob, buffers, share handles) of a task's payload; raises if it cannot be pickled.
        With a call's ``placements``, its large arrays go as shares (see CallPlacements)."""
        shares = []
        blob, bufs = dumps(payload, self._threshold, shares, placements)
        return blob, bufs, shares

    def _submit_encoded(self, kind, fn, encoded, rank=None, items=1):
        if self._closed:  # shutdown began: the task fails, as on one machine (never hangs)
            fut = _MPIFuture()
            fut.set_running_or_notify_cancel()
            fut._fail(ExecutorShutdownError("shoal: cannot run the task: the executor was shut down"))
            return fut
        functions = self._functions
        fn_id = functions.acquire(fn).fn_id
        blob, bufs, shares = encoded
        fut = _MPIFuture()
        fut.add_done_callback(lambda _, fn_id=fn_id: functions.release(fn_id))
        rec = None
        if self.tracer is not None and kind != AGENT:  # agents record their own calls
            # When it went out and came back here; where and when it ran arrives with its
            # result (Hub._timed), in the worker's clock translated to this one.
            rec = self.tracer.task(fn, "chunk" if kind == CHUNK else "call", items)
            rec.nbytes = len(blob)
            rec.arena = sum(b.nbytes for b in bufs)
            fut.add_done_callback(lambda f, rec=rec: _traced_done(rec, f))
        try:
            return self._hub.submit(self._sid, kind, fn_id, blob, bufs, fut, shares, rank, rec)
        except BaseException:
            functions.release(fn_id)
            raise

    def _submit(self, kind, fn, payload, items=1, placements=None, limit=None):
        # What the leader's own submit needs beyond the arguments: the view of the node's copies
        # of the call's arrays (passed in place), and the task's time limit (its node's executor
        # stops the task past it: TaskTimeoutError).
        extra = {}
        if placements is not None:
            extra["view"] = placements.view
        if self.tracer is not None:
            extra["trace"] = True  # the leader sends back the worker's times
        if limit is not None:
            reason = self.unkillable()
            if reason is not None:
                raise ValueError(f"shoal: task_timeout cannot be used now: {reason}")
            extra["limit"] = limit
        if extra:
            payload += (extra,)
        return self._submit_encoded(kind, fn, self._encode(payload, placements), items=items)

    def submit(self, fn, args, kwargs, limit=None, alone=False, placements=None):
        return self._submit(ALONE if alone else CALL, fn, (args, kwargs), placements=placements, limit=limit)

    def submit_chunk(self, fn, items, star=True, limit=None, placements=None):
        items = list(items)
        return self._submit(CHUNK, fn, (items, star), len(items), placements, limit)

    def placements(self, view=COPY_ON_WRITE, arrays_above=None, reducers=None):
        """A call's placements: each large numpy array its items pass crosses to each node once
        (``_wire.CallPlacements``). ``reducers`` (joblib's memmaps) do not apply: tasks get
        arrays."""
        return CallPlacements(view, self._threshold if arrays_above is None else arrays_above + 1)

    def map(self, fn, args, *, star, timeout, chunksize, ordered, bar, length, max_workers, concurrency,
            limit=None):
        # Chunks are sized for the workers the leaders have, not the executor's max_workers.
        return super().map(fn, args, star=star, timeout=timeout, chunksize=chunksize, ordered=ordered,
                           bar=bar, length=length, max_workers=self.slots, concurrency=concurrency,
                           limit=limit)

    def sweep_rows(self, job, ordered, bar):
        job.max_workers = self.slots  # the same rule as map's
        return job.rows_parallel(ordered, bar)

    def agent_transport(self, group):
        from .agents import MPIAgentTransport

        return MPIAgentTransport(group, self)

    def worker_places(self):
        return {lead.first_worker + s: f"rank {lead.rank} on {lead.host}"
                for lead in self._hub.live_leaders() for s in range(max(1, lead.workers))}

    def worker_pids(self):
        """The live leaders' workers (process ids on their own hosts)."""
        return [p for lead in self._hub.live_leaders() for p in lead.pids.get(self._sid, ())]

    def cancel_all(self):
        self._hub.cancel_session(self._sid)

    def shutdown(self, wait, kill=False):
        with self._lock:
            first, self._closed = not self._closed, True
        if kill:
            self.cancel_all()
        if not first and not kill:
            if wait:
                self._hub.wait_session(self._sid)
            return

        def close():
            if not kill:
                self._hub.wait_session(self._sid)
            try:
                self._hub.close_session(self._sid, kill)
            except Exception as exc:  # noqa: BLE001 - a lost leader was already reported
                sys.stderr.write(f"shoal.mpi: closing the leaders' executors: {exc}\n")

        if wait:
            close()
        else:
            threading.Thread(target=close, name="shoal-mpi-shutdown", daemon=True).start()
