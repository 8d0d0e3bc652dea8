// process.cpp — posix_spawn, pidfds, reaping, exit descriptions.
#include "shoal/process.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace shoal {

std::string signal_name(int sig) {
    char const* abbrev = sigabbrev_np(sig);
    return abbrev ? std::string("SIG") + abbrev : "signal " + std::to_string(sig);
}

std::string ExitStatus::describe() const {
    if (kind == signaled) return "killed by signal " + std::to_string(value) + " (" + signal_name(value) + ")";
    return "exited with code " + std::to_string(value);
}

pid_t spawn_process(std::vector<std::string> const& argv, int child_fd) {
    std::vector<char*> args;
    for (auto const& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&actions);
    posix_spawnattr_init(&attr);
    // dup2 onto fd 3 clears close-on-exec there; everything else of ours is close-on-exec.
    if (child_fd == 3) {
        // dup2(3, 3) would keep FD_CLOEXEC: go through a spare number.
        posix_spawn_file_actions_adddup2(&actions, child_fd, 4);
        posix_spawn_file_actions_adddup2(&actions, 4, 3);
        posix_spawn_file_actions_addclose(&actions, 4);
    } else {
        posix_spawn_file_actions_adddup2(&actions, child_fd, 3);
    }
    // Descriptors the caller made inheritable (os.set_inheritable, a subprocess's pipes) are
    // not the child's: close everything past fd 3, as multiprocessing's spawn does. The
    // zygote's workers inherit only what the zygote holds, so they are clean too.
    posix_spawn_file_actions_addclosefrom_np(&actions, 4);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);

    pid_t pid = -1;
    int rc = ::posix_spawnp(&pid, args[0], &actions, &attr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        errno = rc;
        throw_errno("posix_spawn " + argv[0]);
    }
    return pid;
}

Fd open_pidfd(pid_t pid) {
    Fd fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    if (!fd) throw_errno("pidfd_open");
    ::fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
    return fd;
}

static ExitStatus from_siginfo(siginfo_t const& info) {
    ExitStatus s;
    if (info.si_code == CLD_EXITED) {
        s.kind = ExitStatus::exited;
        s.value = info.si_status;
    } else {
        s.kind = ExitStatus::signaled;
        s.value = info.si_status;
    }
    return s;
}

ExitStatus reap(int pidfd) {
    siginfo_t info{};
    for (;;) {
        if (::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED) == 0) return from_siginfo(info);
        if (errno != EINTR) throw_errno("waitid");
    }
}

ExitStatus reap_or_kill(pid_t pid, std::int64_t timeout_ns) {
    Fd pfd;
    try {
        pfd = open_pidfd(pid);
    } catch (std::system_error const&) {
        int st = 0;
        ::waitpid(pid, &st, 0);
        return WIFSIGNALED(st) ? ExitStatus{ExitStatus::signaled, WTERMSIG(st)}
                               : ExitStatus{ExitStatus::exited, WEXITSTATUS(st)};
    }
    pollfd p{pfd.get(), POLLIN, 0};
    int ms = timeout_ns < 0 ? -1 : static_cast<int>(timeout_ns / 1'000'000);
    int r;
    do { r = ::poll(&p, 1, ms); } while (r < 0 && errno == EINTR);
    if (r == 0) ::kill(pid, SIGKILL);
    return reap(pfd.get());
}

void die_with_parent(pid_t expected_parent) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != expected_parent) ::_exit(1);  // the parent died before prctl
}

}  // namespace shoal
