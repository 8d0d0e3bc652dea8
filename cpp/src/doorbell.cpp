// doorbell.cpp — wake the driver only when it sleeps.
#include "shoal/doorbell.hpp"

namespace shoal {

void Doorbell::ring() noexcept {
    // Dekker with sleep_begin(): the caller's publish, then our read of the flag.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (m_word->sleeping.load(std::memory_order_relaxed) != 0 &&
        m_word->sleeping.exchange(0, std::memory_order_acq_rel) != 0)
        m_event.signal();
}

void Doorbell::sleep_begin() noexcept {
    m_word->sleeping.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
}

void Doorbell::sleep_end() noexcept {
    m_word->sleeping.store(0, std::memory_order_relaxed);
    m_event.drain();
}

}  // namespace shoal
