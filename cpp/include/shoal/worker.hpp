// worker.hpp — a worker's end of its two rings: take task frames, give result frames.
#pragma once

#include "shoal/doorbell.hpp"
#include "shoal/message.hpp"
#include "shoal/scheduler.hpp"
#include "shoal/shm.hpp"
#include "shoal/zygote.hpp"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

namespace shoal {

class WorkerChannel {
public:
    /// Maps the executor's memory and attaches to the slot's rings. The spec comes from
    /// the driver: offsets are checked against the mapping. Throws on a bad spec.
    WorkerChannel(WorkerSpec const& spec, Fd memfd, Fd doorbell);
    ~WorkerChannel();  ///< Stops the watcher thread, if one was started.
    WorkerChannel(WorkerChannel const&) = delete;
    WorkerChannel& operator=(WorkerChannel const&) = delete;

    /// Blocks (spins spec.spin_ns, then sleeps on the futex) until one whole message
    /// arrives, and returns it in `out`. Returns false if the stream is corrupt or the
    /// timeout passes (timeout_ns < 0: none). One thread, which owns the ring (see arm()).
    bool recv(Bytes& out, std::int64_t timeout_ns);
    enum class Poll { message, empty, corrupt };
    /// Takes one whole message if one is there; never blocks. Same rules as recv().
    Poll try_recv(Bytes& out);
    /// Sends one message, blocking while the result ring is full, then rings the driver's
    /// doorbell. One thread.
    void send(std::span<std::byte const> message);

    // ---- waiting inside an event loop (a worker running coroutine tasks) ----
    //
    // A ring's futex cannot be polled beside sockets, so a watcher thread sleeps on it in
    // the loop's place (no spinning) and turns "a message arrived" into a readable eventfd.
    // The ring has one owner at a time: the calling thread, or the watcher while armed.

    /// The eventfd the loop watches (starts the watcher thread on first call).
    int watch_fd();
    /// Hands the task ring to the watcher, which sleeps until a message arrives, makes
    /// watch_fd() readable and hands the ring back (after that, recv()/try_recv() work
    /// again). Returns false, handing nothing, when a message is already there.
    /// Clears watch_fd() first.
    bool arm();
    /// Takes the ring back from the watcher now (waits until it let go). Clears watch_fd().
    void disarm();
    /// True while the watcher owns the ring.
    bool armed() const noexcept;
    /// Clears watch_fd() (after its wake-up was handled). Never blocks.
    void clear_watch() noexcept;
    /// True when a record waits in the task ring (a frame, or part of one). Never blocks;
    /// the owner of the ring only.
    bool pending() const;

private:
    struct Watcher {
        EventFd event;
        std::mutex mutex;
        std::condition_variable cv;
        bool armed = false;                 // under mutex: the watcher owns the ring
        bool stop = false;                  // under mutex
        std::atomic<bool> kick{false};      // disarm()/stop: leave the ring's futex now
        std::atomic<bool> owned{false};     // mirrors `armed`, for the owner's checks
        std::thread thread;
    };
    void watch_loop();
    bool watch_ring();  // the watcher: true when a message is there, false when kicked
    void check_owner() const;

    WorkerSpec m_spec;
    SharedMemory m_memory;
    Ring m_tasks;
    Ring m_results;
    MessageReader m_reader;
    Doorbell m_doorbell;
    std::unique_ptr<Watcher> m_watch;
};

}  // namespace shoal
