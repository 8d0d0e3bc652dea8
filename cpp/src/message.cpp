// message.cpp — fragmenting writer and reassembling reader over a Ring.
#include "shoal/message.hpp"
#include "shoal/sys.hpp"

#include <algorithm>

namespace shoal {

std::size_t MessageWriter::next_fragment(Ring const& ring) const noexcept {
    if (!m_message) return 0;
    return std::min(m_message->size() - m_offset, ring.max_record());
}

bool MessageWriter::pump(Ring& ring) noexcept {
    if (!m_message || m_done) return true;
    auto const& msg = *m_message;
    while (!m_done) {
        std::size_t n = next_fragment(ring);
        bool last = m_offset + n >= msg.size();
        std::span<std::byte const> frag(msg.data() + m_offset, n);
        if (!ring.try_push(frag, last ? 0 : k_tag_more)) return false;
        m_offset += n;
        m_done = last;
    }
    return true;
}

bool send_message_blocking(Ring& ring, std::span<std::byte const> message,
                           std::int64_t spin_ns, std::int64_t timeout_ns) noexcept {
    std::int64_t start = now_ns();
    std::size_t offset = 0;
    do {
        std::size_t n = std::min(message.size() - offset, ring.max_record());
        bool last = offset + n >= message.size();
        while (!ring.try_push(message.subspan(offset, n), last ? 0 : k_tag_more)) {
            std::int64_t left = -1;
            if (timeout_ns >= 0) {
                left = timeout_ns - (now_ns() - start);
                if (left <= 0) return false;
            }
            if (!ring.wait_writable(n, spin_ns, left)) return false;
        }
        if (ring.consumer_needs_wake()) ring.wake_consumer();
        offset += n;
    } while (offset < message.size());
    return true;
}

MessageReader::Status MessageReader::poll(Ring& ring, bool& producer_waiting) {
    if (m_complete) {
        m_buffer.clear();
        m_complete = false;
    }
    for (;;) {
        Ring::Record rec;
        switch (ring.peek(rec)) {
            case Ring::PopStatus::empty: return Status::empty;
            case Ring::PopStatus::corrupt: return Status::corrupt;
            case Ring::PopStatus::ok: break;
        }
        if (rec.tag & ~k_tag_more) return Status::corrupt;
        if (m_buffer.size() + rec.payload.size() > m_max) return Status::too_large;
        m_buffer.insert(m_buffer.end(), rec.payload.begin(), rec.payload.end());
        bool more = (rec.tag & k_tag_more) != 0;
        if (ring.release()) producer_waiting = true;
        if (!more) {
            m_complete = true;
            return Status::message;
        }
    }
}

}  // namespace shoal
