// test_ring.cpp — the SPSC record ring: roundtrips, wrap-around against a model, corrupt
// input from the producer side, futex sleep/wake, and stress across threads and processes.
#include "shoal/ring.hpp"
#include "shoal/shm.hpp"
#include "shoal/sys.hpp"

#include "support.hpp"

#include <atomic>
#include <deque>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace shoal;
using namespace shoal_test;

namespace {

constexpr std::int64_t k_ms = 1'000'000;
constexpr std::int64_t k_s = 1'000'000'000;

std::span<std::byte const> bytes_of(std::string_view s) {
    return {reinterpret_cast<std::byte const*>(s.data()), s.size()};
}
std::string string_of(std::span<std::byte const> b) {
    return {reinterpret_cast<char const*>(b.data()), b.size()};
}
constexpr std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

/// A ring in exactly-sized heap memory, with direct access to its header and data so tests
/// can play a producer that writes garbage.
struct TestRing {
    explicit TestRing(std::size_t capacity)
        : mem(Ring::bytes_for(capacity)), ring(Ring::create(mem.data(), capacity)) {}
    RingHeader* hdr() const { return reinterpret_cast<RingHeader*>(mem.data()); }
    std::byte* data() const { return mem.data() + sizeof(RingHeader); }
    void put_record(std::uint64_t offset, std::uint32_t length, std::uint32_t tag) const {
        std::uint32_t rec[2] = {length, tag};
        std::memcpy(data() + offset, rec, sizeof rec);
    }
    /// A fresh consumer that reads the header's current head and tail.
    Ring consumer() const { return Ring::attach(mem.data(), ring.capacity()); }
    bool payload_in_bounds(Ring::Record const& r) const {
        auto const* b = r.payload.data();
        return b >= data() && b + r.payload.size() <= data() + ring.capacity();
    }
    AlignedBuffer mem;
    Ring ring;
};

}  // namespace

// ---------------------------------------------------------------- create / attach

TEST(Ring, CreateRejectsBadCapacityAndAlignment) {
    AlignedBuffer mem(Ring::bytes_for(16384) + 64);
    EXPECT_THROW(Ring::create(mem.data(), 0), std::invalid_argument);
    EXPECT_THROW(Ring::create(mem.data(), 2048), std::invalid_argument);   // below 4096
    EXPECT_THROW(Ring::create(mem.data(), 4097), std::invalid_argument);   // not a power of two
    EXPECT_THROW(Ring::create(mem.data(), 12288), std::invalid_argument);  // not a power of two
    EXPECT_THROW(Ring::create(mem.data() + 8, 4096), std::invalid_argument);  // misaligned
    EXPECT_NO_THROW(Ring::create(mem.data(), 4096));
    EXPECT_NO_THROW(Ring::create(mem.data(), 16384));
}

TEST(Ring, AttachChecksTheHeader) {
    AlignedBuffer mem(Ring::bytes_for(8192));
    EXPECT_THROW(Ring::attach(mem.data(), 8192), std::runtime_error);  // never created: no magic
    Ring::create(mem.data(), 8192);
    EXPECT_THROW(Ring::attach(mem.data(), 4096), std::runtime_error);  // disagrees with the header
    EXPECT_NO_THROW(Ring::attach(mem.data(), 8192));
}

// The capacity a worker attaches with comes from the driver's WorkerSpec and the header sits in
// memory the peer can write: attach() must apply create()'s rule (power of two >= 4096). With
// capacity 4100 the mask is 4099, offsets 4096.. are 4 bytes before the end, and the 8-byte wrap
// marker or record header written there lands past the ring.
TEST(Ring, AttachRejectsCapacityThatIsNotAPowerOfTwo) {
    AlignedBuffer mem(Ring::bytes_for(8192));
    Ring::create(mem.data(), 4096);
    auto* hdr = reinterpret_cast<RingHeader*>(mem.data());
    for (std::uint64_t bad : {std::uint64_t{0}, std::uint64_t{8}, std::uint64_t{4100}, std::uint64_t{6144}}) {
        hdr->capacity = bad;
        EXPECT_THROW(Ring::attach(mem.data(), bad), std::exception) << "capacity " << bad;
    }
}

TEST(Ring, AttachedPeerSeesRecordsPushedBefore) {
    TestRing t(4096);
    ASSERT_TRUE(t.ring.try_push(bytes_of("early"), 5));
    Ring consumer = t.consumer();
    Ring::Record r;
    ASSERT_EQ(consumer.peek(r), Ring::PopStatus::ok);
    EXPECT_EQ(string_of(r.payload), "early");
    EXPECT_EQ(r.tag, 5u);
}

// ---------------------------------------------------------------- basic behaviour

TEST(Ring, PushPeekReleaseRoundtrip) {
    TestRing t(4096);
    Ring& ring = t.ring;
    Ring::Record r;
    EXPECT_TRUE(ring.empty());
    EXPECT_EQ(ring.peek(r), Ring::PopStatus::empty);

    ASSERT_TRUE(ring.try_push(bytes_of("hello"), 7));
    ASSERT_TRUE(ring.try_push({}, 0));  // an empty payload is a record too
    ASSERT_TRUE(ring.try_push(bytes_of("world!!!"), 0xFFFFFFFEu));
    EXPECT_FALSE(ring.empty());

    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
    EXPECT_EQ(string_of(r.payload), "hello");
    EXPECT_EQ(r.tag, 7u);
    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);  // peek does not consume
    EXPECT_EQ(string_of(r.payload), "hello");
    EXPECT_FALSE(ring.release());  // nobody waits for space

    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
    EXPECT_EQ(r.payload.size(), 0u);
    EXPECT_EQ(r.tag, 0u);
    ring.release();

    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
    EXPECT_EQ(string_of(r.payload), "world!!!");
    EXPECT_EQ(r.tag, 0xFFFFFFFEu);
    ring.release();

    EXPECT_EQ(ring.peek(r), Ring::PopStatus::empty);
    EXPECT_TRUE(ring.empty());
    EXPECT_EQ(t.hdr()->head.load(), t.hdr()->tail.load());
}

TEST(Ring, FullRingRefusesThenAcceptsAfterRelease) {
    TestRing t(4096);
    Ring& ring = t.ring;
    std::vector<std::byte> payload(56, std::byte{0x5A});  // 8 + 56 = 64 bytes a record
    int pushed = 0;
    while (ring.try_push(payload, 1)) ++pushed;
    EXPECT_EQ(pushed, 4096 / 64);
    EXPECT_FALSE(ring.try_push({}, 1));  // not even an empty record fits

    Ring::Record r;
    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
    ring.release();
    EXPECT_TRUE(ring.try_push(payload, 1));
    EXPECT_FALSE(ring.try_push(payload, 1));
}

TEST(Ring, MaxRecordLimit) {
    TestRing t(4096);
    Ring& ring = t.ring;
    EXPECT_EQ(ring.max_record(), 4096u / 4 - Ring::k_record_header);
    std::vector<std::byte> big(ring.max_record() + 1, std::byte{1});
    EXPECT_FALSE(ring.try_push(big, 0));  // too large even for an empty ring
    EXPECT_TRUE(ring.empty());
    big.pop_back();
    EXPECT_TRUE(ring.try_push(big, 0));
    EXPECT_FALSE(ring.try_push(bytes_of("x"), Ring::k_wrap_tag));  // the wrap tag is reserved
    Ring::Record r;
    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
    EXPECT_EQ(r.payload.size(), ring.max_record());
}

TEST(Ring, EmptyRingAcceptsAMaxRecordAtEveryOffset) {
    // A record of max_record() always fits into an empty ring, whatever the wrap position.
    TestRing t(4096);
    Ring& ring = t.ring;
    std::vector<std::byte> big(ring.max_record(), std::byte{2});
    Ring::Record r;
    for (int i = 0; i < 4096 / 8 * 2; ++i) {
        ASSERT_TRUE(ring.try_push(std::span(big).first(static_cast<std::size_t>(i % 3) * 8), 0));
        ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
        ring.release();
        ASSERT_TRUE(ring.try_push(big, 0)) << "iteration " << i;
        ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
        ASSERT_EQ(r.payload.size(), big.size());
        ring.release();
    }
}

// ---------------------------------------------------------------- model check

namespace {

/// Exact model of the documented layout: records never wrap; when one does not fit before
/// the end, a wrap marker fills the rest of the lap. Compares every push result and every
/// popped record with the ring.
void run_model(std::size_t capacity, std::uint32_t seed, int ops) {
    TestRing t(capacity);
    Ring& ring = t.ring;
    struct Entry { std::vector<std::byte> bytes; std::uint32_t tag; std::uint64_t advance; };
    std::deque<Entry> model;
    std::uint64_t head = 0, tail = 0;
    std::mt19937 rng(seed);
    std::size_t const max = ring.max_record();
    int pushes = 0, pops = 0, refused = 0, wraps = 0;

    for (int op = 0; op < ops; ++op) {
        bool push = rng() % 100 < 55;
        if (push) {
            std::size_t n;
            switch (rng() % 4) {
                case 0: n = rng() % 9; break;
                case 1: n = rng() % 128; break;
                case 2: n = rng() % (max + 1); break;
                default: n = max - rng() % 16; break;
            }
            std::vector<std::byte> p(n);
            std::uint64_t salt = rng();
            for (std::size_t i = 0; i < n; ++i) p[i] = pattern_byte(salt, i);
            auto tag = static_cast<std::uint32_t>(rng() % 0xFFFFFFFFu);

            std::uint64_t need = Ring::k_record_header + align8(n);
            std::uint64_t to_end = capacity - (head & (capacity - 1));
            std::uint64_t total = need > to_end ? need + to_end : need;
            bool fits = total <= capacity - (head - tail);

            bool ok = ring.try_push(p, tag);
            ASSERT_EQ(ok, fits) << "op " << op << " size " << n << " head " << head << " tail " << tail;
            if (ok) {
                if (total != need) ++wraps;
                head += total;
                model.push_back({std::move(p), tag, total});
                ++pushes;
            } else {
                ++refused;
            }
        } else {
            Ring::Record r;
            auto st = ring.peek(r);
            if (model.empty()) {
                ASSERT_EQ(st, Ring::PopStatus::empty) << "op " << op;
                continue;
            }
            ASSERT_EQ(st, Ring::PopStatus::ok) << "op " << op;
            ASSERT_TRUE(t.payload_in_bounds(r));
            Entry const& e = model.front();
            ASSERT_EQ(r.tag, e.tag) << "op " << op;
            ASSERT_EQ(r.payload.size(), e.bytes.size()) << "op " << op;
            ASSERT_TRUE(std::equal(r.payload.begin(), r.payload.end(), e.bytes.begin())) << "op " << op;
            ring.release();
            tail += e.advance;
            ASSERT_EQ(t.hdr()->tail.load(), tail);
            ASSERT_EQ(t.hdr()->head.load(), head);
            model.pop_front();
            ++pops;
        }
    }
    // The loop must have exercised every path, or it proves nothing.
    EXPECT_GT(pushes, ops / 4);
    EXPECT_GT(pops, ops / 4);
    EXPECT_GT(refused, 0);
    EXPECT_GT(wraps, 10);
}

}  // namespace

TEST(Ring, WrapAroundMatchesModel4K) { run_model(4096, 1, scaled(200'000)); }
TEST(Ring, WrapAroundMatchesModel8K) { run_model(8192, 2, scaled(200'000)); }
TEST(Ring, WrapAroundMatchesModel64K) { run_model(65536, 3, scaled(50'000)); }

// ---------------------------------------------------------------- corrupt input

TEST(RingCorrupt, HeadMoreThanCapacityAheadOfTail) {
    TestRing t(4096);
    t.hdr()->head.store(4096 + 8);
    Ring c = t.consumer();
    Ring::Record r;
    EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt);
}

TEST(RingCorrupt, HeadBehindTail) {
    TestRing t(4096);
    t.hdr()->head.store(64);
    t.hdr()->tail.store(128);
    Ring c = t.consumer();
    Ring::Record r;
    EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt);
}

TEST(RingCorrupt, HeadNotAligned) {
    TestRing t(4096);
    t.put_record(0, 4, 0);
    t.hdr()->head.store(13);
    Ring c = t.consumer();
    Ring::Record r;
    EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt);
}

TEST(RingCorrupt, HeadShorterThanARecordHeader) {
    TestRing t(4096);
    t.hdr()->head.store(4);
    Ring c = t.consumer();
    Ring::Record r;
    EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt);
}

TEST(RingCorrupt, LengthPastTheEndOfTheRing) {
    TestRing t(4096);
    for (std::uint32_t len : {4096u, 4089u, 0x7FFFFFFFu, 0xFFFFFFF0u, 0xFFFFFFFEu}) {
        t.put_record(0, len, 0);
        t.hdr()->head.store(4096);  // claims a full ring
        Ring c = t.consumer();
        Ring::Record r;
        EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt) << "length " << len;
    }
}

TEST(RingCorrupt, LengthPastWhatWasPublished) {
    TestRing t(4096);
    t.put_record(0, 100, 0);
    t.hdr()->head.store(16);  // published one 16-byte record, header says 108
    Ring c = t.consumer();
    Ring::Record r;
    EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt);
}

TEST(RingCorrupt, RecordThatWouldCrossTheEnd) {
    TestRing t(4096);
    // Consumer at offset 4080 (16 bytes to the end); a record there claims 64 bytes.
    t.hdr()->tail.store(4080);
    t.hdr()->head.store(4080 + 128);
    t.put_record(4080, 56, 0);
    Ring c = t.consumer();
    Ring::Record r;
    EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt);
}

TEST(RingCorrupt, WrapMarkerWithTooLittlePublished) {
    TestRing t(4096);
    t.put_record(0, 0, Ring::k_wrap_tag);  // a marker at 0 skips 4096 bytes
    t.hdr()->head.store(64);
    Ring c = t.consumer();
    Ring::Record r;
    EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt);
}

TEST(RingCorrupt, WrapMarkerRightAfterAWrap) {
    TestRing t(4096);
    t.hdr()->tail.store(4032);
    t.hdr()->head.store(4096 + 64);
    t.put_record(4032, 0, Ring::k_wrap_tag);  // legal marker: skips to 0
    t.put_record(0, 0, Ring::k_wrap_tag);     // a second marker at 0: never written by a producer
    Ring c = t.consumer();
    Ring::Record r;
    EXPECT_EQ(c.peek(r), Ring::PopStatus::corrupt);
}

TEST(RingCorrupt, LegalWrapMarkerIsFollowed) {
    // The control for the two tests above: the same layout with a real record after the marker.
    TestRing t(4096);
    t.hdr()->tail.store(4032);
    t.hdr()->head.store(4096 + 16);
    t.put_record(4032, 0, Ring::k_wrap_tag);
    t.put_record(0, 3, 9);
    std::memcpy(t.data() + 8, "abc", 3);
    Ring c = t.consumer();
    Ring::Record r;
    ASSERT_EQ(c.peek(r), Ring::PopStatus::ok);
    EXPECT_EQ(string_of(r.payload), "abc");
    EXPECT_EQ(r.tag, 9u);
    c.release();
    EXPECT_EQ(t.hdr()->tail.load(), 4096u + 16);
}

// attach() takes the positions from the shared header. A head or tail that is not a multiple
// of 8 puts a record header (8 bytes) at an offset less than 8 bytes before the end of the
// ring: the producer writes its wrap marker past the end, the consumer reads past it.
// (Fix: attach() refuses head % 8, tail % 8 or head - tail > capacity.)
TEST(RingCorrupt, ProducerNeverWritesPastTheRingWithAMisalignedHead) {
    AlignedBuffer mem(Ring::bytes_for(4096) + 64);
    Ring::create(mem.data(), 4096);
    auto* hdr = reinterpret_cast<RingHeader*>(mem.data());
    std::byte* canary = mem.data() + Ring::bytes_for(4096);
    std::memset(canary, 0xCC, 64);
    hdr->head.store(4092);
    hdr->tail.store(4092);
    try {
        Ring p = Ring::attach(mem.data(), 4096);
        std::byte payload[8]{};
        p.try_push(payload, 1);
    } catch (std::exception const&) {
        // refusing the header is fine
    }
    for (int i = 0; i < 64; ++i) ASSERT_EQ(canary[i], std::byte{0xCC}) << "the producer wrote past the ring, byte " << i;
}

TEST(RingCorrupt, ConsumerNeverReadsPastTheRingWithAMisalignedTail) {
    // In a child, on memory of exactly the ring's size: under ASan an overread kills the child.
    ChildGuard child(fork_child([] {
        AlignedBuffer mem(Ring::bytes_for(4096));
        Ring::create(mem.data(), 4096);
        auto* hdr = reinterpret_cast<RingHeader*>(mem.data());
        hdr->tail.store(4090);
        hdr->head.store(4098);
        try {
            Ring c = Ring::attach(mem.data(), 4096);
            Ring::Record r;
            return c.peek(r) == Ring::PopStatus::corrupt ? 0 : 2;
        } catch (std::exception const&) {
            return 0;  // refusing the header is fine
        }
    }));
    auto end = child.wait(std::chrono::seconds(10));
    EXPECT_TRUE(end.exited(0)) << end.str() << (k_asan ? " (ASan found an overread)" : "");
}

TEST(RingCorrupt, RandomGarbageNeverReadsOutOfBounds) {
    // ASan/UBSan builds prove the bounds; here every ok record must also lie inside the ring.
    std::mt19937_64 rng(42);
    TestRing t(4096);
    int ok = 0, corrupt = 0, empty = 0;
    for (int iter = 0; iter < scaled(20'000); ++iter) {
        bool plausible = iter % 2 == 0;
        if (plausible) {
            // A valid stream, then a few mutated bytes or a mutated head/tail.
            Ring p = Ring::create(t.mem.data(), 4096);
            std::size_t n = rng() % 40;
            std::vector<std::byte> payload(rng() % 300);
            for (std::size_t i = 0; i < n; ++i) {
                if (!p.try_push(std::span(payload).first(rng() % (payload.size() + 1)),
                                static_cast<std::uint32_t>(rng() % 3))) {
                    Ring c = t.consumer();
                    Ring::Record r;
                    if (c.peek(r) == Ring::PopStatus::ok) c.release();
                    p = Ring::attach(t.mem.data(), 4096);  // producer's head copy stays in step
                }
            }
            for (int m = static_cast<int>(rng() % 4); m-- > 0;) t.data()[rng() % 4096] = static_cast<std::byte>(rng());
            if (rng() % 4 == 0) t.put_record((rng() % 512) * 8, static_cast<std::uint32_t>(rng()), Ring::k_wrap_tag);
            if (rng() % 4 == 0) t.hdr()->head.store(t.hdr()->head.load() + (rng() % 64) * 8 - 256);
            if (rng() % 8 == 0) t.hdr()->tail.store(t.hdr()->tail.load() + (rng() % 16) * 8);
        } else {
            for (std::size_t i = 0; i < 4096; i += 8) {
                std::uint64_t v = rng();
                if (rng() % 2) v &= 0x000003FF000003FFull;  // small lengths, small tags
                std::memcpy(t.data() + i, &v, 8);
            }
            // Tail stays 8-aligned: a misaligned tail in the header is its own test below.
            std::uint64_t tail = (rng() % 3 == 0 ? rng() : rng() % 4096) & ~std::uint64_t{7};
            std::uint64_t head = rng() % 3 == 0 ? rng() : tail + (rng() % 4200);
            t.hdr()->tail.store(tail);
            t.hdr()->head.store(head);
        }
        Ring c = t.consumer();
        for (int k = 0; k < 64; ++k) {
            Ring::Record r;
            auto st = c.peek(r);
            if (st == Ring::PopStatus::ok) {
                ++ok;
                ASSERT_TRUE(t.payload_in_bounds(r)) << "iteration " << iter;
                unsigned sum = 0;
                for (auto b : r.payload) sum += static_cast<unsigned>(b);  // touch every byte
                (void)sum;
                c.release();
            } else {
                (st == Ring::PopStatus::corrupt ? corrupt : empty)++;
                break;
            }
        }
    }
    EXPECT_GT(ok, scaled(1000));
    EXPECT_GT(corrupt, scaled(1000));
    EXPECT_GT(empty, scaled(100));
}

// ---------------------------------------------------------------- sleep / wake flags

TEST(RingWake, ConsumerNeedsWakeOnlyWhenAsleep) {
    TestRing t(4096);
    Ring& ring = t.ring;
    ASSERT_TRUE(ring.try_push(bytes_of("a"), 0));
    EXPECT_FALSE(ring.consumer_needs_wake());  // nobody sleeps

    Ring::Record r;
    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
    ring.release();
    EXPECT_TRUE(ring.consumer_sleep_begin());  // empty: may sleep
    ASSERT_TRUE(ring.try_push(bytes_of("b"), 0));
    EXPECT_TRUE(ring.consumer_needs_wake());
    EXPECT_FALSE(ring.consumer_needs_wake());  // cleared: only one producer call wakes
    ring.consumer_sleep_end();

    EXPECT_FALSE(ring.consumer_sleep_begin());  // data is there: no sleep, flag cleared
    ASSERT_TRUE(ring.try_push(bytes_of("c"), 0));
    EXPECT_FALSE(ring.consumer_needs_wake());
}

TEST(RingWake, ReleaseReportsAWaitingProducerOnce) {
    TestRing t(4096);
    Ring& ring = t.ring;
    std::vector<std::byte> payload(ring.max_record());
    while (ring.try_push(payload, 0)) {}
    EXPECT_TRUE(ring.producer_sleep_begin(payload.size()));  // full: may sleep
    Ring::Record r;
    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
    EXPECT_TRUE(ring.release());
    EXPECT_EQ(t.hdr()->producer_waiting.load(), 0u);
    ASSERT_EQ(ring.peek(r), Ring::PopStatus::ok);
    EXPECT_FALSE(ring.release());
    ring.producer_sleep_end();
    EXPECT_FALSE(ring.producer_sleep_begin(payload.size()));  // there is room now: no sleep
    EXPECT_EQ(t.hdr()->producer_waiting.load(), 0u);
}

TEST(RingWake, WaitsTimeOut) {
    TestRing t(4096);
    Ring& ring = t.ring;
    std::int64_t start = now_ns();
    EXPECT_FALSE(ring.wait_readable(1 * k_ms, 30 * k_ms));
    std::int64_t took = now_ns() - start;
    EXPECT_GE(took, 29 * k_ms);
    EXPECT_LT(took, 1 * k_s);

    std::vector<std::byte> payload(ring.max_record());
    while (ring.try_push(payload, 0)) {}
    start = now_ns();
    EXPECT_FALSE(ring.wait_writable(payload.size(), 1 * k_ms, 30 * k_ms));
    took = now_ns() - start;
    EXPECT_GE(took, 29 * k_ms);
    EXPECT_LT(took, 1 * k_s);
    EXPECT_TRUE(ring.wait_writable(0, 0, 0) == false);  // still full
    EXPECT_TRUE(ring.wait_readable(0, 0));               // and readable at once
}

// Zero spin: every wait goes to the futex. A lost wake-up shows as a wait that lasts its
// whole 2 s timeout; each wait must end in well under that.
TEST(RingWake, ConsumerSleepsProducerWakesNoLostWakeups) {
    TestRing t(4096);
    Ring producer = t.ring;
    Ring consumer = t.consumer();
    constexpr int k_rounds = 20'000;
    std::atomic<int> consumed{0};
    std::atomic<bool> failed{false};
    std::int64_t worst = 0;
    std::thread c([&] {
        for (int i = 0; i < k_rounds && !failed; ++i) {
            std::int64_t start = now_ns();
            bool ok = consumer.wait_readable(0, 2 * k_s);
            std::int64_t took = now_ns() - start;
            worst = std::max(worst, took);
            Ring::Record r;
            if (!ok || took > 1 * k_s || consumer.peek(r) != Ring::PopStatus::ok || r.tag != static_cast<std::uint32_t>(i)) {
                failed = true;
                break;
            }
            consumer.release();
            consumed.store(i + 1, std::memory_order_release);
        }
    });
    int wakes = 0;
    for (int i = 0; i < k_rounds && !failed; ++i) {
        // Wait for the previous record to be consumed, so the consumer has to sleep again.
        std::int64_t deadline = now_ns() + 5 * k_s;
        while (consumed.load(std::memory_order_acquire) < i && !failed) {
            if (now_ns() > deadline) { failed = true; break; }
            std::this_thread::yield();
        }
        if (i % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));  // let it fall asleep
        ASSERT_TRUE(producer.try_push({}, static_cast<std::uint32_t>(i)));
        if (producer.consumer_needs_wake()) {
            producer.wake_consumer();
            ++wakes;
        }
    }
    c.join();
    EXPECT_FALSE(failed) << "a wait lasted " << worst / k_ms << " ms";
    EXPECT_EQ(consumed.load(), k_rounds);
    EXPECT_GT(wakes, k_rounds / 16);  // the consumer really slept
}

TEST(RingWake, ProducerSleepsConsumerWakesNoLostWakeups) {
    TestRing t(4096);
    Ring producer = t.ring;
    Ring consumer = t.consumer();
    constexpr int k_rounds = 20'000;
    std::size_t const n = producer.max_record();  // 4 records fill the ring
    std::atomic<bool> failed{false};
    std::atomic<int> wakes{0};
    std::thread c([&] {
        for (int i = 0; i < k_rounds && !failed; ++i) {
            Ring::Record r;
            std::int64_t deadline = now_ns() + 5 * k_s;
            while (consumer.peek(r) != Ring::PopStatus::ok) {
                if (now_ns() > deadline) { failed = true; return; }
                std::this_thread::yield();
            }
            if (r.tag != static_cast<std::uint32_t>(i) || r.payload.size() != n) { failed = true; return; }
            if (i % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));  // let it fall asleep
            if (consumer.release()) ++wakes;
        }
    });
    std::vector<std::byte> payload(n);
    std::int64_t worst = 0;
    for (int i = 0; i < k_rounds && !failed; ++i) {
        while (!producer.try_push(payload, static_cast<std::uint32_t>(i))) {
            std::int64_t start = now_ns();
            bool ok = producer.wait_writable(n, 0, 2 * k_s);
            std::int64_t took = now_ns() - start;
            worst = std::max(worst, took);
            if (!ok || took > 1 * k_s) { failed = true; break; }
        }
    }
    c.join();
    EXPECT_FALSE(failed) << "a wait lasted " << worst / k_ms << " ms";
    EXPECT_GT(wakes.load(), k_rounds / 64);  // the producer really slept
}

// ---------------------------------------------------------------- stress

namespace {

/// Produces `count` pattern records, sleeping on the futex when full. Returns 0 when done,
/// 2 on a timeout. Runs in a thread or a forked child.
int produce(Ring& ring, std::uint64_t count, std::int64_t spin_ns) {
    std::vector<std::byte> buf(ring.max_record());
    for (std::uint64_t seq = 0; seq < count; ++seq) {
        std::size_t n = pattern_size(seq, ring.max_record());
        for (std::size_t i = 0; i < n; ++i) buf[i] = pattern_byte(seq, i);
        while (!ring.try_push(std::span(buf).first(n), static_cast<std::uint32_t>(seq & 0x7FFFFFFF)))
            if (!ring.wait_writable(n, spin_ns, 10 * k_s)) return 2;
        if (ring.consumer_needs_wake()) ring.wake_consumer();
    }
    return 0;
}

/// Consumes and checks `count` pattern records. Returns 0 when all were right, 2 on a timeout,
/// 3 on a wrong record, 4 on a corrupt ring. `checksum` sums every byte seen.
int consume(Ring& ring, std::uint64_t count, std::int64_t spin_ns, std::uint64_t& checksum) {
    for (std::uint64_t seq = 0; seq < count; ++seq) {
        Ring::Record r;
        for (;;) {
            auto st = ring.peek(r);
            if (st == Ring::PopStatus::ok) break;
            if (st == Ring::PopStatus::corrupt) return 4;
            if (!ring.wait_readable(spin_ns, 10 * k_s)) return 2;
        }
        std::size_t n = pattern_size(seq, ring.max_record());
        if (r.payload.size() != n || r.tag != static_cast<std::uint32_t>(seq & 0x7FFFFFFF)) return 3;
        for (std::size_t i = 0; i < n; ++i) {
            if (r.payload[i] != pattern_byte(seq, i)) return 3;
            checksum += static_cast<std::uint64_t>(r.payload[i]);
        }
        ring.release();
    }
    Ring::Record r;
    return ring.peek(r) == Ring::PopStatus::empty ? 0 : 3;
}

std::uint64_t expected_checksum(std::uint64_t count, std::size_t max) {
    std::uint64_t sum = 0;
    for (std::uint64_t seq = 0; seq < count; ++seq)
        for (std::size_t i = 0, n = pattern_size(seq, max); i < n; ++i) sum += static_cast<std::uint64_t>(pattern_byte(seq, i));
    return sum;
}

}  // namespace

TEST(RingStress, TwoThreadsMillionRecords) {
    constexpr std::size_t k_cap = 16384;
    std::uint64_t const count = 1'000'000;
    TestRing t(k_cap);
    Ring producer = t.ring;
    Ring consumer = t.consumer();
    int prc = -1;
    std::thread p([&] { prc = produce(producer, count, 2'000); });  // 2 us spin: sleeps a lot
    std::uint64_t sum = 0;
    int crc = consume(consumer, count, 2'000, sum);
    p.join();
    EXPECT_EQ(prc, 0);
    EXPECT_EQ(crc, 0);
    EXPECT_EQ(sum, expected_checksum(count, producer.max_record()));
}

TEST(RingStress, ChildProducesParentConsumes) {
    constexpr std::size_t k_cap = 16384;
    std::uint64_t const count = static_cast<std::uint64_t>(scaled(300'000));
    auto shm = SharedMemory::create(Ring::bytes_for(k_cap), "shoal-test-ring");
    Ring consumer = Ring::create(shm.data(), k_cap);
    ChildGuard child(fork_child([&] {
        Ring producer = Ring::attach(shm.data(), k_cap);
        return produce(producer, count, 2'000);
    }));
    std::uint64_t sum = 0;
    EXPECT_EQ(consume(consumer, count, 2'000, sum), 0);
    auto end = child.wait(std::chrono::seconds(30));
    EXPECT_TRUE(end.exited(0)) << end.str();
    EXPECT_EQ(sum, expected_checksum(count, consumer.max_record()));
}

TEST(RingStress, ParentProducesChildConsumes) {
    constexpr std::size_t k_cap = 16384;
    std::uint64_t const count = static_cast<std::uint64_t>(scaled(300'000));
    auto shm = SharedMemory::create(Ring::bytes_for(k_cap), "shoal-test-ring");
    Ring producer = Ring::create(shm.data(), k_cap);
    std::uint64_t const want = expected_checksum(count, producer.max_record());
    ChildGuard child(fork_child([&] {
        Ring consumer = Ring::attach(shm.data(), k_cap);
        std::uint64_t sum = 0;
        int rc = consume(consumer, count, 2'000, sum);
        return rc != 0 ? rc : (sum == want ? 0 : 5);
    }));
    EXPECT_EQ(produce(producer, count, 2'000), 0);
    auto end = child.wait(std::chrono::seconds(30));
    EXPECT_TRUE(end.exited(0)) << end.str() << " (2 timeout, 3 wrong record, 4 corrupt, 5 checksum)";
}

TEST(RingStress, ChildProducerDiesMidwayConsumerSeesNoGarbage) {
    // A producer killed at a random point leaves a consistent prefix: only whole records.
    constexpr std::size_t k_cap = 16384;
    auto shm = SharedMemory::create(Ring::bytes_for(k_cap), "shoal-test-ring");
    Ring consumer = Ring::create(shm.data(), k_cap);
    ChildGuard child(fork_child([&] {
        Ring producer = Ring::attach(shm.data(), k_cap);
        return produce(producer, ~std::uint64_t{0} >> 1, 0);
    }));
    std::uint64_t seq = 0;
    std::int64_t kill_at = now_ns() + 20 * k_ms;
    bool killed = false;
    for (;;) {
        // Kill once it has produced a fair amount (a loaded machine may be slow to start it).
        if (!killed && ((now_ns() >= kill_at && seq > 100) || now_ns() >= kill_at + 10000 * k_ms)) {
            ::kill(child.pid(), SIGKILL);
            killed = true;
        }
        Ring::Record r;
        auto st = consumer.peek(r);
        ASSERT_NE(st, Ring::PopStatus::corrupt);
        if (st == Ring::PopStatus::empty) {
            if (killed && !consumer.wait_readable(0, 50 * k_ms)) break;  // dead and drained
            continue;
        }
        std::size_t n = pattern_size(seq, consumer.max_record());
        ASSERT_EQ(r.payload.size(), n);
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(r.payload[i], pattern_byte(seq, i));
        consumer.release();
        ++seq;
    }
    EXPECT_GT(seq, 100u);
    auto end = child.wait(std::chrono::seconds(5));
    EXPECT_TRUE(end.signaled(SIGKILL)) << end.str();
}
