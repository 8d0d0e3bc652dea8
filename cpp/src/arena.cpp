// arena.cpp — the shared-memory arena: lock-free page claims in a shared page table.
#include "shoal/arena.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdint>
#include <fcntl.h>
#include <algorithm>
#include <iterator>
#include <new>
#include <vector>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shoal {

// Lives at the start of the memfd. The first block of fields is written once by the creator;
// the atomics are shared by every process (each on its own cache line).
struct Arena::Header {
    std::uint64_t magic;
    std::uint64_t page;
    std::uint64_t limit_pages;
    std::uint64_t data_offset;
    std::uint64_t grow_pages;
    std::uint64_t keep_free_pages;
    alignas(64) std::atomic<std::uint64_t> grown_pages;   // the file covers data pages [0, grown)
    alignas(64) std::atomic<std::uint64_t> high_pages;    // no page at or past this was ever claimed
    alignas(64) std::atomic<std::uint64_t> hint;          // where a search for free pages starts
    alignas(64) std::atomic<std::uint64_t> used_pages;
    alignas(64) std::atomic<std::int64_t> resident_free;  // freed pages kept for reuse
    alignas(64) std::atomic<std::uint32_t> next_owner;
};

namespace {
constexpr std::uint64_t k_magic = 0x616e657261686873ULL;  // "shharena"
constexpr std::uint64_t k_header_bytes = 4096;
constexpr std::uint64_t k_max_run = (std::uint64_t{1} << 31) - 1;
static_assert(sizeof(std::atomic<std::uint64_t>) == 8);

// A page-table word: 0 free; else the owner in the high half and, in the first page of a
// block, the block's length in pages and bit 0 set.
constexpr std::uint64_t start_word(std::uint32_t owner, std::uint64_t pages) {
    return (std::uint64_t{owner} << 32) | (pages << 1) | 1;
}
constexpr std::uint64_t cont_word(std::uint32_t owner) { return std::uint64_t{owner} << 32; }
// A free page whose memory is still resident (freed within the keep limit): reused first.
constexpr std::uint64_t k_kept = 2;
constexpr bool is_free(std::uint64_t w) { return w == 0 || w == k_kept; }
constexpr std::uint32_t owner_of(std::uint64_t w) { return static_cast<std::uint32_t>(w >> 32); }
constexpr bool is_start(std::uint64_t w) { return (w & 1) != 0; }
constexpr std::uint64_t run_of(std::uint64_t w) { return (w & 0xffffffffULL) >> 1; }

std::uint64_t round_up(std::uint64_t n, std::uint64_t a) { return (n + a - 1) / a * a; }

// The data region starts on a 2 MiB boundary of the file (and so of every mapping, see
// map_aligned): a block at a 2 MiB-aligned offset can be backed by huge pages to its edges.
constexpr std::uint64_t k_data_align = std::uint64_t{2} << 20;

std::uint64_t data_offset_for(std::uint64_t limit_pages) {
    return round_up(k_header_bytes + limit_pages * 8, k_data_align);
}

void fetch_max(std::atomic<std::uint64_t>& a, std::uint64_t v) noexcept {
    std::uint64_t cur = a.load(std::memory_order_relaxed);
    while (cur < v && !a.compare_exchange_weak(cur, v, std::memory_order_acq_rel)) {}
}

void fetch_min(std::atomic<std::uint64_t>& a, std::uint64_t v) noexcept {
    std::uint64_t cur = a.load(std::memory_order_relaxed);
    while (cur > v && !a.compare_exchange_weak(cur, v, std::memory_order_acq_rel)) {}
}

// A size for a message, in the largest unit it reaches: "64 KiB", "1.5 MiB", "8 GiB" (a 64 KiB
// limit is not "0 MiB").
std::string size_text(std::uint64_t bytes) {
    static char const* const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    std::size_t u = 0;
    std::uint64_t unit = 1;
    while (u + 1 < std::size(units) && bytes >= unit * 1024) {
        unit *= 1024;
        ++u;
    }
    if (bytes % unit == 0) return std::to_string(bytes / unit) + " " + units[u];
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f %s", static_cast<double>(bytes) / static_cast<double>(unit), units[u]);
    return buf;
}

#ifndef MADV_COLLAPSE
constexpr int MADV_COLLAPSE = 25;  // Linux 6.1; older C headers lack the name
#endif

// Maps `bytes` of `fd` from offset 0 at an address aligned to `align`: a file page at offset
// o then sits at an address congruent to o, which a huge page needs to be mapped whole.
void* map_aligned(int fd, std::size_t bytes, std::size_t align, int prot = PROT_READ | PROT_WRITE) {
    void* r = ::mmap(nullptr, bytes + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) return MAP_FAILED;
    auto const start = reinterpret_cast<std::uintptr_t>(r);
    auto const at = (start + align - 1) / align * align;
    void* p = ::mmap(reinterpret_cast<void*>(at), bytes, prot, MAP_SHARED | MAP_NORESERVE | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) {
        int const e = errno;
        ::munmap(r, bytes + align);
        errno = e;
        return MAP_FAILED;
    }
    if (at > start) ::munmap(r, at - start);                       // the slack before
    if (start + align > at) ::munmap(reinterpret_cast<void*>(at + bytes), start + align - at);  // and after
    return p;
}
}  // namespace

std::uint64_t Arena::huge_page_bytes() noexcept {
    static std::uint64_t const bytes = [] {
        std::uint64_t n = 0;
        if (FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r")) {
            unsigned long long v = 0;
            if (std::fscanf(f, "%llu", &v) == 1) n = v;
            std::fclose(f);
        }
        // A power of two between a page and 1 GiB, else the x86-64 / arm64 (4K pages) size.
        bool const sane = n >= 4096 && n <= (std::uint64_t{1} << 30) && (n & (n - 1)) == 0;
        return sane ? n : std::uint64_t{2} << 20;
    }();
    return bytes;
}

std::atomic<std::uint64_t>& Arena::word(std::uint64_t page) const noexcept {
    return reinterpret_cast<std::atomic<std::uint64_t>*>(m_base + k_header_bytes)[page];
}

Arena Arena::map(Fd fd, std::uint64_t data_offset, std::uint64_t limit_pages, std::uint64_t grow_pages,
                 std::uint64_t keep_free_pages, std::uint64_t file_bytes) {
    // The whole limit is mapped (address space only); pages exist as the file grows.
    std::size_t const map_bytes = data_offset + limit_pages * k_page;
    void* p = map_aligned(fd.get(), map_bytes, huge_page_bytes());
    if (p == MAP_FAILED) throw_errno("mmap(arena)");
    Arena a;
    a.m_fd = std::move(fd);
    a.m_base = static_cast<std::byte*>(p);
    a.m_map_bytes = map_bytes;
    a.m_data = a.m_base + data_offset;
    a.m_data_offset = data_offset;
    a.m_limit_pages = limit_pages;
    a.m_grow_pages = grow_pages;
    a.m_keep_free_pages = keep_free_pages;
    a.m_known_file.store(file_bytes);
    return a;
}

Arena Arena::create(Options options) {
    std::uint64_t limit = options.limit_bytes;
    if (limit == 0) {
        long pages = ::sysconf(_SC_PHYS_PAGES);
        long size = ::sysconf(_SC_PAGESIZE);
        limit = pages > 0 && size > 0 ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(size)
                                      : std::uint64_t{1} << 32;
    }
    std::uint64_t const limit_pages = std::max<std::uint64_t>(1, round_up(limit, k_page) / k_page);
    std::uint64_t const data_offset = data_offset_for(limit_pages);

    Fd fd(::memfd_create("shoal-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) throw_errno("memfd_create");
    if (::ftruncate(fd.get(), static_cast<off_t>(data_offset)) != 0) throw_errno("ftruncate");
    // It may grow, never shrink: a peer cannot pull pages from under a live view.
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL) != 0) throw_errno("fcntl(F_ADD_SEALS)");
    Arena a = map(std::move(fd), data_offset, limit_pages, std::max<std::uint64_t>(1, options.grow_bytes / k_page),
                  options.keep_free_bytes / k_page, data_offset);
    auto* h = new (a.m_base) Header{};
    h->magic = k_magic;
    h->page = k_page;
    h->limit_pages = limit_pages;
    h->data_offset = data_offset;
    h->grow_pages = a.m_grow_pages;
    h->keep_free_pages = a.m_keep_free_pages;
    h->next_owner.store(k_creator + 1);
    return a;
}

Arena Arena::attach(Fd fd) {
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0) throw_errno("fstat");
    int seals = ::fcntl(fd.get(), F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        throw std::runtime_error("Arena::attach: not a memfd sealed against shrinking");
    if (st.st_size < static_cast<off_t>(k_header_bytes)) throw std::runtime_error("Arena::attach: too small");
    void* hp = ::mmap(nullptr, k_header_bytes, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (hp == MAP_FAILED) throw_errno("mmap(arena header)");
    Header const* h = static_cast<Header const*>(hp);
    std::uint64_t const magic = h->magic, page = h->page, limit_pages = h->limit_pages;
    std::uint64_t const data_offset = h->data_offset, grow = h->grow_pages, keep = h->keep_free_pages;
    ::munmap(hp, k_header_bytes);
    if (magic != k_magic || page != k_page || limit_pages == 0 || limit_pages > (std::uint64_t{1} << 36) ||
        data_offset != data_offset_for(limit_pages) || grow == 0)
        throw std::runtime_error("Arena::attach: not a shoal arena");
    Arena a = map(std::move(fd), data_offset, limit_pages, grow, keep, static_cast<std::uint64_t>(st.st_size));
    void* ro = map_aligned(a.m_fd.get(), a.m_map_bytes, huge_page_bytes(), PROT_READ);
    if (ro == MAP_FAILED) throw_errno("mmap(arena, read-only)");
    a.m_ro_base = static_cast<std::byte*>(ro);
    a.m_ro_data = a.m_ro_base + data_offset;
    return a;
}

Arena::Arena(Arena&& o) noexcept { *this = std::move(o); }

Arena& Arena::operator=(Arena&& o) noexcept {
    if (this != &o) {
        if (m_base) ::munmap(m_base, m_map_bytes);
        if (m_ro_base) ::munmap(m_ro_base, m_map_bytes);
        m_ro_base = std::exchange(o.m_ro_base, nullptr);
        m_ro_data = std::exchange(o.m_ro_data, nullptr);
        m_fd = std::move(o.m_fd);
        m_base = std::exchange(o.m_base, nullptr);
        m_map_bytes = std::exchange(o.m_map_bytes, 0);
        m_data = std::exchange(o.m_data, nullptr);
        m_data_offset = o.m_data_offset;
        m_limit_pages = std::exchange(o.m_limit_pages, 0);
        m_grow_pages = o.m_grow_pages;
        m_keep_free_pages = o.m_keep_free_pages;
        m_known_file.store(o.m_known_file.load());
    }
    return *this;
}

Arena::~Arena() {
    if (m_base) ::munmap(m_base, m_map_bytes);
    if (m_ro_base) ::munmap(m_ro_base, m_map_bytes);
}

std::uint32_t Arena::register_owner() noexcept {
    return header()->next_owner.fetch_add(1, std::memory_order_relaxed);
}

bool Arena::covered(std::uint64_t end_byte) noexcept {
    std::uint64_t const need = m_data_offset + end_byte;
    if (need <= m_known_file.load(std::memory_order_relaxed)) return true;
    struct stat st{};
    if (::fstat(m_fd.get(), &st) != 0) return false;
    auto size = static_cast<std::uint64_t>(st.st_size);
    std::uint64_t cur = m_known_file.load(std::memory_order_relaxed);
    while (cur < size && !m_known_file.compare_exchange_weak(cur, size, std::memory_order_relaxed)) {}
    return need <= size;
}

void Arena::grow_to(std::uint64_t end_page) {
    if (!covered(end_page * k_page)) {
        std::uint64_t const pages = std::min(m_limit_pages, round_up(end_page, m_grow_pages));
        auto const size = static_cast<off_t>(m_data_offset + pages * k_page);
        // Another process may have grown it further meanwhile: the shrink seal refuses a
        // smaller size, which is fine as long as our pages are covered.
        if (::ftruncate(m_fd.get(), size) != 0 && !covered(end_page * k_page)) throw_errno("ftruncate(arena)");
        covered(end_page * k_page);
    }
    fetch_max(header()->grown_pages, end_page);
}

std::uint64_t Arena::allocate(std::uint64_t bytes, std::uint32_t owner) {
    SHOAL_ASSERT(owner != 0, "owner 0 means free");
    std::uint64_t const k = std::max<std::uint64_t>(1, (bytes + k_page - 1) / k_page);
    if (bytes > m_limit_pages * k_page || k > k_max_run)
        throw ArenaFull("shoal arena: a block of " + size_text(bytes) + " does not fit in the arena limit of " +
                        size_text(m_limit_pages * k_page) + " (raise it with shoal.set_arena_limit)");
    Header* h = header();
    std::uint64_t const from = std::min(h->hint.load(std::memory_order_acquire), m_limit_pages);
    // First fit from the hint; if nothing fits past it, once more from the start (the hint
    // is only a guess: frees and allocations in other processes move it).
    for (std::uint64_t begin : {from, std::uint64_t{0}}) {
        std::uint64_t i = begin;
        while (i + k <= m_limit_pages) {
            std::uint64_t j = i;
            for (; j < i + k; ++j) {
                std::uint64_t w = word(j).load(std::memory_order_acquire);
                if (!is_free(w)) break;
            }
            if (j < i + k) {  // used page at j: skip the block there
                std::uint64_t w = word(j).load(std::memory_order_relaxed);
                std::uint64_t skip = is_start(w) ? run_of(w) : 1;
                i = j + std::max<std::uint64_t>(1, std::min(skip, m_limit_pages - j));
                continue;
            }
            fetch_max(h->high_pages, i + k);  // before claiming: reclaim() must see our words
            std::uint64_t c = i;
            std::vector<bool> kept(k);  // what each claimed page was, to give it back as it was
            for (; c < i + k; ++c) {
                std::uint64_t expected = word(c).load(std::memory_order_acquire);
                if (!is_free(expected)) break;
                std::uint64_t desired = c == i ? start_word(owner, k) : cont_word(owner);
                if (!word(c).compare_exchange_strong(expected, desired, std::memory_order_acq_rel)) break;
                kept[c - i] = expected == k_kept;
            }
            if (c < i + k) {  // another process took page c first: give back ours, go on
                for (std::uint64_t q = i; q < c; ++q)
                    word(q).store(kept[q - i] ? k_kept : 0, std::memory_order_release);
                i = c + 1;
                continue;
            }
            try {
                grow_to(i + k);
            } catch (...) {
                for (std::uint64_t q = i + k; q-- > i;)
                    word(q).store(kept[q - i] ? k_kept : 0, std::memory_order_release);
                throw;
            }
            h->used_pages.fetch_add(k, std::memory_order_relaxed);
            auto const reused = static_cast<std::int64_t>(std::count(kept.begin(), kept.end(), true));
            if (reused) h->resident_free.fetch_sub(reused, std::memory_order_relaxed);
            // Past the hint only when the block starts at it: the pages before it are in use.
            std::uint64_t expected_hint = i;
            if (i == from) h->hint.compare_exchange_strong(expected_hint, i + k, std::memory_order_acq_rel);
            return i * k_page;
        }
        if (begin == 0) break;
    }
    throw ArenaFull("shoal arena: no room for " + size_text(bytes) + " more; " + size_text(used_bytes()) +
                    " of the limit of " + size_text(m_limit_pages * k_page) +
                    " is in use (raise it with shoal.set_arena_limit, or drop shared handles and results)");
}

void Arena::release_pages(std::uint64_t first, std::uint64_t count) noexcept {
    Header* h = header();
    bool keep = h->resident_free.load(std::memory_order_relaxed) + static_cast<std::int64_t>(count) <=
                static_cast<std::int64_t>(m_keep_free_pages);
    if (!keep) {
        // Give the memory back to the system; the pages read as zeros when used again.
        ::fallocate(m_fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>(m_data_offset + first * k_page), static_cast<off_t>(count * k_page));
    } else {
        h->resident_free.fetch_add(static_cast<std::int64_t>(count), std::memory_order_relaxed);
    }
    // Marked as kept or not: the count of resident free pages stays exact as they are reused.
    for (std::uint64_t q = first + count; q-- > first;) word(q).store(keep ? k_kept : 0, std::memory_order_release);
    h->used_pages.fetch_sub(count, std::memory_order_relaxed);
    fetch_min(h->hint, first);
}

bool Arena::free(std::uint64_t offset, std::uint32_t owner) noexcept {
    if (offset % k_page != 0 || offset / k_page >= m_limit_pages || owner == 0) return false;
    std::uint64_t const p = offset / k_page;
    std::uint64_t const w = word(p).load(std::memory_order_acquire);
    if (!is_start(w) || owner_of(w) != owner) return false;
    std::uint64_t const k = run_of(w);
    if (k == 0 || k > m_limit_pages - p) return false;
    for (std::uint64_t q = p + 1; q < p + k; ++q)
        if (word(q).load(std::memory_order_relaxed) != cont_word(owner)) return false;
    release_pages(p, k);
    return true;
}

bool Arena::adopt(ArenaRef ref, std::uint32_t from, std::uint32_t to) noexcept {
    if (ref.offset % k_page != 0 || ref.offset / k_page >= m_limit_pages || from == 0 || to == 0) return false;
    std::uint64_t const p = ref.offset / k_page;
    std::uint64_t w = word(p).load(std::memory_order_acquire);
    if (!is_start(w) || owner_of(w) != from) return false;
    std::uint64_t const k = run_of(w);
    if (k == 0 || k > m_limit_pages - p || ref.length == 0 || ref.length > k * k_page) return false;
    if (!covered((p + k) * k_page)) return false;
    for (std::uint64_t q = p + 1; q < p + k; ++q)
        if (word(q).load(std::memory_order_relaxed) != cont_word(from)) return false;
    if (!word(p).compare_exchange_strong(w, start_word(to, k), std::memory_order_acq_rel)) return false;
    for (std::uint64_t q = p + 1; q < p + k; ++q) word(q).store(cont_word(to), std::memory_order_release);
    return true;
}

std::uint64_t Arena::reclaim(std::uint32_t owner) noexcept {
    if (owner == 0) return 0;
    std::uint64_t const high = std::min(header()->high_pages.load(std::memory_order_acquire), m_limit_pages);
    std::uint64_t total = 0;
    std::uint64_t run_start = 0, run = 0;
    for (std::uint64_t p = 0; p <= high; ++p) {
        bool mine = p < high && owner_of(word(p).load(std::memory_order_acquire)) == owner &&
                    word(p).load(std::memory_order_relaxed) != 0;
        if (mine) {
            if (run == 0) run_start = p;
            ++run;
        } else if (run > 0) {
            release_pages(run_start, run);
            total += run;
            run = 0;
        }
    }
    return total;
}

bool Arena::contains(std::uint64_t offset, std::uint64_t length) noexcept {
    std::uint64_t const limit = m_limit_pages * k_page;
    return offset <= limit && length <= limit - offset && covered(offset + length);
}

std::int64_t Arena::offset_of(void const* p) const noexcept {
    auto const* b = static_cast<std::byte const*>(p);
    std::uint64_t const size = m_limit_pages * k_page;
    if (m_data != nullptr && b >= m_data && b < m_data + size) return static_cast<std::int64_t>(b - m_data);
    if (m_ro_data != nullptr && b >= m_ro_data && b < m_ro_data + size)
        return static_cast<std::int64_t>(b - m_ro_data);
    return -1;
}

std::uint64_t Arena::collapse(std::uint64_t offset, std::uint64_t length) noexcept {
    if (!contains(offset, length)) return 0;
    std::uint64_t const huge = huge_page_bytes();
    auto const begin = reinterpret_cast<std::uintptr_t>(m_data + offset);
    std::uintptr_t const first = (begin + huge - 1) / huge * huge;
    std::uintptr_t const last = (begin + length) / huge * huge;
    if (last <= first) return 0;
    if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_COLLAPSE) != 0) return 0;
    return last - first;
}

std::uint64_t Arena::used_bytes() const noexcept {
    return header()->used_pages.load(std::memory_order_relaxed) * k_page;
}

std::uint64_t Arena::file_bytes() const noexcept { return m_known_file.load(std::memory_order_relaxed); }

void ArenaPrivateView::reset() noexcept {
    if (m_map != nullptr) ::munmap(m_map, m_map_bytes);
    m_map = nullptr;
    m_map_bytes = 0;
    m_data = nullptr;
}

ArenaPrivateView Arena::private_view(std::uint64_t offset, std::uint64_t length) {
    if (!contains(offset, length)) throw std::out_of_range("Arena::private_view: a range outside the arena");
    ArenaPrivateView v;
    if (length == 0) return v;
    long const ps = ::sysconf(_SC_PAGESIZE);
    std::uint64_t const page = ps > 0 ? static_cast<std::uint64_t>(ps) : 4096;
    std::uint64_t const at = m_data_offset + offset;  // in the file
    std::uint64_t const start = at / page * page;
    std::uint64_t const bytes = round_up(at - start + length, page);
    // MAP_PRIVATE of the shared file: a read maps the file's page itself, a write gives this
    // mapping its own copy of that page (the file, sealed against shrinking, covers the range).
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, m_fd.get(),
                     static_cast<off_t>(start));
    if (p == MAP_FAILED) throw_errno("mmap(arena, private)");
    v.m_map = p;
    v.m_map_bytes = bytes;
    v.m_data = static_cast<std::byte*>(p) + (at - start);
    return v;
}

std::uint64_t Arena::block_count() const noexcept {
    std::uint64_t const high = std::min(header()->high_pages.load(std::memory_order_acquire), m_limit_pages);
    std::uint64_t n = 0;
    for (std::uint64_t p = 0; p < high; ++p) {
        std::uint64_t const w = word(p).load(std::memory_order_relaxed);
        if (!is_free(w) && is_start(w)) ++n;
    }
    return n;
}

}  // namespace shoal
