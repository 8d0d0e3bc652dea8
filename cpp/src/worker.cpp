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

WorkerChannel::~WorkerChannel() {
    if (!m_watch) return;
    {
        std::lock_guard lock(m_watch->mutex);
        m_watch->stop = true;
        m_watch->kick.store(true, std::memory_order_seq_cst);
    }
    m_tasks.interrupt_consumer();
    m_watch->cv.notify_all();
    m_watch->thread.join();
}

void WorkerChannel::check_owner() const {
    if (m_watch && m_watch->owned.load(std::memory_order_acquire))
        throw std::logic_error("WorkerChannel: the task ring is armed (the watcher owns it)");
}

WorkerChannel::Poll WorkerChannel::try_recv(Bytes& out) {
    check_owner();
    bool producer_waiting = false;
    auto st = m_reader.poll(m_tasks, producer_waiting);
    // The driver sleeps on its doorbell, not on our ring's futex: tell it there is room.
    if (producer_waiting) m_doorbell.ring();
    switch (st) {
        case MessageReader::Status::message:
            out.swap(m_reader.message());
            return Poll::message;
        case MessageReader::Status::empty:
            return Poll::empty;
        case MessageReader::Status::corrupt:
        case MessageReader::Status::too_large:
            break;
    }
    return Poll::corrupt;
}

bool WorkerChannel::recv(Bytes& out, std::int64_t timeout_ns) {
    std::int64_t start = now_ns();
    for (;;) {
        switch (try_recv(out)) {
            case Poll::message: return true;
            case Poll::corrupt: return false;
            case Poll::empty: break;
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

// ---------------------------------------------------------------- the watcher

int WorkerChannel::watch_fd() {
    if (!m_watch) {
        m_watch = std::make_unique<Watcher>();
        m_watch->thread = std::thread([this] { watch_loop(); });
    }
    return m_watch->event.fd();
}

void WorkerChannel::clear_watch() noexcept {
    if (m_watch) m_watch->event.drain();
}

bool WorkerChannel::pending() const {
    check_owner();
    return !m_tasks.empty();
}

bool WorkerChannel::armed() const noexcept {
    return m_watch && m_watch->owned.load(std::memory_order_acquire);
}

bool WorkerChannel::arm() {
    watch_fd();
    check_owner();
    m_watch->event.drain();
    if (!m_tasks.empty()) return false;  // the watcher checks again: nothing that comes later is missed
    {
        std::lock_guard lock(m_watch->mutex);
        m_watch->armed = true;
        m_watch->owned.store(true, std::memory_order_release);
    }
    m_watch->cv.notify_one();
    return true;
}

void WorkerChannel::disarm() {
    if (!m_watch) return;
    std::unique_lock lock(m_watch->mutex);
    if (m_watch->armed) {
        m_watch->kick.store(true, std::memory_order_seq_cst);
        m_tasks.interrupt_consumer();
        m_watch->cv.wait(lock, [&] { return !m_watch->armed; });
        m_watch->kick.store(false, std::memory_order_relaxed);  // the watcher is back in its wait
    }
    m_watch->event.drain();
}

bool WorkerChannel::watch_ring() {
    for (;;) {
        if (!m_tasks.consumer_sleep_begin()) return true;  // a record is there
        if (m_watch->kick.load(std::memory_order_seq_cst)) {
            m_tasks.consumer_sleep_end();
            return false;
        }
        m_tasks.consumer_sleep(-1);
        m_tasks.consumer_sleep_end();
    }
}

void WorkerChannel::watch_loop() {
    Watcher& w = *m_watch;
    std::unique_lock lock(w.mutex);
    for (;;) {
        w.cv.wait(lock, [&] { return w.armed || w.stop; });
        if (w.stop) return;
        lock.unlock();
        bool const message = watch_ring();  // the ring is ours until we hand it back below
        lock.lock();
        w.armed = false;
        w.owned.store(false, std::memory_order_release);
        if (message) w.event.signal();
        w.cv.notify_all();  // a disarm() may be waiting for us
    }
}

}  // namespace shoal
