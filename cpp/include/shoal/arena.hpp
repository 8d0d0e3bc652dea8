// arena.hpp — the shared-memory arena: large buffers travel between processes by reference.
//
// One arena per driver process, shared by all its executors and every worker they fork. It
// is one memfd (no name in /dev/shm: nothing is left behind when a process is killed),
// mapped whole in every process, laid out as
//
//   [ header | page table: one 64-bit word per page | data: pages of k_page bytes ]
//
// The data region is reserved up to the limit but the file grows in segments as pages are
// first used, so untouched pages cost nothing. A block is a run of pages; its page-table words
// name the owner (a process's id in the arena) and, in the first word, the run's length.
//
// Allocation claims the words of a free run with compare-and-swap, one by one, and rolls back
// if another process got there first: no lock anywhere in shared memory, so a process that
// dies mid-allocation leaves only words marked with its id, which reclaim() frees. Ownership
// of a block moves with adopt() (a worker's result block becomes the driver's when its frame
// is read). Frames carry (offset, length) references into the data region; a receiver checks
// them before making a view (frames from another process are untrusted).
#pragma once

#include "shoal/sys.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <unistd.h>
#include <utility>
#include <stdexcept>

namespace shoal {

/// A buffer in the arena: `length` bytes at `offset` from the start of the data region.
struct ArenaRef {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
};

/// A private (copy-on-write) mapping of part of the arena: reads share the arena's pages, the
/// first write to a page gives this mapping its own copy of that page only, and nothing written
/// through it reaches the arena or any other process. Unmapped when destroyed. Move-only.
class ArenaPrivateView {
public:
    ArenaPrivateView() noexcept = default;
    ArenaPrivateView(ArenaPrivateView&& o) noexcept
        : m_map(std::exchange(o.m_map, nullptr)), m_map_bytes(std::exchange(o.m_map_bytes, 0)),
          m_data(std::exchange(o.m_data, nullptr)) {}
    ArenaPrivateView& operator=(ArenaPrivateView&& o) noexcept {
        if (this != &o) {
            reset();
            m_map = std::exchange(o.m_map, nullptr);
            m_map_bytes = std::exchange(o.m_map_bytes, 0);
            m_data = std::exchange(o.m_data, nullptr);
        }
        return *this;
    }
    ArenaPrivateView(ArenaPrivateView const&) = delete;
    ArenaPrivateView& operator=(ArenaPrivateView const&) = delete;
    ~ArenaPrivateView() { reset(); }

    /// The first byte of the viewed range (writable); nullptr for an empty view.
    std::byte* data() const noexcept { return m_data; }
    void reset() noexcept;

private:
    friend class Arena;
    void* m_map = nullptr;        // the page-aligned mapping
    std::size_t m_map_bytes = 0;
    std::byte* m_data = nullptr;  // inside m_map: the range may start mid-page
};

/// The arena cannot hold the block: it would pass the configured limit.
class ArenaFull : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class Arena {
public:
    static constexpr std::uint64_t k_page = 64 * 1024;  ///< block granularity (and alignment)
    static constexpr std::uint32_t k_creator = 1;       ///< owner id of the creating process

    struct Options {
        std::uint64_t limit_bytes = 0;                ///< data region size; 0: physical memory
        std::uint64_t keep_free_bytes = 256u << 20;   ///< freed pages kept resident for reuse
        std::uint64_t grow_bytes = 64u << 20;         ///< the file grows in segments this large
    };

    /// Creates an arena (the driver). Throws std::system_error.
    static Arena create(Options options);
    /// Maps an arena created by another process (a worker), twice: read-write, and read-only
    /// for memory the worker must not change (see read_only_data). Throws on a bad header.
    static Arena attach(Fd fd);

    Arena() noexcept = default;
    Arena(Arena&& o) noexcept;
    Arena& operator=(Arena&& o) noexcept;
    ~Arena();

    int fd() const noexcept { return m_fd.get(); }
    std::byte* data() const noexcept { return m_data; }
    /// The data region through a read-only mapping of the same pages (an attached arena), so
    /// that a write through a view of shared data faults in the process that made it instead
    /// of changing it for every process; data() where there is no such mapping (the creator).
    std::byte const* read_only_data() const noexcept { return m_ro_data ? m_ro_data : m_data; }
    std::uint64_t limit_bytes() const noexcept { return m_limit_pages * k_page; }

    /// A fresh owner id for a process using the arena (the creator is k_creator).
    std::uint32_t register_owner() noexcept;

    /// Allocates a block of at least `bytes` bytes (>= 1) for `owner`; returns its offset.
    /// Throws ArenaFull past the limit, std::system_error if the file cannot grow.
    std::uint64_t allocate(std::uint64_t bytes, std::uint32_t owner);
    /// Frees the block starting at `offset` if `owner` owns it; false otherwise (nothing changes).
    bool free(std::uint64_t offset, std::uint32_t owner) noexcept;
    /// Makes the block at `ref.offset`, owned by `from` and at least `ref.length` bytes long,
    /// the block of `to`. False (nothing changes) if `ref` is not such a block.
    bool adopt(ArenaRef ref, std::uint32_t from, std::uint32_t to) noexcept;
    /// Frees every page `owner` holds (the process died); returns the number of pages.
    std::uint64_t reclaim(std::uint32_t owner) noexcept;

    /// True when [offset, offset + length) lies in the part of the data region that exists
    /// (so a view of it cannot fault). Any reference from a frame is checked with this.
    bool contains(std::uint64_t offset, std::uint64_t length) noexcept;
    /// A copy-on-write view of [offset, offset + length): a private mapping of those pages of the
    /// arena's file (the range need not start on a page: the mapping starts on the page that
    /// holds it). Checked like any reference from a frame: throws std::out_of_range if the range
    /// is not inside the file, std::system_error if mmap fails. Any thread; never blocks.
    ArenaPrivateView private_view(std::uint64_t offset, std::uint64_t length);
    /// Blocks in use, counted in the page table up to the highest page ever claimed (O(pages);
    /// approximate while other processes allocate). For statistics and tests.
    std::uint64_t block_count() const noexcept;
    /// The offset of `p` in the data region if it points into it (through either mapping),
    /// else -1.
    std::int64_t offset_of(void const* p) const noexcept;

    /// Asks the kernel to back the huge-page-aligned part of [offset, offset + length) with
    /// huge pages (MADV_COLLAPSE, Linux >= 6.1; shared memory takes them on request even
    /// where shmem_enabled=never). Every process maps the arena at an address congruent to
    /// its file offset modulo the huge page size, so each of them then maps those pages
    /// whole. Best effort: returns the bytes collapsed, 0 when the kernel declines.
    std::uint64_t collapse(std::uint64_t offset, std::uint64_t length) noexcept;
    /// The huge page size the mapping is aligned to (hpage_pmd_size; 2 MiB if unknown).
    static std::uint64_t huge_page_bytes() noexcept;

    /// Pages in use (approximate while other processes allocate).
    std::uint64_t used_bytes() const noexcept;
    /// Bytes of file that exist (grown so far).
    std::uint64_t file_bytes() const noexcept;

private:
    struct Header;
    static Arena map(Fd fd, std::uint64_t data_offset, std::uint64_t limit_pages, std::uint64_t grow_pages,
                     std::uint64_t keep_free_pages, std::uint64_t file_bytes);
    Header* header() const noexcept { return reinterpret_cast<Header*>(m_base); }
    std::atomic<std::uint64_t>& word(std::uint64_t page) const noexcept;
    void grow_to(std::uint64_t end_page);
    bool covered(std::uint64_t end_byte) noexcept;
    void release_pages(std::uint64_t first, std::uint64_t count) noexcept;

    Fd m_fd;
    std::byte* m_base = nullptr;    // the whole mapping (aligned to huge_page_bytes())
    std::size_t m_map_bytes = 0;
    std::byte* m_data = nullptr;    // start of the data region
    std::byte* m_ro_base = nullptr; // the read-only mapping of an attached arena (same size)
    std::byte const* m_ro_data = nullptr;
    std::uint64_t m_data_offset = 0;
    std::uint64_t m_limit_pages = 0;
    std::uint64_t m_grow_pages = 1;
    std::uint64_t m_keep_free_pages = 0;
    std::atomic<std::uint64_t> m_known_file{0};  // a lower bound of the file size (it never shrinks)
};

/// Owns one block of an arena on behalf of `owner` and frees it when destroyed, unless
/// release()d (the block was handed to another process). Move-only.
///
/// Only the process that made it frees it: a fork()ed copy of that process inherits the object
/// and the shared mapping, but the block is still the parent's (it may still be reading it),
/// so the copy's destructor leaves it alone. Freeing it there let the parent's next allocation
/// reuse the pages under data the parent still held.
class ArenaBlock {
public:
    ArenaBlock() noexcept = default;
    ArenaBlock(std::shared_ptr<Arena> arena, ArenaRef ref, std::uint32_t owner) noexcept
        : m_arena(std::move(arena)), m_ref(ref), m_owner(owner), m_pid(self_pid()) {}
    ArenaBlock(ArenaBlock&& o) noexcept
        : m_arena(std::move(o.m_arena)), m_ref(o.m_ref), m_owner(std::exchange(o.m_owner, 0)), m_pid(o.m_pid) {}
    ArenaBlock& operator=(ArenaBlock&& o) noexcept {
        if (this != &o) {
            reset();
            m_arena = std::move(o.m_arena);
            m_ref = o.m_ref;
            m_owner = std::exchange(o.m_owner, 0);
            m_pid = o.m_pid;
        }
        return *this;
    }
    ArenaBlock(ArenaBlock const&) = delete;
    ArenaBlock& operator=(ArenaBlock const&) = delete;
    ~ArenaBlock() { reset(); }

    ArenaRef ref() const noexcept { return m_ref; }
    std::byte* data() const noexcept { return m_arena ? m_arena->data() + m_ref.offset : nullptr; }
    bool owned() const noexcept { return m_owner != 0; }
    /// Gives up ownership without freeing: the block now belongs to whoever adopts it.
    void release() noexcept { m_owner = 0; }
    void reset() noexcept {
        if (m_owner != 0 && m_arena && self_pid() == m_pid) m_arena->free(m_ref.offset, m_owner);
        m_owner = 0;
    }

private:
    std::shared_ptr<Arena> m_arena;
    ArenaRef m_ref{};
    std::uint32_t m_owner = 0;
    pid_t m_pid = 0;  // the process that may free it
};

}  // namespace shoal
