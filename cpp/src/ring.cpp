// ring.cpp — SPSC record ring in shared memory (see ring.hpp for the layout).
#include "shoal/ring.hpp"
#include "shoal/sys.hpp"

#include <cstring>
#include <stdexcept>

namespace shoal {

namespace {
constexpr std::uint32_t k_ring_magic = 0x52494E47;  // "RING"
constexpr std::uint64_t align8(std::uint64_t n) noexcept { return (n + 7) & ~std::uint64_t{7}; }
std::uint32_t* word(std::atomic<std::uint32_t>& a) noexcept { return reinterpret_cast<std::uint32_t*>(&a); }
}  // namespace

Ring Ring::create(std::byte* mem, std::size_t capacity) {
    if (capacity < 4096 || (capacity & (capacity - 1)) != 0)
        throw std::invalid_argument("Ring::create: capacity must be a power of two >= 4096");
    if (reinterpret_cast<std::uintptr_t>(mem) % 64 != 0)
        throw std::invalid_argument("Ring::create: memory must be 64-byte aligned");
    auto* hdr = new (mem) RingHeader{};
    hdr->head.store(0, std::memory_order_relaxed);
    hdr->tail.store(0, std::memory_order_relaxed);
    hdr->consumer_waiting.store(0, std::memory_order_relaxed);
    hdr->producer_waiting.store(0, std::memory_order_relaxed);
    hdr->capacity = capacity;
    hdr->magic = k_ring_magic;
    std::atomic_thread_fence(std::memory_order_release);
    return attach(mem, capacity);
}

Ring Ring::attach(std::byte* mem, std::size_t capacity) {
    if (capacity < 4096 || (capacity & (capacity - 1)) != 0)
        throw std::invalid_argument("Ring::attach: capacity must be a power of two >= 4096");
    auto* hdr = reinterpret_cast<RingHeader*>(mem);
    if (hdr->magic != k_ring_magic || hdr->capacity != capacity)
        throw std::runtime_error("Ring::attach: header does not match the agreed capacity");
    // Positions come from memory the peer can write: they are checked where they are used
    // (try_push never writes from a misaligned head; peek reports corruption).
    std::uint64_t const head = hdr->head.load(std::memory_order_acquire);
    std::uint64_t const tail = hdr->tail.load(std::memory_order_acquire);
    Ring r;
    r.m_hdr = hdr;
    r.m_data = mem + sizeof(RingHeader);
    r.m_capacity = capacity;  // our own copy: the peer can never change it under us
    r.m_mask = capacity - 1;
    r.m_head = head;
    r.m_tail = tail;
    return r;
}

bool Ring::fits(std::uint64_t head, std::uint64_t tail, std::size_t payload_bytes) const noexcept {
    std::uint64_t used = head - tail;
    if (used > m_capacity) return false;  // a corrupt tail: treat as full
    std::uint64_t need = k_record_header + align8(payload_bytes);
    std::uint64_t to_end = m_capacity - (head & m_mask);
    if (need > to_end) need += to_end;  // a wrap marker fills the rest of the lap
    return need <= m_capacity - used;
}

bool Ring::try_push(std::span<std::byte const> payload, std::uint32_t tag) noexcept {
    if (payload.size() > max_record() || tag == k_wrap_tag) return false;
    if (m_head % 8 != 0) return false;  // a corrupt header at attach: never write from it
    std::uint64_t tail = m_hdr->tail.load(std::memory_order_acquire);
    if (!fits(m_head, tail, payload.size())) return false;
    std::uint64_t off = m_head & m_mask;
    std::uint64_t need = k_record_header + align8(payload.size());
    if (need > m_capacity - off) {
        std::uint32_t marker[2] = {0, k_wrap_tag};
        std::memcpy(m_data + off, marker, sizeof marker);
        m_head += m_capacity - off;
        off = 0;
    }
    std::uint32_t rec[2] = {static_cast<std::uint32_t>(payload.size()), tag};
    std::memcpy(m_data + off, rec, sizeof rec);
    if (!payload.empty()) std::memcpy(m_data + off + k_record_header, payload.data(), payload.size());
    m_head += need;
    m_hdr->head.store(m_head, std::memory_order_release);
    return true;
}

bool Ring::consumer_needs_wake() noexcept {
    // Dekker with consumer_sleep_begin(): our head store, then its flag; one of us sees the other.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return m_hdr->consumer_waiting.load(std::memory_order_relaxed) != 0 &&
           m_hdr->consumer_waiting.exchange(0, std::memory_order_acq_rel) != 0;
}

void Ring::wake_consumer() noexcept { futex_wake(word(m_hdr->consumer_waiting), 1); }

bool Ring::producer_sleep_begin(std::size_t payload_bytes) noexcept {
    m_hdr->producer_waiting.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (fits(m_head, m_hdr->tail.load(std::memory_order_acquire), payload_bytes)) {
        m_hdr->producer_waiting.store(0, std::memory_order_relaxed);
        return false;
    }
    return true;
}

void Ring::producer_sleep_end() noexcept { m_hdr->producer_waiting.store(0, std::memory_order_relaxed); }

bool Ring::wait_writable(std::size_t payload_bytes, std::int64_t spin_ns, std::int64_t timeout_ns) noexcept {
    std::int64_t start = now_ns();
    for (SpinWait w(spin_ns);;) {
        if (fits(m_head, m_hdr->tail.load(std::memory_order_acquire), payload_bytes)) return true;
        if (!w.next()) break;
    }
    for (;;) {
        if (!producer_sleep_begin(payload_bytes)) return true;
        std::int64_t left = -1;
        if (timeout_ns >= 0) {
            left = timeout_ns - (now_ns() - start);
            if (left <= 0) { producer_sleep_end(); return false; }
        }
        futex_wait(word(m_hdr->producer_waiting), 1, left);
        producer_sleep_end();
    }
}

Ring::PopStatus Ring::peek(Record& out) noexcept {
    std::uint64_t head = m_hdr->head.load(std::memory_order_acquire);
    std::uint64_t skipped = 0;
    for (int lap = 0; lap < 2; ++lap) {
        std::uint64_t tail = m_tail + skipped;
        if (head == tail) {
            if (skipped) {  // only a wrap marker was there: consume it now
                m_tail += skipped;
                m_hdr->tail.store(m_tail, std::memory_order_release);
            }
            return PopStatus::empty;
        }
        std::uint64_t avail = head - tail;
        if (avail > m_capacity || avail % 8 != 0 || avail < k_record_header) return PopStatus::corrupt;
        std::uint64_t off = tail & m_mask;
        if (off % 8 != 0 || off > m_capacity - k_record_header) return PopStatus::corrupt;
        std::uint32_t rec[2];
        std::memcpy(rec, m_data + off, sizeof rec);  // copy once: the peer may rewrite it
        if (rec[1] == k_wrap_tag) {
            std::uint64_t to_end = m_capacity - off;
            if (to_end > avail || lap == 1) return PopStatus::corrupt;
            skipped += to_end;
            continue;
        }
        std::uint64_t need = k_record_header + align8(rec[0]);
        if (need > m_capacity - off || need > avail) return PopStatus::corrupt;
        out.payload = {m_data + off + k_record_header, rec[0]};
        out.tag = rec[1];
        m_pending = skipped + need;
        return PopStatus::ok;
    }
    return PopStatus::corrupt;
}

bool Ring::release() noexcept {
    m_tail += m_pending;
    m_pending = 0;
    m_hdr->tail.store(m_tail, std::memory_order_release);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (m_hdr->producer_waiting.load(std::memory_order_relaxed) != 0 &&
        m_hdr->producer_waiting.exchange(0, std::memory_order_acq_rel) != 0) {
        futex_wake(word(m_hdr->producer_waiting), 1);
        return true;
    }
    return false;
}

bool Ring::empty() const noexcept {
    return m_hdr->head.load(std::memory_order_acquire) == m_tail;
}

bool Ring::consumer_sleep_begin() noexcept {
    m_hdr->consumer_waiting.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (!empty()) {
        m_hdr->consumer_waiting.store(0, std::memory_order_relaxed);
        return false;
    }
    return true;
}

void Ring::consumer_sleep_end() noexcept { m_hdr->consumer_waiting.store(0, std::memory_order_relaxed); }

bool Ring::wait_readable(std::int64_t spin_ns, std::int64_t timeout_ns) noexcept {
    std::int64_t start = now_ns();
    for (SpinWait w(spin_ns);;) {
        if (!empty()) return true;
        if (!w.next()) break;
    }
    for (;;) {
        if (!consumer_sleep_begin()) return true;
        std::int64_t left = -1;
        if (timeout_ns >= 0) {
            left = timeout_ns - (now_ns() - start);
            if (left <= 0) { consumer_sleep_end(); return !empty(); }
        }
        futex_wait(word(m_hdr->consumer_waiting), 1, left);
        consumer_sleep_end();
        if (!empty()) return true;
    }
}

void Ring::consumer_sleep(std::int64_t timeout_ns) noexcept {
    futex_wait(word(m_hdr->consumer_waiting), 1, timeout_ns);
}

void Ring::interrupt_consumer() noexcept {
    // The caller's flag store, then this store of 0 (Dekker with consumer_sleep_begin's
    // store of 1 and the consumer's check of the flag): either the consumer sees the flag,
    // or its futex_wait sees 0 or is woken here.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    m_hdr->consumer_waiting.store(0, std::memory_order_relaxed);
    futex_wake(word(m_hdr->consumer_waiting), 1 << 30);
}

}  // namespace shoal
