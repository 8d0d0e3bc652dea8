// shm.cpp — memfd-backed shared mappings.
#include "shoal/shm.hpp"

#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace shoal {

SharedMemory SharedMemory::create(std::size_t bytes, char const* name) {
    Fd fd(::memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
    if (!fd) throw_errno("memfd_create");
    if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) throw_errno("ftruncate");
    // Sealed: no peer can shrink it under a live mapping (every access past it would be SIGBUS).
    if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
        throw_errno("fcntl(F_ADD_SEALS)");
    return attach(std::move(fd));
}

SharedMemory SharedMemory::attach(Fd fd) {
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0) throw_errno("fstat");
    // Only a memfd that can no longer shrink: F_GET_SEALS fails on anything but a memfd.
    int seals = ::fcntl(fd.get(), F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        throw std::runtime_error("SharedMemory::attach: not a memfd sealed against shrinking");
    if (st.st_size <= 0) throw std::runtime_error("SharedMemory::attach: empty memfd");
    auto bytes = static_cast<std::size_t>(st.st_size);
    // MAP_POPULATE pre-faults: the first task does not pay for page faults.
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
    if (p == MAP_FAILED) throw_errno("mmap");
    SharedMemory m;
    m.m_fd = std::move(fd);
    m.m_data = static_cast<std::byte*>(p);
    m.m_size = bytes;
    return m;
}

SharedMemory::SharedMemory(SharedMemory&& o) noexcept
    : m_fd(std::move(o.m_fd)), m_data(o.m_data), m_size(o.m_size) {
    o.m_data = nullptr;
    o.m_size = 0;
}

SharedMemory& SharedMemory::operator=(SharedMemory&& o) noexcept {
    if (this != &o) {
        if (m_data) ::munmap(m_data, m_size);
        m_fd = std::move(o.m_fd);
        m_data = o.m_data;
        m_size = o.m_size;
        o.m_data = nullptr;
        o.m_size = 0;
    }
    return *this;
}

SharedMemory::~SharedMemory() {
    if (m_data) ::munmap(m_data, m_size);
}

}  // namespace shoal
