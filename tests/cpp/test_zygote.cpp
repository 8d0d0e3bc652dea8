// test_zygote.cpp — the zygote protocol: ZygoteMessage encoding of untrusted bytes, a real
// ZygoteServer in a forked process (the test plays the executor), and ZygoteClient.
#include "shoal/shm.hpp"
#include "shoal/zygote.hpp"

#include "support.hpp"

#include <fcntl.h>
#include <random>
#include <string>
#include <vector>

using namespace shoal;
using namespace shoal_test;

namespace {

constexpr std::int64_t k_ms = 1'000'000;

std::size_t wire_size() { return ZygoteMessage{.op = ZygoteOp::exited}.encode().size(); }

// ---------------------------------------------------------------- the zygote under test

// What a worker does depends on its slot:
enum : std::uint32_t {
    k_slot_exit7 = 0,   // checks it lost the zygote's control socket, exits 7
    k_slot_serve = 1,   // writes into the memfd, signals the eventfd, waits to be killed
    k_slot_wait = 2,    // signals the eventfd, waits to be killed
};
constexpr char k_alive_text[] = "worker-alive";

int worker_main(WorkerSpec const& spec, std::vector<Fd> fds, int zygote_control_fd) {
    if (fds.size() != 2) return 20;
    if (spec.slot == k_slot_exit7) {
        if (::fcntl(zygote_control_fd, F_GETFD) != -1) return 21;  // become_worker() must close it
        return 7;
    }
    if (spec.slot == k_slot_serve) {
        auto mem = SharedMemory::attach(std::move(fds[0]));
        std::memcpy(mem.data(), k_alive_text, sizeof k_alive_text);
    }
    EventFd(std::move(fds[1])).signal();
    for (;;) ::pause();
}

/// The zygote's loop as the Python layer runs it: next(), and the fork done by the caller.
int zygote_main(Fd control) {
    int control_fd = control.get();
    ZygoteServer server(std::move(control));
    for (;;) {
        ZygoteServer::Action action = server.next();
        switch (action.kind) {
            case ZygoteServer::Action::exit:
                return server.worker_count() == 0 ? 0 : 3;
            case ZygoteServer::Action::import_modules: {
                auto const& m = action.modules;
                if (m == std::vector<std::string>{"alpha", "beta"}) server.imported(action, true, "");
                else if (m.size() >= 500 && m[0] == "m0" && m[499] == "m499") server.imported(action, true, "");
                else if (m.size() == 1 && m[0] == "long_error") server.imported(action, false, std::string(10'000, 'x'));
                else server.imported(action, false, "unexpected modules");
                break;
            }
            case ZygoteServer::Action::idle:
                break;  // only with a timeout, which this loop does not use
            case ZygoteServer::Action::fork: {
                pid_t pid = ::fork();
                if (pid == 0) {
                    WorkerSpec spec = action.spec;
                    auto fds = server.become_worker(std::move(action));
                    ::_exit(worker_main(spec, std::move(fds), control_fd));
                }
                if (pid < 0) return 4;
                server.forked(action, pid);
                break;
            }
        }
    }
}

/// The test's side: the driver's control socket and the zygote process.
struct Zygote {
    Zygote() {
        auto [ours, theirs] = socket_pair();
        pid = fork_child([&] {
            ours.reset();
            return zygote_main(std::move(theirs));
        });
        control = std::move(ours);
    }
    ~Zygote() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            wait_child(pid, std::chrono::seconds(5));
        }
    }
    Fd open_executor() const {
        auto [ours, theirs] = socket_pair();
        ZygoteMessage m;
        m.op = ZygoteOp::open_executor;
        int fd = theirs.get();
        send_message(control.get(), m.encode(), std::span<int const>(&fd, 1));
        return std::move(ours);
    }
    ChildEnd wait_exit() {
        auto e = wait_child(pid, std::chrono::seconds(5));
        pid = -1;
        return e;
    }
    Fd control;
    pid_t pid = -1;
};

/// What a fork request carries: the executor's memfd and doorbell.
struct WorkerFds {
    SharedMemory mem = SharedMemory::create(4096, "shoal-test-zygote");
    EventFd doorbell;
};

void request_fork(int executor, std::uint32_t slot, WorkerFds const& w) {
    ZygoteMessage m;
    m.op = ZygoteOp::fork_worker;
    m.slot = slot;
    m.spec.slot = slot;
    m.spec.spin_ns = 1000;
    int fds[2] = {w.mem.fd(), w.doorbell.fd()};
    send_message(executor, m.encode(), fds);
}

void request_kill(int executor, std::uint32_t slot) {
    ZygoteMessage m;
    m.op = ZygoteOp::kill_worker;
    m.slot = slot;
    send_message(executor, m.encode());
}

/// The next message from the zygote, or op 0 on timeout / EOF / garbage.
ZygoteMessage receive(int executor, int timeout_ms = 5000) {
    ZygoteMessage m;
    if (!readable_within(executor, timeout_ms)) return m;
    std::vector<std::byte> buf;
    std::vector<Fd> fds;
    if (recv_message(executor, buf, fds, false, 1 << 17) != RecvStatus::message) return m;
    if (!ZygoteMessage::decode(buf, m)) m.op = ZygoteOp{};
    return m;
}

/// A pipe (close-on-exec both ends) for a forked child to report to the test.
std::pair<Fd, Fd> make_pipe_for_test() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) ADD_FAILURE() << "pipe2: " << std::strerror(errno);
    return {Fd(p[0]), Fd(p[1])};
}

bool at_eof(int sock, int timeout_ms) {
    if (!readable_within(sock, timeout_ms)) return false;
    std::vector<std::byte> buf;
    std::vector<Fd> fds;
    try {
        return recv_message(sock, buf, fds, true) == RecvStatus::eof;
    } catch (...) {
        return false;
    }
}

}  // namespace

// ---------------------------------------------------------------- ZygoteMessage

TEST(ZygoteMessage, Roundtrip) {
    ZygoteMessage m;
    m.op = ZygoteOp::exited;
    m.slot = 12;
    m.pid = 123456;
    m.status = {ExitStatus::signaled, 9};
    m.spec = {3, 0, 64, 1 << 20, 128 + (1 << 20), 1 << 16, 0, 50'000};
    m.body = std::string("body\0with\nbytes", 15);
    auto bytes = m.encode();
    EXPECT_EQ(bytes.size(), wire_size() + 15);
    ZygoteMessage d;
    ASSERT_TRUE(ZygoteMessage::decode(bytes, d));
    EXPECT_EQ(d.op, ZygoteOp::exited);
    EXPECT_EQ(d.slot, 12u);
    EXPECT_EQ(d.pid, 123456);
    EXPECT_EQ(d.status.kind, ExitStatus::signaled);
    EXPECT_EQ(d.status.value, 9);
    EXPECT_EQ(d.spec.slot, 3u);
    EXPECT_EQ(d.spec.task_ring_offset, 64u);
    EXPECT_EQ(d.spec.task_ring_capacity, 1u << 20);
    EXPECT_EQ(d.spec.result_ring_offset, 128u + (1 << 20));
    EXPECT_EQ(d.spec.result_ring_capacity, 1u << 16);
    EXPECT_EQ(d.spec.spin_ns, 50'000);
    EXPECT_EQ(d.body, m.body);
}

TEST(ZygoteMessage, BodyLimit) {
    ZygoteMessage m;
    m.op = ZygoteOp::imported;
    m.body.assign(64 * 1024, 'b');
    auto bytes = m.encode();
    ZygoteMessage d;
    EXPECT_TRUE(ZygoteMessage::decode(bytes, d));
    EXPECT_EQ(d.body.size(), 64u * 1024);
    m.body.push_back('!');
    EXPECT_THROW(m.encode(), std::length_error);
}

TEST(ZygoteMessage, RejectsMalformedBytes) {
    ZygoteMessage m;
    m.op = ZygoteOp::forked;
    m.body = "abc";
    auto good = m.encode();
    ZygoteMessage d;
    ASSERT_TRUE(ZygoteMessage::decode(good, d));

    for (std::size_t n = 0; n < wire_size(); ++n)
        EXPECT_FALSE(ZygoteMessage::decode(std::span(good).first(n), d)) << "short " << n;
    EXPECT_FALSE(ZygoteMessage::decode(std::span(good).first(good.size() - 1), d)) << "body cut";
    auto longer = good;
    longer.push_back(std::byte{0});
    EXPECT_FALSE(ZygoteMessage::decode(longer, d)) << "trailing byte";

    for (std::uint32_t op : {0u, 5u, 15u, 19u, 0xFFFFFFFFu}) {
        auto bad = good;
        std::memcpy(bad.data(), &op, 4);
        EXPECT_FALSE(ZygoteMessage::decode(bad, d)) << "op " << op;
    }
    for (std::int32_t kind : {0, 3, -1}) {
        auto bad = good;
        std::memcpy(bad.data() + 16, &kind, 4);  // status.kind
        EXPECT_FALSE(ZygoteMessage::decode(bad, d)) << "status kind " << kind;
    }
    {
        // A huge body length with the bytes to match is still refused.
        ZygoteMessage big;
        big.op = ZygoteOp::imported;
        big.body.assign(64 * 1024, 'x');
        auto bytes = big.encode();
        bytes.push_back(std::byte{'x'});
        std::uint32_t len = 64 * 1024 + 1;
        std::memcpy(bytes.data() + wire_size() - 8, &len, 4);  // body_len
        EXPECT_FALSE(ZygoteMessage::decode(bytes, d));
    }
}

TEST(ZygoteMessage, FuzzNeverCrashes) {
    std::mt19937_64 rng(77);
    ZygoteMessage m;
    m.op = ZygoteOp::fork_worker;
    m.body = "x";
    auto good = m.encode();
    std::vector<std::byte> storage;
    int accepted = 0;
    for (int iter = 0; iter < 100'000; ++iter) {
        auto f = good;
        if (rng() % 2) f.resize(rng() % (f.size() + 8));
        for (int k = static_cast<int>(rng() % 3); k-- > 0 && !f.empty();) f[rng() % f.size()] = static_cast<std::byte>(rng());
        storage.assign(f.begin(), f.end());
        storage.shrink_to_fit();
        ZygoteMessage d;
        if (ZygoteMessage::decode(storage, d)) {
            ++accepted;
            ASSERT_EQ(d.body.size(), storage.size() - wire_size());
        }
    }
    EXPECT_GT(accepted, 100);
}

// ---------------------------------------------------------------- ZygoteServer

TEST(ZygoteServer, ForkWorkerReportsForkedThenExited) {
    Zygote z;
    Fd ex = z.open_executor();
    WorkerFds w;
    request_fork(ex.get(), k_slot_exit7, w);
    ZygoteMessage forked = receive(ex.get());
    ASSERT_EQ(forked.op, ZygoteOp::forked);
    EXPECT_EQ(forked.slot, k_slot_exit7);
    EXPECT_GT(forked.pid, 0);

    ZygoteMessage exited = receive(ex.get());
    ASSERT_EQ(exited.op, ZygoteOp::exited);
    EXPECT_EQ(exited.slot, k_slot_exit7);
    EXPECT_EQ(exited.pid, forked.pid);
    EXPECT_EQ(exited.status.kind, ExitStatus::exited);
    EXPECT_EQ(exited.status.value, 7) << "21: the worker still had the zygote's control socket; 20: wrong fds";
}

TEST(ZygoteServer, WorkerGetsWorkingDescriptorsAndKillWorkerKillsIt) {
    Zygote z;
    Fd ex = z.open_executor();
    WorkerFds w;
    request_fork(ex.get(), k_slot_serve, w);
    ZygoteMessage forked = receive(ex.get());
    ASSERT_EQ(forked.op, ZygoteOp::forked);
    ASSERT_TRUE(readable_within(w.doorbell.fd(), 5000)) << "the worker's eventfd never fired";
    EXPECT_STREQ(reinterpret_cast<char const*>(w.mem.data()), k_alive_text);

    request_kill(ex.get(), k_slot_serve);
    ZygoteMessage exited = receive(ex.get());
    ASSERT_EQ(exited.op, ZygoteOp::exited);
    EXPECT_EQ(exited.pid, forked.pid);
    EXPECT_EQ(exited.status.kind, ExitStatus::signaled);
    EXPECT_EQ(exited.status.value, 9);
}

TEST(ZygoteServer, ManyWorkersEachReported) {
    Zygote z;
    Fd ex = z.open_executor();
    WorkerFds w;
    constexpr int k_workers = 8;
    for (int i = 0; i < k_workers; ++i) request_fork(ex.get(), k_slot_exit7, w);
    int forked = 0, exited7 = 0;
    while (forked + exited7 < 2 * k_workers) {
        ZygoteMessage m = receive(ex.get());
        if (m.op == ZygoteOp::forked) ++forked;
        else if (m.op == ZygoteOp::exited && m.status.kind == ExitStatus::exited && m.status.value == 7) ++exited7;
        else break;
    }
    EXPECT_EQ(forked, k_workers);
    EXPECT_EQ(exited7, k_workers);
}

TEST(ZygoteServer, ClosingTheControlSocketKillsWorkersAndExits) {
    Zygote z;
    Fd ex = z.open_executor();
    WorkerFds w;
    request_fork(ex.get(), k_slot_wait, w);
    ZygoteMessage forked = receive(ex.get());
    ASSERT_EQ(forked.op, ZygoteOp::forked);
    ASSERT_TRUE(readable_within(w.doorbell.fd(), 5000));
    auto worker = static_cast<pid_t>(forked.pid);

    z.control.reset();  // the driver is gone
    auto end = z.wait_exit();
    EXPECT_TRUE(end.exited(0)) << end.str() << " (3: next() returned exit with workers left)";
    EXPECT_TRUE(process_gone_within(worker, 1000));
    EXPECT_TRUE(at_eof(ex.get(), 1000));
}

TEST(ZygoteServer, ClosingAnExecutorKillsOnlyItsWorkers) {
    Zygote z;
    Fd a = z.open_executor();
    Fd b = z.open_executor();
    WorkerFds wa, wb;
    request_fork(a.get(), k_slot_wait, wa);
    request_fork(b.get(), k_slot_wait, wb);
    ZygoteMessage fa = receive(a.get());
    ZygoteMessage fb = receive(b.get());
    ASSERT_EQ(fa.op, ZygoteOp::forked);
    ASSERT_EQ(fb.op, ZygoteOp::forked);
    ASSERT_TRUE(readable_within(wa.doorbell.fd(), 5000));
    ASSERT_TRUE(readable_within(wb.doorbell.fd(), 5000));

    a.reset();
    EXPECT_TRUE(process_gone_within(static_cast<pid_t>(fa.pid), 1000));
    EXPECT_FALSE(process_gone_within(static_cast<pid_t>(fb.pid), 200));

    // kill_worker names a slot of the sender's own executor only.
    Fd c = z.open_executor();
    request_kill(c.get(), k_slot_wait);
    EXPECT_FALSE(process_gone_within(static_cast<pid_t>(fb.pid), 200));
    request_kill(b.get(), k_slot_wait);
    ZygoteMessage eb = receive(b.get());
    EXPECT_EQ(eb.op, ZygoteOp::exited);
    EXPECT_EQ(eb.status.kind, ExitStatus::signaled);
}

TEST(ZygoteServer, ImportModules) {
    Zygote z;
    Fd ex = z.open_executor();
    ZygoteMessage m;
    m.op = ZygoteOp::import_modules;
    m.body = "alpha\n\nbeta\n";  // empty names are skipped
    send_message(ex.get(), m.encode());
    ZygoteMessage r = receive(ex.get());
    ASSERT_EQ(r.op, ZygoteOp::imported);
    EXPECT_EQ(r.status.value, 0) << r.body;

    m.body = "gamma";
    send_message(ex.get(), m.encode());
    r = receive(ex.get());
    ASSERT_EQ(r.op, ZygoteOp::imported);
    EXPECT_EQ(r.status.value, 1);
    EXPECT_EQ(r.body, "unexpected modules");
}

// ZygoteMessage allows a 64 KiB body, but ZygoteServer::next() receives with
// recv_message()'s default max_bytes of 4096: a longer request is "truncated", throws, and is
// taken for a closed executor (its workers are killed). The same default bites the Pool
// reading `imported` replies, whose error text may be 64 KiB.
TEST(ZygoteServer, ImportRequestLongerThanFourKiB) {
    Zygote z;
    Fd ex = z.open_executor();
    ZygoteMessage m;
    m.op = ZygoteOp::import_modules;
    for (int i = 0; i < 500; ++i) m.body += "m" + std::to_string(i) + "\n";  // 2.4 KB
    for (int i = 500; i < 1000; ++i) m.body += "a.long.package.name.m" + std::to_string(i) + "\n";
    ASSERT_GT(m.body.size() + wire_size(), 4096u);
    send_message(ex.get(), m.encode());
    ZygoteMessage r = receive(ex.get());
    EXPECT_EQ(r.op, ZygoteOp::imported) << "the zygote dropped the executor instead of answering";
}

TEST(ZygoteServer, LongImportErrorReachesTheExecutorWithDefaultReceiveSize) {
    Zygote z;
    Fd ex = z.open_executor();
    ZygoteMessage m;
    m.op = ZygoteOp::import_modules;
    m.body = "long_error";
    send_message(ex.get(), m.encode());
    ASSERT_TRUE(readable_within(ex.get(), 5000));
    std::vector<std::byte> buf;
    std::vector<Fd> fds;
    // As Pool::Pool() receives the reply: with the default max_bytes.
    RecvStatus st = RecvStatus::eof;
    EXPECT_NO_THROW(st = recv_message(ex.get(), buf, fds));
    EXPECT_EQ(st, RecvStatus::message);
}

TEST(ZygoteServer, IgnoresMalformedRequests) {
    Zygote z;
    // On the control socket: open_executor without a descriptor, and garbage.
    {
        ZygoteMessage m;
        m.op = ZygoteOp::open_executor;
        send_message(z.control.get(), m.encode());
        std::byte junk[7] = {};
        send_message(z.control.get(), junk);
    }
    Fd ex = z.open_executor();
    WorkerFds w;
    {
        std::byte junk[100];
        for (std::size_t i = 0; i < sizeof junk; ++i) junk[i] = static_cast<std::byte>(i * 37);
        send_message(ex.get(), junk);
        ZygoteMessage m;
        m.op = ZygoteOp::fork_worker;  // one descriptor instead of two
        int fd = w.mem.fd();
        send_message(ex.get(), m.encode(), std::span<int const>(&fd, 1));
        m.op = ZygoteOp::exited;  // a zygote -> executor op sent the wrong way
        send_message(ex.get(), m.encode());
        request_kill(ex.get(), 99);  // no such worker
    }
    EXPECT_EQ(receive(ex.get(), 100).op, ZygoteOp{});  // no reply to any of that
    request_fork(ex.get(), k_slot_exit7, w);
    ZygoteMessage forked = receive(ex.get());
    EXPECT_EQ(forked.op, ZygoteOp::forked);
    ZygoteMessage exited = receive(ex.get());
    EXPECT_EQ(exited.op, ZygoteOp::exited);
    EXPECT_EQ(exited.status.value, 7);
}

// ---------------------------------------------------------------- ZygoteClient

TEST(ZygoteClient, StartsTalksAndStops) {
    // A stand-in zygote that reads its control socket (fd 3) until EOF.
    std::int64_t start = now_ns();
    pid_t pid;
    {
        ZygoteClient client({"/bin/sh", "-c", "exec cat <&3 >/dev/null"});
        pid = client.pid();
        ASSERT_GT(pid, 0);
        EXPECT_TRUE(client.alive());
        Fd ex = client.open_executor();
        EXPECT_TRUE(ex);
    }  // closes the socket: cat sees EOF and exits; the destructor reaps it
    EXPECT_LT(now_ns() - start, 3'000 * k_ms);
    EXPECT_NE(::kill(pid, 0), 0) << "not reaped";
}

TEST(ZygoteClient, AliveTurnsFalseWhenTheZygoteExits) {
    ZygoteClient client({"/bin/sh", "-c", "exit 0"});
    std::int64_t deadline = now_ns() + 5'000 * k_ms;
    while (client.alive() && now_ns() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_FALSE(client.alive());
    EXPECT_FALSE(client.alive());  // looking does not reap
    EXPECT_THROW(client.open_executor(), std::system_error);
}

TEST(ZygoteClient, AForkedCopyLeavesTheOriginalsZygoteAlone) {
    // A forked copy of the driver that drops its inherited client must neither wait for
    // nor kill the zygote (it is the original's), and must not fail.
    ZygoteClient client({"/bin/sh", "-c", "exec cat <&3 >/dev/null"});
    ASSERT_TRUE(client.alive());
    std::int64_t start = now_ns();
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        bool seen_alive = client.alive();
        client.~ZygoteClient();  // what dropping the inherited object does
        ::_exit(seen_alive ? 3 : 0);  // the copy sees no zygote of its own
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status)) << "the child died: " << status;
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_LT(now_ns() - start, 1'000 * k_ms) << "the copy waited for the zygote";
    EXPECT_TRUE(client.alive()) << "the copy killed the original's zygote";
    EXPECT_NO_THROW(client.open_executor());
}

TEST(ZygoteServer, NextWithATimeoutReportsIdle) {
    auto [ours, theirs] = socket_pair();
    ZygoteServer server(std::move(theirs));
    std::int64_t const start = now_ns();
    auto action = server.next(30);
    EXPECT_EQ(action.kind, ZygoteServer::Action::idle);
    EXPECT_GE(now_ns() - start, 25 * k_ms);
    ours.reset();  // the driver is gone: exit, timeout or not
    EXPECT_EQ(server.next(5'000).kind, ZygoteServer::Action::exit);
}

TEST(ZygoteServer, ExitsWhenTheDriverIsKilledWhileAForkedChildHoldsItsSockets) {
    // The driver forks a child (a multiprocessing Manager, a plain os.fork) that inherits the
    // control and executor sockets, then is SIGKILLed: the zygote must not wait for an EOF the
    // child holds back. It watches the driver process itself, and takes its workers along.
    auto [r, w] = make_pipe_for_test();
    pid_t driver = fork_child([&, wfd = w.get()] {
        Zygote z;
        Fd ex = z.open_executor();
        WorkerFds fds;
        request_fork(ex.get(), k_slot_wait, fds);
        ZygoteMessage forked = receive(ex.get());
        if (forked.op != ZygoteOp::forked) return 2;
        pid_t holder = ::fork();  // holds copies of both sockets, and outlives the driver
        if (holder == 0) {
            ::alarm(30);
            for (;;) ::pause();
        }
        pid_t pids[3] = {z.pid, static_cast<pid_t>(forked.pid), holder};
        if (::write(wfd, pids, sizeof pids) != static_cast<ssize_t>(sizeof pids)) return 3;
        for (;;) ::pause();
    });
    ChildGuard driver_guard(driver);
    w.reset();
    pid_t pids[3] = {};
    ASSERT_TRUE(readable_within(r.get(), 10'000));
    ASSERT_EQ(::read(r.get(), pids, sizeof pids), static_cast<ssize_t>(sizeof pids));
    pid_t const zygote = pids[0], worker = pids[1], holder = pids[2];
    ::kill(driver, SIGKILL);
    driver_guard.wait(std::chrono::seconds(5));
    bool const zygote_gone = process_gone_within(zygote, 3000);
    bool const worker_gone = process_gone_within(worker, 1000);
    bool const holder_alive = ::kill(holder, 0) == 0;
    ::kill(holder, SIGKILL);
    if (!zygote_gone) ::kill(zygote, SIGKILL);
    if (!worker_gone) ::kill(worker, SIGKILL);
    EXPECT_TRUE(holder_alive) << "the test is void: the driver's forked child died with it";
    EXPECT_TRUE(zygote_gone) << "the zygote outlived the killed driver";
    EXPECT_TRUE(worker_gone) << "a worker outlived the killed driver";
}

TEST(ZygoteServer, ExitsAtOnceIfTheDriverIsAlreadyGone) {
    // The driver died before the zygote started watching it, and a forked child of the driver
    // holds the other end of the control socket: the zygote must exit, not serve a socket
    // nobody will close.
    auto [r, w] = make_pipe_for_test();
    pid_t driver = fork_child([&, wfd = w.get()] {
        auto [ours, theirs] = socket_pair();
        pid_t const self = ::getpid();
        pid_t holder = ::fork();
        if (holder == 0) {
            ::alarm(30);
            for (;;) ::pause();
        }
        pid_t zygote = ::fork();
        if (zygote == 0) {
            ::alarm(30);
            ours.reset();
            while (::getppid() == self) ::usleep(1000);  // until the driver has ended
            ZygoteServer server(std::move(theirs));
            ::_exit(server.next(10'000).kind == ZygoteServer::Action::exit ? 0 : 1);
        }
        pid_t pids[2] = {zygote, holder};
        if (::write(wfd, pids, sizeof pids) != static_cast<ssize_t>(sizeof pids)) return 3;
        return 0;
    });
    w.reset();
    pid_t pids[2] = {};
    ASSERT_TRUE(readable_within(r.get(), 10'000));
    ASSERT_EQ(::read(r.get(), pids, sizeof pids), static_cast<ssize_t>(sizeof pids));
    EXPECT_TRUE(wait_child(driver, std::chrono::seconds(5)).exited(0));
    bool const zygote_gone = process_gone_within(pids[0], 3000);
    ::kill(pids[1], SIGKILL);
    if (!zygote_gone) ::kill(pids[0], SIGKILL);
    EXPECT_TRUE(zygote_gone) << "the zygote serves on after its driver ended";
}

TEST(ZygoteClient, StoppingIsNotDelayedByAForkedChildHoldingTheSocket) {
    // A fork()ed child of the driver holds a copy of the control socket: closing ours alone
    // sends no EOF, and the destructor waited 2 s before killing the zygote.
    std::int64_t start = 0;
    pid_t zygote = -1;
    pid_t holder = -1;
    {
        ZygoteClient client({"/bin/sh", "-c", "exec cat <&3 >/dev/null"});
        ASSERT_TRUE(client.alive());
        zygote = client.pid();
        holder = fork_child([] {
            ::alarm(30);
            for (;;) ::pause();
            return 0;
        });
        start = now_ns();
    }
    std::int64_t const took = now_ns() - start;
    ChildGuard guard(holder);
    EXPECT_LT(took, 1'000 * k_ms) << "stopping the zygote waited for the child's copy of the socket";
    EXPECT_NE(::kill(zygote, 0), 0) << "not reaped";
}
