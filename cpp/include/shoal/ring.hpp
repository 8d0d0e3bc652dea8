// ring.hpp — a single-producer single-consumer ring of variable-size records in shared memory.
//
// Layout in the shared region: one RingHeader, then `capacity` bytes of records.
// A record is {u32 length, u32 tag, payload padded to 8 bytes}; a record never wraps:
// when it does not fit before the end, the producer writes a wrap marker and starts at 0.
// Positions are monotonic u64 byte counters; offset = position & (capacity - 1).
//
// No mutex lives in shared memory: a peer that dies cannot leave anything held.
// The consumer treats everything the producer wrote (head, lengths) as untrusted: a
// corrupt ring is reported as PopStatus::corrupt, never read out of bounds.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

namespace shoal {

struct RingHeader {
    alignas(64) std::atomic<std::uint64_t> head;  // own cache line: written by the producer only
    std::atomic<std::uint32_t> consumer_waiting;   // futex word: 1 while the consumer sleeps for data
    alignas(64) std::atomic<std::uint64_t> tail;  // own cache line: written by the consumer only
    std::atomic<std::uint32_t> producer_waiting;   // futex word: 1 while the producer waits for space
    alignas(64) std::uint64_t capacity;           // written once by create(); checked by attach()
    std::uint32_t magic;
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));

class Ring {
public:
    static constexpr std::uint32_t k_wrap_tag = 0xFFFFFFFFu;
    static constexpr std::size_t k_record_header = 8;

    /// Bytes of shared memory a ring of `capacity` needs (header + data).
    static constexpr std::size_t bytes_for(std::size_t capacity) noexcept {
        return sizeof(RingHeader) + capacity;
    }
    /// Initialises a fresh ring in `mem` (64-byte aligned, bytes_for(capacity) long).
    /// `capacity` must be a power of two >= 4096. Not concurrent with any user of the ring.
    static Ring create(std::byte* mem, std::size_t capacity);
    /// Attaches to a ring initialised by another process. `capacity` is the size agreed out
    /// of band; a header that disagrees throws std::runtime_error.
    static Ring attach(std::byte* mem, std::size_t capacity);

    Ring() noexcept = default;

    std::size_t capacity() const noexcept { return m_capacity; }
    /// Largest payload one record may carry (a quarter of the ring, so a writer always progresses).
    std::size_t max_record() const noexcept { return m_capacity / 4 - k_record_header; }

    // ---- producer side: one thread of one process at a time ----

    /// Appends one record. Returns false when there is no room now (or the payload is
    /// larger than max_record()). Never blocks, never allocates.
    bool try_push(std::span<std::byte const> payload, std::uint32_t tag) noexcept;
    /// After a push: true when the consumer was asleep and must be woken (then call
    /// wake_consumer()). Clears the flag so only one producer call wakes it.
    bool consumer_needs_wake() noexcept;
    void wake_consumer() noexcept;
    /// Marks the producer as waiting for space; returns false (and clears the mark) if a
    /// record of `payload_bytes` fits already. The consumer's release() then reports it.
    bool producer_sleep_begin(std::size_t payload_bytes) noexcept;
    void producer_sleep_end() noexcept;
    /// Blocks (spin then futex) until a record of `payload_bytes` fits or timeout. Returns
    /// false on timeout. For a producer that may sleep on the futex (a worker).
    bool wait_writable(std::size_t payload_bytes, std::int64_t spin_ns, std::int64_t timeout_ns) noexcept;

    // ---- consumer side: one thread of one process at a time ----

    enum class PopStatus { ok, empty, corrupt };
    struct Record {
        std::span<std::byte const> payload;  // valid until release()
        std::uint32_t tag = 0;
    };
    /// Looks at the oldest record without consuming it. Never blocks, never allocates.
    PopStatus peek(Record& out) noexcept;
    /// Consumes the record returned by the last peek(). Returns true when the producer
    /// was waiting for space (it has been futex-woken; a producer that sleeps elsewhere
    /// must be told through its own doorbell).
    bool release() noexcept;
    /// True when there is nothing to read (as far as this thread can see now).
    bool empty() const noexcept;
    /// Marks the consumer as sleeping; returns false (and clears the mark) when data is
    /// already there. Pair with consumer_sleep_end().
    bool consumer_sleep_begin() noexcept;
    void consumer_sleep_end() noexcept;
    /// Blocks (spin, then futex) until a record is readable or timeout. False on timeout.
    bool wait_readable(std::int64_t spin_ns, std::int64_t timeout_ns) noexcept;
    /// After consumer_sleep_begin() returned true: sleeps until a producer wakes the
    /// consumer, interrupt_consumer() is called, or the timeout passes (< 0: none); then
    /// call consumer_sleep_end(). Spurious returns are possible: check again.
    void consumer_sleep(std::int64_t timeout_ns) noexcept;
    /// Any thread: ends a consumer_sleep() now or makes the next one return at once. To
    /// stop a consumer for good, set a flag (seq_cst) first and have the consumer check
    /// it between consumer_sleep_begin() and consumer_sleep(): no wake-up is lost.
    void interrupt_consumer() noexcept;

private:
    bool fits(std::uint64_t head, std::uint64_t tail, std::size_t payload_bytes) const noexcept;

    RingHeader* m_hdr = nullptr;
    std::byte* m_data = nullptr;
    std::uint64_t m_capacity = 0;
    std::uint64_t m_mask = 0;
    std::uint64_t m_head = 0;        // producer's own copy of head
    std::uint64_t m_tail = 0;        // consumer's own copy of tail
    std::uint64_t m_pending = 0;     // bytes the last peek() will release
};

}  // namespace shoal
