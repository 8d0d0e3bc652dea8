// pool.cpp — the driver's pool: layout of shared memory, serving the pool, worker lives.
// See pool.hpp for the data flow of a task.
#include "shoal/pool.hpp"
#include "shoal/frame.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <poll.h>
#include <stdexcept>
#include <sys/socket.h>
#include <unistd.h>

namespace shoal {

namespace {
constexpr std::size_t k_page = 4096;
std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }
/// `o` with workers = 0 made one per online CPU.
PoolOptions resolved(PoolOptions o) {
    if (o.workers == 0) o.workers = static_cast<std::size_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
    return o;
}
Bytes text_bytes(std::string const& s) {
    auto const* p = reinterpret_cast<std::byte const*>(s.data());
    return Bytes(p, p + s.size());
}
}  // namespace

InheritedPoolError::InheritedPoolError(pid_t owner, pid_t self)
    : std::logic_error("shoal: this executor belongs to process " + std::to_string(owner) +
                       "; process " + std::to_string(self) +
                       " is a fork()ed child of it and cannot use it (its workers, rings and locks are "
                       "the parent's): make a new executor in the child"),
      m_owner(owner) {}

void Pool::check_owner() const {
    pid_t const self = self_pid();
    if (self != m_owner) throw InheritedPoolError(m_owner, self);
}

void Pool::fail_task_locked(std::uint64_t task_id, Completion::Kind kind, ExitStatus status,
                            Bytes const& payload, std::uint32_t worker) {
    Completion c;
    c.kind = kind;
    c.task_id = task_id;
    c.status = status;
    c.payload = payload;
    c.worker = worker;
    m_ready.push_back(std::move(c));
}

void Pool::fail_queued_locked(Completion::Kind kind, ExitStatus status, Bytes const& payload) {
    for (auto id : m_scheduler.cancel_all()) fail_task_locked(id, kind, status, payload);
}

void Pool::kill_slot_locked(std::size_t slot) noexcept {
    ZygoteMessage m;
    m.op = ZygoteOp::kill_worker;
    m.slot = static_cast<std::uint32_t>(slot);
    try { send_message(m_executor.get(), m.encode()); } catch (...) {}  // the zygote is gone: so is the worker
}

Pool::Pool(ZygoteClient& zygote, PoolOptions options)
    : m_options(resolved(std::move(options))), m_scheduler(m_options.workers, m_options.scheduler), m_owner(self_pid()) {
    std::size_t const n = m_options.workers;
    std::size_t const tb = Ring::bytes_for(m_options.task_ring_bytes);
    std::size_t const rb = Ring::bytes_for(m_options.result_ring_bytes);
    std::size_t size = round_up(sizeof(DoorbellWord) + n * (tb + rb), k_page);
    m_memory = SharedMemory::create(size, "shoal-pool");
    m_init_frame = std::make_shared<Bytes const>(encode_frame(FrameKind::function, 0, 0, 0, 1, m_options.init_payload));
    m_doorbell = Doorbell(new (m_memory.data()) DoorbellWord{}, EventFd());

    std::size_t offset = sizeof(DoorbellWord);
    m_slots.resize(n);
    for (auto& slot : m_slots) slot.reader = MessageReader(m_options.max_message_bytes);
    for (std::size_t i = 0; i < n; ++i) {
        WorkerSpec s;
        s.slot = static_cast<std::uint32_t>(i);
        s.task_ring_offset = offset;
        s.task_ring_capacity = m_options.task_ring_bytes;
        offset += tb;
        s.result_ring_offset = offset;
        s.result_ring_capacity = m_options.result_ring_bytes;
        offset += rb;
        s.doorbell_offset = 0;
        s.spin_ns = m_options.spin_ns;
        m_specs.push_back(s);
    }

    m_executor = zygote.open_executor();
    if (!m_options.preload.empty()) {
        std::string error;
        if (!import_modules(m_options.preload, error))
            throw std::runtime_error("shoal: preload failed in the zygote: " + error);
    }
    if (!m_options.hints.empty()) {
        std::string ignored;  // a hint the zygote cannot import is imported by each worker instead
        import_modules(m_options.hints, ignored);
    }
    std::lock_guard lock(m_mutex);
    for (std::size_t i = 0; i < n; ++i) start_worker_locked(i);
}

bool Pool::import_modules(std::vector<std::string> const& names, std::string& error) {
    ZygoteMessage m;
    m.op = ZygoteOp::import_modules;
    for (auto const& name : names) m.body += name + "\n";
    send_message(m_executor.get(), m.encode());
    std::vector<std::byte> buf;
    std::vector<Fd> fds;
    ZygoteMessage reply;
    if (recv_message(m_executor.get(), buf, fds) != RecvStatus::message ||
        !ZygoteMessage::decode(buf, reply) || reply.op != ZygoteOp::imported)
        throw std::runtime_error("shoal: the zygote did not answer an import request");
    if (reply.status.value == 0) return true;
    error = reply.body;
    return false;
}

Pool::~Pool() {
    if (self_pid() != m_owner) return;  // a forked copy: nothing here is ours to stop
    if (!m_finished) {
        close(true);
        join(2'000'000'000);
    }
}

void Pool::start_worker_locked(std::size_t i) {
    Slot& s = m_slots[i];
    WorkerSpec const& spec = m_specs[i];
    // The slot's previous worker (if any) has been reaped: nobody else touches these rings.
    s.tasks = Ring::create(m_memory.data() + spec.task_ring_offset, spec.task_ring_capacity);
    s.results = Ring::create(m_memory.data() + spec.result_ring_offset, spec.result_ring_capacity);
    s.reader.reset();
    s.writer = MessageWriter();
    s.outbox.clear();
    s.outbox.push_back(m_init_frame);
    s.pid = 0;
    s.ready = false;
    s.stopping = false;
    s.exited = false;
    s.kill_reason.clear();
    s.killed.clear();
    m_scheduler.worker_started(i);
    ZygoteMessage m;
    m.op = ZygoteOp::fork_worker;
    m.slot = spec.slot;
    m.spec = spec;
    int fds[3] = {m_memory.fd(), m_doorbell.fd(), m_options.arena ? m_options.arena->fd() : -1};
    try {
        send_message(m_executor.get(), m.encode(), std::span<int const>(fds, m_options.arena ? 3 : 2));
    } catch (std::system_error const&) {
        // The zygote is gone; the next thread that serves the pool reads its EOF.
        s.exited = true;
        m_scheduler.worker_died(i);
    }
}

void Pool::define_function(std::uint64_t fn_id, std::span<std::byte const> pickled) {
    check_owner();
    auto frame = std::make_shared<Bytes const>(encode_frame(FrameKind::function, 0, 0, fn_id, 1, pickled));
    std::lock_guard lock(m_mutex);
    m_scheduler.define_function(fn_id, std::move(frame));
}

void Pool::forget_function(std::uint64_t fn_id) {
    check_owner();
    auto frame = std::make_shared<Bytes const>(encode_frame(FrameKind::forget, 0, 0, fn_id, 1, {}));
    std::lock_guard lock(m_mutex);
    m_scheduler.forget_function(fn_id, frame);
    pump_locked();
}

bool Pool::submit(std::uint64_t task_id, std::uint64_t fn_id, std::uint32_t count,
                  std::span<std::byte const> payload, std::span<BufferRef const> refs, bool concurrent,
                  std::int64_t worker, std::uint32_t limit_ms, bool alone) {
    check_owner();
    if (worker < -1 || worker >= static_cast<std::int64_t>(m_slots.size()))
        throw std::out_of_range("Pool::submit: no worker slot " + std::to_string(worker) + " (the pool has " +
                                std::to_string(m_slots.size()) + ")");
    auto frame = std::make_shared<Bytes const>(encode_frame(FrameKind::task, limit_ms, task_id, fn_id, count, payload, refs));
    std::lock_guard lock(m_mutex);
    if (m_broken || m_closing) {
        fail_task_locked(task_id, m_broken ? m_broken_kind : Completion::broken, m_broken_status,
                         m_broken_payload);
        m_ready_cv.notify_all();
        return true;
    }
    m_scheduler.submit(Task{task_id, fn_id, count, 0, std::move(frame), concurrent, worker, limit_ms, alone});
    std::int64_t const now = now_ns();
    m_caller_ns = now;
    // Results drained here free in-flight room. A thread sleeping on the doorbell hears of
    // them; otherwise they wait for this caller (see the return value) or the next taker.
    bool const had = !m_ready.empty();
    if (drain_locked() && !had && !m_ready.empty()) {
        m_ready_since_ns = now;
        if (m_poller) wake_poller();
    }
    pump_locked();
    return !m_ready.empty() && (m_ready.size() >= 16 || now - m_ready_since_ns >= 100'000);
}

void Pool::take_ready(std::vector<Completion>& out, std::uint64_t* batch_seq) {
    check_owner();
    std::lock_guard lock(m_mutex);
    if (m_ready.empty()) return;
    for (auto& c : m_ready) out.push_back(std::move(c));
    m_ready.clear();
    if (batch_seq) *batch_seq = ++m_batches;
}

bool Pool::cancel(std::uint64_t task_id) {
    check_owner();
    std::lock_guard lock(m_mutex);
    return m_scheduler.cancel(task_id);
}

int Pool::kill(std::uint64_t task_id) {
    check_owner();
    std::lock_guard lock(m_mutex);
    if (m_scheduler.cancel(task_id)) return 1;
    std::int64_t const slot = m_scheduler.slot_of(task_id);
    if (slot < 0) return 0;
    Slot& s = m_slots[static_cast<std::size_t>(slot)];
    if (s.exited) return 0;  // already killed for a bad message: its tasks complete as crashed
    s.killed.push_back(task_id);
    if (s.killed.size() == 1) kill_slot_locked(static_cast<std::size_t>(slot));
    return 2;
}

std::vector<std::uint64_t> Pool::cancel_all() {
    if (self_pid() != m_owner) return {};  // a copy's queue is the parent's: nothing of it is ours
    std::lock_guard lock(m_mutex);
    return m_scheduler.cancel_all();
}

void Pool::pump_locked() {
    std::vector<std::pair<std::size_t, SharedBytes>> out;
    m_scheduler.assign(out);
    for (auto& [slot, frame] : out) m_slots[slot].outbox.push_back(std::move(frame));
    for (auto& s : m_slots) {
        if (s.exited) continue;
        bool pushed = false;
        for (;;) {
            if (!s.writer.active() || s.writer.done()) {
                if (s.outbox.empty()) break;
                s.writer = MessageWriter(std::move(s.outbox.front()));
                s.outbox.pop_front();
            }
            if (s.writer.pump(s.tasks)) {
                pushed = true;
                continue;
            }
            pushed = true;  // a part may have gone in
            // Full: the worker rings our doorbell when it frees room.
            if (s.tasks.producer_sleep_begin(s.writer.next_fragment(s.tasks))) break;
        }
        if (pushed && s.tasks.consumer_needs_wake()) s.tasks.wake_consumer();
    }
}

bool Pool::drain_locked() {
    bool any = false;
    for (std::size_t i = 0; i < m_slots.size(); ++i) any = drain_slot_locked(i) || any;
    return any;
}

void Pool::kill_bad_worker_locked(std::size_t i, std::string reason) {
    Slot& s = m_slots[i];
    kill_slot_locked(i);
    s.exited = true;  // read nothing more from it; the exit report restarts it
    s.reader.reset(); // frees what it sent of a message
    s.kill_reason = std::move(reason);
}

bool Pool::drain_slot_locked(std::size_t i) {
    bool any = false;
    std::string error;
    {
        Slot& s = m_slots[i];
        if (s.exited) return false;
        for (int budget = 0; budget < 4096; ++budget) {
            bool producer_waiting = false;
            auto st = s.reader.poll(s.results, producer_waiting);
            if (st == MessageReader::Status::empty) break;
            if (st != MessageReader::Status::message) {
                // A worker that writes garbage is treated as crashed.
                kill_bad_worker_locked(i, st == MessageReader::Status::too_large
                    ? "it sent a message larger than the " + std::to_string(m_options.max_message_bytes) +
                          "-byte bound on what a worker may send (PoolOptions::max_message_bytes)"
                    : std::string("it sent a corrupt message"));
                break;
            }
            any = true;
            Bytes& msg = s.reader.message();
            FrameView f;
            if (!decode_frame(msg, f, error) || !is_worker_frame(f.header.kind)) {
                kill_bad_worker_locked(i, "it sent a malformed frame (" +
                                              (error.empty() ? std::string("not a worker's kind") : error) + ")");
                break;
            }
            switch (f.header.kind) {
                case FrameKind::result: {
                    std::vector<ArenaBlock> buffers;
                    if (f.header.buffers != 0 && !adopt_buffers_locked(i, f, buffers)) {
                        kill_bad_worker_locked(i, "it referred to arena memory it does not own");
                        break;
                    }
                    auto aux = static_cast<std::int64_t>(f.header.aux);
                    auto done = m_scheduler.complete(i, f.header.task_id, aux);
                    if (!done) break;  // not ours: drop (frees buffers)
                    Completion c;
                    // How many times it ran again after a worker died under it (traces show it).
                    c.status.value = static_cast<std::int32_t>(done->attempts > 0 ? done->attempts - 1 : 0);
                    c.buffers = std::move(buffers);
                    c.kind = Completion::result;
                    c.flags = f.header.flags;
                    c.task_id = f.header.task_id;
                    c.aux = f.header.aux;
                    c.worker = static_cast<std::uint32_t>(i);
                    c.payload_offset = static_cast<std::size_t>(f.payload.data() - msg.data());
                    c.payload = std::move(msg);
                    m_ready.push_back(std::move(c));
                    break;
                }
                case FrameKind::output: {
                    Completion c;
                    c.kind = Completion::output;
                    c.flags = f.header.flags;
                    c.worker = static_cast<std::uint32_t>(i);
                    c.payload = std::move(msg);
                    c.payload_offset = sizeof(FrameHeader);
                    m_ready.push_back(std::move(c));
                    break;
                }
                case FrameKind::ready:
                    s.ready = true;
                    // Its id in the arena, for reclaiming what it holds when it dies.
                    s.owner = f.header.aux > Arena::k_creator && f.header.aux <= 0xFFFFFFFFu
                                  ? static_cast<std::uint32_t>(f.header.aux) : 0;
                    m_early_deaths = 0;
                    break;
                case FrameKind::init_failed: {
                    Bytes payload(f.payload.begin(), f.payload.end());
                    if (!m_broken) fail_all_locked(Completion::init_failed, payload, ExitStatus{});
                    break;
                }
                default: break;
            }
            if (s.exited) break;  // killed for what it sent (above): read nothing more of it
        }
    }
    return any;
}

void Pool::fail_all_locked(Completion::Kind kind, Bytes const& payload, ExitStatus status) {
    m_broken = true;
    m_broken_kind = kind;
    m_broken_payload = payload;
    m_broken_status = status;
    fail_queued_locked(kind, status, payload);
}

void Pool::handle_zygote_locked() {
    std::vector<std::byte> buf;
    std::vector<Fd> fds;
    for (;;) {
        RecvStatus st;
        try {
            st = recv_message(m_executor.get(), buf, fds, /*nonblocking=*/true);
        } catch (std::exception const&) {
            st = RecvStatus::eof;
        }
        if (st == RecvStatus::would_block) return;
        if (st == RecvStatus::eof) {
            // The zygote is gone, and with it every worker (they die with their parent).
            ExitStatus gone{ExitStatus::signaled, 9};
            for (std::size_t i = 0; i < m_slots.size(); ++i) {
                if (m_slots[i].exited) continue;
                m_slots[i].exited = true;
                reclaim_locked(i);
                for (auto& t : m_scheduler.worker_died(i))
                    fail_task_locked(t.id, Completion::crashed, gone, {}, static_cast<std::uint32_t>(i));
            }
            if (!m_broken) fail_all_locked(Completion::broken, text_bytes("the zygote process died"), gone);
            m_executor.reset();
            m_executor = Fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));  // inert: never readable
            return;
        }
        ZygoteMessage m;
        if (!ZygoteMessage::decode(buf, m) || m.slot >= m_slots.size()) continue;
        Slot& s = m_slots[m.slot];
        if (m.op == ZygoteOp::forked) {
            s.pid = m.pid;
        } else if (m.op == ZygoteOp::exited) {
            worker_exited_locked(m.slot, m.status);
        }
    }
}

bool Pool::adopt_buffers_locked(std::size_t i, FrameView const& f, std::vector<ArenaBlock>& out) {
    Slot const& s = m_slots[i];
    if (!m_options.arena || s.owner == 0) return false;
    out.reserve(f.header.buffers);
    for (std::size_t k = 0; k < f.header.buffers; ++k) {
        BufferRef r = f.ref(k);
        ArenaRef ref{r.offset, r.length};
        if (!m_options.arena->adopt(ref, s.owner, Arena::k_creator)) {
            out.clear();  // frees what was adopted so far
            return false;
        }
        out.emplace_back(m_options.arena, ref, Arena::k_creator);
    }
    return true;
}

void Pool::reclaim_locked(std::size_t i) noexcept {
    Slot& s = m_slots[i];
    if (m_options.arena && s.owner != 0) m_options.arena->reclaim(s.owner);
    s.owner = 0;
}

void Pool::worker_exited_locked(std::size_t i, ExitStatus status) {
    drain_slot_locked(i);  // results it wrote before it died still count
    reclaim_locked(i);     // after the drain: blocks its results handed over are ours now
    Slot& s = m_slots[i];
    bool was_ready = s.ready;
    bool was_stopping = s.stopping;
    s.exited = true;
    s.pid = 0;
    Bytes const reason = text_bytes(s.kill_reason);
    // Who is to blame: tasks kill() stopped, or the running task if the worker's own timer
    // killed it (SIGALRM) and that task had a limit. Only they fail; the others go back.
    std::vector<std::uint64_t> blame = std::move(s.killed);
    s.killed.clear();
    bool timed_out = false;
    if (blame.empty() && status.kind == ExitStatus::signaled && status.value == SIGALRM) {
        Task const* t = m_scheduler.running(i);
        if (t != nullptr && t->limit_ms != 0) {
            blame.push_back(t->id);
            timed_out = true;
        }
    }
    for (auto& t : m_scheduler.worker_died(i, blame)) {
        bool const blamed = std::find(blame.begin(), blame.end(), t.id) != blame.end();
        Completion::Kind const kind = !blamed ? Completion::crashed : timed_out ? Completion::timed_out : Completion::killed;
        fail_task_locked(t.id, kind, status, blamed ? Bytes{} : reason, static_cast<std::uint32_t>(i));
    }
    if (m_killing) return;
    if (m_broken) {
        // No worker will be started again: what was re-queued fails like the rest.
        fail_queued_locked(m_broken_kind, m_broken_status, m_broken_payload);
        return;
    }
    if (m_closing && was_stopping && m_scheduler.queued() == 0) return;
    if (!was_ready && !(was_stopping && status.kind == ExitStatus::exited && status.value == 0)) {
        if (++m_early_deaths >= 3) {
            fail_all_locked(Completion::broken,
                            text_bytes("workers die as they start (" + status.describe() + ")"), status);
            return;
        }
    }
    start_worker_locked(i);
}

void Pool::stop_idle_workers_locked() {
    static auto const shutdown_frame =
        std::make_shared<Bytes const>(encode_frame(FrameKind::shutdown, 0, 0, 0, 0, {}));
    bool const closing = m_closing && !m_killing && (m_scheduler.queued() == 0 || m_broken);
    for (std::size_t i = 0; i < m_slots.size(); ++i) {
        Slot& s = m_slots[i];
        if (s.exited || s.stopping || !m_scheduler.idle(i)) continue;
        if (closing || m_scheduler.exhausted(i)) {
            s.stopping = true;
            m_scheduler.set_accepting(i, false);
            s.outbox.push_back(shutdown_frame);
        }
    }
}

bool Pool::results_waiting() const noexcept {
    for (auto const& s : m_slots)
        if (!s.exited && !s.results.empty()) return true;
    return false;
}

void Pool::wake_poller() noexcept { m_wakeup.signal(); }

void Pool::service_locked() {
    while (drain_locked()) {}
    handle_zygote_locked();
    stop_idle_workers_locked();
    pump_locked();
    if (m_closing && !m_finished) {
        bool all_exited = true;
        for (auto const& s : m_slots) all_exited = all_exited && s.exited;
        if (all_exited) {
            fail_queued_locked(Completion::broken, ExitStatus{ExitStatus::signaled, 9}, {});
            m_finished = true;
            // The zygote forgets this executor: shutdown() so that it sees EOF even while a
            // fork()ed child of ours holds a copy of the socket (only the owner gets here).
            ::shutdown(m_executor.get(), SHUT_RDWR);
            m_executor.reset();
            m_ready_cv.notify_all();
        }
    }
}

bool Pool::take(std::vector<Completion>& out, std::int64_t timeout_ns, bool background,
                std::uint64_t epoch, std::uint64_t* batch_seq) {
    check_owner();
    std::int64_t const start = now_ns();
    std::unique_lock lock(m_mutex);
    if (!background) {
        ++m_foreground;
        if (m_poller && m_poller_background) m_wakeup.signal();  // hand us the doorbell
    }
    struct Leave {
        Pool& p; bool bg;
        ~Leave() {  // under the lock
            if (!bg && --p.m_foreground == 0) {
                p.m_caller_ns = now_ns();
                if (p.m_background_parked) p.m_ready_cv.notify_all();  // it waits out the grace now
            }
        }
    } leave{*this, background};
    for (;;) {
        if (background && !m_finished) {
            // A caller is waiting for a result, or was here a moment ago and is likely to be back
            // (a loop of submit(...).result(), or of submits): it takes results itself, everyone's.
            // Waking this thread for each result put two more thread wake-ups (and GIL
            // hand-overs) on every task. So while a caller waits, this thread sleeps until the
            // last one leaves (Leave wakes it: waking every millisecond instead cost a core's
            // worth of preemptions of the workers on a small machine); then it waits out the
            // grace period, and what nobody waits for is delivered soon after.
            if (m_foreground > 0) {
                m_background_parked = true;
                m_ready_cv.wait_for(lock, std::chrono::milliseconds(200));
                m_background_parked = false;
                continue;
            }
            std::int64_t const since = now_ns() - m_caller_ns;
            if (since < k_caller_grace_ns) {
                m_ready_cv.wait_for(lock, std::chrono::nanoseconds(k_caller_grace_ns - since));
                continue;
            }
        }
        service_locked();
        if (!m_ready.empty()) {
            for (auto& c : m_ready) out.push_back(std::move(c));
            m_ready.clear();
            if (batch_seq) *batch_seq = ++m_batches;
            return true;
        }
        if (m_finished) return false;
        if (!background && m_epoch.load(std::memory_order_acquire) != epoch) return true;
        std::int64_t left = timeout_ns < 0 ? std::int64_t{200'000'000} : timeout_ns - (now_ns() - start);
        if (left <= 0) return true;
        bool const defer = background && m_foreground > 0;
        // Only a caller waiting for its result spins, and only when tasks are short: waiting out
        // a long task on a spinning core would take that core from the workers running it. The
        // completion thread never spins: it would compete with a submitting caller and the workers.
        double const task_ns = m_scheduler.task_ns();
        bool const spin = !background && (task_ns <= 0 || task_ns < 4.0 * static_cast<double>(m_options.spin_ns));
        if (spin) {
            // Without the lock: a result usually arrives within a few µs of work.
            lock.unlock();
            bool ready = false;
            for (SpinWait w(std::min(m_options.spin_ns, left)); !(ready = results_waiting());)
                if (!w.next()) break;
            lock.lock();
            if (ready || !m_ready.empty()) continue;
        }
        // Checked under the lock: interrupt() bumps the epoch, then locks to wake us.
        if (!background && m_epoch.load(std::memory_order_acquire) != epoch) return true;
        if (m_poller || defer) {
            // Another thread sleeps on the doorbell and will hand out what arrives.
            m_ready_cv.wait_for(lock, std::chrono::nanoseconds(std::min(left, std::int64_t{200'000'000})));
            continue;
        }
        m_poller = true;
        m_poller_background = background;
        lock.unlock();
        m_doorbell.sleep_begin();
        if (!results_waiting()) {
            pollfd p[3] = {{m_doorbell.fd(), POLLIN, 0}, {m_executor.get(), POLLIN, 0}, {m_wakeup.fd(), POLLIN, 0}};
            ::poll(p, 3, static_cast<int>(std::min(left, std::int64_t{200'000'000}) / 1'000'000) + 1);
        }
        m_doorbell.sleep_end();
        m_wakeup.drain();
        lock.lock();
        m_poller = false;
        m_ready_cv.notify_all();  // the others may take the doorbell now
    }
}

void Pool::interrupt() {
    check_owner();
    m_epoch.fetch_add(1, std::memory_order_seq_cst);
    if (m_foreground.load(std::memory_order_seq_cst) == 0) return;
    std::lock_guard lock(m_mutex);
    m_ready_cv.notify_all();
    if (m_poller) m_wakeup.signal();
}

void Pool::close(bool kill) {
    if (self_pid() != m_owner) return;  // a forked copy must not stop the original's workers
    {
        std::lock_guard lock(m_mutex);
        m_closing = true;
        if (kill && !m_killing) {
            m_killing = true;
            for (std::size_t i = 0; i < m_slots.size(); ++i)
                if (!m_slots[i].exited) kill_slot_locked(i);
        }
    }
    wake_poller();
}

void Pool::join(std::int64_t timeout_ns) {
    if (self_pid() != m_owner) return;
    std::int64_t const start = now_ns();
    bool killed = false;
    std::unique_lock lock(m_mutex);
    while (!m_finished) {
        service_locked();
        if (m_finished) break;
        if (!killed && now_ns() - start > timeout_ns) {
            lock.unlock();
            close(true);
            killed = true;
            lock.lock();
            continue;
        }
        if (now_ns() - start > timeout_ns + 5'000'000'000) {
            // The zygote does not answer: give up on it rather than hang.
            m_executor.reset();
            m_executor = Fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
            for (auto& s : m_slots) s.exited = true;
            continue;
        }
        lock.unlock();
        pollfd p{m_executor.get(), POLLIN, 0};
        ::poll(&p, 1, 10);  // exits come from the zygote; results are drained each round
        lock.lock();
    }
    m_ready_cv.notify_all();
}

std::vector<std::int64_t> Pool::worker_pids() const {
    check_owner();
    std::lock_guard lock(m_mutex);
    std::vector<std::int64_t> pids;
    for (auto const& s : m_slots)
        if (!s.exited && s.pid > 0) pids.push_back(s.pid);
    return pids;
}

std::size_t Pool::queued() const {
    check_owner();
    std::lock_guard lock(m_mutex);
    return m_scheduler.queued();
}

std::size_t Pool::inflight() const {
    check_owner();
    std::lock_guard lock(m_mutex);
    return m_scheduler.inflight();
}

}  // namespace shoal
