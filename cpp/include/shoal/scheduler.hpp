// scheduler.hpp — which task goes to which worker: queue, in-flight limits, retries.
//
// Pure bookkeeping, no I/O and no threads: the Pool calls it under its mutex. Tasks are
// opaque frames; functions are prerequisites sent once to each worker that needs them.
// A task may be pinned to one worker slot (agents live there): it waits in that slot's own
// queue, goes out before unpinned work when the slot has room, and is never moved to
// another slot — when the slot's worker dies, its pinned tasks fail instead of being retried.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace shoal {

using Bytes = std::vector<std::byte>;
using SharedBytes = std::shared_ptr<Bytes const>;

struct Task {
    std::uint64_t id = 0;
    std::uint64_t fn_id = 0;   // function this task needs defined first; 0 for none
    std::uint32_t count = 1;   // items in the chunk
    std::uint32_t attempts = 0;
    SharedBytes frame;
    bool concurrent = false;   // a coroutine task: runs beside others in the worker's event loop
    std::int64_t worker = -1;  // >= 0: pinned to this slot; -1: any worker
    std::uint32_t limit_ms = 0;  // the worker kills itself (SIGALRM) past this run time; 0: none
    // Handed only to a worker with no plain task in flight: it never waits in a worker's ring
    // behind a task that may run long, and goes to whichever worker frees up first. While it
    // is the oldest queued task, the tasks queued after it wait too (the queue stays in order).
    bool alone = false;
};

/// Limits the scheduler keeps. The defaults are what shoal.Executor passes.
struct SchedulerOptions {
    // Times a task is run again after the worker running it died. More retries ride out
    // sporadic deaths (an OOM kill, a flaky extension); fewer fail sooner a task that kills
    // every worker it runs on, taking one more worker down with each retry.
    unsigned retries = 2;
    // Items (a chunk counts its items) a worker starts before it is replaced; 0: no limit.
    // A limit bounds what a worker can leak (memory, descriptors) over its life; each
    // replacement costs a fork and resending the functions it had.
    std::uint64_t max_items_per_worker = 0;
    // Measured run time of the tasks kept in flight (sent, not finished) per worker. More
    // keeps a worker busy while the driver is slow to refill it (the GIL, a busy core);
    // less keeps tasks in the shared queue, where they can still be cancelled and go to
    // whichever worker frees up first (a task sent to a worker waits behind that worker's).
    std::int64_t target_inflight_ns = 2'000'000;
    // Tasks in flight per worker at most, however short they measure: bounds how much of
    // the queue one worker's ring holds (and what its death sends back to the queue).
    std::uint32_t max_inflight = 64;
    // Coroutine tasks in flight per worker at most (they run side by side in its event
    // loop). More overlaps more waiting (sockets, sleeps) per worker; each running
    // coroutine holds its arguments and state in the worker's memory.
    std::uint32_t concurrency = 1;
};

class Scheduler {
public:
    Scheduler(std::size_t workers, SchedulerOptions options);

    /// Queues a task at the back: of the shared queue, or of its slot's pinned queue when
    /// `task.worker >= 0` (a pinned task waits there while the slot has no live worker).
    /// Throws std::out_of_range for a slot that does not exist. Never blocks.
    void submit(Task task);
    /// Removes a task that has not been handed to a worker. True if it was queued.
    bool cancel(std::uint64_t task_id);
    /// Removes every queued task (pinned ones too) and returns their ids.
    std::vector<std::uint64_t> cancel_all();
    /// Registers the frame that defines function `fn_id` in a worker.
    void define_function(std::uint64_t fn_id, SharedBytes frame);
    /// Drops function `fn_id`; workers that have it are sent `forget_frame` next.
    void forget_function(std::uint64_t fn_id, SharedBytes const& forget_frame);

    /// Hands queued work to workers with room, each slot's pinned tasks first. Appends
    /// (worker, frame) in send order.
    void assign(std::vector<std::pair<std::size_t, SharedBytes>>& out);
    /// A result for `task_id` came from `worker`. Returns the task if it was in flight there.
    std::optional<Task> complete(std::size_t worker, std::uint64_t task_id, std::int64_t elapsed_ns);
    /// `worker` died: its in-flight tasks go back to the front of the queue, except those
    /// that used up their retries, which are returned. Only the tasks that may have been
    /// running are charged an attempt: every concurrent task in flight (they run side by
    /// side) and the oldest other task (those run one at a time, in order). Tasks pinned to
    /// the slot, in flight and still queued for it, are all returned (in that order): they
    /// are never run elsewhere. The slot forgets its functions.
    /// With `blame` (ids of tasks in flight there: the driver killed the worker for them, or
    /// one overran its time limit) those tasks come first in what is returned, whatever their
    /// attempts, and no other task is charged an attempt: they did not cause the death.
    std::vector<Task> worker_died(std::size_t worker, std::vector<std::uint64_t> const& blame = {});
    /// The task `worker` is running now, as far as the driver can tell: its oldest plain
    /// (not concurrent) task in flight, or nullptr. Never blocks, never allocates.
    Task const* running(std::size_t worker) const;
    /// The slot a task was handed to and has not answered from, or -1. Never allocates.
    std::int64_t slot_of(std::uint64_t task_id) const;
    /// A process now serves `worker` (fresh: knows no function, has run nothing). Tasks
    /// pinned to the slot while it had no worker stay queued for the new one.
    void worker_started(std::size_t worker);
    /// Stop handing work to `worker` (it is being retired or the pool is stopping).
    void set_accepting(std::size_t worker, bool accepting);

    bool alive(std::size_t worker) const { return m_workers.at(worker).alive; }
    bool idle(std::size_t worker) const { return m_workers.at(worker).inflight.empty(); }
    /// True when the worker reached max_items_per_worker.
    bool exhausted(std::size_t worker) const;
    /// Tasks not yet handed to a worker, pinned ones included.
    std::size_t queued() const noexcept { return m_queue.size() + m_pinned_queued; }
    std::size_t inflight() const noexcept;
    std::size_t workers() const noexcept { return m_workers.size(); }
    /// Current per-worker in-flight limit for tasks that are not concurrent (adapts to
    /// measured task time). Concurrent tasks have their own: `concurrency` per worker.
    std::uint32_t inflight_limit() const noexcept;
    /// Moving average of one (not concurrent) task's run time in ns; 0 before any was measured.
    double task_ns() const noexcept { return m_task_ns; }

private:
    struct WorkerState {
        bool alive = false;
        bool accepting = false;
        std::deque<Task> inflight;
        std::uint32_t concurrent = 0;  // how many of `inflight` are concurrent
        std::unordered_set<std::uint64_t> known_functions;
        std::vector<SharedBytes> control;  // forget frames to send before any task
        std::deque<Task> pinned;           // tasks for this slot only, in submission order
        std::uint64_t items_started = 0;
    };

    bool has_room(std::size_t worker, std::uint32_t limit, bool concurrent, bool alone = false) const;
    void send(std::size_t worker, Task task, std::vector<std::pair<std::size_t, SharedBytes>>& out);

    SchedulerOptions m_options;
    std::vector<WorkerState> m_workers;
    std::deque<Task> m_queue;
    std::size_t m_pinned_queued = 0;  // sum of the slots' pinned queues
    std::unordered_map<std::uint64_t, SharedBytes> m_functions;
    double m_task_ns = 0;  // moving average of one task's run time; 0: not measured yet
};

}  // namespace shoal
