"""A node leader: relays tasks between MPI and this node's shoal process pool.

    driver ──MPI batch──► leader main loop ──Executor.submit──► zygote's workers (rings, arena)
    driver ◄─MPI batch─── leader main loop ◄─done callbacks──── local futures

The leader's zygote is started before MPI is initialised (see ``__main__``); its workers are
forked by the zygote, never by this process, and never touch MPI. One local executor per
driver-side executor ("session"), built with that executor's settings. The loop never makes
a blocking MPI call: it probes, and naps a little longer each time nothing happened, up to
``_wire.IDLE_NAP`` (a blocking MPI receive would spin a core that the workers need). While
local tasks run it waits on one of them instead, which takes their results in this thread.
"""
import collections
import os
import socket
import sys
import threading
import time
from concurrent.futures import CancelledError, TimeoutError

from ._shares import drop_shared, place_shared
from .agents import run_operation
from ._wire import DEFAULT_THRESHOLD, Outbox, backoff, dumps, dumps_error, loads, receive

HEARTBEAT_S = 1.0      # a leader that sent nothing for this long sends a heartbeat


class _Session:
    __slots__ = ("executor", "functions", "threshold", "groups", "sampler")

    def __init__(self, executor, threshold):
        self.executor = executor
        self.sampler = None  # a _Sampler while the driver traces this session
        self.groups = {}     # driver's group id -> this node's AgentGroup of its block
        self.functions = {}  # fn_id -> function, or the exception its pickle raised
        self.threshold = threshold


class _ToDriver:
    """sys.stdout / sys.stderr of a leader while it serves. Its local executors write what their
    workers print here before they resolve the task's future, so it reaches the driver (its
    sys.stdout or sys.stderr) ahead of that task's result. The leader's own messages go to
    ``sys.__stderr__``."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, replies, fd):
        self._replies = replies
        self._fd = fd  # 1: stdout, 2: stderr

    def write(self, text):
        if text:
            self._replies.append((("out", self._fd, str(text)), ()))
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False

    def writable(self):
        return True


class _Capture:
    """The tracer of a leader's local executor while it submits a task the driver traces: the
    executor records the task here (its worker, and the worker's clock around the run), and the
    reply carries those times back (``_timing``)."""

    def __init__(self):
        self._last = threading.local()

    def task(self, fn, kind, items):
        from .._trace import TaskRecord

        rec = self._last.rec = TaskRecord(0, "", kind, items)
        return rec

    def take(self):
        rec, self._last.rec = getattr(self._last, "rec", None), None
        return rec


class _Sampler:
    """While the driver traces a session: its workers' resident memory every ``_trace.SAMPLE_S``,
    sent to the driver with the leader's next batch (``("mem", ...)``: the driver has no view
    of this node's processes)."""

    def __init__(self, sid, executor, replies):
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(sid, executor, replies), name="shoal-mpi-sampler",
                         daemon=True).start()

    def _run(self, sid, executor, replies):
        try:
            import psutil
        except ImportError:  # no memory samples, as on one machine
            return
        from .._trace import SAMPLE_S, USS_EVERY, started_ns, unique_memory

        handles = {}
        rounds = 0
        while not self._stop.is_set():
            now = time.perf_counter_ns()
            samples, private, started = [], [], []
            uss = rounds % USS_EVERY == 0
            rounds += 1
            try:
                pids = executor.worker_pids()
            except Exception:  # noqa: BLE001 - the executor is closing
                pids = []
            for pid in pids:
                try:
                    proc = handles.get(pid)
                    if proc is None:
                        proc = handles[pid] = psutil.Process(pid)
                        started.append((pid, started_ns(proc, now)))
                    samples.append((now, pid, proc.memory_info().rss))
                    unique = unique_memory(proc) if uss else None
                    if unique is not None:
                        private.append((now, pid, unique))
                except Exception:  # noqa: BLE001 - it exited between the list and the read
                    handles.pop(pid, None)
            if samples:
                replies.append((("mem", sid, samples, private, started, time.perf_counter_ns()), ()))
            self._stop.wait(SAMPLE_S)

    def stop(self):
        self._stop.set()


def _timing(rec):
    """What the driver needs of a traced task's record: (worker slot, pid, start, loaded, ran,
    pickled, retries, this leader's clock now); None when the worker sent no times."""
    if rec is None or not rec.start:
        return None
    return (rec.worker, rec.pid, rec.start, rec.loaded, rec.ran, rec.pickled, rec.retries,
            time.perf_counter_ns())


def _stop(executor, kill):
    """Shuts a local executor down; ``kill``: its running tasks too (the driver gave up on them)."""
    executor.shutdown(wait=True, kill_workers=kill)


class Leader:
    def __init__(self, comm, MPI, workers, timeout):
        from .._main_namespace import keep_apart

        keep_apart()  # the script's functions get their own __main__ here, not the launcher's
        self.comm = comm
        self.MPI = MPI
        self.workers = workers
        self.timeout = timeout
        self.outbox = Outbox(comm, MPI)
        self.sessions = {}
        self.running = {}  # task id -> local future, oldest first
        self.done = collections.deque()   # (task id, is chunk, local future, session)
        self.replies = collections.deque()  # ops ready to send from other threads
        self.traced = {}  # task id -> its local TaskRecord (the driver traces it)
        self._capture = _Capture()
        self.wake = threading.Event()
        self._agents = None  # threads that run agent operations, made at the first one

    # ---------------------------------------------------------------- main loop

    def serve(self):
        """Serves until the driver says quit or goes silent. Returns True when the driver will
        call MPI_Finalize (so must this rank), False when it will not (a lost peer, a failed
        script) or is gone."""
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _ToDriver(self.replies, 1), _ToDriver(self.replies, 2)
        try:
            return self._serve()
        finally:
            sys.stdout, sys.stderr = streams

    def _serve(self):
        comm, MPI = self.comm, self.MPI
        status = MPI.Status()
        self.outbox.send(0, [("hello", socket.gethostname(), os.getpid(), self.workers)])
        now = time.monotonic()
        last_heard = last_sent = last_active = now
        wake = self.wake
        while True:
            heard = active = False
            while True:
                msg = receive(comm, MPI, status, 0)
                if msg is None:
                    break
                heard = True
                _, ops, bufs = msg
                if ops != [("ping",)]:  # a ping is no work: the back-off goes on
                    active = True
                for op in ops:
                    if op[0] == "quit":
                        self._close_all(kill=op[1])
                        self.outbox.send(0, [("bye",)])
                        self.outbox.flush(5.0)
                        return op[2]
                    self._handle(op, bufs)
            ops, bufs = self._finished()
            if ops:
                self.outbox.send(0, ops, bufs)
            self.outbox.progress()
            now = time.monotonic()
            if heard:  # the driver pings at least every second
                last_heard = now
            if active:
                last_active = now
            if ops:
                last_sent = last_active = now
            elif now - last_sent > HEARTBEAT_S:
                self.outbox.send(0, [("beat",)])
                last_sent = now
            if now - last_heard > self.timeout:
                sys.__stderr__.write(f"shoal.mpi: leader rank {comm.Get_rank()} heard nothing from the driver "
                                 f"for {self.timeout:g} s; stopping\n")
                self._close_all(kill=True)
                return None
            nap = backoff(now - last_active)
            running = self.running
            if running and not self.done:
                # Wait on a local task itself: a waiting caller takes the pool's results in
                # this thread (no hand-over from the pool's completion thread), and the
                # wait does not hold the GIL. MPI is probed again within a millisecond.
                try:
                    oldest = next(iter(running.values()))
                    oldest.exception(timeout=min(max(nap, 0.0002), 0.001))
                except (RuntimeError, StopIteration, TimeoutError, CancelledError):
                    pass
            elif nap == 0.0:
                time.sleep(0)
            else:
                wake.wait(nap)
                wake.clear()

    # ---------------------------------------------------------------- driver operations

    def _handle(self, op, bufs):
        kind = op[0]
        if kind == "call" or kind == "chunk" or kind == "agent" or kind == "alone":
            _, sid, tid, fn_id, blob, b0, nb = op
            sess = self.sessions.get(sid)
            try:
                if sess is None:
                    raise RuntimeError(f"shoal.mpi: no session {sid} on this leader")
                fn = sess.functions[fn_id]
                if isinstance(fn, BaseException):
                    raise fn
                payload = loads(blob, bufs[b0:b0 + nb])
                extra = payload[2] if kind != "agent" and len(payload) == 3 else {}
                backend = sess.executor._backend
                placements, limit, traced = None, extra.get("limit"), extra.get("trace")
                if "view" in extra:
                    # A call's (map, sweep, joblib): its arrays are the node's copies, in the
                    # arena; the workers get them in place, with the call's view.
                    placements = backend.placements(view=extra["view"], located=extra["view"])
                if traced:
                    backend.tracer = self._capture  # only around this submit, in this thread
                try:
                    if kind == "call" and not extra:
                        args, kwargs = payload
                        fut = sess.executor.submit(fn, *args, **kwargs)
                    elif kind == "call" or kind == "alone":  # alone: only on an idle worker here too
                        args, kwargs = payload[:2]
                        fut = sess.executor._submit_call(fn, args, kwargs, placements, kind == "alone", limit)
                    elif kind == "agent":
                        # The node's group blocks while its workers run the operation: a thread
                        # of its own, so this loop goes on relaying (operations on one group
                        # arrive one at a time).
                        fut = self._agent_threads().submit(run_operation, sess, fn, payload)
                    else:
                        # The local backend's own chunk: bare items, coroutine functions awaited,
                        # the run time measured in the worker, as on one machine.
                        items, star = payload[:2]
                        fut = backend.submit_chunk(fn, items, star, limit, placements=placements)
                finally:
                    if placements is not None:
                        placements.close()  # each lives on while this task uses it
                    if traced:
                        backend.tracer = None
                        rec = self._capture.take()
                if traced and rec is not None:
                    self.traced[tid] = rec
            except BaseException as exc:  # noqa: BLE001 - this task fails, the leader goes on
                self.replies.append((("err", tid, dumps_error(exc)), ()))
                return
            done, wake, chunk, running = self.done, self.wake, kind == "chunk", self.running
            running[tid] = fut
            fut.add_done_callback(lambda f: (running.pop(tid, None), done.append((tid, chunk, f, sess)), wake.set()))
        elif kind == "fn":
            _, sid, fn_id, blob, b0, nb = op
            sess = self.sessions.get(sid)
            if sess is not None:
                try:
                    sess.functions[fn_id] = loads(blob, bufs[b0:b0 + nb])
                except BaseException as exc:  # noqa: BLE001 - its tasks fail with this
                    sess.functions[fn_id] = exc
        elif kind == "sample":  # the driver's trace began or ended
            _, sid, on = op
            sess = self.sessions.get(sid)
            if sess is not None and on and sess.sampler is None:
                sess.sampler = _Sampler(sid, sess.executor, self.replies)
            elif sess is not None and not on and sess.sampler is not None:
                sess.sampler.stop()
                sess.sampler = None
        elif kind == "forget":  # the driver's function is gone: so is this node's copy
            _, sid, fn_id = op
            sess = self.sessions.get(sid)
            if sess is not None:
                sess.functions.pop(fn_id, None)
        elif kind == "share":
            _, key, blob, b0, nb = op
            import shoal

            try:
                # The value on the received buffers, placed once in this node's arena: the tasks
                # here get the node's handle and read it without a copy.
                place_shared(key, shoal.share(loads(blob, bufs[b0:b0 + nb])))
            except BaseException as exc:  # noqa: BLE001 - the tasks that use it fail with this
                sys.__stderr__.write(f"shoal.mpi: shared object {key} could not be placed: {exc!r}\n")
        elif kind == "drop_agents":
            _, sid, gid = op
            sess = self.sessions.get(sid)
            group = sess.groups.pop(gid, None) if sess is not None else None
            if group is not None:
                self._agent_threads().submit(group.close)
        elif kind == "unshare":
            for key in op[1]:
                drop_shared(key)
        elif kind == "open":
            _, sid, blob, b0, nb = op
            self._open(sid, loads(blob, bufs[b0:b0 + nb]))
        elif kind == "close":
            _, sid, kill = op
            self._close(sid, kill)
        # "ping": nothing to do; hearing it is the point.

    def _agent_threads(self):
        if self._agents is None:
            from concurrent.futures import ThreadPoolExecutor

            self._agents = ThreadPoolExecutor(4, thread_name_prefix="shoal-mpi-agents")
        return self._agents

    def _open(self, sid, cfg):
        import shoal

        try:
            for p in reversed(cfg.pop("sys_path")):  # the driver's script folder, its modules
                if p not in sys.path:
                    sys.path.insert(0, p)
            threshold = cfg.get("buffer_threshold") or DEFAULT_THRESHOLD
            ex = shoal.Executor(max_workers=self.workers, backend="process", **cfg)
            self.sessions[sid] = _Session(ex, threshold)
            pids = ex.worker_pids()
            self.replies.append((("opened", sid, pids), ()))
        except BaseException as exc:  # noqa: BLE001 - told to the driver
            self.replies.append((("open_failed", sid, dumps_error(exc)), ()))

    def _close(self, sid, kill):
        sess = self.sessions.pop(sid, None)
        if sess is not None and sess.sampler is not None:
            sess.sampler.stop()

        def close():
            if sess is not None:
                _stop(sess.executor, kill)
            self.replies.append((("closed", sid), ()))
            self.wake.set()

        threading.Thread(target=close, name="shoal-mpi-close", daemon=True).start()

    def _close_all(self, kill):
        for sid in list(self.sessions):
            try:
                sess = self.sessions.pop(sid)
                if sess.sampler is not None:
                    sess.sampler.stop()
                _stop(sess.executor, kill)
            except BaseException:  # noqa: BLE001 - leaving anyway
                pass

    # ---------------------------------------------------------------- results

    def _finished(self):
        """The ops and buffers of everything finished since the last call."""
        ops, bufs = [], []
        replies = self.replies
        text = []  # a run of one stream's output, sent as one op
        while replies:
            op, b = replies.popleft()
            if op[0] == "out":
                if text and ops[-1][1] != op[1]:
                    ops[-1] = ("out", ops[-1][1], "".join(text))
                    text = []
                if not text:
                    ops.append(op)
                text.append(op[2])
                continue
            if text:
                ops[-1] = ("out", ops[-1][1], "".join(text))
                text = []
            ops.append(op)
            bufs.extend(b)
        if text:
            ops[-1] = ("out", ops[-1][1], "".join(text))
        done = self.done
        while done:
            tid, chunk, fut, sess = done.popleft()
            exc = fut.exception()
            if exc is None:
                try:
                    value = fut.result()
                    if chunk:
                        value = _chunk_reply(value)
                    blob, b = dumps(value, sess.threshold)
                except BaseException as e:  # noqa: BLE001 - a result that cannot travel fails alone
                    ops.append(("err", tid, dumps_error(e), _timing(self.traced.pop(tid, None))))
                    continue
                ops.append(("ok", tid, blob, len(bufs), len(b), _timing(self.traced.pop(tid, None))))
                bufs.extend(b)
            else:
                ops.append(("err", tid, dumps_error(exc, _traceback_text(exc)), _timing(self.traced.pop(tid, None))))
        return ops, bufs


def _chunk_reply(outcome):
    """A local chunk's ChunkOutcome as the driver receives it: (results, pickled error or None,
    seconds). Results the worker pickled one by one are loaded here (on the node's arena); one
    that fails to load ends the chunk at its place, with its error."""
    from .._pickle import iter_items

    per_item, data = outcome.results
    err = outcome.error
    if per_item:
        results, it = [], iter_items(outcome.results, outcome.buffers)
        for _ in range(len(data)):
            try:
                results.append(next(it))
            except Exception as exc:  # noqa: BLE001 - this item's error; the chunk ends here
                err = (exc, None)
                break
    else:
        results = data
    if err is not None:
        err = dumps_error(*err)
    return results, err, outcome.seconds


def _traceback_text(exc):
    """What the driver shows as the ``__cause__`` of a task's exception: the worker's traceback
    when the exception came from a worker, else this leader's whole chain (an
    InitializerError's cause, which does not survive pickling, included)."""
    from .._errors import RemoteTraceback

    cause = exc.__cause__
    if type(cause) is RemoteTraceback and cause.__cause__ is None:
        return cause.tb
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
