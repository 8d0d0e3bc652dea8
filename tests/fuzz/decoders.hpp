// decoders.hpp — one fuzz input run through every decoder of untrusted bytes, shared by the
// seeded GoogleTest fuzzer (tests/cpp/test_fuzz.cpp) and the libFuzzer target
// (tests/fuzz/fuzz_decoders.cpp).
//
// What a worker controls, and the driver must survive: the bytes of a frame (decode_frame),
// a zygote message (ZygoteMessage::decode), and the whole shared memory of a result ring,
// header included (Ring::peek, MessageReader::poll). The input is a script: its first byte
// picks the target; for the ring, the rest is a list of operations (push a fragment, push a
// whole frame through a MessageWriter, scribble a byte of the ring's memory, poll the reader).
// A broken rule aborts (so libFuzzer reports it and a GoogleTest run crashes); reads out of
// bounds are left to AddressSanitizer (the ring lives in a heap block of its exact size).
#pragma once

#include "shoal/frame.hpp"
#include "shoal/message.hpp"
#include "shoal/ring.hpp"
#include "shoal/zygote.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <vector>

#define SHOAL_FUZZ_CHECK(cond)                                                              \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            std::fprintf(stderr, "fuzz: %s:%d: broken rule: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                                   \
        }                                                                                   \
    } while (0)

namespace shoal_fuzz {

/// What one input reached, so that the seeded run can check it goes deep.
struct Reach {
    std::size_t frames_accepted = 0;
    std::size_t frames_rejected = 0;
    std::size_t zygote_accepted = 0;
    std::size_t messages = 0;        // whole messages the reader assembled
    std::size_t corrupt = 0;         // streams it called corrupt
    std::size_t too_large = 0;       // messages past its bound
};

enum Target : std::uint8_t { k_frame = 0, k_zygote = 1, k_ring = 2, k_targets = 3 };

/// Reads the script; past its end every read returns zeros.
class Script {
public:
    explicit Script(std::span<std::byte const> bytes) noexcept : m_bytes(bytes) {}
    bool done() const noexcept { return m_at >= m_bytes.size(); }
    std::uint8_t u8() noexcept { return done() ? 0 : static_cast<std::uint8_t>(m_bytes[m_at++]); }
    std::uint16_t u16() noexcept { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
    /// Up to `n` bytes of the script (fewer at its end).
    std::span<std::byte const> take(std::size_t n) noexcept {
        std::size_t k = std::min(n, m_bytes.size() - std::min(m_at, m_bytes.size()));
        auto out = m_bytes.subspan(std::min(m_at, m_bytes.size()), k);
        m_at += k;
        return out;
    }
    std::span<std::byte const> rest() noexcept { return take(m_bytes.size()); }

private:
    std::span<std::byte const> m_bytes;
    std::size_t m_at = 0;
};

/// Decodes `bytes` (copied to a heap block of exactly their size) as a frame and checks
/// what an accepted frame promises.
inline void check_frame(std::span<std::byte const> bytes, Reach& reach) {
    std::vector<std::byte> exact(bytes.begin(), bytes.end());
    exact.shrink_to_fit();
    shoal::FrameView v;
    std::string error;
    if (!shoal::decode_frame(exact, v, error)) {
        SHOAL_FUZZ_CHECK(!error.empty());
        ++reach.frames_rejected;
        return;
    }
    ++reach.frames_accepted;
    SHOAL_FUZZ_CHECK(exact.size() >= sizeof(shoal::FrameHeader));
    SHOAL_FUZZ_CHECK(v.header.magic == shoal::k_frame_magic && v.header.version == shoal::k_frame_version);
    SHOAL_FUZZ_CHECK(shoal::is_worker_frame(v.header.kind) || shoal::is_driver_frame(v.header.kind));
    SHOAL_FUZZ_CHECK(v.header.buffers <= shoal::k_max_frame_buffers);
    SHOAL_FUZZ_CHECK(v.refs.size() == std::size_t{v.header.buffers} * sizeof(shoal::BufferRef));
    SHOAL_FUZZ_CHECK(v.refs.data() == exact.data() + sizeof(shoal::FrameHeader));
    SHOAL_FUZZ_CHECK(v.payload.data() == v.refs.data() + v.refs.size());
    SHOAL_FUZZ_CHECK(v.payload.data() + v.payload.size() == exact.data() + exact.size());
    SHOAL_FUZZ_CHECK(v.header.kind != shoal::FrameKind::task || v.header.count != 0);
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < v.header.buffers; ++i) sum += v.ref(i).offset ^ v.ref(i).length;  // every ref readable
    (void)sum;
}

inline void check_zygote_message(std::span<std::byte const> bytes, Reach& reach) {
    std::vector<std::byte> exact(bytes.begin(), bytes.end());
    exact.shrink_to_fit();
    shoal::ZygoteMessage m;
    if (!shoal::ZygoteMessage::decode(exact, m)) return;
    ++reach.zygote_accepted;
    SHOAL_FUZZ_CHECK(m.body.size() <= exact.size());
    SHOAL_FUZZ_CHECK(m.status.kind == shoal::ExitStatus::exited || m.status.kind == shoal::ExitStatus::signaled);
    shoal::ZygoteMessage again;  // what decodes, encodes back to the same bytes
    SHOAL_FUZZ_CHECK(shoal::ZygoteMessage::decode(m.encode(), again));
    SHOAL_FUZZ_CHECK(again.body == m.body && again.op == m.op && again.slot == m.slot && again.pid == m.pid);
}

/// A ring in a heap block of exactly its size, 64-byte aligned: the producer's and the
/// consumer's views of it, as the worker and the driver have.
struct FuzzRing {
    static constexpr std::size_t k_capacity = 4096;
    std::size_t bytes = shoal::Ring::bytes_for(k_capacity);
    std::byte* mem = static_cast<std::byte*>(::operator new(bytes, std::align_val_t{64}));
    shoal::Ring producer;
    shoal::Ring consumer;
    FuzzRing() {
        std::memset(mem, 0, bytes);
        producer = shoal::Ring::create(mem, k_capacity);
        consumer = shoal::Ring::attach(mem, k_capacity);
    }
    ~FuzzRing() { ::operator delete(mem, std::align_val_t{64}); }
    FuzzRing(FuzzRing const&) = delete;
    FuzzRing& operator=(FuzzRing const&) = delete;
};

inline void run_ring(Script& s, Reach& reach) {
    FuzzRing ring;
    std::size_t const max_message = 1 + s.u16() % 8192;  // the reader's bound, small to be reached
    shoal::MessageReader reader(max_message);
    std::vector<std::byte> scratch;
    // The driver reads once; false when the stream is broken (the driver kills such a worker
    // and reads nothing more of its ring).
    auto poll = [&]() -> bool {
        bool waiting = false;
        auto st = reader.poll(ring.consumer, waiting);
        if (st == shoal::MessageReader::Status::message) {
            ++reach.messages;
            SHOAL_FUZZ_CHECK(reader.message().size() <= max_message);
            check_frame(reader.message(), reach);
        } else if (st != shoal::MessageReader::Status::empty) {
            ++(st == shoal::MessageReader::Status::corrupt ? reach.corrupt : reach.too_large);
            return false;
        }
        return true;
    };
    for (int op = 0; op < 512 && !s.done(); ++op) {
        switch (s.u8() % 5) {
            case 0: {  // one fragment, any tag (0 last, 1 more, others invalid)
                std::uint8_t t = s.u8();
                std::uint32_t tag = t < 200 ? t % 2 : (t < 250 ? t : shoal::Ring::k_wrap_tag);
                std::size_t n = s.u16() % (ring.producer.max_record() + 64);  // sometimes too big: refused
                scratch.assign(n, std::byte{0});
                auto src = s.take(n);
                if (!src.empty()) std::memcpy(scratch.data(), src.data(), src.size());
                (void)ring.producer.try_push(scratch, tag);
                break;
            }
            case 1: {  // a whole frame, fragmented by the writer as the driver does
                std::size_t n = s.u16() % 4096;
                auto body = s.take(n);
                auto frame = std::make_shared<std::vector<std::byte> const>(
                    shoal::encode_frame(shoal::FrameKind::result, 0, 1, 0, 1, body));
                shoal::MessageWriter w(frame);
                for (int k = 0; k < 64 && !w.pump(ring.producer); ++k)
                    if (!poll()) return;
                break;
            }
            case 2: {  // the peer scribbles on the ring's memory, header included
                std::size_t at = s.u16() % ring.bytes;
                if (s.u8() % 4 == 0) at %= 256;  // the header's words more often
                ring.mem[at] = static_cast<std::byte>(s.u8());
                break;
            }
            case 3: {  // a word of the header set whole (head, tail, the waiting flags)
                std::size_t at = (s.u8() % 32) * 8;
                std::uint64_t value = 0;
                switch (s.u8() % 4) {
                    case 0: value = s.u16(); break;
                    case 1: value = ~std::uint64_t{0} - s.u8(); break;
                    case 2: value = std::uint64_t{s.u16()} << 48; break;
                    default: value = FuzzRing::k_capacity * s.u8() + s.u8(); break;
                }
                std::memcpy(ring.mem + at, &value, sizeof value);
                break;
            }
            default:  // the driver reads
                if (!poll()) return;
                break;
        }
    }
}

/// Runs one input through the target its first byte names.
inline void run_one(std::span<std::byte const> input, Reach& reach) {
    Script s(input);
    switch (s.u8() % k_targets) {
        case k_frame: check_frame(s.rest(), reach); break;
        case k_zygote: check_zygote_message(s.rest(), reach); break;
        default: run_ring(s, reach); break;
    }
}

}  // namespace shoal_fuzz
