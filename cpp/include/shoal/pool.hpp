// pool.hpp — the driver's process pool: shared memory, worker slots, and the calls that serve them.
//
// Data flow of one task:
//
//   submit() ──► Scheduler queue ──► task ring (shm) ──► worker: run under the GIL
//   (caller's        (in flight ≤ limit                         │
//    thread)          per worker)                               ▼
//                                                    result ring (shm) + doorbell
//                                                               │
//   Future ◄── take() or take_ready(), in the thread that ◄─────┘
//              delivers: it drains the result rings, hears the zygote
//              (forks, deaths) and refills the task rings — C++, GIL released
//
// The pool has no thread of its own. Whichever thread calls it serves it, under m_mutex:
//   - submit() (any thread) queues the task, drains the result rings and refills the task
//     rings. It returns true when completions wait (16, or the oldest 100 µs old): the
//     caller then delivers them itself with take_ready(), with no thread hop.
//   - take() (any thread) serves the pool until completions are ready and hands them to
//     its caller. A foreground taker is a caller blocked on a result (Future.result()): it
//     spins up to spin_ns while tasks are short, then one taker at a time (the poller)
//     sleeps in poll() on the doorbell's eventfd, the zygote's socket and m_wakeup, and the
//     others on m_ready_cv. The background taker is the Python layer's completion thread:
//     it delivers what nobody waits for (callbacks, as_completed), never spins, leaves the
//     doorbell to foreground takers, and stays away while one is in take() and for 1 ms
//     after a caller last submitted or took (k_caller_grace_ns).
//   - interrupt() bumps the epoch after a thread delivered completions, so that foreground
//     takers look at their futures again (a foreground take() returns once the epoch moved).
//   - close() starts stopping the workers; join() serves the pool until they have exited.
// A worker writes the doorbell's eventfd after a result only when the shared flag says a
// taker sleeps; the zygote reports forks and exits on the pool's own socket. On a small
// machine a thread hop costs ~20 µs, so a caller blocked in result() receiving its result
// directly is what makes a round trip cheap.
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

/// How a pool is made. The defaults are what shoal.Executor passes; the binding takes its
/// keyword defaults from here.
struct PoolOptions {
    // Worker processes; 0: one per online CPU (what os.cpu_count() says). More workers than
    // cores help only tasks that wait (I/O, sleep); for CPU-bound tasks they add context
    // switches, and each is a process of its own (memory, a fork to start it).
    std::size_t workers = 0;
    // Capacity of each worker's task ring (driver -> worker, shared memory). A frame larger
    // than a quarter of the ring travels in fragments, each waiting for the worker to make
    // room, and a full ring holds back the tasks behind it. A larger ring moves large
    // arguments in fewer hand-offs; a smaller one takes less memory (every worker has two
    // rings) and less time to create (1 MiB rings made a second pool's creation ~4 ms slower).
    std::size_t task_ring_bytes = std::size_t{256} << 10;
    // Capacity of each worker's result ring (worker -> driver): the same trade-off for
    // results and output. A worker whose result ring is full waits for the driver to drain it.
    std::size_t result_ring_bytes = std::size_t{256} << 10;
    // How long a worker waiting for its next frame, and a caller waiting for the result of
    // a short task, spin (yielding the core between checks) before they sleep. A longer
    // spin catches more arrivals without a wake-up (~20 µs each on a small machine), which
    // is what makes short round trips cheap; it also burns CPU that other processes on a
    // busy machine could have used.
    std::int64_t spin_ns = 100'000;
    // The largest message a worker may send (a frame: header, arena references, pickle).
    // Workers are untrusted: one that sends more (an endless run of "more follows" fragments,
    // a result pickled inline past this size) is killed and its task fails as crashed, as for
    // any malformed frame, instead of the driver buffering it whole. Large buffers travel out
    // of band through the arena and do not count, so this bounds inline pickles only; 1 GiB
    // leaves room for any sensible inline result (without an arena, buffer_threshold=None,
    // a bigger one fails) while one bad worker costs the driver at most that much memory.
    std::size_t max_message_bytes = std::size_t{1} << 30;
    // Imported by the zygote before the first fork, and waited for: every worker shares
    // them instead of importing its own copy (less memory, faster tasks at first), and the
    // first task waits for the imports. A failure makes the constructor throw.
    std::vector<std::string> preload;
    // Imported by the zygote before the first fork too, best effort: a failure is ignored
    // (the modules of the first task's function, so that the workers share them).
    std::vector<std::string> hints;
    Bytes init_payload;  // sent to every new worker first (function frame, fn 0); it answers `ready`
    // Shared with the workers: arguments and results past the Python layer's threshold travel
    // through it by reference instead of through the rings. Null: everything is in the rings.
    std::shared_ptr<Arena> arena;
    SchedulerOptions scheduler;
};

/// A finished task, or a piece of a worker's output, as take() and take_ready() hand it over.
struct Completion {
    enum Kind : std::uint8_t {
        result = 1,       // payload: the result frame's payload; flags: k_flag_error;
                          // status.value: times it was run again after its worker died
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
    /// Creates the shared memory and asks `zygote` to import the preload modules and hints
    /// (waits for the imports) and to fork the workers (their forks are reported later, to
    /// whichever thread serves the pool). Throws std::runtime_error if the zygote fails or a
    /// preload module cannot be imported.
    Pool(ZygoteClient& zygote, PoolOptions options);
    /// If the pool was not joined, kills the workers and waits for them (2 s at most). In a forked copy of
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
    /// `alone`: the task is handed only to a worker with no plain task in flight (Task::alone),
    /// so it never waits behind a long one in a worker's ring.
    bool submit(std::uint64_t task_id, std::uint64_t fn_id, std::uint32_t count,
                std::span<std::byte const> payload, std::span<BufferRef const> refs = {},
                bool concurrent = false, std::int64_t worker = -1, std::uint32_t limit_ms = 0,
                bool alone = false);
    /// Moves the completions already drained into `out`, without waiting or serving the
    /// pool; numbers the batch like take(). Any thread.
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

    /// Serves the pool (drains the result rings, hears the zygote, refills the task rings)
    /// until completions are ready (or timeout_ns passes; < 0
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
    void service_locked();                      // one round of serving the pool
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
    void wake_poller() noexcept;               // ends the poller's poll() (m_wakeup)

    PoolOptions m_options;
    SharedMemory m_memory;
    SharedBytes m_init_frame;
    std::vector<WorkerSpec> m_specs;
    Doorbell m_doorbell;
    EventFd m_wakeup;  // private: ends the poller's poll() (close(), interrupt(), a foreground
                       // taker taking the doorbell, submit() after it drained results)
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
