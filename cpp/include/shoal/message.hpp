// message.hpp — messages of any size over a Ring, cut into fragments and put back together.
//
// A fragment is one ring record; its tag says whether more fragments of the same message
// follow. The writer is resumable and never blocks (the driver writes under the pool's
// mutex, and must never wait on one worker); blocking senders loop on Ring::wait_writable().
#pragma once

#include "shoal/ring.hpp"

#include <memory>
#include <vector>

namespace shoal {

inline constexpr std::uint32_t k_tag_more = 1;  // more fragments of this message follow

/// Writes one message into a ring across as many calls as needed. Move-only.
class MessageWriter {
public:
    MessageWriter() = default;
    explicit MessageWriter(std::shared_ptr<std::vector<std::byte> const> message) noexcept
        : m_message(std::move(message)) {}

    /// Pushes as many fragments as fit now. Returns true once the whole message is in.
    /// Never blocks, never allocates.
    bool pump(Ring& ring) noexcept;
    bool done() const noexcept { return m_done; }
    bool active() const noexcept { return m_message != nullptr; }
    /// Bytes still to push in the next fragment (for Ring::wait_writable()).
    std::size_t next_fragment(Ring const& ring) const noexcept;

private:
    std::shared_ptr<std::vector<std::byte> const> m_message;
    std::size_t m_offset = 0;
    bool m_done = false;
};

/// Pushes a whole message, blocking (spin, then futex) while the ring is full. Returns
/// false if `timeout_ns` passes first. For a producer that sleeps on the ring's futex.
bool send_message_blocking(Ring& ring, std::span<std::byte const> message,
                           std::int64_t spin_ns, std::int64_t timeout_ns) noexcept;

/// Reads fragments and assembles messages. One consumer thread.
class MessageReader {
public:
    enum class Status { message, empty, corrupt, too_large };
    explicit MessageReader(std::size_t max_message_bytes = std::size_t{1} << 34)
        : m_max(max_message_bytes) {}

    /// Consumes fragments until one message is complete (it is then in `message()`),
    /// the ring is empty, or the stream is broken. `producer_waiting` is set when a
    /// release found the producer waiting for space. Never blocks.
    Status poll(Ring& ring, bool& producer_waiting);
    std::vector<std::byte>& message() noexcept { return m_buffer; }
    /// Forgets any partial message (after the producer died) and frees its memory.
    void reset() noexcept { std::vector<std::byte>().swap(m_buffer); m_complete = false; }
    std::size_t max_message_bytes() const noexcept { return m_max; }

private:
    std::size_t m_max;
    std::vector<std::byte> m_buffer;
    bool m_complete = false;
};

}  // namespace shoal
