// test_frame.cpp — the frame codec: roundtrips, every malformed header rejected, and a seeded
// fuzz loop (random bytes and mutations of valid frames) that must never crash.
//
// libFuzzer needs clang, which this machine lacks; the seeded loops below run in every build
// and under ASan/UBSan they prove that decode_frame() never reads out of bounds.
#include "shoal/frame.hpp"

#include "support.hpp"

#include <random>
#include <vector>

using namespace shoal;

namespace {

std::vector<std::byte> bytes_of(std::string_view s) {
    auto const* p = reinterpret_cast<std::byte const*>(s.data());
    return {p, p + s.size()};
}

constexpr FrameKind k_all_kinds[] = {FrameKind::task,   FrameKind::function, FrameKind::forget,
                                     FrameKind::shutdown, FrameKind::result, FrameKind::output,
                                     FrameKind::ready,  FrameKind::init_failed};

FrameHeader header_of(std::vector<std::byte> const& f) {
    FrameHeader h;
    std::memcpy(&h, f.data(), sizeof h);
    return h;
}
void set_header(std::vector<std::byte>& f, FrameHeader const& h) { std::memcpy(f.data(), &h, sizeof h); }

/// Decodes from a heap copy of exactly the given size, so ASan sees any overread.
bool decode_exact(std::span<std::byte const> bytes, FrameView& out, std::string& error,
                  std::vector<std::byte>& storage) {
    storage.assign(bytes.begin(), bytes.end());
    storage.shrink_to_fit();
    return decode_frame(storage, out, error);
}

}  // namespace

TEST(Frame, EncodeDecodeRoundtrip) {
    auto payload = bytes_of(std::string_view("pickled bytes \x00\x01\x02 here", 22));
    ASSERT_EQ(payload[14], std::byte{0});
    for (FrameKind k : k_all_kinds) {
        auto f = encode_frame(k, 0xA5A5A5A5u, 0x0123456789ABCDEFull, 0xFEDCBA9876543210ull, 17, payload);
        ASSERT_EQ(f.size(), sizeof(FrameHeader) + payload.size());
        FrameView v;
        std::string error;
        ASSERT_TRUE(decode_frame(f, v, error)) << error;
        EXPECT_EQ(v.header.magic, k_frame_magic);
        EXPECT_EQ(v.header.version, k_frame_version);
        EXPECT_EQ(v.header.kind, k);
        EXPECT_EQ(v.header.flags, 0xA5A5A5A5u);
        EXPECT_EQ(v.header.task_id, 0x0123456789ABCDEFull);
        EXPECT_EQ(v.header.aux, 0xFEDCBA9876543210ull);
        EXPECT_EQ(v.header.count, 17u);
        EXPECT_EQ(v.header.buffers, 0u);
        EXPECT_EQ(v.payload.data(), f.data() + sizeof(FrameHeader));  // a view, not a copy
        EXPECT_TRUE(std::equal(v.payload.begin(), v.payload.end(), payload.begin(), payload.end()));
    }
}

TEST(Frame, EmptyPayloadAndZeroCountForNonTasks) {
    // The pool sends `shutdown` with count 0 and an empty payload: it must decode.
    auto f = encode_frame(FrameKind::shutdown, 0, 0, 0, 0, {});
    FrameView v;
    std::string error;
    ASSERT_TRUE(decode_frame(f, v, error)) << error;
    EXPECT_EQ(v.payload.size(), 0u);
    EXPECT_EQ(v.header.kind, FrameKind::shutdown);
}

TEST(Frame, KindsArePartitionedBetweenDriverAndWorker) {
    for (FrameKind k : k_all_kinds) EXPECT_NE(is_worker_frame(k), is_driver_frame(k)) << static_cast<int>(k);
    EXPECT_TRUE(is_driver_frame(FrameKind::task));
    EXPECT_TRUE(is_driver_frame(FrameKind::shutdown));
    EXPECT_TRUE(is_worker_frame(FrameKind::result));
    EXPECT_TRUE(is_worker_frame(FrameKind::init_failed));
    for (int k : {0, 5, 15, 20, 255}) {
        EXPECT_FALSE(is_worker_frame(static_cast<FrameKind>(k))) << k;
        EXPECT_FALSE(is_driver_frame(static_cast<FrameKind>(k))) << k;
    }
}

TEST(FrameReject, ShorterThanTheHeader) {
    auto f = encode_frame(FrameKind::result, 0, 1, 2, 1, {});
    std::vector<std::byte> storage;
    for (std::size_t n = 0; n < sizeof(FrameHeader); ++n) {
        FrameView v;
        std::string error;
        EXPECT_FALSE(decode_exact(std::span(f).first(n), v, error, storage)) << n;
        EXPECT_FALSE(error.empty());
    }
}

TEST(FrameReject, BadMagic) {
    auto f = encode_frame(FrameKind::result, 0, 1, 2, 1, {});
    for (std::uint16_t m : {0, 0x4853, 0x5349, 0xFFFF}) {
        auto h = header_of(f);
        h.magic = m;
        auto g = f;
        set_header(g, h);
        FrameView v;
        std::string error;
        EXPECT_FALSE(decode_frame(g, v, error)) << m;
        EXPECT_NE(error.find("magic"), std::string::npos) << error;
    }
}

TEST(FrameReject, UnknownVersion) {
    auto f = encode_frame(FrameKind::result, 0, 1, 2, 1, {});
    for (std::uint8_t ver : {0, 1, 3, 255}) {
        auto h = header_of(f);
        h.version = ver;
        set_header(f, h);
        FrameView v;
        std::string error;
        EXPECT_FALSE(decode_frame(f, v, error)) << int(ver);
        EXPECT_NE(error.find("version"), std::string::npos) << error;
    }
}

TEST(FrameReject, UnknownKind) {
    auto f = encode_frame(FrameKind::result, 0, 1, 2, 1, {});
    for (int k : {0, 5, 6, 15, 20, 128, 255}) {
        auto h = header_of(f);
        h.kind = static_cast<FrameKind>(k);
        set_header(f, h);
        FrameView v;
        std::string error;
        EXPECT_FALSE(decode_frame(f, v, error)) << k;
        EXPECT_NE(error.find("kind"), std::string::npos) << error;
    }
}

TEST(FrameRefs, RoundTripBeforeThePayload) {
    BufferRef refs[2] = {{0, 65536}, {1 << 20, 12345}};
    auto f = encode_frame(FrameKind::result, 0, 1, 2, 1, bytes_of("pickle"), refs);
    FrameView v;
    std::string error;
    ASSERT_TRUE(decode_frame(f, v, error)) << error;
    ASSERT_EQ(v.header.buffers, 2u);
    EXPECT_EQ(v.ref(0).offset, 0u);
    EXPECT_EQ(v.ref(0).length, 65536u);
    EXPECT_EQ(v.ref(1).offset, 1u << 20);
    EXPECT_EQ(v.ref(1).length, 12345u);
    EXPECT_EQ(std::string(reinterpret_cast<char const*>(v.payload.data()), v.payload.size()), "pickle");
}

TEST(FrameReject, BufferCountPastTheEnd) {
    auto f = encode_frame(FrameKind::task, 0, 1, 2, 1, bytes_of("0123456789abcdef0123"));
    for (std::uint32_t r : {2u, 0x80000000u, 0xFFFFFFFFu}) {
        auto h = header_of(f);
        h.buffers = r;
        set_header(f, h);
        FrameView v;
        std::string error;
        EXPECT_FALSE(decode_frame(f, v, error)) << r;
        EXPECT_NE(error.find("buffer"), std::string::npos) << error;
    }
    auto h = header_of(f);
    h.buffers = 1;  // 16 of the 20 payload bytes are one reference
    set_header(f, h);
    FrameView v;
    std::string error;
    ASSERT_TRUE(decode_frame(f, v, error)) << error;
    EXPECT_EQ(v.payload.size(), 4u);
}

TEST(FrameReject, BuffersOnlyInTaskAndResultFrames) {
    for (auto kind : {FrameKind::function, FrameKind::forget, FrameKind::shutdown, FrameKind::output,
                      FrameKind::ready, FrameKind::init_failed}) {
        BufferRef ref{0, 1};
        auto f = encode_frame(kind, 0, 1, 2, 1, {}, std::span<BufferRef const>(&ref, 1));
        FrameView v;
        std::string error;
        EXPECT_FALSE(decode_frame(f, v, error)) << static_cast<int>(kind);
        EXPECT_NE(error.find("buffer"), std::string::npos) << error;
    }
}

TEST(FrameReject, TaskWithZeroItems) {
    auto f = encode_frame(FrameKind::task, 0, 1, 2, 0, bytes_of("x"));
    FrameView v;
    std::string error;
    EXPECT_FALSE(decode_frame(f, v, error));
    EXPECT_NE(error.find("zero"), std::string::npos) << error;
}

TEST(FrameFuzz, RandomBytesNeverCrash) {
    std::mt19937_64 rng(0xF4A3E);
    std::vector<std::byte> input, storage;
    int accepted = 0;
    for (int iter = 0; iter < shoal_test::scaled(200'000); ++iter) {
        input.resize(rng() % 80);
        for (auto& b : input) b = static_cast<std::byte>(rng());
        if (input.size() >= 4 && rng() % 2) {  // often a right magic and version, to go deeper
            input[0] = std::byte{0x48};
            input[1] = std::byte{0x53};
            input[2] = std::byte{k_frame_version};
            if (rng() % 2) input[3] = static_cast<std::byte>(k_all_kinds[rng() % 8]);
            if (input.size() >= 32 && rng() % 2) std::memset(input.data() + 28, 0, 4);
        }
        FrameView v;
        std::string error;
        if (decode_exact(input, v, error, storage)) {
            ++accepted;
            ASSERT_GE(storage.size(), sizeof(FrameHeader));
            ASSERT_EQ(v.refs.size(), v.header.buffers * sizeof(BufferRef));
            ASSERT_EQ(v.payload.data(), storage.data() + sizeof(FrameHeader) + v.refs.size());
            ASSERT_EQ(v.payload.size(), storage.size() - sizeof(FrameHeader) - v.refs.size());
            ASSERT_EQ(v.header.magic, k_frame_magic);
            ASSERT_EQ(v.header.version, k_frame_version);
            ASSERT_TRUE(is_worker_frame(v.header.kind) || is_driver_frame(v.header.kind));
            ASSERT_TRUE(v.header.buffers == 0 || v.header.kind == FrameKind::task ||
                        v.header.kind == FrameKind::result);
            ASSERT_TRUE(v.header.kind != FrameKind::task || v.header.count != 0);
        } else {
            ASSERT_FALSE(error.empty());
        }
    }
    EXPECT_GT(accepted, shoal_test::scaled(1000));  // the loop reached the accepting path
}

TEST(FrameFuzz, MutatedValidFramesNeverCrash) {
    std::mt19937_64 rng(0xF4A3E + 1);
    std::vector<std::byte> storage;
    int accepted = 0, rejected = 0;
    for (int iter = 0; iter < shoal_test::scaled(200'000); ++iter) {
        std::vector<std::byte> payload(rng() % 64);
        for (auto& b : payload) b = static_cast<std::byte>(rng());
        auto f = encode_frame(k_all_kinds[rng() % 8], static_cast<std::uint32_t>(rng()), rng(), rng(),
                              static_cast<std::uint32_t>(rng() % 3), payload);
        switch (rng() % 4) {
            case 0:  // flip bits
                for (int m = 1 + static_cast<int>(rng() % 3); m-- > 0;)
                    f[rng() % f.size()] ^= static_cast<std::byte>(1u << (rng() % 8));
                break;
            case 1:  // overwrite a header byte
                f[rng() % sizeof(FrameHeader)] = static_cast<std::byte>(rng());
                break;
            case 2:  // truncate
                f.resize(rng() % (f.size() + 1));
                break;
            default:  // extend with junk
                for (int m = static_cast<int>(rng() % 16); m-- > 0;) f.push_back(static_cast<std::byte>(rng()));
                break;
        }
        FrameView v;
        std::string error;
        if (decode_exact(f, v, error, storage)) {
            ++accepted;
            ASSERT_EQ(v.payload.size(), storage.size() - sizeof(FrameHeader) - v.refs.size());
            ASSERT_EQ(v.header.magic, k_frame_magic);
            ASSERT_TRUE(is_worker_frame(v.header.kind) || is_driver_frame(v.header.kind));
            ASSERT_TRUE(v.header.kind != FrameKind::task || v.header.count != 0);
        } else {
            ++rejected;
        }
    }
    EXPECT_GT(accepted, shoal_test::scaled(10'000));
    EXPECT_GT(rejected, shoal_test::scaled(10'000));
}
