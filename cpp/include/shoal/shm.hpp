// shm.hpp — a memfd-backed shared mapping: no name in /dev/shm, nothing left behind when a process dies.
#pragma once

#include "shoal/sys.hpp"

namespace shoal {

/// One MAP_SHARED mapping of a memfd. Move-only; unmaps on destruction.
class SharedMemory {
public:
    /// Creates a memfd of `bytes` bytes, maps it and pre-faults it. Throws std::system_error.
    static SharedMemory create(std::size_t bytes, char const* name = "shoal");
    /// Maps an existing memfd received from another process. Throws std::system_error.
    /// The size is taken from fstat, never from the peer's word.
    static SharedMemory attach(Fd fd);

    SharedMemory() noexcept = default;
    SharedMemory(SharedMemory&& o) noexcept;
    SharedMemory& operator=(SharedMemory&& o) noexcept;
    ~SharedMemory();

    std::byte* data() const noexcept { return m_data; }
    std::size_t size() const noexcept { return m_size; }
    int fd() const noexcept { return m_fd.get(); }

private:
    Fd m_fd;
    std::byte* m_data = nullptr;
    std::size_t m_size = 0;
};

}  // namespace shoal
