// test_worker.cpp — the worker's channel: recv/try_recv/send, and the watcher that lets an
// event loop wait for task frames on an eventfd (coroutine tasks) without spinning.
//
// The driver side here is the bare rings (a producer thread pushes whole messages and
// wakes the consumer as the Pool does).
#include "shoal/frame.hpp"
#include "shoal/worker.hpp"

#include "support.hpp"

#include <atomic>
#include <memory>
#include <random>
#include <sys/resource.h>
#include <unistd.h>

using namespace shoal;
using namespace shoal_test;

namespace {

constexpr std::int64_t k_ms = 1'000'000;
constexpr std::size_t k_ring = 1 << 14;

/// Shared memory laid out as the Pool does for one slot; the driver's ends of the rings.
struct Rig {
    SharedMemory memory;
    Ring tasks;    // driver: producer
    Ring results;  // driver: consumer
    EventFd doorbell;
    std::unique_ptr<WorkerChannel> channel;

    Rig() {
        std::size_t const tb = Ring::bytes_for(k_ring);
        memory = SharedMemory::create(sizeof(DoorbellWord) + 2 * tb + 4096, "shoal-test-worker");
        new (memory.data()) DoorbellWord{};
        WorkerSpec spec;
        spec.task_ring_offset = sizeof(DoorbellWord);
        spec.task_ring_capacity = k_ring;
        spec.result_ring_offset = sizeof(DoorbellWord) + tb;
        spec.result_ring_capacity = k_ring;
        spec.doorbell_offset = 0;
        spec.spin_ns = 10'000;
        tasks = Ring::create(memory.data() + spec.task_ring_offset, k_ring);
        results = Ring::create(memory.data() + spec.result_ring_offset, k_ring);
        channel = std::make_unique<WorkerChannel>(spec, Fd(::dup(memory.fd())), Fd(::dup(doorbell.fd())));
    }

    /// The driver sends one frame (one record) and wakes the worker if it sleeps.
    bool push(std::uint64_t id) {
        std::string text = "task-" + std::to_string(id);
        auto frame = encode_frame(FrameKind::task, 0, id, 0, 1,
                                  {reinterpret_cast<std::byte const*>(text.data()), text.size()});
        if (!tasks.try_push(frame, 0)) return false;
        if (tasks.consumer_needs_wake()) tasks.wake_consumer();
        return true;
    }
};

std::uint64_t task_id(Bytes const& msg) {
    FrameView f;
    std::string error;
    EXPECT_TRUE(decode_frame(msg, f, error)) << error;
    return f.header.task_id;
}

bool readable(int fd, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    int r;
    do r = ::poll(&p, 1, timeout_ms); while (r < 0 && errno == EINTR);
    return r == 1 && (p.revents & POLLIN);
}

double cpu_seconds() {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

}  // namespace

TEST(WorkerChannel, TryRecvNeverBlocks) {
    Rig rig;
    Bytes msg;
    EXPECT_EQ(rig.channel->try_recv(msg), WorkerChannel::Poll::empty);
    ASSERT_TRUE(rig.push(7));
    ASSERT_EQ(rig.channel->try_recv(msg), WorkerChannel::Poll::message);
    EXPECT_EQ(task_id(msg), 7u);
    EXPECT_EQ(rig.channel->try_recv(msg), WorkerChannel::Poll::empty);
}

TEST(WorkerChannel, TryRecvReportsACorruptRing) {
    Rig rig;
    // A record header claiming more bytes than the ring holds.
    auto* hdr = reinterpret_cast<RingHeader*>(rig.memory.data() + sizeof(DoorbellWord));
    std::uint32_t rec[2] = {0x7fffffffu, 0};
    std::memcpy(rig.memory.data() + sizeof(DoorbellWord) + sizeof(RingHeader), rec, sizeof rec);
    hdr->head.store(64, std::memory_order_release);
    Bytes msg;
    EXPECT_EQ(rig.channel->try_recv(msg), WorkerChannel::Poll::corrupt);
}

TEST(WorkerChannel, ArmedWatcherMakesTheFdReadableWhenAFrameArrives) {
    Rig rig;
    int fd = rig.channel->watch_fd();
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(rig.channel->arm());
    EXPECT_TRUE(rig.channel->armed());
    EXPECT_FALSE(readable(fd, 30));
    Bytes msg;
    EXPECT_THROW(rig.channel->try_recv(msg), std::logic_error);  // the watcher owns the ring
    std::thread producer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        rig.push(1);
    });
    EXPECT_TRUE(readable(fd, 5000));
    producer.join();
    // The watcher hands the ring back before it signals.
    EXPECT_FALSE(rig.channel->armed());
    ASSERT_EQ(rig.channel->try_recv(msg), WorkerChannel::Poll::message);
    EXPECT_EQ(task_id(msg), 1u);
    // Arming again clears the descriptor.
    ASSERT_TRUE(rig.channel->arm());
    EXPECT_FALSE(readable(fd, 0));
    rig.channel->disarm();
}

TEST(WorkerChannel, PendingAndClearWatch) {
    Rig rig;
    int fd = rig.channel->watch_fd();
    EXPECT_FALSE(rig.channel->pending());
    ASSERT_TRUE(rig.channel->arm());
    EXPECT_THROW((void)rig.channel->pending(), std::logic_error);  // the watcher owns the ring
    ASSERT_TRUE(rig.push(5));
    ASSERT_TRUE(readable(fd, 5000));
    EXPECT_TRUE(rig.channel->pending());
    rig.channel->clear_watch();
    EXPECT_FALSE(readable(fd, 0));
    EXPECT_TRUE(rig.channel->pending());  // clearing the descriptor leaves the frame
    Bytes msg;
    ASSERT_EQ(rig.channel->try_recv(msg), WorkerChannel::Poll::message);
    EXPECT_FALSE(rig.channel->pending());
}

TEST(WorkerChannel, ArmRefusesWhenAFrameIsAlreadyThere) {
    Rig rig;
    rig.channel->watch_fd();
    ASSERT_TRUE(rig.push(3));
    EXPECT_FALSE(rig.channel->arm());
    EXPECT_FALSE(rig.channel->armed());
    Bytes msg;
    ASSERT_EQ(rig.channel->try_recv(msg), WorkerChannel::Poll::message);
    EXPECT_EQ(task_id(msg), 3u);
}

TEST(WorkerChannel, DisarmTakesTheRingBackAndBlockingRecvStillWakes) {
    Rig rig;
    int fd = rig.channel->watch_fd();
    ASSERT_TRUE(rig.channel->arm());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the watcher is asleep on the futex
    auto t0 = std::chrono::steady_clock::now();
    rig.channel->disarm();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
    EXPECT_FALSE(rig.channel->armed());
    EXPECT_FALSE(readable(fd, 0));
    rig.channel->disarm();  // a second disarm does nothing
    // The ring's sleeping flag is consistent again: a blocking recv is woken by the producer.
    std::thread producer([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        rig.push(9);
    });
    Bytes msg;
    ASSERT_TRUE(rig.channel->recv(msg, 5'000 * k_ms));
    EXPECT_EQ(task_id(msg), 9u);
    producer.join();
}

TEST(WorkerChannel, DestroyingAnArmedChannelStopsTheWatcher) {
    Rig rig;
    rig.channel->watch_fd();
    ASSERT_TRUE(rig.channel->arm());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    auto t0 = std::chrono::steady_clock::now();
    rig.channel.reset();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST(WorkerChannel, AnIdleArmedWatcherDoesNotSpin) {
    Rig rig;
    rig.channel->watch_fd();
    ASSERT_TRUE(rig.channel->arm());
    double c0 = cpu_seconds();
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_FALSE(readable(rig.channel->watch_fd(), 300));
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double cpu = cpu_seconds() - c0;
    EXPECT_LT(cpu, 0.1 * wall) << "cpu " << cpu << " s over " << wall << " s";
    rig.channel->disarm();
}

// The event loop's cycle many times against a producer with random pauses: drain, arm,
// wait on the fd (or sometimes disarm and block in recv). No frame may be lost or stall.
TEST(WorkerChannel, NoFrameIsLostAcrossArmAndDisarm) {
    Rig rig;
    int fd = rig.channel->watch_fd();
    int const n = scaled(4000);
    std::atomic<bool> failed{false};
    std::thread producer([&] {
        std::mt19937 rng(1);
        for (int i = 1; i <= n && !failed.load(); ++i) {
            while (!rig.push(static_cast<std::uint64_t>(i))) std::this_thread::yield();
            if (rng() % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
        }
    });
    std::mt19937 rng(2);
    std::uint64_t expect = 1;
    Bytes msg;
    while (expect <= static_cast<std::uint64_t>(n)) {
        auto st = rig.channel->try_recv(msg);
        ASSERT_NE(st, WorkerChannel::Poll::corrupt);
        if (st == WorkerChannel::Poll::message) {
            ASSERT_EQ(task_id(msg), expect);
            ++expect;
            continue;
        }
        if (rng() % 4 == 0) {  // leave the loop: block in recv instead
            if (!rig.channel->recv(msg, 5'000 * k_ms)) { failed = true; FAIL() << "recv stalled at " << expect; }
            ASSERT_EQ(task_id(msg), expect);
            ++expect;
            continue;
        }
        if (!rig.channel->arm()) continue;  // a frame came meanwhile
        if (rng() % 5 == 0) {
            rig.channel->disarm();
            continue;
        }
        if (!readable(fd, 5000)) { failed = true; FAIL() << "the watcher missed frame " << expect; }
    }
    producer.join();
    EXPECT_EQ(rig.channel->try_recv(msg), WorkerChannel::Poll::empty);
}
