// sys.cpp — RAII owners and helpers for Linux primitives.
#include "shoal/sys.hpp"

#include <pthread.h>
#include <sched.h>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace shoal {

void throw_errno(std::string const& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

void die(char const* where, char const* rule) noexcept {
    std::fprintf(stderr, "shoal: broken invariant in %s: %s\n", where, rule);
    std::abort();
}

void Fd::reset(int fd) noexcept {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = fd;
}

bool futex_wait(std::uint32_t* word, std::uint32_t expected, std::int64_t timeout_ns) noexcept {
    timespec ts{};
    timespec* tsp = nullptr;
    if (timeout_ns >= 0) {
        ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
        tsp = &ts;
    }
    // Shared (not FUTEX_PRIVATE): the word lives in memory mapped by several processes.
    long r = ::syscall(SYS_futex, word, FUTEX_WAIT, expected, tsp, nullptr, 0);
    return !(r == -1 && errno == ETIMEDOUT);
}

void futex_wake(std::uint32_t* word, int n) noexcept {
    ::syscall(SYS_futex, word, FUTEX_WAKE, n, nullptr, nullptr, 0);
}

std::int64_t now_ns() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

namespace {
std::atomic<pid_t> g_pid{0};

void set_pid_after_fork() noexcept { g_pid.store(::getpid(), std::memory_order_relaxed); }
}  // namespace

pid_t self_pid() noexcept {
    pid_t pid = g_pid.load(std::memory_order_relaxed);
    if (pid != 0) return pid;
    static int const registered = ::pthread_atfork(nullptr, nullptr, set_pid_after_fork);
    (void)registered;
    pid = ::getpid();
    g_pid.store(pid, std::memory_order_relaxed);
    return pid;
}

void yield_core() noexcept { ::sched_yield(); }

EventFd::EventFd() : m_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!m_fd) throw_errno("eventfd");
}

void EventFd::signal() const noexcept {
    std::uint64_t one = 1;
    // EAGAIN only when the counter is saturated: the sleeper is being woken anyway.
    [[maybe_unused]] auto r = ::write(m_fd.get(), &one, sizeof one);
}

void EventFd::drain() const noexcept {
    std::uint64_t v = 0;
    [[maybe_unused]] auto r = ::read(m_fd.get(), &v, sizeof v);
}

std::pair<Fd, Fd> socket_pair() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
    return {Fd(sv[0]), Fd(sv[1])};
}

void send_message(int sock, std::span<std::byte const> data, std::span<int const> fds) {
    iovec iov{const_cast<std::byte*>(data.data()), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control;
    if (!fds.empty()) {
        control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
        msg.msg_control = control.data();
        msg.msg_controllen = control.size();
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
        std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    for (;;) {
        ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n >= 0) return;
        if (errno != EINTR) throw_errno("sendmsg");
    }
}

RecvStatus recv_message(int sock, std::vector<std::byte>& data, std::vector<Fd>& fds,
                        bool nonblocking, std::size_t max_bytes, std::size_t max_fds) {
    fds.clear();
    // Receive on the stack and copy out what came: no zero-filling of max_bytes per call.
    std::byte stack[k_max_control_message];
    std::vector<std::byte> heap;
    std::byte* buf = stack;
    if (max_bytes > sizeof stack) {
        heap.resize(max_bytes);
        buf = heap.data();
    }
    iovec iov{buf, max_bytes};
    std::vector<char> control(CMSG_SPACE(sizeof(int) * max_fds));
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    ssize_t n;
    do {
        n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (nonblocking ? MSG_DONTWAIT : 0));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return RecvStatus::would_block;
        if (errno == ECONNRESET) return RecvStatus::eof;
        throw_errno("recvmsg");
    }
    // Take ownership of every descriptor first, so none leaks on a bad message.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                fds.emplace_back(fd);
            }
        }
    }
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        fds.clear();
        throw std::runtime_error("recv_message: message or descriptors truncated");
    }
    if (n == 0 && fds.empty()) {
        // SOCK_SEQPACKET returns 0 for an empty message too: only a hang-up is EOF.
        pollfd p{sock, POLLRDHUP, 0};
        if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLRDHUP))) return RecvStatus::eof;
        data.clear();
        return RecvStatus::message;
    }
    data.assign(buf, buf + n);
    return RecvStatus::message;
}

}  // namespace shoal
