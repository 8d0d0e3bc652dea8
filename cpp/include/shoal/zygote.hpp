// zygote.hpp — the zygote's serving loop and the driver's client of it.
//
// The zygote is a single-threaded Python process that the driver starts once with
// posix_spawn. It imports the preload modules and forks workers on request, so workers
// start in a few ms, share the zygote's pages copy-on-write, and the user's process is
// never forked. One control socket links driver and zygote; each executor gets its own
// socket (sent over the control socket) for fork requests and exit reports.
//
// The fork itself happens in the caller of ZygoteServer::next() (Python's os.fork, which
// keeps the interpreter's own after-fork rules); this file does everything else.
#pragma once

#include "shoal/process.hpp"

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace shoal {

/// Where a worker's rings are inside its executor's shared memory. Sent by the driver:
/// the worker checks it against the real size of the memory before using it.
struct WorkerSpec {
    std::uint32_t slot = 0;
    std::uint32_t reserved = 0;
    std::uint64_t task_ring_offset = 0;
    std::uint64_t task_ring_capacity = 0;
    std::uint64_t result_ring_offset = 0;
    std::uint64_t result_ring_capacity = 0;
    std::uint64_t doorbell_offset = 0;
    std::int64_t spin_ns = 0;
};

enum class ZygoteOp : std::uint32_t {
    open_executor = 1,  // driver -> zygote (control socket), 1 fd: the executor's socket
    fork_worker = 2,    // executor -> zygote, 2 or 3 fds: memfd, doorbell eventfd, arena memfd
    import_modules = 3, // executor -> zygote, body: module names separated by '\n'
    kill_worker = 4,    // executor -> zygote: SIGKILL the worker in `slot`
    forked = 16,        // zygote -> executor: `pid` started in `slot`
    exited = 17,        // zygote -> executor: the worker in `slot` ended with `status`
    imported = 18,      // zygote -> executor: `status.value` 0 ok, else error text in body
};

struct ZygoteMessage {
    ZygoteOp op{};
    std::uint32_t slot = 0;
    std::int64_t pid = 0;
    ExitStatus status{};
    WorkerSpec spec{};
    std::string body;

    std::vector<std::byte> encode() const;
    /// Checked decode of untrusted bytes; false when malformed.
    static bool decode(std::span<std::byte const> bytes, ZygoteMessage& out) noexcept;
};

/// Runs in the zygote. Single-threaded.
///
/// The zygote ends with the driver, by whichever comes first: EOF on the control socket (the
/// driver closed it, or shut it down while a fork()ed child of the driver still holds a copy),
/// or the driver process itself ending (a pidfd on it, so that a forked child holding the
/// socket cannot keep the zygote and its workers alive after a SIGKILL of the driver).
class ZygoteServer {
public:
    /// `control` is the socket pair end the driver made: its peer credentials name the driver.
    /// If the driver is already gone, the first next() returns `exit`.
    explicit ZygoteServer(Fd control);

    struct Action {
        enum Kind { fork, import_modules, exit, idle } kind = exit;
        int executor = -1;                 // the executor socket it came from
        WorkerSpec spec{};
        std::vector<Fd> fds;               // fork: memfd, doorbell eventfd [, arena memfd]
        std::vector<std::string> modules;  // import_modules

        Action() = default;
        Action(Action&&) = default;
        Action& operator=(Action&&) = default;
        Action(Action const&) = delete;  // owns descriptors
        Action& operator=(Action const&) = delete;
    };

    /// Serves until the caller must act: fork a worker, import modules, or exit (the driver
    /// is gone: every worker has been SIGKILLed). Blocks in poll(); with timeout_ms >= 0,
    /// returns an `idle` action once nothing has come for that long.
    Action next(int timeout_ms = -1);
    /// In the zygote after fork: track the child and report it to its executor. Closes the
    /// zygote's copies of the action's descriptors (the executor's shared memory, doorbell and
    /// arena): the zygote keeps nothing of an executor but its socket, so once the executor is
    /// gone, so is every page and descriptor of it here.
    void forked(Action& action, pid_t pid);
    /// In the child after fork: close all of the zygote's descriptors, die with the zygote.
    /// Returns the worker's descriptors.
    std::vector<Fd> become_worker(Action&& action);
    /// After an import request: tell the executor how it went.
    void imported(Action const& action, bool ok, std::string const& error);
    std::size_t worker_count() const noexcept { return m_workers.size(); }

private:
    struct Worker { pid_t pid; Fd pidfd; int executor; std::uint32_t slot; };
    void reply(int executor, ZygoteMessage const& m) noexcept;
    void close_executor(int executor) noexcept;
    void kill_all() noexcept;

    pid_t m_self;
    Fd m_control;
    Fd m_driver;                // pidfd of the driver (readable once it has ended)
    bool m_driver_gone = false; // it ended before we could watch it
    std::unordered_map<int, Fd> m_executors;  // by fd number
    std::vector<Worker> m_workers;
};

/// The driver's handle on its zygote. Thread-safe.
class ZygoteClient {
public:
    /// Starts the zygote: `argv` runs with the control socket as fd 3. Throws.
    explicit ZygoteClient(std::vector<std::string> const& argv);
    /// Shuts the control socket down (the zygote sees EOF at once, even while a fork()ed child
    /// holds a copy of it, and exits) and reaps the zygote. In a forked copy of the driver it
    /// only closes that copy's descriptor: the zygote is the original's.
    ~ZygoteClient();
    ZygoteClient(ZygoteClient const&) = delete;
    ZygoteClient& operator=(ZygoteClient const&) = delete;

    /// A new socket for one executor. Throws if the zygote is gone.
    Fd open_executor();
    pid_t pid() const noexcept { return m_pid; }
    /// False once the zygote has exited, and in a forked copy of the driver.
    bool alive() const noexcept;

private:
    std::mutex m_mutex;
    Fd m_control;
    pid_t m_pid = -1;
    pid_t m_owner = -1;  // the process that started the zygote
};

}  // namespace shoal
