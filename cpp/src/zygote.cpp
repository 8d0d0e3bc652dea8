// zygote.cpp — the zygote's serving loop and the driver's client.
#include "shoal/zygote.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace shoal {

namespace {
struct Wire {
    std::uint32_t op;
    std::uint32_t slot;
    std::int64_t pid;
    std::int32_t status_kind;
    std::int32_t status_value;
    WorkerSpec spec;
    std::uint32_t body_len;
    std::uint32_t reserved;
};
constexpr std::size_t k_max_body = 64 * 1024;

bool known_op(std::uint32_t op) {
    switch (static_cast<ZygoteOp>(op)) {
        case ZygoteOp::open_executor: case ZygoteOp::fork_worker: case ZygoteOp::import_modules:
        case ZygoteOp::kill_worker: case ZygoteOp::forked: case ZygoteOp::exited:
        case ZygoteOp::imported: return true;
    }
    return false;
}
}  // namespace

std::vector<std::byte> ZygoteMessage::encode() const {
    if (body.size() > k_max_body) throw std::length_error("ZygoteMessage: body too large");
    Wire w{};
    w.op = static_cast<std::uint32_t>(op);
    w.slot = slot;
    w.pid = pid;
    w.status_kind = status.kind;
    w.status_value = status.value;
    w.spec = spec;
    w.body_len = static_cast<std::uint32_t>(body.size());
    std::vector<std::byte> out(sizeof w + body.size());
    std::memcpy(out.data(), &w, sizeof w);
    std::memcpy(out.data() + sizeof w, body.data(), body.size());
    return out;
}

bool ZygoteMessage::decode(std::span<std::byte const> bytes, ZygoteMessage& out) noexcept {
    if (bytes.size() < sizeof(Wire)) return false;
    Wire w;
    std::memcpy(&w, bytes.data(), sizeof w);
    if (!known_op(w.op) || w.body_len != bytes.size() - sizeof w || w.body_len > k_max_body) return false;
    if (w.status_kind != ExitStatus::exited && w.status_kind != ExitStatus::signaled) return false;
    out.op = static_cast<ZygoteOp>(w.op);
    out.slot = w.slot;
    out.pid = w.pid;
    out.status = {static_cast<ExitStatus::Kind>(w.status_kind), w.status_value};
    out.spec = w.spec;
    out.body.assign(reinterpret_cast<char const*>(bytes.data()) + sizeof w, w.body_len);
    return true;
}

// ---------------------------------------------------------------- server

ZygoteServer::ZygoteServer(Fd control) : m_self(::getpid()), m_control(std::move(control)) {
    // The driver made the socket pair: SO_PEERCRED names it. (The zygote's parent is the driver
    // too, but after the driver's death it is init or a subreaper: the credentials are not.)
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(m_control.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0)
        return;  // not a socket pair (a test's stand-in): EOF is all there is to watch
    try {
        m_driver = open_pidfd(cred.pid);
    } catch (std::system_error const&) {
        m_driver_gone = true;  // ESRCH: it died before we got here
    }
}

void ZygoteServer::reply(int executor, ZygoteMessage const& m) noexcept {
    if (!m_executors.count(executor)) return;
    try {
        auto bytes = m.encode();
        send_message(executor, bytes);
    } catch (...) {
        // The executor closed its end: nobody to tell.
    }
}

void ZygoteServer::close_executor(int executor) noexcept {
    for (auto& w : m_workers)
        if (w.executor == executor) {
            ::kill(w.pid, SIGKILL);
            w.executor = -1;  // still reaped below; reported to nobody
        }
    m_executors.erase(executor);
}

void ZygoteServer::kill_all() noexcept {
    for (auto& w : m_workers) ::kill(w.pid, SIGKILL);
    for (auto& w : m_workers) {
        try { reap(w.pidfd.get()); } catch (...) {}
    }
    m_workers.clear();
}

ZygoteServer::Action ZygoteServer::next(int timeout_ms) {
    std::vector<std::byte> buf;
    std::vector<Fd> fds;
    for (;;) {
        if (m_driver_gone) {
            kill_all();
            return Action{};
        }
        std::vector<pollfd> pfds;
        pfds.push_back({m_control.get(), POLLIN, 0});
        std::vector<int> execs;
        for (auto const& [fd, owner] : m_executors) {
            pfds.push_back({fd, POLLIN, 0});
            execs.push_back(fd);
        }
        for (auto const& w : m_workers) pfds.push_back({w.pidfd.get(), POLLIN, 0});
        pfds.push_back({m_driver.get(), POLLIN, 0});  // last; fd -1 (no driver known) is skipped
        int r = ::poll(pfds.data(), pfds.size(), timeout_ms);
        if (r < 0) {
            if (errno == EINTR) continue;
            throw_errno("zygote poll");
        }
        if (r == 0) {
            Action idle;
            idle.kind = Action::idle;
            return idle;
        }
        if (pfds.back().revents) {  // the driver is gone (killed, maybe): so are we, and every worker
            m_driver_gone = true;
            kill_all();
            return Action{};
        }
        // Exits first, so an executor hears of a death before anything else of that worker.
        std::size_t base = 1 + execs.size();
        for (std::size_t i = m_workers.size(); i-- > 0;) {
            if (!pfds[base + i].revents) continue;
            Worker w = std::move(m_workers[i]);
            m_workers.erase(m_workers.begin() + static_cast<std::ptrdiff_t>(i));
            ExitStatus st = reap(w.pidfd.get());
            if (w.executor >= 0) {
                ZygoteMessage m;
                m.op = ZygoteOp::exited;
                m.slot = w.slot;
                m.pid = w.pid;
                m.status = st;
                reply(w.executor, m);
            }
        }
        if (pfds[0].revents) {
            auto st = recv_message(m_control.get(), buf, fds);
            if (st == RecvStatus::eof) {  // the driver is gone: so are we, and every worker
                kill_all();
                return Action{};
            }
            ZygoteMessage m;
            if (st == RecvStatus::message && ZygoteMessage::decode(buf, m) &&
                m.op == ZygoteOp::open_executor && fds.size() == 1) {
                int fd = fds[0].get();
                m_executors.emplace(fd, std::move(fds[0]));
            }
        }
        for (std::size_t i = 0; i < execs.size(); ++i) {
            if (!pfds[1 + i].revents) continue;
            int ex = execs[i];
            RecvStatus st;
            try {
                st = recv_message(ex, buf, fds);
            } catch (std::exception const&) {
                st = RecvStatus::eof;  // a broken executor socket: treat as closed
            }
            if (st == RecvStatus::eof) {
                close_executor(ex);
                continue;
            }
            ZygoteMessage m;
            if (st != RecvStatus::message || !ZygoteMessage::decode(buf, m)) continue;
            if (m.op == ZygoteOp::fork_worker && (fds.size() == 2 || fds.size() == 3)) {
                Action a;
                a.kind = Action::fork;
                a.executor = ex;
                a.spec = m.spec;
                a.fds = std::move(fds);
                return a;
            }
            if (m.op == ZygoteOp::import_modules) {
                Action a;
                a.kind = Action::import_modules;
                a.executor = ex;
                std::size_t start = 0;
                while (start <= m.body.size()) {
                    std::size_t end = m.body.find('\n', start);
                    if (end == std::string::npos) end = m.body.size();
                    if (end > start) a.modules.push_back(m.body.substr(start, end - start));
                    start = end + 1;
                }
                return a;
            }
            if (m.op == ZygoteOp::kill_worker) {
                for (auto const& w : m_workers)
                    if (w.executor == ex && w.slot == m.slot) ::kill(w.pid, SIGKILL);
            }
        }
    }
}

void ZygoteServer::forked(Action& action, pid_t pid) {
    action.fds.clear();  // the worker has its own copies now
    Worker w{pid, open_pidfd(pid), action.executor, action.spec.slot};
    m_workers.push_back(std::move(w));
    ZygoteMessage m;
    m.op = ZygoteOp::forked;
    m.slot = action.spec.slot;
    m.pid = pid;
    reply(action.executor, m);
}

std::vector<Fd> ZygoteServer::become_worker(Action&& action) {
    m_control.reset();
    m_driver.reset();
    m_executors.clear();
    m_workers.clear();  // closes the pidfds of our siblings
    die_with_parent(m_self);
    return std::move(action.fds);
}

void ZygoteServer::imported(Action const& action, bool ok, std::string const& error) {
    ZygoteMessage m;
    m.op = ZygoteOp::imported;
    m.status.value = ok ? 0 : 1;
    m.body = error.substr(0, k_max_body);
    reply(action.executor, m);
}

// ---------------------------------------------------------------- client

ZygoteClient::ZygoteClient(std::vector<std::string> const& argv) {
    auto [ours, theirs] = socket_pair();
    m_pid = spawn_process(argv, theirs.get());
    m_owner = ::getpid();
    m_control = std::move(ours);
}

ZygoteClient::~ZygoteClient() {
    // EOF: the zygote kills its workers and exits. shutdown() acts on the socket, not on our
    // descriptor: a fork()ed child of ours that still holds a copy does not delay the EOF.
    if (m_control && ::getpid() == m_owner) ::shutdown(m_control.get(), SHUT_RDWR);
    m_control.reset();
    // A forked copy of the driver (os.fork, a multiprocessing worker) closes only its copy
    // of the socket: the zygote is not its child, and it must not kill the original's.
    if (m_pid > 0 && ::getpid() == m_owner) reap_or_kill(m_pid, 2'000'000'000);
}

Fd ZygoteClient::open_executor() {
    auto [ours, theirs] = socket_pair();
    ZygoteMessage m;
    m.op = ZygoteOp::open_executor;
    int fd = theirs.get();
    std::lock_guard lock(m_mutex);
    send_message(m_control.get(), m.encode(), std::span<int const>(&fd, 1));
    return std::move(ours);
}

bool ZygoteClient::alive() const noexcept {
    if (m_pid <= 0 || ::getpid() != m_owner) return false;
    siginfo_t info{};
    // WNOWAIT: look without reaping, so the destructor still reaps.
    if (::waitid(P_PID, static_cast<id_t>(m_pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return false;
    return info.si_pid == 0;
}

}  // namespace shoal
