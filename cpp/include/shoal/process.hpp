// process.hpp — starting, watching and naming the end of processes.
#pragma once

#include "shoal/sys.hpp"

#include <string>
#include <sys/types.h>
#include <vector>

namespace shoal {

/// How a process ended.
struct ExitStatus {
    enum Kind : std::int32_t { exited = 1, signaled = 2 } kind = exited;
    std::int32_t value = 0;  // exit code or signal number
    /// "exited with code 3" / "killed by signal 9 (SIGKILL)".
    std::string describe() const;
};

/// Name of a signal, e.g. "SIGSEGV".
std::string signal_name(int sig);

/// Starts argv[0] (searched in PATH) with posix_spawn: no fork of the caller, safe with
/// threads, cost independent of the caller's heap. The child gets stdin, stdout, stderr,
/// `child_fd` as fd 3 and no other descriptor of the caller (not even inheritable ones:
/// every descriptor past 3 is closed in the child), and its own process group so a
/// terminal's Ctrl-C reaches only the caller. Throws std::system_error.
pid_t spawn_process(std::vector<std::string> const& argv, int child_fd);

/// A pidfd for `pid` (readable when it exits). Throws std::system_error.
Fd open_pidfd(pid_t pid);

/// Reaps a child whose pidfd is readable. Returns its status. Throws on error.
ExitStatus reap(int pidfd);

/// Waits up to timeout_ns for child `pid` to exit and reaps it; SIGKILLs it past the
/// timeout. For the caller's own children only.
ExitStatus reap_or_kill(pid_t pid, std::int64_t timeout_ns);

/// In a freshly forked child: die with the parent (PR_SET_PDEATHSIG SIGKILL), and die at
/// once if the parent `expected_parent` is already gone.
void die_with_parent(pid_t expected_parent);

}  // namespace shoal
