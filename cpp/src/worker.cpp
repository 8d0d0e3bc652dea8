// worker.cpp — the worker's end of its rings.
#include "shoal/worker.hpp"

#include <stdexcept>

namespace shoal {

namespace {
void check_range(std::uint64_t offset, std::uint64_t bytes, std::size_t size, char const* what) {
    if (offset % 64 != 0 || offset > size || bytes > size - offset)
        throw std::runtime_error(std::string("WorkerChannel: ") + what + " lies outside the shared memory");
}
}  // namespace

WorkerChannel::WorkerChannel(WorkerSpec const& spec, Fd memfd, Fd doorbell)
    : m_spec(spec), m_memory(SharedMemory::attach(std::move(memfd))) {
    check_range(spec.task_ring_offset, Ring::bytes_for(spec.task_ring_capacity), m_memory.size(), "task ring");
    check_range(spec.result_ring_offset, Ring::bytes_for(spec.result_ring_capacity), m_memory.size(), "result ring");
    check_range(spec.doorbell_offset, sizeof(DoorbellWord), m_memory.size(), "doorbell");
    m_tasks = Ring::attach(m_memory.data() + spec.task_ring_offset, spec.task_ring_capacity);
    m_results = Ring::attach(m_memory.data() + spec.result_ring_offset, spec.result_ring_capacity);
    m_doorbell = Doorbell(reinterpret_cast<DoorbellWord*>(m_memory.data() + spec.doorbell_offset),
                          EventFd(std::move(doorbell)));
}

bool WorkerChannel::recv(Bytes& out, std::int64_t timeout_ns) {
    std::int64_t start = now_ns();
    for (;;) {
        bool producer_waiting = false;
        auto st = m_reader.poll(m_tasks, producer_waiting);
        // The driver sleeps on its doorbell, not on our ring's futex: tell it there is room.
        if (producer_waiting) m_doorbell.ring();
        switch (st) {
            case MessageReader::Status::message:
                out.swap(m_reader.message());
                return true;
            case MessageReader::Status::corrupt:
            case MessageReader::Status::too_large:
                return false;
            case MessageReader::Status::empty:
                break;
        }
        std::int64_t left = -1;
        if (timeout_ns >= 0) {
            left = timeout_ns - (now_ns() - start);
            if (left <= 0) return false;
        }
        m_tasks.wait_readable(m_spec.spin_ns, left);
    }
}

void WorkerChannel::send(std::span<std::byte const> message) {
    std::size_t offset = 0;
    do {
        std::size_t n = std::min(message.size() - offset, m_results.max_record());
        bool last = offset + n >= message.size();
        while (!m_results.try_push(message.subspan(offset, n), last ? 0 : k_tag_more)) {
            m_doorbell.ring();  // make sure the driver is draining while we wait
            m_results.wait_writable(n, m_spec.spin_ns, -1);
        }
        offset += n;
    } while (offset < message.size());
    m_doorbell.ring();
}

}  // namespace shoal
