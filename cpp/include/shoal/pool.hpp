// pool.hpp — the driver's process pool: shared memory, workers, dispatcher thread.
//
// Data flow of one task:
//
//   submit() ──► Scheduler queue ──► task ring (shm) ──► worker: run under the GIL
//   (caller's        (in flight ≤ limit                         │
//    thread)          per worker)                               ▼
//                                                    result ring (shm) + doorbell
//                                                               │
//   Future ◄── take(): the waiting thread itself (a caller in ◄─┘
//              Future.result(), or the completion thread) drains the rings,
//              hears the zygote (forks, deaths), refills workers — C++, GIL released
//
// There is no dispatcher thread of its own: every thread that waits does the dispatching
// (spin briefly, then one of them sleeps on the doorbell). On a small machine each thread
// hop costs ~20 µs, so a caller blocked in result() receiving its result directly is what
// makes a round trip cheap. submit() also drains and refills, so workers stay fed while
// the waiting threads are busy in Python.
#pragma once

#include "shoal/arena.hpp"
#include "shoal/doorbell.hpp"
#include "shoal/frame.hpp"
#include "shoal/message.hpp"
#include "shoal/scheduler.hpp"
#include "shoal/shm.hpp"
#include "shoal/zygote.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <sys/types.h>

namespace shoal {

struct PoolOptions {
    std::size_t workers = 1;
    std::size_t task_ring_bytes = std::size_t{1} << 20;
    std::size_t result_ring_bytes = std::size_t{1} << 20;
    std::int64_t spin_ns = 50'000;  // spin this long before sleeping, workers and dispatcher
    // The largest message a worker may send (a frame: header, arena references, pickle).
    // Workers are untrusted: one that sends more (an endless run of "more follows" fragments,
    // a result pickled inline past this size) is killed and its task fails as crashed, as for
    // any malformed frame, instead of the driver buffering it whole. Large buffers travel out
    // of band through the arena and do not count, so this bounds inline pickles only; 1 GiB
    // leaves room for any sensible inline result (without an arena, buffer_threshold=None,
    // a bigger one fails) while one bad worker costs the driver at most that much memory.
    std::size_t max_message_bytes = std::size_t{1} << 30;
    std::vector<std::string> preload;  // imported by the zygote before the first fork (waited for)
    // Imported by the zygote before the first fork too, best effort: a failure is ignored
    // (the modules of the first task's function, so that the workers share them).
    std::vector<std::string> hints;
    Bytes init_payload;  // sent to every new worker first (function frame, fn 0); it answers `ready`
    std::shared_ptr<Arena> arena;  // shared with the workers; result frames' buffers come through it
    SchedulerOptions scheduler;
};

/// What the dispatcher hands to the Python layer.
struct Completion {
    enum Kind : std::uint8_t {
        result = 1,       // payload: the result frame's payload; flags: k_flag_error
        output = 2,       // worker stdout/stderr text; flags: 1 stdout, 2 stderr
        crashed = 3,      // the task's worker died and retries are used up; status says how;
                          // payload: why the driver killed it (a malformed or oversized message), or empty
        init_failed = 4,  // a worker's initializer failed; payload: the exception
        broken = 5,       // the pool cannot run the task (initializer failed, zygote gone)
        timed_out = 6,    // the task ran past its limit_ms: its worker killed itself (SIGALRM)
        killed = 7,       // kill() stopped the task: its worker was killed
    };
    Kind kind = result;
    std::uint32_t flags = 0;
    std::uint64_t task_id = 0;
    std::uint64_t aux = 0;
    ExitStatus status{};
    std::uint32_t worker = 0;
    Bytes payload;                  // the payload starts at payload_offset
    std::size_t payload_offset = 0;
    std::vector<ArenaBlock> buffers;  // a result's out-of-band buffers, now owned by the driver
};

/// Raised by the Pool's entry points in a process that did not make the pool: a fork()ed
/// copy of the driver, whose rings, doorbell and mutex are copies of its parent's (the
/// parent still runs them). The entry point touched nothing; the copy must make its own pool.
class InheritedPoolError : public std::logic_error {
public:
    InheritedPoolError(pid_t owner, pid_t self);
    pid_t owner() const noexcept { return m_owner; }

private:
    pid_t m_owner;
};

class Pool {
public:
    /// Creates the shared memory, asks `zygote` to import the preload modules and fork the
    /// workers, starts the dispatcher. Throws std::runtime_error if the zygote fails.
    Pool(ZygoteClient& zygote, PoolOptions options);
    /// Kills the workers if close() was not called; joins the dispatcher. In a forked copy of
    /// the driver (os.fork, a multiprocessing worker) it only releases the copy's mappings and
    /// descriptors: the workers are the original's, and so may be the mutex's owner.
    ~Pool();
    Pool(Pool const&) = delete;
    Pool& operator=(Pool const&) = delete;

    /// Every entry point below but close(), join() and cancel_all() throws InheritedPoolError,
    /// before it touches anything, when called in another process than the one that made the
    /// pool (a fork()ed copy of the driver). Those three do nothing there instead (cancel_all()
    /// returns nothing): a copy may let go of what it inherited, at exit or when dropping it.

    /// Registers function `fn_id`; it is sent once to each worker before its first task.
    /// Thread-safe; never blocks on workers.
    void define_function(std::uint64_t fn_id, std::span<std::byte const> pickled);
    void forget_function(std::uint64_t fn_id);
    /// Queues a task and hands it to a worker at once if one has room. Thread-safe; never
    /// blocks on workers. After close() or when broken, completes the task as `broken`.
    /// `refs` point into the arena; the caller keeps those buffers alive until the task completes.
    /// A `concurrent` task (a coroutine) counts against the per-worker concurrency limit
    /// (SchedulerOptions::concurrency), not the adaptive one.
    /// `worker >= 0` pins the task to that slot: it runs there or nowhere. It is sent
    /// before unpinned work when the slot has room (it counts in the in-flight limit), and
    /// when the slot's worker dies, the tasks pinned to it (in flight and still queued) are
    /// not retried elsewhere: they complete as `crashed` with the exit status. A task
    /// pinned while the slot has no live worker waits for its replacement. Throws
    /// std::out_of_range if `worker` is not -1 or a slot index (see workers()).
    /// Returns true when completions wait that the caller should take with take_ready()
    /// and deliver now (16 or more, or the oldest 100 µs old): a thread submitting many tasks
    /// delivers their results itself between submits, with no thread hop (see take()).
    /// `limit_ms > 0`: the worker arms a timer when the task (each item of a chunk) starts
    /// and dies of SIGALRM past it; the task then completes as `timed_out`, is not retried,
    /// and the tasks queued behind it on that worker go back to the queue uncharged. The
    /// limit travels in the task frame's flags; without one the task costs nothing more.
    bool submit(std::uint64_t task_id, std::uint64_t fn_id, std::uint32_t count,
                std::span<std::byte const> payload, std::span<BufferRef const> refs = {},
                bool concurrent = false, std::int64_t worker = -1, std::uint32_t limit_ms = 0);
    /// Moves the completions already drained into `out`, without waiting or doing any of the
    /// dispatcher's work; numbers the batch like take(). Any thread.
    void take_ready(std::vector<Completion>& out, std::uint64_t* batch_seq = nullptr);
    /// Drops a task not yet handed to a worker; true if it was dropped.
    bool cancel(std::uint64_t task_id);
    /// Stops a task: drops it if queued (returns 1); if a worker has it, asks the zygote to
    /// SIGKILL that worker (returns 2): the task completes as `killed` once the exit is seen
    /// (unless its result came first), and the worker's other tasks go back to the queue
    /// uncharged; a new worker is forked as after a crash. 0: the task is not here (done).
    /// Thread-safe; never blocks on workers.
    int kill(std::uint64_t task_id);
    /// Drops every queued task; returns their ids.
    std::vector<std::uint64_t> cancel_all();

    /// Does the dispatcher's work until completions are ready (or timeout_ns passes; < 0
    /// waits forever) and moves them into `out`: the caller must deliver them. Spins up to
    /// spin_ns first; then one caller sleeps on the doorbell and the others on a condition
    /// variable. Returns false once the pool is closed and fully drained. Any thread.
    /// `background` marks the completion thread: it leaves the doorbell to foreground
    /// takers (callers blocked on a result, who then receive it with no thread hop), and
    /// a foreground take returns early when interrupt() is called. It also stays out of the
    /// way for a millisecond after a caller submitted or took a result (that caller is likely
    /// to be back at once); then it looks again.
    /// A foreground take also returns as soon as epoch() differs from `epoch` (read it
    /// before checking whether what you wait for is done: no wake-up is lost between).
    /// Each non-empty batch gets the next number in `batch_seq`: batches taken by different
    /// threads must be delivered in that order (a task's output before its result).
    bool take(std::vector<Completion>& out, std::int64_t timeout_ns, bool background = false,
              std::uint64_t epoch = 0, std::uint64_t* batch_seq = nullptr);
    /// Bumps the epoch and wakes foreground takers (another thread has delivered
    /// completions they may wait for). No system call when nobody waits. Any thread.
    void interrupt();
    std::uint64_t epoch() const noexcept { return m_epoch.load(std::memory_order_acquire); }

    /// Starts closing: queued and running tasks finish, then workers exit. With `kill`,
    /// workers are SIGKILLed now and unfinished tasks complete as `broken`. Never blocks.
    void close(bool kill);
    /// Waits until every worker has exited (after close()), serving the pool meanwhile;
    /// kills what is left after timeout_ns. Completions found meanwhile stay for take().
    void join(std::int64_t timeout_ns);

    std::vector<std::int64_t> worker_pids() const;
    std::shared_ptr<Arena> const& arena() const noexcept { return m_options.arena; }
    /// The number of worker slots (fixed for the pool's life; a slot's process may be replaced).
    std::size_t workers() const noexcept { return m_slots.size(); }
    std::size_t queued() const;
    std::size_t inflight() const;

private:
    struct Slot {
        Ring tasks;
        Ring results;
        MessageReader reader;
        MessageWriter writer;                 // the message being written to `tasks`
        std::deque<SharedBytes> outbox;       // messages waiting behind `writer`
        std::int64_t pid = 0;                 // 0 until the zygote reports the fork
        bool ready = false;                   // the worker ran its initializer
        bool stopping = false;                // shutdown frame sent
        bool exited = true;
        std::string kill_reason;              // why the driver killed it (a bad message), for its tasks' crash
        std::vector<std::uint64_t> killed;    // tasks kill() killed it for: they complete as `killed`
        std::uint32_t owner = 0;              // the worker's id in the arena (from its ready frame)
    };

    void check_owner() const;                   // throws InheritedPoolError in a forked copy
    void service_locked();                      // one round of the dispatcher's work
    void pump_locked();                         // hand out work, continue writers
    bool drain_locked();                        // read result rings; true if anything came
    bool drain_slot_locked(std::size_t slot);
    void kill_bad_worker_locked(std::size_t slot, std::string reason);  // it sent garbage: kill, say why
    void handle_zygote_locked();                // forked/exited reports
    void start_worker_locked(std::size_t slot);
    // Asks the zygote to import `names` (before any fork: nothing else reads m_executor yet);
    // false with the zygote's message in `error` if one failed. Throws if the zygote is gone.
    bool import_modules(std::vector<std::string> const& names, std::string& error);
    void worker_exited_locked(std::size_t slot, ExitStatus status);
    void reclaim_locked(std::size_t slot) noexcept;  // frees the arena blocks a dead worker held
    bool adopt_buffers_locked(std::size_t slot, FrameView const& f, std::vector<ArenaBlock>& out);
    void fail_all_locked(Completion::Kind kind, Bytes const& payload, ExitStatus status);
    void fail_task_locked(std::uint64_t task_id, Completion::Kind kind, ExitStatus status,
                          Bytes const& payload, std::uint32_t worker = 0);
    void fail_queued_locked(Completion::Kind kind, ExitStatus status, Bytes const& payload);
    void kill_slot_locked(std::size_t slot) noexcept;  // asks the zygote to SIGKILL it
    void stop_idle_workers_locked();
    bool results_waiting() const noexcept;
    void publish_locked();
    void wake_dispatcher() noexcept;

    PoolOptions m_options;
    SharedMemory m_memory;
    SharedBytes m_init_frame;
    std::vector<WorkerSpec> m_specs;
    Doorbell m_doorbell;
    EventFd m_wakeup;  // private: close(), forget, etc. wake the dispatcher through it
    Fd m_executor;     // our socket to the zygote

    mutable std::mutex m_mutex;
    Scheduler m_scheduler;
    std::vector<Slot> m_slots;
    std::vector<Completion> m_ready;         // completions for the Python layer
    std::condition_variable m_ready_cv;
    bool m_closing = false;
    bool m_killing = false;
    bool m_finished = false;                  // closed and every worker has exited
    bool m_poller = false;                    // a thread sleeps on the doorbell
    bool m_poller_background = false;         // ... and it is the completion thread
    std::atomic<int> m_foreground{0};         // callers blocked in take() for a result
    // When a caller last submitted or left take() (under m_mutex). Within the grace period
    // after it the completion thread leaves the results to such callers (see take()).
    std::int64_t m_caller_ns = 0;
    static constexpr std::int64_t k_caller_grace_ns = 1'000'000;
    bool m_background_parked = false;         // the completion thread sleeps until callers leave
    std::int64_t m_ready_since_ns = 0;        // when m_ready became non-empty
    std::atomic<std::uint64_t> m_epoch{0};    // bumped by interrupt()
    std::uint64_t m_batches = 0;              // batches handed out by take()
    bool m_broken = false;
    Completion::Kind m_broken_kind = Completion::broken;
    Bytes m_broken_payload;
    ExitStatus m_broken_status{};
    int m_early_deaths = 0;                   // workers that died before becoming ready, in a row
    pid_t m_owner = -1;                       // the process that made the pool
};

}  // namespace shoal
