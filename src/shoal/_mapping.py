"""map()'s engine: a bounded window of chunks in flight on any backend, with chunk sizes that
adapt to the measured task time. Executor.map/starmap iterate it; sweeps drive it through its
public methods (``next_finished``, ``learned``).
"""
import collections
import concurrent.futures
import itertools
import queue
import time

from ._aio import is_coroutine_function
from ._core import ArenaFull
from ._errors import RemoteTraceback
from ._pickle import iter_items

__all__ = ["MapWindow"]

# Adaptive chunking: aim for about this much work per chunk, measured as it runs. Each chunk
# costs the driver a wake-up and some Python (~70-100 µs of CPU on a 2-core machine whose cores
# the workers are using): 1 ms chunks lost 20-30 % of map_cpu's efficiency, 10 ms chunks ~1 %, and
# tasks of 5-10 ms went one per chunk; at 50 ms it is level with Pool.starmap. Longer chunks
# would leave workers idle at the end of a map and hold more results back. When the input's
# length is known, a chunk also never exceeds its share of what is left, so the last chunks
# stay small and the workers finish together.
TARGET_CHUNK_S = 0.05
# Coroutine chunks (concurrency > 1): a chunk's items are awaited one after another and its
# time is mostly waiting, so longer chunks would leave concurrency slots idle.
TARGET_COROUTINE_CHUNK_S = 0.01
MAX_CHUNK = 1 << 16
# A chunk's arguments and results together stay under this (as measured on the chunks so
# far): the window holds 4 chunks per worker, and chunks of many large arrays would hold
# gigabytes; smaller chunks cost more driver wake-ups for arrays that are cheap to send.
MAX_CHUNK_BYTES = 16 << 20
CHUNKS_PER_WORKER = 4  # in flight: enough that a worker never waits for the driver's next chunk


def _raise_chunk_error(err):
    exc, tb = err
    if tb is not None:
        exc.__cause__ = RemoteTraceback(tb)
    raise exc


class MapWindow:
    """Keeps a bounded window of chunks in flight for one map() call.

    Not thread-safe: one consumer iterates it (or calls ``next_finished``)."""

    def __init__(self, backend, fn, args, *, timeout, chunksize, ordered, star=True, bar=None,
                 length=None, max_workers=1, concurrency=1, limit=None):
        self._backend = backend
        self._limit = limit  # task_timeout of each item, or None
        self._left = length  # items not yet submitted, when the input's length is known
        self._item_bytes = 0  # the most bytes per item (arguments + results) a chunk has held
        self._fn = fn
        self._star = star
        self._bar = bar
        self._args = iter(args)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        # With a time limit, items go one per chunk unless told otherwise: a timed-out item
        # takes its whole chunk with it (its worker dies), so it should take no other item.
        self._fixed = chunksize or (1 if limit is not None else None)
        self._size = self._fixed or 1
        self._ordered = ordered
        self._window = CHUNKS_PER_WORKER * max_workers
        self._target = TARGET_CHUNK_S
        self._slots = 2 * max_workers  # a chunk is at most 1/slots of what is left
        if concurrency > 1 and is_coroutine_function(fn):
            # Enough chunks to keep `concurrency` running in every worker, and as many queued.
            # (500 waits of 20 ms in chunks of 2 take three rounds of 40 ms on 100 slots, not
            # five of 20.)
            self._window = max(self._window, 2 * concurrency * max_workers)
            self._target = TARGET_COROUTINE_CHUNK_S
            self._slots = concurrency * max_workers
        self._pending = collections.deque()   # ordered: (future, items) in input order
        self._done = queue.SimpleQueue()       # unordered: (future, items) as they finish
        self._outstanding = 0
        self._exhausted = False
        self._held = []  # items read but not submitted: the arena had no room for them yet
        self._input_error = None  # what reading the input raised: raised after the results before it
        # A large buffer that several items pass is placed in the arena once for the call.
        self.placements = backend.placements()
        self._fill()  # start now, so errors in pickling arguments show at the call

    # ------------------------------------------------------------------ for sweeps

    def next_finished(self):
        """``(future, items)`` of the next finished chunk, taken out of the window, or None at
        the end. The future's result (a ChunkOutcome) may still be an exception. Raises
        TimeoutError past the map's timeout."""
        if self._outstanding == 0:
            self._fill()
            if self._outstanding == 0:
                error, self._input_error = self._input_error, None
                if error is not None:
                    raise error  # where the built-in map raises it: after the items before it
                return None
        try:
            if self._ordered:
                fut, items = self._pending[0]
                fut.exception(self._remaining())  # waits; raises only on timeout or cancel
                self._pending.popleft()
            else:
                fut, items = self._done.get(timeout=self._remaining())
        except (concurrent.futures.TimeoutError, queue.Empty):
            raise TimeoutError() from None
        self._outstanding -= 1
        return fut, items

    def learned(self, n_items, outcome):
        """Records a finished chunk's ChunkOutcome (chunk sizes adapt to it) and refills the
        window."""
        self._learn(n_items, outcome.seconds, outcome.nbytes)
        self._fill()

    def submit_chunk(self, items):
        """Submits one chunk of this call's items (sweeps resubmit failed items through it)."""
        if self.placements is None and self._limit is None:
            return self._backend.submit_chunk(self._fn, items, self._star)
        options = {} if self.placements is None else {"placements": self.placements}
        if self._limit is not None:
            options["limit"] = self._limit
        return self._backend.submit_chunk(self._fn, items, self._star, **options)

    def close(self):
        """Cancels chunks not yet handed to a worker; the call's placements live on only while
        tasks in flight use them."""
        if self.placements is not None:
            self.placements.close()
        self._exhausted = True
        self._held = []
        for fut, _ in self._pending:
            fut.cancel()
        self._pending.clear()

    # ------------------------------------------------------------------ machinery

    def _learn(self, n_items, seconds, nbytes=0):
        if self._fixed or n_items == 0:
            return
        per_item = max(seconds / n_items, 1e-8)
        target = int(self._target / per_item)
        if nbytes:
            self._item_bytes = max(self._item_bytes, nbytes / n_items)
        if self._item_bytes:
            target = min(target, int(MAX_CHUNK_BYTES / self._item_bytes))
        if self._left is not None:  # at most a share of what is left: the workers finish together
            target = min(target, -(-self._left // self._slots))
        self._size = max(1, min(MAX_CHUNK, target, self._size * 8))

    def _fill(self):
        while self._outstanding < self._window:
            if self._held:
                items, self._held = self._held[:self._size], self._held[self._size:]
            elif self._exhausted:
                break
            else:
                items = []
                try:
                    # extend keeps what it appended before the input raised (list() would not).
                    items.extend(itertools.islice(self._args, self._size))
                except Exception as exc:  # noqa: BLE001 - the input's error, raised in its turn
                    self._input_error = exc
                    self._exhausted = True
                if not items:
                    self._exhausted = True
                    break
            try:
                fut = self.submit_chunk(items)
            except ArenaFull:
                # The chunks in flight hold the arena: wait for them to finish. With none in
                # flight, a smaller chunk may fit; a single item that does not can never fit.
                self._held[:0] = items
                if self._outstanding:
                    break
                if len(items) == 1:
                    self._held.clear()
                    raise
                self._size = max(1, len(items) // 2)
                continue
            if self._left is not None:
                self._left -= len(items)
            self._outstanding += 1
            if self._ordered:
                self._pending.append((fut, items))
            else:
                fut.add_done_callback(lambda f, items=items, put=self._done.put: put((f, items)))
            # Chunks grow only from measured times (_learn): a blind ramp would hand one
            # worker 32 items of a task that turns out to take a second each.
        if self._exhausted and not self._held and self.placements is not None:
            self.placements.close()  # every item was read: the tasks in flight hold the rest

    def _remaining(self):
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        return left

    def __iter__(self):
        # itertools.chain hands out the items at C speed; the generator runs once per chunk
        # (a generator's `yield from` cost ~30 ns per item, as much as pickling it).
        return itertools.chain.from_iterable(self._chunks())

    def _chunks(self):
        """Each finished chunk's results (a list, or an iterator that loads them one by one),
        in order; a chunk's error is raised after its good results."""
        bar = self._bar
        try:
            while True:
                finished = self.next_finished()
                if finished is None:
                    return
                fut, items = finished
                outcome = fut.result()
                self.learned(len(items), outcome)
                per_item, data = outcome.results
                if bar is not None:
                    bar.update(len(data))
                yield iter_items(outcome.results, outcome.buffers) if per_item else data
                if outcome.error is not None:
                    _raise_chunk_error(outcome.error)
        finally:
            if bar is not None:
                bar.close()
            self.close()
