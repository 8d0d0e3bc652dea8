// test_process.cpp — posix_spawn with exactly fd 3 passed, pidfds, reaping, exit descriptions,
// and die_with_parent.
#include "shoal/process.hpp"
#include "shoal/sys.hpp"

#include "support.hpp"

#include <csignal>
#include <fcntl.h>
#include <map>
#include <set>
#include <sstream>
#include <sys/socket.h>
#include <sys/wait.h>
#include <system_error>

using namespace shoal;
using namespace shoal_test;

namespace {

constexpr std::int64_t k_ms = 1'000'000;

std::pair<Fd, Fd> make_pipe() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    return {Fd(p[0]), Fd(p[1])};
}

/// Everything a pipe's read end gives until EOF or timeout.
std::string read_all(int fd, int timeout_ms) {
    std::string out;
    char buf[4096];
    std::int64_t deadline = now_ns() + std::int64_t{timeout_ms} * k_ms;
    while (now_ns() < deadline) {
        if (!readable_within(fd, 100)) continue;
        auto n = ::read(fd, buf, sizeof buf);
        if (n <= 0) break;
        out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
}

std::string fd_target(int fd) {
    char buf[256];
    auto n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

ExitStatus reap_within(pid_t pid, int timeout_ms) {
    Fd pfd = open_pidfd(pid);
    if (!readable_within(pfd.get(), timeout_ms)) {
        ::kill(pid, SIGKILL);
        ADD_FAILURE() << "process " << pid << " did not end within " << timeout_ms << " ms";
    }
    return reap(pfd.get());
}

/// One line of `ls -l /proc/self/fd`: the mode ("lr-x", "l-wx", "lrwx") and the target.
struct FdEntry { std::string mode; std::string target; };

/// Parses `ls -l /proc/self/fd` into fd number -> entry.
std::map<int, FdEntry> parse_fd_listing(std::string const& listing) {
    std::map<int, FdEntry> fds;
    std::istringstream in(listing);
    std::string line;
    while (std::getline(in, line)) {
        auto arrow = line.find(" -> ");
        if (arrow == std::string::npos) continue;
        auto space = line.rfind(' ', arrow - 1);
        fds[std::stoi(line.substr(space + 1, arrow - space - 1))] = {line.substr(0, 4), line.substr(arrow + 4)};
    }
    return fds;
}

}  // namespace

TEST(Process, SignalNames) {
    EXPECT_EQ(signal_name(SIGKILL), "SIGKILL");
    EXPECT_EQ(signal_name(SIGSEGV), "SIGSEGV");
    EXPECT_EQ(signal_name(SIGTERM), "SIGTERM");
    EXPECT_EQ(signal_name(200), "signal 200");
}

TEST(Process, Describe) {
    EXPECT_EQ((ExitStatus{ExitStatus::exited, 3}).describe(), "exited with code 3");
    EXPECT_EQ((ExitStatus{ExitStatus::signaled, 9}).describe(), "killed by signal 9 (SIGKILL)");
}

TEST(Process, SpawnExitCode) {
    auto [r, w] = make_pipe();
    pid_t pid = spawn_process({"/bin/sh", "-c", "exit 3"}, w.get());
    ASSERT_GT(pid, 0);
    ExitStatus st = reap_within(pid, 5000);
    EXPECT_EQ(st.kind, ExitStatus::exited);
    EXPECT_EQ(st.value, 3);
    EXPECT_EQ(st.describe(), "exited with code 3");
}

TEST(Process, SpawnSearchesPath) {
    auto [r, w] = make_pipe();
    pid_t pid = spawn_process({"true"}, w.get());
    ExitStatus st = reap_within(pid, 5000);
    EXPECT_EQ(st.kind, ExitStatus::exited);
    EXPECT_EQ(st.value, 0);
}

TEST(Process, SpawnOfAMissingProgramThrows) {
    auto [r, w] = make_pipe();
    EXPECT_THROW(spawn_process({"/nonexistent/shoal-no-such-program"}, w.get()), std::system_error);
}

TEST(Process, KilledBySignal) {
    auto [r, w] = make_pipe();
    pid_t pid = spawn_process({"/bin/sh", "-c", "exec sleep 30"}, w.get());
    Fd pfd = open_pidfd(pid);
    ::kill(pid, SIGKILL);
    ASSERT_TRUE(readable_within(pfd.get(), 5000));
    ExitStatus st = reap(pfd.get());
    EXPECT_EQ(st.kind, ExitStatus::signaled);
    EXPECT_EQ(st.value, 9);
    EXPECT_NE(st.describe().find("SIGKILL"), std::string::npos) << st.describe();
}

TEST(Process, SpawnedChildHasItsOwnProcessGroup) {
    auto [r, w] = make_pipe();
    pid_t pid = spawn_process({"/bin/sh", "-c", "exec sleep 30"}, w.get());
    EXPECT_EQ(::getpgid(pid), pid);
    ::kill(pid, SIGKILL);
    reap_within(pid, 5000);
}

TEST(Process, ChildGetsFdThreeAndNoOtherOfOurs) {
    // Descriptors of ours the child must not see (all close-on-exec), beside the one it must.
    // A pipe's two ends share one target name: our read end shows as "lr-x", fd 3 as "l-wx".
    auto [r, w] = make_pipe();
    auto [extra_r, extra_w] = make_pipe();
    Fd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    EventFd ev;
    std::map<std::string, int> ours;
    for (int fd : {extra_r.get(), extra_w.get(), sock.get(), ev.fd()}) ours[fd_target(fd)] = fd;
    std::string const passed = fd_target(w.get());
    ASSERT_EQ(ours.count(passed), 0u);

    // `exec` so that ls itself (not a subshell) lists what the spawned process had; its
    // stdout goes to fd 3, the pipe we read.
    pid_t pid = spawn_process({"/bin/sh", "-c", "exec ls -l /proc/self/fd/ >&3"}, w.get());
    w.reset();  // so that EOF comes when the child is done
    std::string listing = read_all(r.get(), 5000);
    ExitStatus st = reap_within(pid, 5000);
    EXPECT_EQ(st.kind, ExitStatus::exited);
    EXPECT_EQ(st.value, 0);

    auto fds = parse_fd_listing(listing);
    ASSERT_TRUE(fds.count(3)) << listing;
    EXPECT_EQ(fds[3].target, passed) << listing;
    int write_ends = 0;
    for (auto const& [num, e] : fds) {
        EXPECT_EQ(ours.count(e.target), 0u) << "fd " << num << " (" << e.target << ") leaked into the child\n" << listing;
        if (e.target == passed) {
            EXPECT_EQ(e.mode, "l-wx") << "fd " << num << ": our read end leaked into the child\n" << listing;
            ++write_ends;
        }
    }
    EXPECT_EQ(write_ends, 2) << listing;  // fd 3, and fd 1 that `>&3` made of it
}

TEST(Process, InheritableDescriptorsAreNotPassed) {
    // Descriptors the caller made inheritable (os.set_inheritable, a pipe of subprocess) are
    // not the spawned process's: it gets stdin, stdout, stderr and fd 3, nothing else.
    auto [r, w] = make_pipe();
    int p[2];
    ASSERT_EQ(::pipe(p), 0);  // no O_CLOEXEC: inheritable
    Fd inh_r(p[0]), inh_w(p[1]);
    Fd sock(::socket(AF_UNIX, SOCK_STREAM, 0));  // inheritable too
    Fd high(::fcntl(inh_w.get(), F_DUPFD, 200));  // far past the others
    std::set<std::string> inherited{fd_target(inh_r.get()), fd_target(inh_w.get()), fd_target(sock.get())};
    ASSERT_EQ(inherited.size(), 2u);  // a pipe's two ends share one target name
    pid_t pid = spawn_process({"/bin/sh", "-c", "exec ls -l /proc/self/fd/ >&3"}, w.get());
    w.reset();
    std::string listing = read_all(r.get(), 5000);
    ExitStatus st = reap_within(pid, 5000);
    EXPECT_EQ(st.value, 0);
    auto fds = parse_fd_listing(listing);
    for (auto const& [num, e] : fds) {
        EXPECT_EQ(inherited.count(e.target), 0u) << "fd " << num << " (" << e.target << ") leaked\n" << listing;
        if (num > 3 && e.target.rfind("/proc/", 0) != 0)  // ls's own listing of the directory
            ADD_FAILURE() << "fd " << num << " (" << e.target << ") in the child\n" << listing;
    }
}

TEST(Process, ChildFdAlreadyThreeIsPassed) {
    // The caller's fd happens to be 3: dup2(3, 3) would keep close-on-exec; it must not.
    int saved = ::fcntl(3, F_DUPFD_CLOEXEC, 10);  // whatever fd 3 is now (or -1)
    auto [r0, w0] = make_pipe();
    Fd r(::fcntl(r0.get(), F_DUPFD_CLOEXEC, 10));  // keep our ends off fd 3
    Fd w(::fcntl(w0.get(), F_DUPFD_CLOEXEC, 10));
    r0.reset();
    w0.reset();
    ASSERT_EQ(::dup3(w.get(), 3, O_CLOEXEC), 3);
    w.reset();
    std::string listing;
    pid_t pid = -1;
    try {
        pid = spawn_process({"/bin/sh", "-c", "echo three >&3"}, 3);
    } catch (...) {
    }
    // Restore fd 3 before any assertion can return.
    if (saved >= 0) {
        ::dup3(saved, 3, O_CLOEXEC);
        ::close(saved);
    } else {
        ::close(3);
    }
    ASSERT_GT(pid, 0);
    listing = read_all(r.get(), 5000);
    ExitStatus st = reap_within(pid, 5000);
    EXPECT_EQ(st.value, 0);
    EXPECT_EQ(listing, "three\n");
}

TEST(Process, OpenPidfdOfAGoneProcessThrows) {
    auto [r, w] = make_pipe();
    pid_t pid = spawn_process({"true"}, w.get());
    reap_within(pid, 5000);
    EXPECT_THROW(open_pidfd(pid), std::system_error);
}

TEST(Process, ReapOrKillReapsAnExitedChild) {
    auto [r, w] = make_pipe();
    pid_t pid = spawn_process({"/bin/sh", "-c", "exit 5"}, w.get());
    ExitStatus st = reap_or_kill(pid, 5'000 * k_ms);
    EXPECT_EQ(st.kind, ExitStatus::exited);
    EXPECT_EQ(st.value, 5);
}

TEST(Process, ReapOrKillKillsPastTheTimeout) {
    auto [r, w] = make_pipe();
    pid_t pid = spawn_process({"/bin/sh", "-c", "exec sleep 30"}, w.get());
    std::int64_t start = now_ns();
    ExitStatus st = reap_or_kill(pid, 100 * k_ms);
    std::int64_t took = now_ns() - start;
    EXPECT_EQ(st.kind, ExitStatus::signaled);
    EXPECT_EQ(st.value, SIGKILL);
    EXPECT_GE(took, 90 * k_ms);
    EXPECT_LT(took, 3'000 * k_ms);
}

// ---------------------------------------------------------------- die_with_parent

namespace {

/// Forks a child that forks a grandchild; the grandchild calls die_with_parent (or not) and
/// sleeps. Returns {child, grandchild}.
std::pair<pid_t, pid_t> child_with_grandchild(bool die_with) {
    auto [r, w] = make_pipe();
    pid_t child = fork_child([&] {
        r.reset();
        pid_t me = ::getpid();
        pid_t g = ::fork();
        if (g == 0) {
            if (die_with) die_with_parent(me);
            for (;;) ::pause();
        }
        if (::write(w.get(), &g, sizeof g) != sizeof g) return 2;
        for (;;) ::pause();
    });
    w.reset();
    pid_t grandchild = -1;
    if (!readable_within(r.get(), 5000) || ::read(r.get(), &grandchild, sizeof grandchild) != sizeof grandchild)
        grandchild = -1;
    return {child, grandchild};
}

}  // namespace

TEST(Process, DieWithParent) {
    auto [child, grandchild] = child_with_grandchild(true);
    ChildGuard guard(child);
    ASSERT_GT(grandchild, 0);
    // Give the grandchild time to run prctl() before its parent dies.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ::kill(child, SIGKILL);
    guard.wait(std::chrono::seconds(5));
    bool gone = process_gone_within(grandchild, 1000);
    if (!gone) ::kill(grandchild, SIGKILL);
    EXPECT_TRUE(gone) << "the grandchild outlived its parent by more than 1 s";
}

TEST(Process, WithoutDieWithParentTheGrandchildSurvives) {
    // The control for the test above: the same setup, and the grandchild lives on.
    auto [child, grandchild] = child_with_grandchild(false);
    ChildGuard guard(child);
    ASSERT_GT(grandchild, 0);
    ::kill(child, SIGKILL);
    guard.wait(std::chrono::seconds(5));
    EXPECT_FALSE(process_gone_within(grandchild, 200));
    ::kill(grandchild, SIGKILL);
    EXPECT_TRUE(process_gone_within(grandchild, 5000));
}

TEST(Process, DieWithParentExitsWhenTheParentIsAlreadyGone) {
    // The parent named is not our parent: as if it had died before prctl().
    ChildGuard child(fork_child([] {
        die_with_parent(::getppid() + 1);
        return 0;
    }));
    auto end = child.wait(std::chrono::seconds(5));
    EXPECT_TRUE(end.exited(1)) << end.str();
}
