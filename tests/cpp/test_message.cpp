// test_message.cpp — messages far larger than the ring, cut into fragments and put back
// together across threads and processes; limits and corrupt fragment tags.
#include "shoal/message.hpp"
#include "shoal/shm.hpp"
#include "shoal/sys.hpp"

#include "support.hpp"

#include <atomic>
#include <thread>
#include <vector>

using namespace shoal;
using namespace shoal_test;

namespace {

constexpr std::int64_t k_ms = 1'000'000;
constexpr std::int64_t k_s = 1'000'000'000;

std::vector<std::byte> make_message(std::size_t n, std::uint64_t salt) {
    std::vector<std::byte> m(n);
    for (std::size_t i = 0; i < n; ++i) m[i] = pattern_byte(salt + i / 4093, i);
    return m;
}

struct TestRing {
    explicit TestRing(std::size_t capacity)
        : mem(Ring::bytes_for(capacity)), ring(Ring::create(mem.data(), capacity)) {}
    AlignedBuffer mem;
    Ring ring;
};

/// Polls until one message arrives, sleeping on the ring's futex in between. Returns the
/// last status (message, corrupt or too_large; empty means it timed out).
MessageReader::Status read_one(MessageReader& reader, Ring& ring, std::int64_t timeout_ns) {
    std::int64_t start = now_ns();
    for (;;) {
        bool producer_waiting = false;
        auto st = reader.poll(ring, producer_waiting);
        if (st != MessageReader::Status::empty) return st;
        std::int64_t left = timeout_ns - (now_ns() - start);
        if (left <= 0) return st;
        ring.wait_readable(10'000, left);
    }
}

/// Sends through a MessageWriter the way a non-blocking producer does: pump, then sleep
/// for room, waking the consumer after every pump that pushed.
bool write_with_writer(Ring& ring, std::shared_ptr<std::vector<std::byte> const> msg, std::int64_t timeout_ns) {
    MessageWriter w(std::move(msg));
    std::int64_t start = now_ns();
    for (;;) {
        bool done = w.pump(ring);
        if (ring.consumer_needs_wake()) ring.wake_consumer();
        if (done) return true;
        std::int64_t left = timeout_ns - (now_ns() - start);
        if (left <= 0) return false;
        ring.wait_writable(w.next_fragment(ring), 10'000, left);
    }
}

}  // namespace

TEST(Message, SmallMessageIsOneRecord) {
    TestRing t(4096);
    auto msg = std::make_shared<std::vector<std::byte> const>(make_message(100, 1));
    MessageWriter w(msg);
    EXPECT_TRUE(w.active());
    EXPECT_FALSE(w.done());
    EXPECT_EQ(w.next_fragment(t.ring), 100u);
    EXPECT_TRUE(w.pump(t.ring));
    EXPECT_TRUE(w.done());

    Ring::Record r;
    ASSERT_EQ(t.ring.peek(r), Ring::PopStatus::ok);
    EXPECT_EQ(r.tag, 0u);  // no more fragments
    EXPECT_EQ(r.payload.size(), 100u);

    MessageReader reader;
    bool pw = false;
    ASSERT_EQ(reader.poll(t.ring, pw), MessageReader::Status::message);
    EXPECT_EQ(reader.message(), *msg);
    EXPECT_FALSE(pw);
    EXPECT_EQ(reader.poll(t.ring, pw), MessageReader::Status::empty);
}

TEST(Message, EmptyMessageRoundtrips) {
    TestRing t(4096);
    MessageWriter w(std::make_shared<std::vector<std::byte> const>());
    EXPECT_TRUE(w.pump(t.ring));
    MessageReader reader;
    bool pw = false;
    ASSERT_EQ(reader.poll(t.ring, pw), MessageReader::Status::message);
    EXPECT_TRUE(reader.message().empty());
    EXPECT_TRUE(t.ring.empty());
}

TEST(Message, InactiveWriterIsDone) {
    TestRing t(4096);
    MessageWriter w;
    EXPECT_FALSE(w.active());
    EXPECT_TRUE(w.pump(t.ring));
    EXPECT_EQ(w.next_fragment(t.ring), 0u);
    EXPECT_TRUE(t.ring.empty());
}

TEST(Message, FragmentsResumeWhereTheyStopped) {
    // 100 KB through a 4 KiB ring in one thread: pump, drain, pump, ...
    TestRing t(4096);
    auto msg = std::make_shared<std::vector<std::byte> const>(make_message(100'000, 7));
    MessageWriter w(msg);
    MessageReader reader;
    int rounds = 0;
    bool got = false;
    while (!got && rounds < 10'000) {
        ++rounds;
        bool done = w.pump(t.ring);
        EXPECT_EQ(done, w.done());
        if (!done) EXPECT_EQ(w.next_fragment(t.ring), t.ring.max_record());  // big fragments while far from the end
        bool pw = false;
        auto st = reader.poll(t.ring, pw);
        if (st == MessageReader::Status::message) got = true;
        else ASSERT_EQ(st, MessageReader::Status::empty);
    }
    ASSERT_TRUE(got);
    EXPECT_GT(rounds, 20);  // it really had to be cut
    EXPECT_EQ(reader.message(), *msg);
}

TEST(Message, SeveralMessagesBackToBack) {
    TestRing t(8192);
    std::vector<std::vector<std::byte>> msgs;
    for (std::size_t n : {0u, 1u, 2040u, 2041u, 5000u, 7u}) msgs.push_back(make_message(n, n));
    std::size_t next = 0;
    MessageReader reader;
    std::vector<std::vector<std::byte>> got;
    MessageWriter w;
    for (int i = 0; i < 1000 && got.size() < msgs.size(); ++i) {
        if ((!w.active() || w.done()) && next < msgs.size())
            w = MessageWriter(std::make_shared<std::vector<std::byte> const>(msgs[next++]));
        w.pump(t.ring);
        bool pw = false;
        while (reader.poll(t.ring, pw) == MessageReader::Status::message) got.push_back(reader.message());
    }
    EXPECT_EQ(got, msgs);
}

TEST(Message, TooLarge) {
    TestRing t(4096);
    MessageReader reader(3000);
    auto fits = std::make_shared<std::vector<std::byte> const>(make_message(3000, 1));
    auto big = std::make_shared<std::vector<std::byte> const>(make_message(3001, 2));
    bool pw = false;
    MessageWriter w1(fits);
    while (!w1.pump(t.ring)) ASSERT_EQ(reader.poll(t.ring, pw), MessageReader::Status::empty);
    ASSERT_EQ(reader.poll(t.ring, pw), MessageReader::Status::message);
    EXPECT_EQ(reader.message(), *fits);

    MessageWriter w2(big);
    MessageReader::Status st = MessageReader::Status::empty;
    for (int i = 0; i < 100 && st == MessageReader::Status::empty; ++i) {
        w2.pump(t.ring);
        st = reader.poll(t.ring, pw);
    }
    EXPECT_EQ(st, MessageReader::Status::too_large);
}

TEST(Message, CorruptTagIsReported) {
    for (std::uint32_t tag : {2u, 3u, 0x80u, 0x80000000u, 0xFFFFFFFEu}) {
        TestRing t(4096);
        std::byte b[4]{};
        ASSERT_TRUE(t.ring.try_push(b, tag));
        MessageReader reader;
        bool pw = false;
        EXPECT_EQ(reader.poll(t.ring, pw), MessageReader::Status::corrupt) << "tag " << tag;
    }
}

TEST(Message, CorruptRingIsReported) {
    TestRing t(4096);
    reinterpret_cast<RingHeader*>(t.mem.data())->head.store(4096 + 64);
    MessageReader reader;
    bool pw = false;
    EXPECT_EQ(reader.poll(t.ring, pw), MessageReader::Status::corrupt);
}

TEST(Message, ResetForgetsAPartialMessage) {
    TestRing t(4096);
    std::byte part[16]{};
    ASSERT_TRUE(t.ring.try_push(part, k_tag_more));  // a fragment of a message whose writer died
    MessageReader reader;
    bool pw = false;
    ASSERT_EQ(reader.poll(t.ring, pw), MessageReader::Status::empty);
    reader.reset();
    auto msg = make_message(10, 3);
    ASSERT_TRUE(t.ring.try_push(msg, 0));
    ASSERT_EQ(reader.poll(t.ring, pw), MessageReader::Status::message);
    EXPECT_EQ(reader.message(), msg);  // without reset() it would be 26 bytes
}

TEST(Message, PollReportsAWaitingProducer) {
    TestRing t(4096);
    auto msg = std::make_shared<std::vector<std::byte> const>(make_message(10'000, 4));
    MessageWriter w(msg);
    ASSERT_FALSE(w.pump(t.ring));
    ASSERT_TRUE(t.ring.producer_sleep_begin(w.next_fragment(t.ring)));
    MessageReader reader;
    bool pw = false;
    EXPECT_EQ(reader.poll(t.ring, pw), MessageReader::Status::empty);
    EXPECT_TRUE(pw);
    t.ring.producer_sleep_end();
}

TEST(Message, BlockingSendTimesOutOnAFullRing) {
    TestRing t(4096);
    auto msg = make_message(20'000, 5);
    std::int64_t start = now_ns();
    EXPECT_FALSE(send_message_blocking(t.ring, msg, 1 * k_ms, 50 * k_ms));
    std::int64_t took = now_ns() - start;
    EXPECT_GE(took, 49 * k_ms);
    EXPECT_LT(took, 2 * k_s);
}

TEST(Message, TenMegabytesThroughSixtyFourKiBTwoThreads) {
    constexpr std::size_t k_cap = 64 * 1024;
    TestRing t(k_cap);
    Ring producer = t.ring;
    Ring consumer = Ring::attach(t.mem.data(), k_cap);
    std::vector<std::vector<std::byte>> msgs;
    msgs.push_back(make_message(10 * 1024 * 1024, 11));
    msgs.push_back({});
    msgs.push_back(make_message(1, 12));
    msgs.push_back(make_message(producer.max_record(), 13));
    msgs.push_back(make_message(producer.max_record() + 1, 14));
    msgs.push_back(make_message(3 * 1024 * 1024 + 5, 15));

    std::atomic<int> sent{0};
    std::thread p([&] {
        for (auto const& m : msgs) {
            if (!send_message_blocking(producer, m, 5'000, 20 * k_s)) return;
            ++sent;
        }
    });
    MessageReader reader;
    std::size_t i = 0;
    for (; i < msgs.size(); ++i) {
        auto st = read_one(reader, consumer, 20 * k_s);
        ASSERT_EQ(st, MessageReader::Status::message) << "message " << i;
        ASSERT_EQ(reader.message().size(), msgs[i].size()) << "message " << i;
        ASSERT_TRUE(reader.message() == msgs[i]) << "message " << i;
    }
    p.join();
    EXPECT_EQ(sent.load(), static_cast<int>(msgs.size()));
    EXPECT_TRUE(consumer.empty());
}

TEST(Message, TenMegabytesWithTheResumableWriterTwoThreads) {
    constexpr std::size_t k_cap = 64 * 1024;
    TestRing t(k_cap);
    Ring producer = t.ring;
    Ring consumer = Ring::attach(t.mem.data(), k_cap);
    auto msg = std::make_shared<std::vector<std::byte> const>(make_message(10 * 1024 * 1024, 21));
    bool ok = false;
    std::thread p([&] { ok = write_with_writer(producer, msg, 20 * k_s); });
    MessageReader reader;
    auto st = read_one(reader, consumer, 20 * k_s);
    p.join();
    EXPECT_TRUE(ok);
    ASSERT_EQ(st, MessageReader::Status::message);
    EXPECT_TRUE(reader.message() == *msg);
}

TEST(Message, TenMegabytesAcrossProcesses) {
    constexpr std::size_t k_cap = 64 * 1024;
    auto shm = SharedMemory::create(Ring::bytes_for(k_cap) * 2, "shoal-test-message");
    // Ring A: child -> parent (blocking sends). Ring B: parent -> child (resumable writer).
    Ring a = Ring::create(shm.data(), k_cap);
    Ring b = Ring::create(shm.data() + Ring::bytes_for(k_cap), k_cap);
    auto big = std::make_shared<std::vector<std::byte> const>(make_message(10 * 1024 * 1024, 31));
    auto reply = make_message(5 * 1024 * 1024 + 3, 32);

    ChildGuard child(fork_child([&] {
        Ring out = Ring::attach(shm.data(), k_cap);
        Ring in = Ring::attach(shm.data() + Ring::bytes_for(k_cap), k_cap);
        if (!send_message_blocking(out, *big, 5'000, 20 * k_s)) return 2;
        MessageReader reader;
        if (read_one(reader, in, 20 * k_s) != MessageReader::Status::message) return 3;
        if (reader.message() != reply) return 4;
        return 0;
    }));
    MessageReader reader;
    ASSERT_EQ(read_one(reader, a, 20 * k_s), MessageReader::Status::message);
    EXPECT_TRUE(reader.message() == *big);
    EXPECT_TRUE(write_with_writer(b, std::make_shared<std::vector<std::byte> const>(reply), 20 * k_s));
    auto end = child.wait(std::chrono::seconds(30));
    EXPECT_TRUE(end.exited(0)) << end.str() << " (2 send timeout, 3 receive failed, 4 wrong bytes)";
}
