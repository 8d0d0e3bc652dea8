// test_fuzz.cpp — a deterministic, seeded mutation fuzzer over every decoder of untrusted
// bytes (frames, zygote messages, the result ring and the message reader; the harness is
// tests/fuzz/decoders.hpp, shared with the libFuzzer target that `make fuzz` builds with clang).
//
// Seeds are valid inputs; each iteration mutates one (bit flips, bytes set to edge values,
// insertions, deletions, copies within the input, splices with another seed) and runs it.
// The same inputs every run: a failure reproduces. Under ASan/UBSan it proves the decoders
// never read out of bounds; the rules an accepted input promises are checked (an abort).
#include "../fuzz/decoders.hpp"

#include "support.hpp"

#include <random>
#include <vector>

using namespace shoal;
using namespace shoal_fuzz;

namespace {

using Bytes_ = std::vector<std::byte>;

void put(Bytes_& out, std::span<std::byte const> b) { out.insert(out.end(), b.begin(), b.end()); }
void put8(Bytes_& out, unsigned v) { out.push_back(static_cast<std::byte>(v)); }
void put16(Bytes_& out, unsigned v) { put8(out, v & 0xFF); put8(out, (v >> 8) & 0xFF); }

std::vector<Bytes_> seeds() {
    std::vector<Bytes_> out;
    std::vector<std::byte> payload(40, std::byte{0x61});
    BufferRef refs[2] = {{0, 64}, {65536, 100}};
    for (auto kind : {FrameKind::task, FrameKind::result, FrameKind::output, FrameKind::ready}) {
        Bytes_ s;
        put8(s, k_frame);
        bool with_refs = kind == FrameKind::task || kind == FrameKind::result;
        put(s, encode_frame(kind, 0, 7, 9, 1, payload, with_refs ? std::span<BufferRef const>(refs) : std::span<BufferRef const>{}));
        out.push_back(std::move(s));
    }
    ZygoteMessage z;
    z.op = ZygoteOp::import_modules;
    z.body = "numpy\nscipy";
    Bytes_ zs;
    put8(zs, k_zygote);
    put(zs, z.encode());
    out.push_back(std::move(zs));
    // Ring scripts: frames whole and in fragments, reads between; a bound of 6000 bytes.
    for (unsigned frame_bytes : {40u, 1500u, 3000u}) {
        Bytes_ s;
        put8(s, k_ring);
        put16(s, frame_bytes == 1500u ? 3100 : 5999);  // room for 1500 + 72 bytes only, twice
        put8(s, 1);  // a whole frame of frame_bytes (fragmented past max_record)
        put16(s, frame_bytes);
        for (unsigned i = 0; i < frame_bytes; ++i) put8(s, i * 7);
        put8(s, 4);
        put8(s, 4);
        auto f = encode_frame(FrameKind::result, 0, 3, 0, 1, payload);
        put8(s, 0);  // its first part, "more follows"
        put8(s, 1);
        put16(s, 16);
        put(s, std::span<std::byte const>(f).first(16));
        put8(s, 0);  // the rest, last
        put8(s, 0);
        put16(s, static_cast<unsigned>(f.size() - 16));
        put(s, std::span<std::byte const>(f).subspan(16));
        put8(s, 4);
        put8(s, 2);  // a scribble, then more reads
        put16(s, 70);
        put8(s, 0x10);
        put8(s, 4);
        put8(s, 3);  // a header word set whole
        put8(s, 1);
        put8(s, 3);
        put8(s, 2);
        put8(s, 5);
        put8(s, 4);
        out.push_back(std::move(s));
    }
    return out;
}

void mutate(Bytes_& in, std::vector<Bytes_> const& pool, std::mt19937_64& rng) {
    static constexpr std::uint8_t k_edges[] = {0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, 0x10, 0x20};
    int const n = 1 + static_cast<int>(rng() % 6);
    for (int k = 0; k < n; ++k) {
        std::size_t const size = in.size();
        auto at = [&](std::size_t extra = 0) { return size + extra == 0 ? 0 : rng() % (size + extra); };
        switch (rng() % 7) {
            case 0:
                if (size) in[at()] ^= static_cast<std::byte>(1u << (rng() % 8));
                break;
            case 1:
                if (size) in[at()] = static_cast<std::byte>(k_edges[rng() % sizeof k_edges]);
                break;
            case 2:
                if (size) in[at()] = static_cast<std::byte>(rng());
                break;
            case 3: {  // insert random bytes
                std::size_t pos = at(1), len = 1 + rng() % 8;
                for (std::size_t i = 0; i < len; ++i)
                    in.insert(in.begin() + static_cast<std::ptrdiff_t>(pos), static_cast<std::byte>(rng()));
                break;
            }
            case 4: {  // delete a range (never the target byte)
                if (size < 2) break;
                std::size_t pos = 1 + rng() % (size - 1), len = 1 + rng() % std::min<std::size_t>(16, size - pos);
                in.erase(in.begin() + static_cast<std::ptrdiff_t>(pos), in.begin() + static_cast<std::ptrdiff_t>(pos + len));
                break;
            }
            case 5: {  // copy a range of itself elsewhere
                if (size < 2) break;
                std::size_t from = rng() % size, len = 1 + rng() % std::min<std::size_t>(32, size - from);
                Bytes_ piece(in.begin() + static_cast<std::ptrdiff_t>(from), in.begin() + static_cast<std::ptrdiff_t>(from + len));
                std::size_t to = at(1);
                in.insert(in.begin() + static_cast<std::ptrdiff_t>(to), piece.begin(), piece.end());
                break;
            }
            default: {  // splice: this input's head, another seed's tail
                Bytes_ const& other = pool[rng() % pool.size()];
                if (other.size() < 2 || size < 2) break;
                std::size_t cut = 1 + rng() % (size - 1), from = 1 + rng() % (other.size() - 1);
                in.resize(cut);
                in.insert(in.end(), other.begin() + static_cast<std::ptrdiff_t>(from), other.end());
                break;
            }
        }
    }
    if (in.size() > 16384) in.resize(16384);
}

}  // namespace

TEST(DecoderFuzz, SeedsAreAcceptedWhole) {
    Reach reach;
    for (auto const& s : seeds()) run_one(s, reach);
    EXPECT_EQ(reach.frames_accepted, 4u + 3u * 2u);  // 4 frames; 2 messages in each ring script
    EXPECT_EQ(reach.zygote_accepted, 1u);
    EXPECT_EQ(reach.messages, 6u);
}

TEST(DecoderFuzz, SeededMutationsNeverCrashAndReachEveryOutcome) {
    auto const pool = seeds();
    std::mt19937_64 rng(0x5E0A1);
    Reach reach;
    Bytes_ input;
    // About 2 s in a release build (the sanitizers' builds run fewer, each far slower).
    int const iterations = shoal_test::scaled(shoal_test::k_asan ? 300'000 : 2'000'000);
    for (int i = 0; i < iterations; ++i) {
        input = pool[rng() % pool.size()];
        mutate(input, pool, rng);
        run_one(input, reach);
    }
    std::printf("frames accepted %zu rejected %zu, zygote accepted %zu, messages %zu, corrupt %zu, too large %zu\n",
                reach.frames_accepted, reach.frames_rejected, reach.zygote_accepted, reach.messages, reach.corrupt,
                reach.too_large);
    // The mutations went past the first checks into every outcome of every decoder.
    auto const n = static_cast<std::size_t>(iterations);
    EXPECT_GT(reach.frames_accepted, n / 10);
    EXPECT_GT(reach.frames_rejected, n / 20);
    EXPECT_GT(reach.zygote_accepted, n / 200);
    EXPECT_GT(reach.messages, n / 10);
    EXPECT_GT(reach.corrupt, n / 5000);
    EXPECT_GT(reach.too_large, n / 50000);
}
