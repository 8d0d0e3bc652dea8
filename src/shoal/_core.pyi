"""shoal's C++ core: shared-memory rings, zygote, process pool."""

from collections.abc import Sequence
from typing import Final

from typing_extensions import Buffer

import shoal
from shoal import ShoalError as ShoalError


class Block:
    """
    A buffer in the arena (buffer protocol: memoryview(block)). An owning block frees its pages when garbage collected; a view of another process's block does not.
    """

    @property
    def offset(self) -> int:
        """Where the block starts in the arena, in bytes."""

    @property
    def length(self) -> int:
        """The block's size in bytes."""

    @property
    def readonly(self) -> bool:
        """True if the buffer it exposes is read-only."""

    @property
    def owned(self) -> bool:
        """
        True while this object frees the block when garbage collected (see detach()).
        """

    def detach(self) -> None:
        """
        Stops owning the block without freeing it (it was handed to another process).
        """

    def __len__(self) -> int:
        """The block's size in bytes."""

    def __repr__(self) -> str: ...

class Arena:
    """
    This process's view of the arena, the shared memory that large arguments and results travel through by reference, and its owner id in it.
    """

    @staticmethod
    def create(limit_bytes: int = 0, keep_free_bytes: int = 268435456) -> Arena:
        """
        A new arena, created by this process (the driver).

        limit_bytes: the size of its data region, the most its blocks can hold (0: the machine's physical memory).
        keep_free_bytes: freed pages, up to this many bytes, stay resident for reuse; the rest go back to the system.
        """

    @property
    def fd(self) -> int:
        """The arena's memfd (handed to each worker at its fork)."""

    @property
    def owner(self) -> int:
        """
        This process's owner id in the arena: the blocks it allocates are charged to it.
        """

    @property
    def limit_bytes(self) -> int:
        """The size of the data region: the most its blocks can hold."""

    @property
    def used_bytes(self) -> int:
        """
        Bytes in blocks in use, every process's (approximate while others allocate).
        """

    @property
    def file_bytes(self) -> int:
        """
        Bytes of the arena's file that exist: it grows in segments as pages are first used.
        """

    def allocate(self, nbytes: int) -> Block:
        """A new writable block of `nbytes` bytes, freed when garbage collected."""

    def copy_in(self, buffer: Buffer) -> Block:
        """A new block holding a copy of a contiguous buffer."""

    def view(self, offset: int, length: int, readonly: bool = True) -> Block:
        """
        A view of bytes another process placed in the arena (checked; not owned).
        """

    def private_view(self, offset: int, length: int) -> object:
        """
        A writable copy-on-write view of bytes in the arena (checked; not owned): reads share the arena's pages, writes stay in this view.
        """

    @property
    def blocks(self) -> int:
        """Blocks in use in the whole arena (all processes)."""

    def locate(self, buffer: Buffer) -> int:
        """The offset of a contiguous buffer that lies in the arena, else -1."""

    def collapse(self, offset: int, length: int) -> int:
        """
        Backs the huge-page-aligned part of a block with huge pages; bytes collapsed (0: declined).
        """

    huge_page_bytes: Final[int] = ...
    """
    The huge page size the arena's mapping is aligned to, in bytes (2 MiB if unknown).
    """

def buffer_address(buffer: object) -> int:
    """
    The address of a contiguous buffer's first byte (an identity, never dereferenced).
    """

class ArenaFull(MemoryError, shoal.ShoalError):
    """
    Raised when the arena cannot hold a new block: it would pass the arena's limit (shoal.set_arena_limit).
    """

class Completion(tuple[int, int, int, int, int, int, str, int, bytes, list[Block] | None]):
    """
    The items of a completion, by name. Pool.take() and Pool.take_ready() hand over each finished task or piece of output as a plain tuple of 10 items in this order, (kind, flags, task_id, aux, status_kind, status_value, status_text, worker, payload, buffers), which is faster to unpack than this record; Completion(item) names one's items.
    """

    @property
    def kind(self) -> int:
        """
        What happened: COMPLETION_RESULT, _OUTPUT, _CRASHED, _INIT_FAILED, _BROKEN, _TIMED_OUT or _KILLED.
        """

    @property
    def flags(self) -> int:
        """
        A result: FLAG_ERROR if the task raised (payload: the pickled exception and traceback). Output: 1 for stdout, 2 for stderr.
        """

    @property
    def task_id(self) -> int:
        """The task's id as given to Pool.submit (0 for output)."""

    @property
    def aux(self) -> int:
        """A result: the task's run time in the worker, in ns."""

    @property
    def status_kind(self) -> int:
        """
        Crashed (or broken by a death): how the worker ended, STATUS_EXITED or STATUS_SIGNALED. Otherwise STATUS_EXITED.
        """

    @property
    def status_value(self) -> int:
        """
        Crashed (or broken by a death): the exit code or the signal number. A result: how many times the task was run again after a worker died running it (its retries). Otherwise 0.
        """

    @property
    def status_text(self) -> str:
        """
        Crashed: how the worker ended, in words ("killed by signal 9 (SIGKILL)"), and why if the driver killed it. Otherwise ''.
        """

    @property
    def worker(self) -> int:
        """The worker slot the completion came from (0 when none did: broken)."""

    @property
    def payload(self) -> bytes:
        """
        A result: the pickled value (or exception). Output: the text. Crashed: why the driver killed the worker (a malformed or oversized message), or empty. Init failed: the pickled exception. Broken: the reason, in UTF-8 (may be empty).
        """

    @property
    def buffers(self) -> list[Block] | None:
        """
        A result's out-of-band arena buffers, as a list of owning Blocks; None when there are none.
        """

class Pool:
    """
    The driver's process pool: workers forked by the zygote, tasks in, completions out. It has no thread of its own: the threads that call submit(), take() and join() serve it. Thread-safe.
    """

    def __init__(self, zygote: ZygoteClient, *, workers: int = 0, retries: int = 2, max_items_per_worker: int = 0, preload: Sequence[str] = [], spin_ns: int = 100000, task_ring_bytes: int = 262144, result_ring_bytes: int = 262144, init_payload: bytes = ..., hints: Sequence[str] = [], arena: Arena | None = None, concurrency: int = 1) -> None:
        """
        Starts a pool: `workers` worker processes forked from `zygote` (0: one per CPU), once it has imported `preload` (a failure raises) and `hints` (best effort).

        retries: times a task is run again after its worker died running it.
        max_items_per_worker: items a worker starts before it is replaced (0: no limit).
        spin_ns: how long waiting workers and callers spin before they sleep, in ns.
        task_ring_bytes, result_ring_bytes: each worker's ring capacity, each way.
        init_payload: the pickled initializer every new worker runs first.
        arena: shared with the workers for out-of-band buffers (None: everything in the rings).
        concurrency: coroutine tasks in flight per worker at most (>= 1).
        """

    def define_function(self, fn_id: int, pickled: bytes) -> None:
        """
        Registers function `fn_id` (`pickled`: its pickle). It is sent once to each worker, before that worker's first task that needs it. Never blocks.
        """

    def forget_function(self, fn_id: int) -> None:
        """
        Drops function `fn_id`: the workers that have it are told to forget it. Never blocks.
        """

    def submit(self, task_id: int, fn_id: int, count: int, payload: bytes, refs: Sequence[tuple[int, int]] | None = None, concurrent: bool = False, worker: int = -1, limit_ms: int = 0, alone: bool = False) -> bool:
        """
        Queues task `task_id`: function `fn_id` on `payload` (its pickled arguments), a chunk of `count` items, and hands it to a worker at once if one has room. Never blocks on workers.

        refs: (offset, length) of the arguments' buffers in the arena; keep them alive until the task completes.
        concurrent: a coroutine task; it counts against `concurrency`, not the adaptive in-flight limit.
        worker: a slot index to run the task there or nowhere (-1: any worker); if that worker dies, the task completes as crashed instead of being retried.
        limit_ms: a time limit for the task (each item of a chunk), in ms (0: none); past it the worker is killed and the task completes as timed out, not retried.
        alone: hand the task only to a worker with no plain task in flight (it never waits behind another task in a worker's ring); tasks queued after it wait while it is the oldest.

        After close(), or once the pool is broken, the task completes as broken. Returns True when completions wait that the caller should deliver now (take_ready()).
        """

    def cancel(self, task_id: int) -> bool:
        """Drops task `task_id` if no worker has it yet; True if it was dropped."""

    def cancel_all(self) -> list[int]:
        """Drops every task no worker has yet; returns their ids."""

    def kill(self, task_id: int) -> int:
        """
        Stops task `task_id`: 1 if it was queued and is dropped; 2 if a worker has it: that worker is killed and replaced and the task completes as killed (unless its result came first); 0 if the task is not here (done).
        """

    def take(self, timeout: float, background: bool, epoch: int, pending: dict[int, list[list[tuple[int, int, int, int, int, int, str, int, bytes, list[Block] | None]] | int]]) -> bool | None:
        """
        Serves the pool (drains the result rings, hears the zygote, refills the workers) until completions are ready, and stores them in `pending` before returning: pending[seq] = [[completion, ...], 0], each completion a plain tuple of Completion's items in its order (kind, flags, task_id, aux, status_kind, status_value, status_text, worker, payload, buffers), and 0 the index of the next one to deliver. The caller delivers the pending batches in `seq` order, whichever thread took them; a signal raised after the call cannot lose a batch. Releases the GIL.

        timeout: seconds to wait at most (< 0: until something completes); on timeout nothing is stored.
        background: True only for the completion thread. It leaves completions to callers blocked on a result (who take them with no thread hop) and never spins.
        epoch: the value of `epoch` read before checking that what the caller waits for is not done. A foreground take returns as soon as the pool's epoch differs (another thread delivered completions), so no wake-up is lost in between.

        Returns True, or None once the pool is closed and every worker has exited.
        """

    def take_ready(self, pending: dict[int, list[list[tuple[int, int, int, int, int, int, str, int, bytes, list[Block] | None]] | int]]) -> None:
        """
        Stores the completions already drained (by submit()) in `pending` as take() does, each a plain tuple of Completion's items in its order, without waiting or serving the pool.
        """

    @property
    def epoch(self) -> int:
        """
        Bumped by interrupt(). Read it before checking a future and pass it to take().
        """

    def interrupt(self) -> None:
        """
        Bumps `epoch` and wakes the foreground takers: call it after delivering completions that another thread may wait for. No system call when nobody waits.
        """

    def close(self, kill: bool) -> None:
        """
        Starts closing: queued and running tasks finish, then the workers exit. kill: SIGKILL the workers now; unfinished tasks complete as broken. Never blocks.
        """

    def join(self, timeout: float) -> None:
        """
        Waits up to `timeout` seconds for every worker to exit (after close()), serving the pool meanwhile, then kills what is left. Completions found meanwhile stay for take().
        """

    def worker_pids(self) -> list[int]:
        """
        Process ids of the live workers (a worker whose fork the zygote has not reported yet is missing).
        """

    @property
    def workers(self) -> int:
        """
        The number of worker slots; fixed for the pool's life (a slot's process may be replaced).
        """

    @property
    def queued(self) -> int:
        """Tasks no worker has yet."""

    @property
    def inflight(self) -> int:
        """Tasks sent to workers and not finished."""

COMPLETION_RESULT: int = 1

COMPLETION_OUTPUT: int = 2

COMPLETION_CRASHED: int = 3

COMPLETION_INIT_FAILED: int = 4

COMPLETION_BROKEN: int = 5

COMPLETION_TIMED_OUT: int = 6

COMPLETION_KILLED: int = 7

STATUS_EXITED: int = 1

STATUS_SIGNALED: int = 2

class ZygoteClient:
    """The driver's handle on its zygote process. Thread-safe."""

    def __init__(self, argv: Sequence[str]) -> None:
        """
        Starts the zygote: `argv` runs with the control socket as fd 3. Raises if it cannot start.
        """

    @property
    def pid(self) -> int:
        """The zygote's process id."""

    def alive(self) -> bool:
        """
        False once the zygote has exited, and in a forked copy of the driver (it is the original's).
        """

class ZygoteAction:
    """What the zygote must do next, as ZygoteServer.next() says."""

    @property
    def kind(self) -> str:
        """
        'fork' a worker, 'import' modules, 'idle' (nothing came for the timeout) or 'exit' (the driver is gone).
        """

    @property
    def modules(self) -> list[str]:
        """
        An import: the module names ('name' or 'name<TAB>file' for a best-effort hint).
        """

    @property
    def slot(self) -> int:
        """A fork: the worker slot."""

class ZygoteServer:
    """The zygote's loop: executors' requests in, actions out. One thread."""

    def __init__(self, fd: int) -> None:
        """Serves the control socket `fd` (it becomes the server's)."""

    def next(self, timeout_ms: int = -1) -> ZygoteAction:
        """
        Serves until the caller must act, and says what to do. Blocks in poll() (GIL released); with timeout_ms >= 0, returns an 'idle' action once nothing has come for that long.
        """

    def forked(self, action: ZygoteAction, pid: int) -> None:
        """
        In the zygote after os.fork(): tracks child `pid` and reports it to the executor that asked.
        """

    def imported(self, action: ZygoteAction, ok: bool, error: str) -> None:
        """
        After an 'import' action: tells the executor whether it worked, and if not `error`.
        """

    def become_worker(self, action: ZygoteAction) -> tuple[WorkerChannel, Arena | None]:
        """
        In the child after os.fork() for a 'fork' action: closes the zygote's descriptors, arranges to die with the zygote, and returns the worker's channel and its view of the arena (None: the pool has none).
        """

    @property
    def worker_count(self) -> int:
        """Workers the zygote has forked and not yet reaped."""

class Frame(tuple[int, int, int, int, int, bytes, list[tuple[int, int]] | None]):
    """
    The items of a frame from the driver, by name. WorkerChannel.recv() and try_recv() hand over each frame as a plain tuple of 7 items in this order, (kind, flags, task_id, aux, count, payload, refs), which is faster to unpack than this record; Frame(item) names one's items.
    """

    @property
    def kind(self) -> int:
        """FRAME_TASK, FRAME_FUNCTION, FRAME_FORGET or FRAME_SHUTDOWN."""

    @property
    def flags(self) -> int:
        """
        A task: its time limit in ms (0: none; see Pool.submit). Other frames: 0.
        """

    @property
    def task_id(self) -> int:
        """A task: its id, to send back in the result frame. Otherwise 0."""

    @property
    def aux(self) -> int:
        """
        A task: the id of the function to run. Function and forget: the function's id (0 in a function frame: the payload is the pickled initializer and its arguments).
        """

    @property
    def count(self) -> int:
        """A task: how many items its chunk holds (1 for a single call)."""

    @property
    def payload(self) -> bytes:
        """A task: its pickled arguments. A function: its pickle."""

    @property
    def refs(self) -> list[tuple[int, int]] | None:
        """
        A task's out-of-band arguments in the arena, as a list of (offset, length) pairs (length's top bit set: the task only reads the buffer); None when there are none.
        """

class WorkerChannel:
    """
    A worker's end of its two rings: frames from the driver in, result frames out. Made by ZygoteServer.become_worker(); one thread uses it.
    """

    def recv(self, timeout: float = -1.0) -> tuple[int, int, int, int, int, bytes, list[tuple[int, int]] | None] | None:
        """
        Waits for the next frame from the driver (spins, then sleeps on the ring; the GIL is released) and returns it as a plain tuple of Frame's items in its order (kind, flags, task_id, aux, count, payload, refs). timeout: seconds (< 0: no limit). None when the timeout passes or the stream is corrupt; raises on a malformed frame.
        """

    def try_recv(self) -> tuple[int, int, int, int, int, bytes, list[tuple[int, int]] | None] | None:
        """
        The next frame if one is there, as a plain tuple of Frame's items in its order (as recv()), else None. Never blocks; a corrupt stream raises.
        """

    def watch_fd(self) -> int:
        """
        An eventfd for an event loop to watch: readable once arm() saw a frame arrive (starts the watcher thread on first call).
        """

    def arm(self) -> bool:
        """
        Hands the task ring to the watcher thread, which sleeps until a frame arrives and then makes watch_fd() readable. False, handing nothing over, when a frame is already there. Clears watch_fd() first.
        """

    def disarm(self) -> None:
        """
        Takes the ring back from the watcher now (waits until it lets go) and clears watch_fd().
        """

    @property
    def armed(self) -> bool:
        """True while the watcher thread owns the ring."""

    def clear_watch(self) -> None:
        """Clears watch_fd() after its wake-up was handled. Never blocks."""

    def pending(self) -> bool:
        """
        True when a frame (or part of one) waits in the task ring. Never blocks; the ring's owner only.
        """

    def send(self, kind: int, flags: int, task_id: int, aux: int, count: int, payload: bytes, refs: Sequence[tuple[int, int]] | None = None) -> None:
        """
        Sends a frame to the driver and rings its doorbell; blocks (GIL released) while the result ring is full.

        kind: FRAME_RESULT, FRAME_OUTPUT, FRAME_READY or FRAME_INIT_FAILED.
        flags: a result: FLAG_ERROR when the payload is an exception. Output: 1 stdout, 2 stderr.
        task_id, count: the task's, from its frame. aux: a result: the run time in ns; ready: the worker's owner id in the arena.
        refs: (offset, length) of the result's buffers in the arena, handed to the driver.
        """

FRAME_TASK: int = 1

FRAME_FUNCTION: int = 2

FRAME_FORGET: int = 3

FRAME_SHUTDOWN: int = 4

FRAME_RESULT: int = 16

FRAME_OUTPUT: int = 17

FRAME_READY: int = 18

FRAME_INIT_FAILED: int = 19

FLAG_ERROR: int = 1

MAX_FRAME_BUFFERS: int = 1048576

def plain_items(items: list) -> bool:
    """
    True if every item of the list is an int, float, str, bytes, bool, None or complex (exact types), or a tuple of such values.
    """

class TurnLock:
    """
    A turn that one thread takes at a time, without ever waiting for it: `with turn as mine:` gives mine=True when this thread took it (or already held it: re-entrant), False when another thread holds it; leaving the block gives it back only if this thread took it. Taking and giving back happen in C with the GIL held, so a KeyboardInterrupt cannot fall between taking it and the block that gives it back.
    """

    def __init__(self) -> None: ...

    def __enter__(self) -> bool: ...

    def __exit__(self, *args) -> bool: ...

    @property
    def taken(self) -> bool:
        """True while a thread holds the turn."""

def trim_heap() -> bool:
    """
    Returns the C heap's free pages to the system (glibc's malloc_trim); True if any were.
    """
