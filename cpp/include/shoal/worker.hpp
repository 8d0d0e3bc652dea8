// worker.hpp — a worker's end of its two rings: take task frames, give result frames.
#pragma once

#include "shoal/doorbell.hpp"
#include "shoal/message.hpp"
#include "shoal/scheduler.hpp"
#include "shoal/shm.hpp"
#include "shoal/zygote.hpp"

namespace shoal {

class WorkerChannel {
public:
    /// Maps the executor's memory and attaches to the slot's rings. The spec comes from
    /// the driver: offsets are checked against the mapping. Throws on a bad spec.
    WorkerChannel(WorkerSpec const& spec, Fd memfd, Fd doorbell);

    /// Blocks (spins spec.spin_ns, then sleeps on the futex) until one whole message
    /// arrives, and returns it in `out`. Returns false if the stream is corrupt or the
    /// timeout passes (timeout_ns < 0: none). One thread.
    bool recv(Bytes& out, std::int64_t timeout_ns);
    /// Sends one message, blocking while the result ring is full, then rings the driver's
    /// doorbell. One thread.
    void send(std::span<std::byte const> message);

private:
    WorkerSpec m_spec;
    SharedMemory m_memory;
    Ring m_tasks;
    Ring m_results;
    MessageReader m_reader;
    Doorbell m_doorbell;
};

}  // namespace shoal
