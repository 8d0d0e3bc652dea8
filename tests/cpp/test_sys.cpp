// test_sys.cpp — Fd ownership, EventFd, futexes, socket pairs carrying descriptors, errors.
#include "shoal/shm.hpp"
#include "shoal/sys.hpp"

#include "support.hpp"

#include <atomic>
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <system_error>
#include <thread>
#include <vector>

using namespace shoal;
using namespace shoal_test;

namespace {

constexpr std::int64_t k_ms = 1'000'000;
constexpr std::int64_t k_s = 1'000'000'000;

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }
bool cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

std::pair<Fd, Fd> make_pipe() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    return {Fd(p[0]), Fd(p[1])};
}

std::size_t open_fd_count() {
    std::size_t n = 0;
    if (DIR* d = ::opendir("/proc/self/fd")) {
        while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
        ::closedir(d);
    }
    return n;
}

std::span<std::byte const> bytes_of(std::string_view s) {
    return {reinterpret_cast<std::byte const*>(s.data()), s.size()};
}
std::string string_of(std::vector<std::byte> const& b) {
    return {reinterpret_cast<char const*>(b.data()), b.size()};
}

}  // namespace

// ---------------------------------------------------------------- Fd

TEST(Fd, ClosesOnDestruction) {
    int raw;
    {
        auto [r, w] = make_pipe();
        raw = r.get();
        EXPECT_TRUE(r);
        EXPECT_TRUE(fd_open(raw));
    }
    EXPECT_FALSE(fd_open(raw));
}

TEST(Fd, DefaultIsEmpty) {
    Fd f;
    EXPECT_FALSE(f);
    EXPECT_EQ(f.get(), -1);
    f.reset();  // harmless
    EXPECT_EQ(f.release(), -1);
}

TEST(Fd, ReleaseKeepsTheDescriptorOpen) {
    auto [r, w] = make_pipe();
    int raw = r.release();
    EXPECT_FALSE(r);
    EXPECT_TRUE(fd_open(raw));
    ::close(raw);
}

TEST(Fd, MoveTransfersAndResetCloses) {
    auto [r, w] = make_pipe();
    int raw_r = r.get(), raw_w = w.get();
    Fd moved(std::move(r));
    EXPECT_FALSE(r);
    EXPECT_EQ(moved.get(), raw_r);
    moved = std::move(w);  // closes raw_r, takes raw_w
    EXPECT_FALSE(fd_open(raw_r));
    EXPECT_EQ(moved.get(), raw_w);
    moved.reset();
    EXPECT_FALSE(fd_open(raw_w));
}

// ---------------------------------------------------------------- errors

TEST(Sys, ThrowErrnoNamesTheCallAndTheError) {
    errno = EBADF;
    try {
        throw_errno("frobnicate");
        FAIL() << "no throw";
    } catch (std::system_error const& e) {
        EXPECT_EQ(e.code().value(), EBADF);
        EXPECT_NE(std::string(e.what()).find("frobnicate"), std::string::npos) << e.what();
    }
}

TEST(SysDeathTest, DieNamesTheFunctionAndTheRule) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(die("Ring::peek", "head moved backwards"), "broken invariant in Ring::peek: head moved backwards");
    EXPECT_DEATH(SHOAL_ASSERT(1 + 1 == 3, "arithmetic works"), "arithmetic works");
}

TEST(Sys, NowIsMonotonic) {
    std::int64_t a = now_ns();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::int64_t b = now_ns();
    EXPECT_GE(b - a, 5 * k_ms);
    EXPECT_LT(b - a, 5 * k_s);
}

// ---------------------------------------------------------------- futex

TEST(Sys, SelfPidIsEachProcessOwnAcrossForks) {
    // Pools and arena blocks compare it with their owner's: a stale id in a fork()ed child
    // would let the child touch (and free) the parent's workers and memory.
    EXPECT_EQ(self_pid(), ::getpid());
    ChildGuard child(fork_child([] {
        if (self_pid() != ::getpid()) return 2;
        ChildGuard grandchild(fork_child([] { return self_pid() == ::getpid() ? 0 : 3; }));
        auto end = grandchild.wait(std::chrono::seconds(10));
        return end.finished && WIFEXITED(end.status) ? WEXITSTATUS(end.status) : 4;
    }));
    auto end = child.wait(std::chrono::seconds(10));
    EXPECT_TRUE(end.exited(0)) << end.str();
    EXPECT_EQ(self_pid(), ::getpid());
}

TEST(Futex, ReturnsAtOnceWhenTheWordDiffers) {
    std::uint32_t word = 1;
    std::int64_t start = now_ns();
    EXPECT_TRUE(futex_wait(&word, 0, 1 * k_s));
    EXPECT_LT(now_ns() - start, 500 * k_ms);
}

TEST(Futex, TimesOut) {
    std::uint32_t word = 0;
    std::int64_t start = now_ns();
    EXPECT_FALSE(futex_wait(&word, 0, 20 * k_ms));
    std::int64_t took = now_ns() - start;
    EXPECT_GE(took, 19 * k_ms);
    EXPECT_LT(took, 2 * k_s);
}

TEST(Futex, WakeFromAnotherThread) {
    std::atomic<std::uint32_t> word{0};
    auto* w = reinterpret_cast<std::uint32_t*>(&word);
    std::atomic<bool> woke{false};
    std::int64_t took = 0;
    std::thread t([&] {
        std::int64_t start = now_ns();
        while (word.load() == 0) futex_wait(w, 0, 5 * k_s);
        took = now_ns() - start;
        woke = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    word.store(1);
    futex_wake(w, 1);
    t.join();
    EXPECT_TRUE(woke);
    EXPECT_LT(took, 2 * k_s);  // woken, not timed out
}

TEST(Futex, WakeAcrossProcessesOnSharedMemory) {
    // Rings put their futex words in MAP_SHARED memory: the wait must not be process-private.
    auto m = SharedMemory::create(4096);
    auto* word = reinterpret_cast<std::atomic<std::uint32_t>*>(m.data());
    auto* ready = reinterpret_cast<std::atomic<std::uint32_t>*>(m.data() + 64);
    ChildGuard child(fork_child([&] {
        ready->store(1);
        std::int64_t start = now_ns();
        while (word->load() == 0)
            futex_wait(reinterpret_cast<std::uint32_t*>(word), 0, 10 * k_s);
        return now_ns() - start < 5 * k_s ? 0 : 2;
    }));
    std::int64_t deadline = now_ns() + 5 * k_s;
    while (ready->load() == 0 && now_ns() < deadline) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it sleep
    word->store(1);
    futex_wake(reinterpret_cast<std::uint32_t*>(word), 1);
    auto end = child.wait(std::chrono::seconds(10));
    EXPECT_TRUE(end.exited(0)) << end.str();
}

// ---------------------------------------------------------------- EventFd

TEST(EventFd, SignalThenDrain) {
    EventFd ev;
    ASSERT_GE(ev.fd(), 0);
    EXPECT_TRUE(cloexec(ev.fd()));
    EXPECT_NE(::fcntl(ev.fd(), F_GETFL) & O_NONBLOCK, 0);  // drain() must never block
    EXPECT_FALSE(readable_within(ev.fd(), 0));
    ev.drain();  // draining an empty counter does not block
    ev.signal();
    ev.signal();
    EXPECT_TRUE(readable_within(ev.fd(), 0));
    ev.drain();
    EXPECT_FALSE(readable_within(ev.fd(), 0));
}

TEST(EventFd, SignalFromAnotherProcess) {
    EventFd ev;
    ChildGuard child(fork_child([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        ev.signal();
        return 0;
    }));
    EXPECT_TRUE(readable_within(ev.fd(), 5000));
    EXPECT_TRUE(child.wait(std::chrono::seconds(5)).exited(0));
}

// ---------------------------------------------------------------- sockets

TEST(Socket, PairIsSeqpacketAndCloseOnExec) {
    auto [a, b] = socket_pair();
    int type = 0;
    socklen_t len = sizeof type;
    ASSERT_EQ(::getsockopt(a.get(), SOL_SOCKET, SO_TYPE, &type, &len), 0);
    EXPECT_EQ(type, SOCK_SEQPACKET);
    EXPECT_TRUE(cloexec(a.get()));
    EXPECT_TRUE(cloexec(b.get()));
}

TEST(Socket, MessagesKeepTheirBoundaries) {
    auto [a, b] = socket_pair();
    send_message(a.get(), bytes_of("first"));
    send_message(a.get(), bytes_of("second message"));
    std::vector<std::byte> data;
    std::vector<Fd> fds;
    ASSERT_EQ(recv_message(b.get(), data, fds), RecvStatus::message);
    EXPECT_EQ(string_of(data), "first");
    EXPECT_TRUE(fds.empty());
    ASSERT_EQ(recv_message(b.get(), data, fds), RecvStatus::message);
    EXPECT_EQ(string_of(data), "second message");
}

TEST(Socket, PassesWorkingDescriptors) {
    auto [a, b] = socket_pair();
    EventFd ev;
    auto shm = SharedMemory::create(4096);
    int send_fds[2] = {ev.fd(), shm.fd()};
    send_message(a.get(), bytes_of("fds"), send_fds);

    std::vector<std::byte> data;
    std::vector<Fd> fds;
    ASSERT_EQ(recv_message(b.get(), data, fds), RecvStatus::message);
    EXPECT_EQ(string_of(data), "fds");
    ASSERT_EQ(fds.size(), 2u);
    EXPECT_NE(fds[0].get(), ev.fd());  // new descriptors for the same objects
    EXPECT_TRUE(cloexec(fds[0].get()));
    EXPECT_TRUE(cloexec(fds[1].get()));

    EventFd received(std::move(fds[0]));
    received.signal();
    EXPECT_TRUE(readable_within(ev.fd(), 1000));  // the original sees the signal

    auto mapped = SharedMemory::attach(std::move(fds[1]));
    mapped.data()[42] = std::byte{0x42};
    EXPECT_EQ(shm.data()[42], std::byte{0x42});
}

TEST(Socket, PassesDescriptorsToAnotherProcess) {
    auto [a, b] = socket_pair();
    auto [r, w] = make_pipe();
    ChildGuard child(fork_child([&] {
        a.reset();
        w.reset();
        std::vector<std::byte> data;
        std::vector<Fd> fds;
        if (recv_message(b.get(), data, fds) != RecvStatus::message || fds.size() != 1) return 2;
        if (::write(fds[0].get(), "ok", 2) != 2) return 3;
        return 0;
    }));
    b.reset();
    // A pipe the child did not inherit: the write end travels over the socket.
    auto [r2, w2] = make_pipe();
    int fd = w2.get();
    send_message(a.get(), bytes_of("x"), std::span<int const>(&fd, 1));
    w2.reset();
    auto end = child.wait(std::chrono::seconds(5));
    ASSERT_TRUE(end.exited(0)) << end.str();
    char buf[8] = {};
    ASSERT_TRUE(readable_within(r2.get(), 1000));
    EXPECT_EQ(::read(r2.get(), buf, sizeof buf), 2);
    EXPECT_STREQ(buf, "ok");
}

TEST(Socket, EmptyMessageWithADescriptorIsAMessage) {
    auto [a, b] = socket_pair();
    EventFd ev;
    int fd = ev.fd();
    send_message(a.get(), {}, std::span<int const>(&fd, 1));
    std::vector<std::byte> data;
    std::vector<Fd> fds;
    ASSERT_EQ(recv_message(b.get(), data, fds), RecvStatus::message);
    EXPECT_TRUE(data.empty());
    EXPECT_EQ(fds.size(), 1u);
}

// SOCK_SEQPACKET allows empty messages and recvmsg() returns 0 for one, as for EOF. The
// peer is alive: reporting eof makes ZygoteServer drop an executor (and kill its workers)
// or exit altogether on an empty message.
TEST(Socket, EmptyMessageWithoutDescriptorsIsNotEof) {
    auto [a, b] = socket_pair();
    send_message(a.get(), {});
    send_message(a.get(), bytes_of("after"));
    std::vector<std::byte> data;
    std::vector<Fd> fds;
    RecvStatus st = recv_message(b.get(), data, fds);
    EXPECT_NE(st, RecvStatus::eof) << "an empty message from a live peer was reported as EOF";
    if (st == RecvStatus::message) EXPECT_TRUE(data.empty());
    ASSERT_EQ(recv_message(b.get(), data, fds), RecvStatus::message);
    EXPECT_EQ(string_of(data), "after");
}

TEST(Socket, EofWhenThePeerCloses) {
    auto [a, b] = socket_pair();
    send_message(a.get(), bytes_of("last"));
    a.reset();
    std::vector<std::byte> data;
    std::vector<Fd> fds;
    ASSERT_EQ(recv_message(b.get(), data, fds), RecvStatus::message);  // queued data first
    EXPECT_EQ(string_of(data), "last");
    EXPECT_EQ(recv_message(b.get(), data, fds), RecvStatus::eof);
    EXPECT_EQ(recv_message(b.get(), data, fds, /*nonblocking=*/true), RecvStatus::eof);
}

TEST(Socket, WouldBlockWhenNothingIsThere) {
    auto [a, b] = socket_pair();
    std::vector<std::byte> data;
    std::vector<Fd> fds;
    EXPECT_EQ(recv_message(b.get(), data, fds, /*nonblocking=*/true), RecvStatus::would_block);
    send_message(a.get(), bytes_of("now"));
    EXPECT_EQ(recv_message(b.get(), data, fds, /*nonblocking=*/true), RecvStatus::message);
    EXPECT_EQ(string_of(data), "now");
    EXPECT_EQ(recv_message(b.get(), data, fds, /*nonblocking=*/true), RecvStatus::would_block);
}

TEST(Socket, BlockingReceiveWaitsForTheMessage) {
    auto [a, b] = socket_pair();
    std::thread t([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        send_message(a.get(), bytes_of("late"));
    });
    std::vector<std::byte> data;
    std::vector<Fd> fds;
    EXPECT_EQ(recv_message(b.get(), data, fds), RecvStatus::message);
    EXPECT_EQ(string_of(data), "late");
    t.join();
}

TEST(Socket, TruncatedMessageThrows) {
    auto [a, b] = socket_pair();
    std::vector<std::byte> big(100, std::byte{1});
    send_message(a.get(), big);
    std::vector<std::byte> data;
    std::vector<Fd> fds;
    EXPECT_THROW(recv_message(b.get(), data, fds, false, /*max_bytes=*/50), std::runtime_error);
}

TEST(Socket, TooManyDescriptorsThrowAndLeakNothing) {
    auto [a, b] = socket_pair();
    std::vector<EventFd> evs(6);
    std::vector<int> raw;
    for (auto& e : evs) raw.push_back(e.fd());
    std::size_t before = open_fd_count();
    send_message(a.get(), bytes_of("many"), raw);
    std::vector<std::byte> data;
    std::vector<Fd> fds;
    EXPECT_THROW(recv_message(b.get(), data, fds, false, 4096, /*max_fds=*/2), std::runtime_error);
    EXPECT_TRUE(fds.empty());
    EXPECT_EQ(open_fd_count(), before);  // the two that arrived were closed again
}

TEST(Socket, SendToAClosedPeerThrowsWithoutSigpipe) {
    auto [a, b] = socket_pair();
    b.reset();
    EXPECT_THROW(send_message(a.get(), bytes_of("nobody")), std::system_error);  // not killed by SIGPIPE
}

TEST(SpinWait, StopsWhenTheBudgetIsSpent) {
    for (std::int64_t budget : {0L, 50'000L, 2'000'000L}) {
        std::int64_t const start = now_ns();
        SpinWait w(budget);
        unsigned rounds = 0;
        while (w.next()) ++rounds;
        std::int64_t const took = now_ns() - start;
        EXPECT_GE(took, budget);
        EXPECT_LT(took, budget + 50'000'000) << "budget " << budget;  // generous: a busy machine
        if (budget >= 2'000'000) EXPECT_GT(rounds, 128u) << "it should have reached the yielding phase";
    }
}

TEST(SpinWait, SeesAWriteFromAnotherThread) {
    std::atomic<bool> flag{false};
    std::thread t([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        flag.store(true, std::memory_order_release);
    });
    bool seen = false;
    for (SpinWait w(2'000'000'000); !(seen = flag.load(std::memory_order_acquire));)
        if (!w.next()) break;
    t.join();
    EXPECT_TRUE(seen);
}
