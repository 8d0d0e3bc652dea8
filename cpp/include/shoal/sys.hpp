// sys.hpp — thin RAII owners and helpers for the Linux primitives the core uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <sys/types.h>
#include <system_error>
#include <vector>

namespace shoal {

/// Throws std::system_error for errno with a message naming the failed call.
[[noreturn]] void throw_errno(std::string const& what);

/// A broken invariant: print the function and the rule, then abort.
[[noreturn]] void die(char const* where, char const* rule) noexcept;

#define SHOAL_ASSERT(cond, rule) \
    do { if (!(cond)) ::shoal::die(__func__, rule); } while (0)

/// Owns one file descriptor. Move-only; closes on destruction (safe at any time).
class Fd {
public:
    Fd() noexcept = default;
    explicit Fd(int fd) noexcept : m_fd(fd) {}
    Fd(Fd&& o) noexcept : m_fd(o.release()) {}
    Fd& operator=(Fd&& o) noexcept { reset(o.release()); return *this; }
    Fd(Fd const&) = delete;
    Fd& operator=(Fd const&) = delete;
    ~Fd() { reset(); }

    int get() const noexcept { return m_fd; }
    explicit operator bool() const noexcept { return m_fd >= 0; }
    int release() noexcept { int fd = m_fd; m_fd = -1; return fd; }
    void reset(int fd = -1) noexcept;

private:
    int m_fd = -1;
};

/// Waits while *word == expected, up to timeout_ns (negative: forever). Works across
/// processes on MAP_SHARED memory. Returns false on timeout. Any thread; blocks.
bool futex_wait(std::uint32_t* word, std::uint32_t expected, std::int64_t timeout_ns) noexcept;
/// Wakes up to n waiters on word. Any thread; never blocks.
void futex_wake(std::uint32_t* word, int n) noexcept;

/// A cheap pause for spin loops.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

/// Monotonic clock in nanoseconds (vDSO, no syscall).
std::int64_t now_ns() noexcept;

/// This process's id, as getpid() returns it, without its system call (~0.2 µs on a VM):
/// cached, and set again in the child of every fork() (a pthread_atfork handler). A child
/// made without libc's fork() (a raw clone) that never execs would see its parent's id.
pid_t self_pid() noexcept;

/// Gives the core to another runnable thread, if there is one (sched_yield).
void yield_core() noexcept;

/// A spin-wait budget: a few µs of pure pauses, then a sched_yield between checks. On a
/// quiet machine a check still comes every µs or so; on a busy one (more runnable threads
/// than cores, as with 2 workers and a driver on 2 cores) the spinner hands its core to
/// whoever can use it, often the very process it waits for.
///     for (SpinWait w(spin_ns); !ready(); ) if (!w.next()) break;  // then sleep
class SpinWait {
public:
    explicit SpinWait(std::int64_t budget_ns) noexcept : m_start(now_ns()), m_budget(budget_ns) {}
    /// One more round of waiting; false once the budget is spent.
    bool next() noexcept {
        if (++m_rounds <= k_pure) {
            cpu_relax();
            return (m_rounds & 15) != 0 || now_ns() - m_start < m_budget;
        }
        if (now_ns() - m_start >= m_budget) return false;
        yield_core();
        return true;
    }

private:
    static constexpr unsigned k_pure = 128;  // ~3 µs of pause instructions
    std::int64_t m_start;
    std::int64_t m_budget;
    unsigned m_rounds = 0;
};

/// An eventfd: a counter other processes can wake us through. Move-only.
class EventFd {
public:
    EventFd();                       ///< Throws std::system_error.
    explicit EventFd(Fd fd) noexcept : m_fd(std::move(fd)) {}
    int fd() const noexcept { return m_fd.get(); }
    /// Adds one. Any thread or process; never blocks.
    void signal() const noexcept;
    /// Clears the counter without blocking.
    void drain() const noexcept;
private:
    Fd m_fd;
};

/// A Unix socket pair (SOCK_SEQPACKET, close-on-exec).
std::pair<Fd, Fd> socket_pair();

/// Sends one message with file descriptors attached (SCM_RIGHTS). Blocks. Throws on error.
void send_message(int sock, std::span<std::byte const> data, std::span<int const> fds = {});
enum class RecvStatus { message, eof, would_block };
/// The largest control message shoal sends (a zygote message with its 64 KiB body).
inline constexpr std::size_t k_max_control_message = 64 * 1024 + 256;
/// Receives one message (at most max_bytes) and up to max_fds descriptors. Blocks unless
/// `nonblocking`. Throws on error or on a truncated message.
RecvStatus recv_message(int sock, std::vector<std::byte>& data, std::vector<Fd>& fds,
                        bool nonblocking = false, std::size_t max_bytes = k_max_control_message,
                        std::size_t max_fds = 8);

}  // namespace shoal
