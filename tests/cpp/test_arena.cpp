// test_arena.cpp — the shared arena: allocation and reuse, fragmentation, the limit, many
// processes allocating at once, a process killed while holding blocks, ownership moving with
// adopt(), and references from other processes checked before use.
#include "shoal/arena.hpp"

#include "support.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <cstdio>
#include <thread>
#include <vector>

using namespace shoal;
using namespace shoal_test;

namespace {

constexpr std::uint64_t P = Arena::k_page;
constexpr std::uint64_t MiB = 1 << 20;

Arena make(std::uint64_t limit, std::uint64_t keep = 256 * MiB) {
    Arena::Options o;
    o.limit_bytes = limit;
    o.keep_free_bytes = keep;
    o.grow_bytes = 4 * MiB;
    return Arena::create(o);
}

Fd dup_fd(int fd) { return Fd(::dup(fd)); }

std::uint64_t resident_bytes(int fd) {
    struct stat st{};
    ::fstat(fd, &st);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

void fill(Arena& a, std::uint64_t off, std::uint64_t len, std::uint8_t v) { std::memset(a.data() + off, v, len); }

bool all_equal(Arena& a, std::uint64_t off, std::uint64_t len, std::uint8_t v) {
    auto const* p = reinterpret_cast<std::uint8_t const*>(a.data() + off);
    return std::all_of(p, p + len, [v](std::uint8_t b) { return b == v; });
}

}  // namespace

TEST(Arena, AllocatesPageAlignedWritableBlocks) {
    Arena a = make(64 * MiB);
    auto x = a.allocate(1, Arena::k_creator);
    auto y = a.allocate(P + 1, Arena::k_creator);
    auto z = a.allocate(3 * P, Arena::k_creator);
    EXPECT_EQ(x % P, 0u);
    EXPECT_EQ(y % P, 0u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a.data() + z) % 64, 0u);
    EXPECT_NE(x, y);
    EXPECT_GE(y, x + P);
    EXPECT_GE(z, y + 2 * P);
    fill(a, y, P + 1, 7);
    EXPECT_TRUE(all_equal(a, y, P + 1, 7));
    EXPECT_EQ(a.used_bytes(), 6 * P);
    EXPECT_TRUE(a.free(y, Arena::k_creator));
    EXPECT_EQ(a.used_bytes(), 4 * P);
    // The hole is reused for a block that fits in it.
    EXPECT_EQ(a.allocate(2 * P, Arena::k_creator), y);
}

TEST(Arena, FreeChecksOwnerAndBlockStart) {
    Arena a = make(16 * MiB);
    auto b = a.allocate(4 * P, Arena::k_creator);
    EXPECT_FALSE(a.free(b, 7));           // not the owner
    EXPECT_FALSE(a.free(b + P, Arena::k_creator));  // inside the block, not its start
    EXPECT_FALSE(a.free(b + 1, Arena::k_creator));  // misaligned
    EXPECT_FALSE(a.free(a.limit_bytes(), Arena::k_creator));  // past the end
    EXPECT_TRUE(a.free(b, Arena::k_creator));
    EXPECT_FALSE(a.free(b, Arena::k_creator));  // twice
    EXPECT_EQ(a.used_bytes(), 0u);
}

TEST(Arena, FragmentedArenaStillServesLargeBlocks) {
    Arena a = make(64 * MiB);
    std::vector<std::uint64_t> blocks;
    std::mt19937_64 rng(42);
    for (int i = 0; i < 200; ++i) blocks.push_back(a.allocate((rng() % 3 + 1) * P, Arena::k_creator));
    // Free every other block: holes of 1-3 pages everywhere.
    for (std::size_t i = 0; i < blocks.size(); i += 2) ASSERT_TRUE(a.free(blocks[i], Arena::k_creator));
    std::uint64_t used = a.used_bytes();
    // A block larger than any hole goes past them; small ones fill the holes.
    auto big = a.allocate(16 * P, Arena::k_creator);
    auto small = a.allocate(P, Arena::k_creator);
    EXPECT_LT(small, blocks.back());
    EXPECT_EQ(a.used_bytes(), used + 17 * P);
    fill(a, big, 16 * P, 3);
    for (std::size_t i = 1; i < blocks.size(); i += 2) ASSERT_TRUE(a.free(blocks[i], Arena::k_creator));
    ASSERT_TRUE(a.free(big, Arena::k_creator));
    ASSERT_TRUE(a.free(small, Arena::k_creator));
    EXPECT_EQ(a.used_bytes(), 0u);
    // All free again: one block as large as everything allocated before fits at the start.
    EXPECT_EQ(a.allocate(400 * P, Arena::k_creator), 0u);
}

TEST(Arena, LimitIsAClearErrorAndFreeingMakesRoom) {
    Arena a = make(8 * MiB);
    auto b = a.allocate(6 * MiB, Arena::k_creator);
    try {
        a.allocate(4 * MiB, Arena::k_creator);
        FAIL() << "allocation past the limit succeeded";
    } catch (ArenaFull const& e) {
        EXPECT_NE(std::string(e.what()).find("8 MiB"), std::string::npos) << e.what();
    }
    EXPECT_THROW(a.allocate(9 * MiB, Arena::k_creator), ArenaFull);
    ASSERT_TRUE(a.free(b, Arena::k_creator));
    EXPECT_NO_THROW(a.allocate(8 * MiB, Arena::k_creator));
}

TEST(Arena, FileGrowsOnlyAsPagesAreUsed) {
    Arena a = make(1024 * MiB);
    std::uint64_t before = a.file_bytes();
    EXPECT_LE(before, 2 * MiB);  // header and page table only (data starts at the next 2 MiB)
    EXPECT_LT(resident_bytes(a.fd()), 256 * 1024);  // and only what was written of them exists
    auto b = a.allocate(10 * MiB, Arena::k_creator);
    EXPECT_GE(a.file_bytes(), before + 10 * MiB);
    EXPECT_LT(a.file_bytes(), before + 20 * MiB);
    fill(a, b, 10 * MiB, 1);
    EXPECT_TRUE(a.contains(b, 10 * MiB));
    EXPECT_FALSE(a.contains(b, 900 * MiB));  // inside the limit but past the file: would fault
    EXPECT_FALSE(a.contains(a.limit_bytes(), 1));
    EXPECT_FALSE(a.contains(~std::uint64_t{0} - 4, 8));  // overflow
}

TEST(Arena, FreedPagesPastTheKeepLimitGoBackToTheSystem) {
    Arena a = make(256 * MiB, /*keep=*/0);
    auto b = a.allocate(32 * MiB, Arena::k_creator);
    fill(a, b, 32 * MiB, 9);
    std::uint64_t touched = resident_bytes(a.fd());
    EXPECT_GE(touched, 32 * MiB);
    ASSERT_TRUE(a.free(b, Arena::k_creator));
    EXPECT_LE(resident_bytes(a.fd()), touched - 30 * MiB);
    auto c = a.allocate(32 * MiB, Arena::k_creator);
    EXPECT_TRUE(all_equal(a, c, 32 * MiB, 0));  // a punched page reads as zeros
}

TEST(Arena, FreedPagesWithinTheKeepLimitStayForReuse) {
    Arena a = make(256 * MiB, /*keep=*/64 * MiB);
    auto b = a.allocate(32 * MiB, Arena::k_creator);
    fill(a, b, 32 * MiB, 9);
    std::uint64_t touched = resident_bytes(a.fd());
    ASSERT_TRUE(a.free(b, Arena::k_creator));
    EXPECT_GE(resident_bytes(a.fd()), touched);  // kept: the next block needs no page faults
}

TEST(Arena, AttachRefusesWhatIsNotAnArena) {
    int fd = ::memfd_create("x", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
    EXPECT_THROW(Arena::attach(Fd(::dup(fd))), std::runtime_error);  // not sealed
    ASSERT_EQ(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
    EXPECT_THROW(Arena::attach(Fd(fd)), std::runtime_error);  // no header
}

TEST(Arena, AdoptMovesOwnershipOnlyOfAWholeBlockOfTheSender) {
    Arena a = make(64 * MiB);
    std::uint32_t w = a.register_owner();
    EXPECT_NE(w, Arena::k_creator);
    auto b = a.allocate(3 * P, w);
    EXPECT_FALSE(a.adopt({b, 3 * P}, Arena::k_creator, 5));   // wrong sender
    EXPECT_FALSE(a.adopt({b + P, P}, w, Arena::k_creator));   // not a block start
    EXPECT_FALSE(a.adopt({b, 3 * P + 1}, w, Arena::k_creator));  // longer than the block
    EXPECT_FALSE(a.adopt({b, 0}, w, Arena::k_creator));
    EXPECT_FALSE(a.adopt({a.limit_bytes() + P, P}, w, Arena::k_creator));
    EXPECT_TRUE(a.adopt({b, 3 * P}, w, Arena::k_creator));
    EXPECT_EQ(a.reclaim(w), 0u);  // no longer the sender's
    EXPECT_FALSE(a.free(b, w));
    EXPECT_TRUE(a.free(b, Arena::k_creator));
}

TEST(Arena, ReclaimFreesWhatAKilledProcessHeld) {
    Arena a = make(256 * MiB);
    auto mine = a.allocate(2 * P, Arena::k_creator);
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    int owner_pipe[2];
    ASSERT_EQ(::pipe(owner_pipe), 0);
    int afd = a.fd();
    ChildGuard child(fork_child([&] {
        Arena c = Arena::attach(dup_fd(afd));
        std::uint32_t me = c.register_owner();
        for (int i = 0; i < 20; ++i) {
            auto off = c.allocate(static_cast<std::uint64_t>(i % 4 + 1) * P, me);
            std::memset(c.data() + off, 0xAB, P);
        }
        (void)!::write(owner_pipe[1], &me, sizeof me);
        (void)!::write(ready[1], "x", 1);
        ::pause();  // hold the blocks until killed
        return 0;
    }));
    ASSERT_TRUE(readable_within(ready[0], 10000));
    std::uint32_t child_owner = 0;
    ASSERT_EQ(::read(owner_pipe[0], &child_owner, sizeof child_owner), static_cast<ssize_t>(sizeof child_owner));
    EXPECT_EQ(a.used_bytes(), 2 * P + 50 * P);
    ::kill(child.pid(), SIGKILL);
    ASSERT_TRUE(child.wait(std::chrono::seconds(10)).signaled(SIGKILL));
    EXPECT_EQ(a.reclaim(child_owner), 50u);
    EXPECT_EQ(a.used_bytes(), 2 * P);
    EXPECT_TRUE(a.free(mine, Arena::k_creator));
    for (int fd : {ready[0], ready[1], owner_pipe[0], owner_pipe[1]}) ::close(fd);
}

TEST(Arena, ManyProcessesAllocateAndFreeWithoutOverlap) {
    Arena a = make(512 * MiB);
    int const n = 4;
    int const rounds = scaled(400);
    int afd = a.fd();
    std::vector<std::unique_ptr<ChildGuard>> kids;
    for (int k = 0; k < n; ++k) {
        kids.push_back(std::make_unique<ChildGuard>(fork_child([&, k] {
            Arena c = Arena::attach(dup_fd(afd));
            std::uint32_t me = c.register_owner();
            std::mt19937_64 rng(static_cast<std::uint64_t>(k) + 1);
            std::vector<std::pair<std::uint64_t, std::uint64_t>> held;
            auto const tag = static_cast<std::uint8_t>(me);
            for (int r = 0; r < rounds; ++r) {
                if (held.size() < 8 && (rng() % 3 != 0 || held.empty())) {
                    std::uint64_t len = (rng() % 6 + 1) * P - rng() % 100;
                    auto off = c.allocate(len, me);
                    std::memset(c.data() + off, tag, len);
                    held.emplace_back(off, len);
                } else {
                    auto i = rng() % held.size();
                    auto [off, len] = held[i];
                    // Nobody else wrote into our block while we held it.
                    auto const* p = reinterpret_cast<std::uint8_t const*>(c.data() + off);
                    if (!std::all_of(p, p + len, [tag](std::uint8_t b) { return b == tag; })) return 3;
                    if (!c.free(off, me)) return 4;
                    held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
                }
            }
            for (auto [off, len] : held)
                if (!c.free(off, me)) return 5;
            return 0;
        })));
    }
    for (auto& k : kids) {
        auto end = k->wait(std::chrono::seconds(60));
        EXPECT_TRUE(end.exited(0)) << end.str();
    }
    EXPECT_EQ(a.used_bytes(), 0u);
    EXPECT_EQ(a.allocate(P, Arena::k_creator), 0u);  // everything came back
}

TEST(Arena, ThreadsAllocateConcurrently) {
    Arena a = make(256 * MiB);
    std::atomic<int> bad{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t) {
        ts.emplace_back([&, t] {
            std::uint32_t me = a.register_owner();
            std::mt19937_64 rng(static_cast<std::uint64_t>(t) + 11);
            std::vector<std::uint64_t> held;
            for (int r = 0; r < 2000; ++r) {
                if (held.size() < 6 && rng() % 2) {
                    auto off = a.allocate((rng() % 3 + 1) * P, me);
                    *reinterpret_cast<std::uint32_t*>(a.data() + off) = me;
                    held.push_back(off);
                } else if (!held.empty()) {
                    auto off = held.back();
                    held.pop_back();
                    if (*reinterpret_cast<std::uint32_t*>(a.data() + off) != me) ++bad;
                    if (!a.free(off, me)) ++bad;
                }
            }
            for (auto off : held)
                if (!a.free(off, me)) ++bad;
        });
    }
    for (auto& t : ts) t.join();
    EXPECT_EQ(bad.load(), 0);
    EXPECT_EQ(a.used_bytes(), 0u);
}

TEST(Arena, ResidentFreePagesStayWithinTheKeepLimitOverManyCycles) {
    // Blocks of changing sizes and places, freed each round: what stays resident afterwards is
    // at most the keep limit, however many rounds ran (the count of kept pages is exact).
    Arena a = make(1024 * MiB, /*keep=*/32 * MiB);
    std::mt19937_64 rng(7);
    for (int round = 0; round < 40; ++round) {
        std::vector<std::uint64_t> blocks;
        for (int i = 0; i < 4; ++i) {
            std::uint64_t len = (rng() % 160 + 16) * P;
            blocks.push_back(a.allocate(len, Arena::k_creator));
            fill(a, blocks.back(), len, 1);
        }
        for (auto b : blocks) ASSERT_TRUE(a.free(b, Arena::k_creator));
        ASSERT_LE(resident_bytes(a.fd()), 32 * MiB + 2 * MiB) << "round " << round;
    }
    EXPECT_EQ(a.used_bytes(), 0u);
}

// ---------------------------------------------------------------- huge pages

namespace {

/// Whether this kernel collapses shared memory on request: MADV_COLLAPSE is Linux 6.1, and
/// shmem_enabled=deny (or force) is the only setting that refuses it.
bool kernel_collapses_shmem() {
    struct utsname u{};
    if (::uname(&u) != 0) return false;
    int major = 0, minor = 0;
    if (std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
    if (major < 6 || (major == 6 && minor < 1)) return false;
    FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "r");
    if (!f) return false;
    char line[256] = {};
    bool const read = std::fgets(line, sizeof line, f) != nullptr;
    std::fclose(f);
    return read && std::strstr(line, "[deny]") == nullptr;
}

/// ShmemPmdMapped of this process, in kB (shared memory it maps with whole huge pages).
long shmem_pmd_mapped_kb() {
    FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "ShmemPmdMapped: %ld kB", &kb) == 1) break;
    std::fclose(f);
    return kb;
}

}  // namespace

TEST(Arena, EveryProcessMapsItCongruentToTheFileModuloTheHugePage) {
    Arena a = make(256 * MiB);
    std::uint64_t const huge = Arena::huge_page_bytes();
    ASSERT_GE(huge, 4096u);
    ASSERT_EQ(huge & (huge - 1), 0u);
    auto const mine = reinterpret_cast<std::uintptr_t>(a.data()) % huge;
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    int afd = a.fd();
    ChildGuard child(fork_child([&] {
        Arena c = Arena::attach(dup_fd(afd));
        std::uintptr_t theirs = reinterpret_cast<std::uintptr_t>(c.data()) % huge;
        return ::write(fds[1], &theirs, sizeof theirs) == sizeof theirs ? 0 : 1;
    }));
    ASSERT_TRUE(readable_within(fds[0], 10000));
    std::uintptr_t theirs = 1;
    ASSERT_EQ(::read(fds[0], &theirs, sizeof theirs), static_cast<ssize_t>(sizeof theirs));
    EXPECT_EQ(theirs, mine);
    EXPECT_TRUE(child.wait(std::chrono::seconds(10)).exited(0));
    for (int fd : fds) ::close(fd);
}

TEST(Arena, CollapseKeepsTheBytesAndOtherProcessesMapThemWhole) {
    Arena a = make(256 * MiB);
    std::uint64_t const huge = Arena::huge_page_bytes();
    std::uint64_t const n = 4 * huge + 3 * P;  // whole huge pages inside, ragged edges
    auto off = a.allocate(n, Arena::k_creator);
    auto* words = reinterpret_cast<std::uint64_t*>(a.data() + off);
    for (std::uint64_t i = 0; i < n / 8; ++i) words[i] = i * 0x9E3779B97F4A7C15ULL;
    EXPECT_EQ(a.collapse(off, 3 * P), 0u);               // no whole huge page inside
    EXPECT_EQ(a.collapse(a.limit_bytes(), huge), 0u);     // outside the arena
    std::uint64_t const done = a.collapse(off, n);
    bool const supported = kernel_collapses_shmem();
    if (supported) {
        EXPECT_GE(done, 3 * huge);
        EXPECT_LE(done, n);
        EXPECT_EQ(done % huge, 0u);
    } else {
        EXPECT_EQ(done, 0u);
    }
    for (std::uint64_t i = 0; i < n / 8; ++i) ASSERT_EQ(words[i], i * 0x9E3779B97F4A7C15ULL) << i;
    int afd = a.fd();
    ChildGuard child(fork_child([&] {
        Arena c = Arena::attach(dup_fd(afd));
        auto const* w = reinterpret_cast<std::uint64_t const*>(c.data() + off);
        std::uint64_t sum = 0, expect = 0;
        for (std::uint64_t i = 0; i < n / 8; ++i) {
            sum += w[i];
            expect += i * 0x9E3779B97F4A7C15ULL;
        }
        if (sum != expect) return 1;
        long const pmd = shmem_pmd_mapped_kb();
        if (supported && pmd < static_cast<long>(3 * huge / 1024)) return 2;
        return 0;
    }));
    auto st = child.wait(std::chrono::seconds(20));
    EXPECT_TRUE(st.exited(0)) << "1: bytes differ in the other process; 2: it did not map huge pages";
    EXPECT_TRUE(a.free(off, Arena::k_creator));
}

TEST(Arena, AnAttachedArenaSeesSharedDataThroughAReadOnlyMapping) {
    Arena a = make(64 * MiB);
    auto off = a.allocate(P, Arena::k_creator);
    fill(a, off, P, 0x11);
    Arena c = Arena::attach(dup_fd(a.fd()));
    ASSERT_NE(c.read_only_data(), c.data());
    EXPECT_EQ(a.read_only_data(), a.data());  // the creator has one mapping
    EXPECT_EQ(std::to_integer<int>(c.read_only_data()[off]), 0x11);
    fill(a, off, P, 0x22);  // the same pages: a change shows through both mappings
    EXPECT_EQ(std::to_integer<int>(c.read_only_data()[off + P - 1]), 0x22);
    EXPECT_EQ(c.offset_of(c.read_only_data() + off), static_cast<std::int64_t>(off));
    EXPECT_EQ(c.offset_of(c.data() + off), static_cast<std::int64_t>(off));
    // A write through the read-only mapping faults in the process that makes it.
    ChildGuard child(fork_child([&] {
        const_cast<std::byte*>(c.read_only_data())[off] = std::byte{0x33};
        return 0;
    }));
    ChildEnd end = child.wait(std::chrono::seconds(20));
    EXPECT_TRUE(end.finished && !end.exited(0)) << end.str();
    EXPECT_TRUE(all_equal(a, off, P, 0x22));
}

TEST(ArenaBlock, AForkedCopyDoesNotFreeTheParentsBlock) {
    // A fork()ed copy inherits the parent's blocks with everything else; when it drops them
    // (its objects are destroyed, it exits normally) the parent's data must stay allocated:
    // freed, the parent's next allocation would reuse the pages under it.
    auto a = std::make_shared<Arena>(make(256 * MiB));
    ArenaBlock block(a, {a->allocate(8 * P, Arena::k_creator), 8 * P}, Arena::k_creator);
    std::memset(block.data(), 7, 8 * P);
    std::uint64_t const used = a->used_bytes();
    ChildGuard child(fork_child([&] {
        block.reset();  // what dropping the inherited object does
        ArenaBlock moved(std::move(block));
        return 0;
    }));
    ASSERT_TRUE(child.wait(std::chrono::seconds(10)).exited(0));
    EXPECT_EQ(a->used_bytes(), used) << "the copy freed the parent's block";
    ArenaBlock next(a, {a->allocate(8 * P, Arena::k_creator), 8 * P}, Arena::k_creator);
    EXPECT_NE(next.ref().offset, block.ref().offset);
    std::memset(next.data(), 9, 8 * P);
    EXPECT_EQ(static_cast<int>(block.data()[0]), 7);
    EXPECT_EQ(static_cast<int>(block.data()[8 * P - 1]), 7);
}

TEST(Arena, APrivateViewReadsTheBlockAndKeepsItsWritesToItself) {
    Arena a = make(64 * MiB);
    auto off = a.allocate(3 * P, Arena::k_creator);
    fill(a, off, 3 * P, 0x11);
    Arena c = Arena::attach(dup_fd(a.fd()));
    ArenaPrivateView v = c.private_view(off, 3 * P);
    ArenaPrivateView w = c.private_view(off, 3 * P);
    ASSERT_NE(v.data(), nullptr);
    EXPECT_EQ(std::to_integer<int>(v.data()[0]), 0x11);
    EXPECT_EQ(std::to_integer<int>(v.data()[3 * P - 1]), 0x11);
    v.data()[P] = std::byte{0x22};  // copies that page for v alone
    EXPECT_EQ(std::to_integer<int>(v.data()[P]), 0x22);
    EXPECT_EQ(std::to_integer<int>(w.data()[P]), 0x11);
    EXPECT_TRUE(all_equal(a, off, 3 * P, 0x11));
    // Pages v never wrote still show the arena's current bytes.
    fill(a, off, P, 0x33);
    EXPECT_EQ(std::to_integer<int>(v.data()[0]), 0x33);
    // A range that does not start on a page maps the page that holds it.
    ArenaPrivateView mid = c.private_view(off + 100, 10);
    EXPECT_EQ(std::to_integer<int>(mid.data()[0]), 0x33);
    mid.data()[0] = std::byte{0x44};
    EXPECT_EQ(std::to_integer<int>(a.data()[off + 100]), 0x33);
    ArenaPrivateView moved(std::move(mid));
    EXPECT_EQ(mid.data(), nullptr);
    EXPECT_EQ(std::to_integer<int>(moved.data()[0]), 0x44);
    EXPECT_EQ(c.private_view(off, 0).data(), nullptr);
}

TEST(Arena, APrivateViewChecksItsRangeLikeAnyReference) {
    Arena a = make(64 * MiB);
    auto off = a.allocate(P, Arena::k_creator);
    EXPECT_THROW(a.private_view(a.limit_bytes(), 1), std::out_of_range);
    EXPECT_THROW(a.private_view(off, a.limit_bytes()), std::out_of_range);
    EXPECT_THROW(a.private_view(~std::uint64_t{0} - 10, 100), std::out_of_range);   // wraps
    EXPECT_THROW(a.private_view(a.file_bytes() + P, P), std::out_of_range);      // past the file
    EXPECT_NO_THROW(a.private_view(off, P));
}

TEST(Arena, BlockCountCountsBlocksNotPages) {
    Arena a = make(64 * MiB);
    EXPECT_EQ(a.block_count(), 0u);
    auto x = a.allocate(5 * P, Arena::k_creator);
    auto y = a.allocate(1, 7);
    EXPECT_EQ(a.block_count(), 2u);
    EXPECT_TRUE(a.free(x, Arena::k_creator));
    EXPECT_EQ(a.block_count(), 1u);
    EXPECT_TRUE(a.free(y, 7));
    EXPECT_EQ(a.block_count(), 0u);
}
