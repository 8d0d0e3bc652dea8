// support.hpp — helpers shared by the C++ tests: forked children with timeouts, exact-size buffers.
//
// Not a test file (the CMake glob takes tests/cpp/test_*.cpp only). Everything here is for
// tests: a forked child must never return into GoogleTest, and no wait may hang.
#pragma once

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <new>
#include <poll.h>
#include <string>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace shoal_test {

#if defined(__SANITIZE_THREAD__)
inline constexpr bool k_tsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool k_tsan = true;
#else
inline constexpr bool k_tsan = false;
#endif
#else
inline constexpr bool k_tsan = false;
#endif

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool k_asan = true;
#else
inline constexpr bool k_asan = false;
#endif

/// Iterations for loops that are single-threaded or cross-process: TSan learns nothing from
/// them and runs them ~10x slower, so they shrink there. Thread stress keeps its full size.
constexpr int scaled(int n) noexcept { return k_tsan ? n / 8 : n; }

/// Heap memory of exactly `bytes` bytes, 64-byte aligned and zeroed, so that ASan reports
/// any read or write one byte past a ring.
class AlignedBuffer {
public:
    explicit AlignedBuffer(std::size_t bytes)
        : m_data(static_cast<std::byte*>(::operator new(bytes, std::align_val_t{64}))), m_size(bytes) {
        std::memset(m_data, 0, bytes);
    }
    ~AlignedBuffer() { ::operator delete(m_data, std::align_val_t{64}); }
    AlignedBuffer(AlignedBuffer const&) = delete;
    AlignedBuffer& operator=(AlignedBuffer const&) = delete;
    std::byte* data() const noexcept { return m_data; }
    std::size_t size() const noexcept { return m_size; }

private:
    std::byte* m_data;
    std::size_t m_size;
};

/// Forks; the child runs `body` and _exit()s with its return value (125 if it threw), so it
/// never runs GoogleTest's code after the fork. Returns the child's pid in the parent.
inline pid_t fork_child(std::function<int()> const& body) {
    pid_t pid = ::fork();
    if (pid < 0) ADD_FAILURE() << "fork: " << std::strerror(errno);
    if (pid == 0) {
        int rc = 125;
        try {
            rc = body();
        } catch (...) {
            rc = 125;
        }
        ::_exit(rc);
    }
    return pid;
}

/// How a waited-for child ended. `finished` is false when it had to be SIGKILLed at the timeout.
struct ChildEnd {
    bool finished = false;
    int status = 0;  // raw wait status
    bool exited(int code) const { return finished && WIFEXITED(status) && WEXITSTATUS(status) == code; }
    bool signaled(int sig) const { return finished && WIFSIGNALED(status) && WTERMSIG(status) == sig; }
    std::string str() const {
        if (!finished) return "timed out (killed)";
        if (WIFEXITED(status)) return "exited " + std::to_string(WEXITSTATUS(status));
        if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
        return "status " + std::to_string(status);
    }
};

/// Waits for our child `pid` up to `timeout`; past it, SIGKILLs and reaps it. Independent of
/// shoal's own process code (which test_process.cpp tests).
inline ChildEnd wait_child(pid_t pid, std::chrono::milliseconds timeout) {
    ChildEnd end;
    if (pid <= 0) return end;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        int st = 0;
        pid_t r = ::waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            end.finished = true;
            end.status = st;
            return end;
        }
        if (r < 0 && errno != EINTR) return end;
        if (std::chrono::steady_clock::now() >= deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            return end;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
}

/// Kills and reaps a child on scope exit unless it was already waited for.
class ChildGuard {
public:
    explicit ChildGuard(pid_t pid) noexcept : m_pid(pid) {}
    ~ChildGuard() {
        if (m_pid > 0) {
            ::kill(m_pid, SIGKILL);
            ::waitpid(m_pid, nullptr, 0);
        }
    }
    ChildGuard(ChildGuard const&) = delete;
    ChildGuard& operator=(ChildGuard const&) = delete;
    pid_t pid() const noexcept { return m_pid; }
    /// Waits (with timeout) and disarms the guard.
    ChildEnd wait(std::chrono::milliseconds timeout) {
        ChildEnd e = wait_child(m_pid, timeout);
        m_pid = -1;
        return e;
    }

private:
    pid_t m_pid;
};

/// True when `fd` becomes readable within `timeout_ms`.
inline bool readable_within(int fd, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    int r;
    do { r = ::poll(&p, 1, timeout_ms); } while (r < 0 && errno == EINTR);
    return r == 1 && (p.revents & (POLLIN | POLLHUP)) != 0;
}

/// True when process `pid` (not necessarily our child) has ended within `timeout_ms`.
/// Uses a pidfd, which becomes readable when the process exits (zombie or reaped).
inline bool process_gone_within(pid_t pid, int timeout_ms) {
    int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) return errno == ESRCH;  // already gone and reaped
    bool gone = readable_within(fd, timeout_ms);
    ::close(fd);
    return gone;
}

/// Deterministic content for byte `i` of record `seq`: both ends compute it independently.
inline std::byte pattern_byte(std::uint64_t seq, std::size_t i) noexcept {
    return static_cast<std::byte>((seq * 131 + i * 7 + (seq >> 8)) & 0xFF);
}

/// The size of record `seq` in the stress tests: mostly small, sometimes large.
inline std::size_t pattern_size(std::uint64_t seq, std::size_t max) noexcept {
    std::uint64_t h = seq * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    std::size_t n = (h % 8 == 0) ? static_cast<std::size_t>(h >> 40) % (max + 1)
                                 : static_cast<std::size_t>(h >> 40) % 65;
    return n;
}

}  // namespace shoal_test
