// doorbell.hpp — wakes a sleeping driver thread from any worker process, and only when it sleeps.
//
// The sleeping flag lives in shared memory; the wake-up goes through an eventfd so the
// driver can sleep in poll() beside other descriptors (the zygote's socket).
#pragma once

#include "shoal/sys.hpp"

#include <atomic>

namespace shoal {

struct DoorbellWord {
    alignas(64) std::atomic<std::uint32_t> sleeping;  // own cache line: every worker reads it after each push
};

class Doorbell {
public:
    Doorbell() = default;
    Doorbell(DoorbellWord* word, EventFd event) noexcept : m_word(word), m_event(std::move(event)) {}

    /// Call after publishing work for the sleeper. Any thread of any process; never blocks;
    /// makes a system call only when the sleeper is asleep.
    void ring() noexcept;
    /// The sleeper: announce sleep, then re-check every source, then poll(fd()), then sleep_end().
    void sleep_begin() noexcept;
    void sleep_end() noexcept;
    int fd() const noexcept { return m_event.fd(); }

private:
    DoorbellWord* m_word = nullptr;
    EventFd m_event{Fd{}};
};

}  // namespace shoal
