// test_shm.cpp — memfd-backed shared mappings: shared across fork and across a socket, never
// named in /dev/shm, and attach() refuses descriptors that are not a usable memfd.
#include "shoal/shm.hpp"
#include "shoal/sys.hpp"

#include "support.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <set>
#include <stdexcept>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <system_error>
#include <vector>

using namespace shoal;
using namespace shoal_test;

namespace {

std::set<std::string> dev_shm_names() {
    std::set<std::string> names;
    if (DIR* d = ::opendir("/dev/shm")) {
        while (dirent* e = ::readdir(d)) names.insert(e->d_name);
        ::closedir(d);
    }
    return names;
}

std::string fd_target(int fd) {
    char buf[256];
    auto n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

}  // namespace

TEST(SharedMemory, CreateMapsZeroedWritableMemory) {
    auto m = SharedMemory::create(3 * 4096 + 5);
    ASSERT_NE(m.data(), nullptr);
    EXPECT_EQ(m.size(), 3u * 4096 + 5);
    EXPECT_GE(m.fd(), 0);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(m.data()) % 4096, 0u);  // rings need 64-byte alignment
    for (std::size_t i = 0; i < m.size(); ++i) ASSERT_EQ(m.data()[i], std::byte{0});
    std::memset(m.data(), 0xAB, m.size());
    EXPECT_EQ(m.data()[m.size() - 1], std::byte{0xAB});
    EXPECT_NE(::fcntl(m.fd(), F_GETFD) & FD_CLOEXEC, 0);  // never leaks into exec'd children
}

TEST(SharedMemory, CreateOfZeroBytesThrows) {
    EXPECT_THROW(SharedMemory::create(0), std::exception);
}

TEST(SharedMemory, NothingAppearsInDevShm) {
    auto before = dev_shm_names();
    auto m = SharedMemory::create(1 << 20, "shoal-devshm-probe");
    auto during = dev_shm_names();
    EXPECT_EQ(before, during);
    for (auto const& n : during) EXPECT_EQ(n.find("shoal"), std::string::npos) << n;
    EXPECT_EQ(fd_target(m.fd()).rfind("/memfd:shoal-devshm-probe", 0), 0u) << fd_target(m.fd());
}

TEST(SharedMemory, ChildWritesParentReads) {
    auto m = SharedMemory::create(64 * 1024);
    ChildGuard child(fork_child([&] {
        for (std::size_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<std::byte>(i * 13 + 1);
        return 0;
    }));
    auto end = child.wait(std::chrono::seconds(10));
    ASSERT_TRUE(end.exited(0)) << end.str();
    for (std::size_t i = 0; i < m.size(); ++i) ASSERT_EQ(m.data()[i], static_cast<std::byte>(i * 13 + 1)) << i;
}

TEST(SharedMemory, AttachThroughASocketInAnotherProcess) {
    // The child did not inherit this mapping: it gets the memfd over a socket, as a worker does.
    auto [ours, theirs] = socket_pair();
    ChildGuard child(fork_child([&] {
        ours.reset();
        std::vector<std::byte> data;
        std::vector<Fd> fds;
        if (recv_message(theirs.get(), data, fds) != RecvStatus::message || fds.size() != 1) return 2;
        auto m = SharedMemory::attach(std::move(fds[0]));
        if (m.size() != 12345) return 3;
        for (std::size_t i = 0; i < m.size(); ++i)
            if (m.data()[i] != std::byte{0x11}) return 4;
        std::memset(m.data(), 0x22, m.size());
        return 0;
    }));
    theirs.reset();
    auto m = SharedMemory::create(12345);
    std::memset(m.data(), 0x11, m.size());
    int fd = m.fd();
    std::byte hello[1]{};
    send_message(ours.get(), hello, std::span<int const>(&fd, 1));
    auto end = child.wait(std::chrono::seconds(10));
    ASSERT_TRUE(end.exited(0)) << end.str() << " (2 no fd, 3 wrong size, 4 wrong bytes)";
    for (std::size_t i = 0; i < m.size(); ++i) ASSERT_EQ(m.data()[i], std::byte{0x22}) << i;
}

TEST(SharedMemory, AttachTakesTheSizeFromTheFd) {
    auto m = SharedMemory::create(8192);
    auto again = SharedMemory::attach(Fd(::fcntl(m.fd(), F_DUPFD_CLOEXEC, 0)));
    EXPECT_EQ(again.size(), 8192u);
    again.data()[100] = std::byte{7};
    EXPECT_EQ(m.data()[100], std::byte{7});  // two mappings of one memory
}

TEST(SharedMemory, AttachRefusesEmptyAndNonMemfdDescriptors) {
    EXPECT_THROW(SharedMemory::attach(Fd()), std::system_error);  // no fd at all

    Fd empty(::memfd_create("shoal-empty", MFD_CLOEXEC));
    ASSERT_TRUE(empty);
    EXPECT_THROW(SharedMemory::attach(std::move(empty)), std::exception);

    Fd ev(::eventfd(0, EFD_CLOEXEC));
    EXPECT_THROW(SharedMemory::attach(std::move(ev)), std::exception);

    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    Fd pw(p[1]);
    EXPECT_THROW(SharedMemory::attach(Fd(p[0])), std::exception);

    auto [a, b] = socket_pair();
    EXPECT_THROW(SharedMemory::attach(std::move(a)), std::exception);
}

// A peer can hand over any file with a size (here a regular file), and it can shrink a real
// memfd after we mapped it: every later access to the lost pages is SIGBUS. With seals
// (MFD_ALLOW_SEALING + F_SEAL_SHRINK at create, F_GET_SEALS checked in attach) neither can
// happen, and F_GET_SEALS also proves the fd is a memfd.
TEST(SharedMemory, AttachRefusesARegularFile) {
    char path[] = "/tmp/shoal-test-shm-XXXXXX";
    Fd file(::mkstemp(path));
    ASSERT_TRUE(file);
    ::unlink(path);
    ASSERT_EQ(::ftruncate(file.get(), 4096), 0);
    EXPECT_THROW(SharedMemory::attach(std::move(file)), std::exception);
}

TEST(SharedMemory, PeerCannotShrinkTheMemory) {
    auto m = SharedMemory::create(1 << 16);
    // What a peer holding the same memfd could do; a sealed memfd refuses it (EPERM).
    int rc = ::ftruncate(m.fd(), 4096);
    EXPECT_NE(rc, 0) << "the memfd could be shrunk under a live mapping: touching page 2 would be SIGBUS";
    if (rc == 0) return;  // the tail of the mapping is gone: do not touch it
    m.data()[(1 << 16) - 1] = std::byte{1};
}

TEST(SharedMemory, MoveTransfersOwnership) {
    auto a = SharedMemory::create(4096);
    std::byte* p = a.data();
    int fd = a.fd();
    SharedMemory b(std::move(a));
    EXPECT_EQ(a.data(), nullptr);
    EXPECT_EQ(a.size(), 0u);
    EXPECT_EQ(a.fd(), -1);
    EXPECT_EQ(b.data(), p);
    EXPECT_EQ(b.fd(), fd);

    auto c = SharedMemory::create(8192);
    int old_fd = c.fd();
    c = std::move(b);
    EXPECT_EQ(c.data(), p);
    EXPECT_EQ(c.size(), 4096u);
    EXPECT_EQ(::fcntl(old_fd, F_GETFD), -1);  // the replaced memory's fd was closed
    c = std::move(c);                          // self-move keeps it
    EXPECT_EQ(c.data(), p);
}

TEST(SharedMemory, DestructorUnmaps) {
    std::byte* p;
    {
        auto m = SharedMemory::create(4096);
        p = m.data();
    }
    // mincore() fails with ENOMEM on an address that is no longer mapped.
    unsigned char vec = 0;
    EXPECT_EQ(::mincore(p, 4096, &vec), -1);
    EXPECT_EQ(errno, ENOMEM);
}
