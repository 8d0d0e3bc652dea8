"""The driver's side of MPI: one progress thread per process that talks to every leader.

    submit ─► pickle (caller) ─► queue ─► progress thread: credits per leader ─► MPI batch
    Future ◄── progress thread: unpickle, resolve ◄── MPI batch of results ◄── leader

Only the progress thread calls MPI. It probes without blocking and naps between probes, a
little longer each time nothing happened (a blocking MPI receive spins a core). A leader gets at
most ``2 × its workers`` tasks in flight (× the executors' ``concurrency``: credits), so every node's workers stay fed without one
node hoarding the queue; a task submitted ``alone`` (a joblib batch) goes only to a leader with
fewer tasks in flight than workers, and the queue behind it waits. A leader not heard from (results or a heartbeat, sent every second)
within the heartbeat timeout is lost: its tasks fail with LeaderLostError naming its rank and
host, and the other leaders go on.
"""
import collections
import itertools
import os
import sys
import threading
import time

from .._errors import RemoteTraceback
from ._errors import LeaderLostError, NoLeadersError
from ._wire import IDLE_NAP, Outbox, backoff, loads, receive

PING_S = 1.0
DEFAULT_TIMEOUT_S = 5.0
CALL, CHUNK, AGENT = "call", "chunk", "agent"
ALONE = "alone"  # a call started only on an idle worker (Backend.submit's ``alone``)

_hub = None


def install(hub):
    """Makes ``hub`` (or None) this process's hub: what ``backend="mpi"`` executors use."""
    global _hub
    _hub = hub


def current():
    """The hub of this process; NoLeadersError outside an MPI launch with leaders."""
    if _hub is None:
        raise NoLeadersError(
            "shoal: backend='mpi' needs node leaders: start the script with "
            "`mpiexec -n N python -m shoal.mpi script.py` (N >= 2), or use shoal.mpi.MPIExecutor() "
            "under plain `mpiexec -n N python script.py`")
    return _hub


class _Leader:
    __slots__ = ("rank", "host", "pid", "workers", "inflight", "last_heard", "last_sent", "alive",
                 "functions", "pids", "shares", "first_worker", "clock_offset")

    def __init__(self, rank):
        self.rank = rank
        self.host = "?"
        self.pid = None
        self.workers = 0
        self.inflight = {}        # task id -> task
        self.last_heard = self.last_sent = time.monotonic()
        self.alive = True
        self.functions = set()    # (session, fn_id) this leader holds
        self.pids = {}            # session -> its workers' pids
        self.shares = set()       # keys of the shoal.share'd objects this leader holds
        self.first_worker = 0     # its workers are the job's first_worker, first_worker + 1, ...
        self.clock_offset = None  # this clock minus the leader's (plus the least delay seen)

    def name(self):
        return f"rank {self.rank} on host {self.host!r} (pid {self.pid})"


class _Task:
    __slots__ = ("tid", "sid", "fn_id", "kind", "blob", "bufs", "future", "shares", "handles", "rank", "rec")

    def __init__(self, tid, sid, fn_id, kind, blob, bufs, future, shares=(), rank=None, rec=None):
        self.tid, self.sid, self.fn_id, self.kind = tid, sid, fn_id, kind
        self.blob, self.bufs, self.future, self.shares = blob, bufs, future, shares
        self.handles = None  # the shoal.share handles it uses, alive until it is sent
        self.rank = rank     # None: any leader; else only this one (an agent block lives there)
        self.rec = rec       # its _trace.TaskRecord while a trace is on


def _offset(lead, sent):
    """What turns ``lead``'s clock into this process's: the least (this clock's receive time
    minus the leader's send time) seen from it, so a time never comes after its message arrived
    here. ``sent``: the leader's clock as it sent the message being handled."""
    gap = time.perf_counter_ns() - sent
    lead.clock_offset = gap if lead.clock_offset is None else min(lead.clock_offset, gap)
    return lead.clock_offset


def _timed(lead, rec, timing):
    """Fills in a traced task's record from the times its leader sent (``leader._timing``), in
    this process's clock (``_offset``)."""
    worker, pid, start, loaded, ran, pickled, retries, sent = timing
    offset = _offset(lead, sent)
    rec.worker = lead.first_worker + worker
    rec.pid = pid
    rec.start, rec.loaded, rec.ran, rec.pickled = start + offset, loaded + offset, ran + offset, pickled + offset
    rec.retries = retries


class Hub:
    def __init__(self, comm, MPI, timeout=DEFAULT_TIMEOUT_S, startup_timeout=120.0):
        self.comm = comm
        self.MPI = MPI
        self.timeout = timeout
        self.outbox = Outbox(comm, MPI)
        self.leaders = {r: _Leader(r) for r in range(1, comm.Get_size())}
        self._status = MPI.Status()
        self._hello(startup_timeout)
        first = 0
        for r in sorted(self.leaders):  # one numbering of the job's workers, node by node
            self.leaders[r].first_worker = first
            first += max(1, self.leaders[r].workers)
        self._queue = collections.deque()   # tasks not yet placed on a leader
        self._pinned = collections.deque()  # tasks for one leader (agent operations): no credits
        self._queued = {}                   # task id -> task; cancel() takes it out
        self._control = collections.deque() # (rank, op, bufs) to send as they are
        self._functions = {}                # (session, fn_id) -> (blob, bufs, share keys)
        self._forgotten = collections.deque()  # (session, fn_id) the leaders are to forget
        self._shares = {}                   # share key -> (blob, bufs), while the handle lives
        self._sessions = {}                 # session -> {"outstanding": n, "backend": ...}
        self._replies = {}                  # (kind, session, rank) -> reply
        self._cond = threading.Condition()
        self._depth = 1                     # tasks per worker a leader is given (credits)
        self._ids = itertools.count(1)
        self._sids = itertools.count(1)
        self._wake = threading.Event()
        # Held while calling MPI or touching the leaders' state: by the progress thread, or by
        # a caller that sends its own task or waits for its own result (no thread hand-over).
        self._plock = threading.Lock()
        self._ready = collections.deque()   # (future, True and value | False and exception, task)
        self._stop = False
        self.lost = []                      # leaders lost so far
        self._thread = threading.Thread(target=self._run, name="shoal-mpi-progress", daemon=True)
        self._thread.start()

    def _hello(self, timeout):
        deadline = time.monotonic() + timeout
        waiting = set(self.leaders)
        while waiting:
            msg = receive(self.comm, self.MPI, self._status)
            if msg is None:
                if time.monotonic() > deadline:
                    raise NoLeadersError(f"shoal: MPI leader ranks {sorted(waiting)} did not start "
                                         f"within {timeout:g} s")
                time.sleep(0.001)
                continue
            src, ops, _ = msg
            for op in ops:
                if op[0] == "hello":
                    lead = self.leaders[src]
                    lead.host, lead.pid, lead.workers = op[1], op[2], op[3]
                    lead.last_heard = time.monotonic()
                    waiting.discard(src)

    # ---------------------------------------------------------------- called by backends

    def live_leaders(self):
        return [lead for lead in self.leaders.values() if lead.alive]

    def open_session(self, cfg_blob, cfg_bufs, backend, timeout=120.0):
        """Opens a local executor on every live leader; returns the session id."""
        sid = next(self._sids)
        with self._cond:
            self._sessions[sid] = {"outstanding": 0, "backend": backend}
            # Coroutine tasks wait side by side: each worker slot takes `concurrency` of them.
            self._depth = max(self._depth, backend.config.concurrency)
        ranks = [lead.rank for lead in self.live_leaders()]
        if not ranks:
            raise NoLeadersError("shoal: no MPI leader rank is left to run tasks")
        for r in ranks:
            self._control.append((r, ("open", sid, cfg_blob, 0, len(cfg_bufs)), cfg_bufs))
        self._wake.set()
        replies = self._wait_replies("opened", sid, ranks, timeout)
        for r, reply in replies.items():
            if reply[0] == "open_failed":
                exc, tb = loads(reply[2])
                if tb:
                    exc.__cause__ = RemoteTraceback(tb)
                raise exc
            self.leaders[r].pids[sid] = list(reply[2])
        return sid

    def close_session(self, sid, kill, timeout=60.0):
        ranks = [lead.rank for lead in self.live_leaders()]
        for r in ranks:
            self._control.append((r, ("close", sid, kill), ()))
        self._wake.set()
        try:
            self._wait_replies("closed", sid, ranks, timeout)
        finally:
            with self._cond:
                self._sessions.pop(sid, None)
                # The open executors' concurrency, not a closed one's, sets the prefetch.
                self._depth = max([s["backend"].config.concurrency for s in self._sessions.values()] + [1])
            for key in [k for k in list(self._functions) if k[0] == sid]:
                self._functions.pop(key, None)

    def _wait_replies(self, kind, sid, ranks, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = {r: self._replies.get((kind, sid, r)) for r in ranks}
                missing = [r for r, v in got.items() if v is None and self.leaders[r].alive]
                if not missing:
                    for r in ranks:
                        self._replies.pop((kind, sid, r), None)
                    return {r: v for r, v in got.items() if v is not None}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"shoal: MPI leader ranks {missing} did not answer {kind!r} "
                                       f"within {timeout:g} s")
                self._cond.wait(min(left, 0.1))

    def define(self, sid, fn_id, blob, bufs, shares=()):
        self._functions[(sid, fn_id)] = (blob, bufs, self._register(shares))

    def sample(self, sid, on):
        """Session ``sid``'s trace began (``on``) or ended: its leaders sample their workers'
        memory meanwhile. Any thread."""
        for lead in self.live_leaders():
            self._control.append((lead.rank, ("sample", sid, on), ()))
        self._wake.set()

    def forget(self, sid, fn_id):
        """Session ``sid``'s function ``fn_id`` is gone and no task uses it: its pickle goes (and
        what its buffers held), and the leaders that have it drop it. Any thread."""
        if self._functions.pop((sid, fn_id), None) is not None:
            self._forgotten.append((sid, fn_id))  # the progress thread tells the leaders

    def _register(self, handles):
        """Share keys of ``handles``, each pickled once (its buffers out of band) while it lives."""
        from ._wire import dumps, share_key

        keys = []
        for h in handles:
            key = share_key(h)
            if key not in self._shares:
                import weakref

                self._shares[key] = dumps(h)
                weakref.finalize(h, self._forget_share, key)
            keys.append(key)
        return tuple(dict.fromkeys(keys))

    def _forget_share(self, key):
        """The driver's handle is gone: its pickle goes, and the leaders drop their copies."""
        self._shares.pop(key, None)
        for lead in self.leaders.values():
            if key in lead.shares and lead.alive:
                lead.shares.discard(key)
                self._control.append((lead.rank, ("unshare", (key,)), ()))

    def submit(self, sid, kind, fn_id, blob, bufs, future, shares=(), rank=None, rec=None):
        """Queues a task (for leader ``rank`` only, when given); returns ``future``."""
        if self._stop:
            raise RuntimeError("shoal: the MPI job is ending; cannot schedule new tasks")
        if not any(lead.alive for lead in self.leaders.values()):
            raise LeaderLostError("shoal: every MPI leader rank was lost: "
                                  + "; ".join(lead.name() for lead in self.lost))
        tid = next(self._ids)
        task = _Task(tid, sid, fn_id, kind, blob, bufs, future, self._register(shares) if shares else (), rank, rec)
        if shares:
            task.handles = shares
        with self._cond:
            self._sessions[sid]["outstanding"] += 1
        future._canceller = lambda: self._cancel(tid)
        future._shoal_hub = self
        self._queued[tid] = task
        (self._queue if rank is None else self._pinned).append(task)
        if self._plock.acquire(blocking=False):
            try:
                self._send()
                self.outbox.progress()
            finally:
                self._plock.release()
        self._wake.set()  # the progress thread watches for the result
        return future

    def help(self, future, timeout=None):
        """Waits for ``future`` in the caller's thread, making MPI progress itself while the
        progress thread does not: its result is received and resolved here, with no hand-over
        between threads. Returns when it is done or the timeout passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        start = time.monotonic()
        while future._state in ("PENDING", "RUNNING"):
            if self._plock.acquire(blocking=False):
                try:
                    self._receive()
                    self._send()
                    self.outbox.progress()
                finally:
                    self._plock.release()
                self._deliver()
                if future._state not in ("PENDING", "RUNNING"):
                    return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if not any(lead.alive for lead in self.leaders.values()):
                return
            waited = now - start
            time.sleep(0 if waited < 0.0005 else 0.00005 if waited < 0.01 else 0.0005)

    def _deliver(self):
        """Completes the futures whose results were received (outside the lock: their callbacks
        may submit or wait)."""
        ready = self._ready
        while ready:
            try:
                future, ok, value, task = ready.popleft()
            except IndexError:
                return
            if ok:
                future._resolve(value)
            else:
                future._fail(value)
            if task is not None:
                self._finished(task)

    def _cancel(self, tid):
        task = self._queued.pop(tid, None)
        if task is None:
            return False  # already on a leader
        self._finished(task)
        return True

    def drop_agents(self, sid, gid, ranks):
        """A group was dropped unclosed: its leaders free its agents. Only queues (a finalizer)."""
        for r in ranks:
            self._control.append((r, ("drop_agents", sid, gid), ()))
        self._wake.set()

    def cancel_session(self, sid):
        for task in list(self._queue) + list(self._pinned):
            if task.sid == sid and self._queued.pop(task.tid, None) is not None:
                task.future._canceller = None
                task.future.cancel()
                self._finished(task)

    def _finished(self, task):
        with self._cond:
            s = self._sessions.get(task.sid)
            if s is not None:
                s["outstanding"] -= 1
                if s["outstanding"] == 0:
                    self._cond.notify_all()

    def wait_session(self, sid):
        """Blocks until the session has no task outstanding."""
        with self._cond:
            while True:
                s = self._sessions.get(sid)
                if s is None or s["outstanding"] <= 0:
                    return
                self._cond.wait(0.1)

    def backends(self):
        with self._cond:
            return [s["backend"] for s in self._sessions.values()]

    def stop(self, timeout=10.0, kill=False, finalize=True):
        """Tells every live leader to quit (``kill``: stopping what runs; ``finalize``: calling
        MPI_Finalize, as rank 0 will); returns once they said bye (or the timeout passed)."""
        self._stop = True
        for lead in self.live_leaders():
            self._control.append((lead.rank, ("quit", kill, finalize), ()))
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(lead.alive and ("bye", 0, lead.rank) not in self._replies for lead in self.leaders.values()):
                if time.monotonic() > deadline:
                    break
                self._cond.wait(0.05)
            self._quit = True
        self._wake.set()
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the progress thread

    def _run(self):
        last_active = time.monotonic()
        self._quit = False
        try:
            while not self._quit:
                with self._plock:
                    active = self._receive()
                    active |= self._send()
                    self.outbox.progress()
                    now = time.monotonic()
                    self._heartbeats(now)
                self._deliver()
                if active:
                    last_active = now
                nap = backoff(now - last_active)
                if nap < IDLE_NAP and not any(lead.inflight for lead in self.leaders.values()):
                    nap = IDLE_NAP  # nothing to wait for: a submit wakes us at once
                # Never a spin here: a caller waiting for its result makes progress itself.
                self._wake.wait(max(nap, 0.00005))
                self._wake.clear()
        except BaseException as exc:  # noqa: BLE001 - never die silently: fail what waits
            sys.stderr.write(f"shoal.mpi: the progress thread failed: {exc!r}\n")
            for lead in self.live_leaders():
                self._lose(lead, f"the driver's MPI progress thread failed ({exc!r})")
            self._deliver()
        finally:
            self.outbox.flush(2.0)

    def _receive(self):
        """Takes every waiting message, leader by leader (an MPI error is then its leader's)."""
        got = False
        for lead in list(self.leaders.values()):
            while lead.alive:
                try:
                    msg = receive(self.comm, self.MPI, self._status, lead.rank)
                except self.MPI.Exception as exc:
                    self._lose(lead, f"MPI reported: {exc.Get_error_string().strip()}")
                    break
                if msg is None:
                    break
                _, ops, bufs = msg
                got = got or ops != [("beat",)]  # a heartbeat is no work: the back-off goes on
                lead.last_heard = time.monotonic()
                for op in ops:
                    self._handle(lead, op, bufs)
        return got

    def _handle(self, lead, op, bufs):
        kind = op[0]
        if kind == "ok":
            _, tid, blob, b0, nb, timing = op
            task = lead.inflight.pop(tid, None)
            if task is None:
                return
            if task.rec is not None:
                task.rec.result_bytes = len(blob)
                task.rec.result_arena = sum(len(b) for b in bufs[b0:b0 + nb])
                if timing is not None:
                    _timed(lead, task.rec, timing)
            try:
                value = loads(blob, bufs[b0:b0 + nb])
                if task.kind == CHUNK:
                    from .._backend import ChunkOutcome

                    results, err, seconds = value
                    if err is not None:
                        err = loads(err)
                    nbytes = len(task.blob) + sum(b.nbytes for b in task.bufs) + len(blob) + sum(
                        len(b) for b in bufs[b0:b0 + nb])
                    value = ChunkOutcome((False, results), err, seconds, None, nbytes)
            except BaseException as exc:  # noqa: BLE001 - fails this task only
                self._ready.append((task.future, False, exc, task))
            else:
                self._ready.append((task.future, True, value, task))
        elif kind == "err":
            _, tid, blob, timing = op
            task = lead.inflight.pop(tid, None)
            if task is None:
                return
            if task.rec is not None and timing is not None:
                _timed(lead, task.rec, timing)
            try:
                exc, tb = loads(blob)
                if tb:
                    exc.__cause__ = RemoteTraceback(tb)
            except BaseException as e:  # noqa: BLE001
                exc = e
            self._ready.append((task.future, False, exc, task))
        elif kind == "out":
            # What a leader's workers printed, ahead of the results of the tasks that printed
            # it: written now, and the results resolve after this batch is handled.
            _, fd, text = op
            stream = sys.stdout if fd == 1 else sys.stderr
            try:
                stream.write(text)
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stream: output is lost, tasks are not
                pass
        elif kind == "mem":  # a traced session's workers' memory on that node
            _, sid, samples, private, started, sent = op
            offset = _offset(lead, sent)
            session = self._sessions.get(sid)
            tracer = None if session is None else session["backend"].tracer
            if tracer is not None:
                tracer.memory.extend((at + offset, pid, rss) for at, pid, rss in samples)
                tracer.uss.extend((at + offset, pid, uss) for at, pid, uss in private)
                tracer.started.update((pid, at + offset) for pid, at in started)
        elif kind in ("opened", "open_failed", "closed"):
            key = ("opened" if kind == "open_failed" else kind, op[1], lead.rank)
            with self._cond:
                self._replies[key] = op
                self._cond.notify_all()
        elif kind == "bye":
            with self._cond:
                self._replies[("bye", 0, lead.rank)] = op
                lead.alive = False  # it is gone, and not lost
                self._cond.notify_all()
        # "beat": hearing it is the point.

    def _send(self):
        """Sends control operations, then places queued tasks on leaders with credit left."""
        batches = {}
        control = self._control
        while control:
            rank, op, bufs = control.popleft()
            ops, obufs = batches.setdefault(rank, ([], []))
            if op[0] == "open":
                op = op[:3] + (len(obufs), op[4])
            ops.append(op)
            obufs.extend(bufs)
        forgotten = self._forgotten
        while forgotten:
            key = forgotten.popleft()
            for lead in self.leaders.values():
                if key in lead.functions:
                    lead.functions.discard(key)
                    if lead.alive:
                        batches.setdefault(lead.rank, ([], []))[0].append(("forget",) + key)
        pinned = self._pinned
        while pinned:
            task = pinned.popleft()
            if self._queued.pop(task.tid, None) is None:
                continue  # cancelled
            lead = self.leaders[task.rank]
            if not lead.alive:
                self._ready.append((task.future, False, LeaderLostError(
                    f"shoal: MPI leader {lead.name()} was lost", rank=lead.rank, host=lead.host), task))
                continue
            self._place(task, lead, batches)
        queue = self._queue
        if queue:
            live = [lead for lead in self.leaders.values() if lead.alive]
            credits = {lead.rank: 2 * self._depth * max(1, lead.workers) - len(lead.inflight) for lead in live}
            # An ALONE task goes only where a worker is free: fewer in flight than workers.
            idle = {lead.rank: max(1, lead.workers) - len(lead.inflight) for lead in live}
            while queue:
                task = queue[0]
                if task.tid not in self._queued:
                    queue.popleft()  # cancelled
                    continue
                room = idle if task.kind == ALONE else credits
                rank = max(room, key=room.get, default=None)
                if rank is None or room[rank] <= 0:
                    break  # the queue stays in order: what follows waits too
                queue.popleft()
                del self._queued[task.tid]
                self._place(task, self.leaders[rank], batches)
                credits[rank] -= 1
                idle[rank] -= 1
        now = time.monotonic()
        for rank, (ops, obufs) in batches.items():
            self._send_to(self.leaders[rank], ops, obufs, now)
        return bool(batches)

    def _place(self, task, lead, batches):
        """Adds ``task`` to ``lead``'s batch, after what it needs there and lacks: the shared
        objects it uses, then its function."""
        ops, obufs = batches.setdefault(lead.rank, ([], []))
        key = (task.sid, task.fn_id)
        fn_shares = ()
        if key not in lead.functions:
            blob, fbufs, fn_shares = self._functions[key]
        for skey in fn_shares + task.shares:  # shared objects first, once per leader
            if skey not in lead.shares:
                sblob, sbufs = self._shares[skey]
                ops.append(("share", skey, sblob, len(obufs), len(sbufs)))
                obufs.extend(sbufs)
                lead.shares.add(skey)
        if key not in lead.functions:
            ops.append(("fn", task.sid, task.fn_id, blob, len(obufs), len(fbufs)))
            obufs.extend(fbufs)
            lead.functions.add(key)
        ops.append((task.kind, task.sid, task.tid, task.fn_id, task.blob, len(obufs), len(task.bufs)))
        obufs.extend(task.bufs)
        lead.inflight[task.tid] = task

    def _send_to(self, lead, ops, bufs=(), now=None):
        try:
            self.outbox.send(lead.rank, ops, bufs)
        except self.MPI.Exception as exc:
            self._lose(lead, f"MPI reported: {exc.Get_error_string().strip()}")
        lead.last_sent = time.monotonic() if now is None else now

    def _heartbeats(self, now):
        for lead in self.leaders.values():
            if not lead.alive:
                continue
            if now - lead.last_heard > self.timeout:
                self._lose(lead, f"no message or heartbeat for {now - lead.last_heard:.1f} s")
            elif now - lead.last_sent > PING_S:
                self._send_to(lead, [("ping",)], (), now)

    def _lose(self, lead, why):
        if not lead.alive:
            return
        lead.alive = False
        self.lost.append(lead)
        msg = f"shoal: MPI leader {lead.name()} was lost ({why})"
        sys.stderr.write(msg + "\n")
        for task in list(lead.inflight.values()):
            self._ready.append((task.future, False, LeaderLostError(msg + "; this task was running there",
                                                                    rank=lead.rank, host=lead.host), task))
        lead.inflight.clear()
        if not any(x.alive for x in self.leaders.values()):
            while self._queue:
                task = self._queue.popleft()
                if self._queued.pop(task.tid, None) is not None:
                    self._ready.append((task.future, False, LeaderLostError(
                        msg + "; no leader is left to run this task", rank=lead.rank, host=lead.host), task))
        with self._cond:
            self._cond.notify_all()
