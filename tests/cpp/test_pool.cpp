// test_pool.cpp — the whole core end to end: a Pool driving workers forked by a real zygote.
//
// The zygote is this test binary started again with --shoal-test-zygote (so it has its own
// main()): a C++ stand-in for the Python zygote that runs ZygoteServer and forks workers
// whose WorkerChannel echoes task payloads back as result frames. Task payloads can also
// ask the worker to exit or to be killed, to exercise retries, and to return buffers through
// the arena (or die holding them, or forge a reference).
#include "shoal/frame.hpp"
#include "shoal/pool.hpp"
#include "shoal/worker.hpp"

#include "support.hpp"

#include <algorithm>
#include <climits>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

using namespace shoal;
using namespace shoal_test;

namespace {

constexpr std::int64_t k_ms = 1'000'000;
constexpr char k_zygote_flag[] = "--shoal-test-zygote";

std::string text_of(std::span<std::byte const> b) { return {reinterpret_cast<char const*>(b.data()), b.size()}; }
std::span<std::byte const> bytes_of(std::string const& s) {
    return {reinterpret_cast<std::byte const*>(s.data()), s.size()};
}

// ---------------------------------------------------------------- the stand-in zygote

/// "flood": writes "more follows" fragments into the result ring forever (a message that
/// never ends), ringing the driver's doorbell, until the driver kills it.
[[noreturn]] void flood(WorkerSpec const& spec, int memfd, int doorbell_fd) {
    auto mem = SharedMemory::attach(Fd(::dup(memfd)));
    Ring ring = Ring::attach(mem.data() + spec.result_ring_offset, spec.result_ring_capacity);
    EventFd bell(Fd(::dup(doorbell_fd)));
    std::vector<std::byte> fragment(ring.max_record(), std::byte{0x42});
    for (;;) {
        while (!ring.try_push(fragment, k_tag_more)) ring.wait_writable(fragment.size(), 10'000, 100 * k_ms);
        if (ring.consumer_needs_wake()) ring.wake_consumer();
        bell.signal();
    }
}

[[noreturn]] void worker_main(WorkerSpec const& spec, std::vector<Fd> fds) {
    int const memfd = fds.at(0).get(), doorbell_fd = fds.at(1).get();  // still open: the channel keeps them
    WorkerChannel ch(spec, std::move(fds.at(0)), std::move(fds.at(1)));
    std::unique_ptr<Arena> arena;
    std::uint32_t owner = 0;
    if (fds.size() > 2) {
        arena = std::make_unique<Arena>(Arena::attach(std::move(fds[2])));
        owner = arena->register_owner();
    }
    Bytes msg;
    for (;;) {
        if (!ch.recv(msg, -1)) ::_exit(10);
        FrameView f;
        std::string error;
        if (!decode_frame(msg, f, error) || !is_driver_frame(f.header.kind)) ::_exit(11);
        std::string payload = text_of(f.payload);
        switch (f.header.kind) {
            case FrameKind::function:
                if (f.header.aux != 0) break;  // a user function: nothing to run it with here
                if (payload == "fail-init") {  // as the Python worker does: report, then exit 1
                    ch.send(encode_frame(FrameKind::init_failed, 0, 0, 0, 0, f.payload));
                    ::_exit(1);
                }
                ch.send(encode_frame(FrameKind::ready, 0, 0, owner, 0, {}));
                break;
            case FrameKind::task: {
                std::int64_t start = now_ns();
                if (payload.rfind("exit:", 0) == 0) ::_exit(std::stoi(payload.substr(5)));
                if (payload == "kill") ::raise(SIGKILL);
                if (payload == "flood") flood(spec, memfd, doorbell_fd);
                if (payload.rfind("big:", 0) == 0) {  // big:N returns a result of N bytes inline
                    Bytes big(std::stoull(payload.substr(4)), std::byte{0x33});
                    ch.send(encode_frame(FrameKind::result, 0, f.header.task_id, 0, f.header.count, big));
                    break;
                }
                if (payload.rfind("sleep:", 0) == 0)
                    std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(payload.substr(6))));
                if (payload.rfind("print:", 0) == 0)
                    ch.send(encode_frame(FrameKind::output, 1, 0, 0, 0, bytes_of(payload.substr(6))));
                if (payload.rfind("arena", 0) == 0 && arena) {
                    // arena:N returns N bytes of 0x5A by reference; arena-kill:N dies holding
                    // them; arena-forge:OFF refers to a block it does not own.
                    auto colon = payload.find(':');
                    std::uint64_t n = std::stoull(payload.substr(colon + 1));
                    BufferRef ref{};
                    if (payload.rfind("arena-forge:", 0) == 0) {
                        ref = {n, 1};
                    } else {
                        ref = {arena->allocate(n, owner), n};
                        std::memset(arena->data() + ref.offset, 0x5A, n);
                        if (payload.rfind("arena-kill:", 0) == 0) ::raise(SIGKILL);
                    }
                    ch.send(encode_frame(FrameKind::result, 0, f.header.task_id, 0, f.header.count, f.payload,
                                         std::span<BufferRef const>(&ref, 1)));
                    break;
                }
                if (payload == "sum-refs" && arena) {  // the task's buffers, summed byte by byte
                    std::uint64_t sum = 0;
                    for (std::size_t i = 0; i < f.header.buffers; ++i) {
                        BufferRef r = f.ref(i);
                        if (!arena->contains(r.offset, r.length)) ::_exit(12);
                        for (std::uint64_t k = 0; k < r.length; ++k)
                            sum += static_cast<std::uint8_t>(arena->data()[r.offset + k]);
                    }
                    std::string out = std::to_string(sum);
                    ch.send(encode_frame(FrameKind::result, 0, f.header.task_id, 0, f.header.count, bytes_of(out)));
                    break;
                }
                auto elapsed = static_cast<std::uint64_t>(now_ns() - start);
                ch.send(encode_frame(FrameKind::result, 0, f.header.task_id, elapsed, f.header.count, f.payload));
                break;
            }
            case FrameKind::shutdown:
                ::_exit(0);
            default:
                break;
        }
    }
}

int zygote_main() {
    ZygoteServer server{Fd(3)};
    for (;;) {
        ZygoteServer::Action action = server.next();
        switch (action.kind) {
            case ZygoteServer::Action::exit:
                return 0;
            case ZygoteServer::Action::import_modules: {
                bool ok = action.modules == std::vector<std::string>{"alpha", "beta"};
                server.imported(action, ok, ok ? "" : "ModuleNotFoundError: " + action.modules.at(0));
                break;
            }
            case ZygoteServer::Action::fork: {
                pid_t pid = ::fork();
                if (pid == 0) {
                    WorkerSpec spec = action.spec;
                    worker_main(spec, server.become_worker(std::move(action)));
                }
                server.forked(action, pid);
                break;
            }
        }
    }
}

std::string self_exe() {
    char buf[PATH_MAX];
    auto n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string("/proc/self/exe");
}

std::unique_ptr<ZygoteClient> start_zygote() {
    return std::make_unique<ZygoteClient>(std::vector<std::string>{self_exe(), k_zygote_flag});
}

PoolOptions options(std::size_t workers) {
    PoolOptions o;
    o.workers = workers;
    o.task_ring_bytes = 1 << 16;
    o.result_ring_bytes = 1 << 16;
    o.spin_ns = 20'000;
    return o;
}

std::string id_payload(std::uint64_t id) { return "task-" + std::to_string(id); }

/// Collects completions until `done(all)` or the timeout; returns all of them.
template <class Done>
std::vector<Completion> collect(Pool& pool, std::int64_t timeout_ns, Done done) {
    std::vector<Completion> all;
    std::int64_t deadline = now_ns() + timeout_ns;
    while (!done(all)) {
        std::int64_t left = deadline - now_ns();
        if (left <= 0) break;
        if (!pool.take(all, std::min<std::int64_t>(left, 100 * k_ms))) break;
    }
    return all;
}

std::size_t count_kind(std::vector<Completion> const& cs, Completion::Kind k) {
    std::size_t n = 0;
    for (auto const& c : cs) n += c.kind == k;
    return n;
}

/// Checks every result: its payload echoes its id, and each id comes exactly once.
void check_echoes(std::vector<Completion> const& cs, std::uint64_t first, std::uint64_t count) {
    std::set<std::uint64_t> seen;
    for (auto const& c : cs) {
        if (c.kind != Completion::result) continue;
        ASSERT_TRUE(seen.insert(c.task_id).second) << "task " << c.task_id << " completed twice";
        ASSERT_EQ(text_of(std::span(c.payload).subspan(c.payload_offset)), id_payload(c.task_id));
        EXPECT_EQ(c.flags, 0u);
    }
    EXPECT_EQ(seen.size(), count);
    if (!seen.empty()) {
        EXPECT_EQ(*seen.begin(), first);
        EXPECT_EQ(*seen.rbegin(), first + count - 1);
    }
}

void submit_echoes(Pool& pool, std::uint64_t first, std::uint64_t count) {
    for (std::uint64_t id = first; id < first + count; ++id) pool.submit(id, 0, 1, bytes_of(id_payload(id)));
}

void close_and_join(Pool& pool) {
    pool.close(false);
    pool.join(5'000 * k_ms);
    std::vector<Completion> rest;
    std::int64_t deadline = now_ns() + 5'000 * k_ms;
    while (pool.take(rest, 100 * k_ms) && now_ns() < deadline) {}
    EXPECT_FALSE(pool.take(rest, 0)) << "the pool never reported itself drained";
}

}  // namespace

/// A pool whose workers share an arena with the test (closed and joined on scope exit).
struct ArenaPool {
    std::unique_ptr<ZygoteClient> zygote = start_zygote();
    std::shared_ptr<Arena> arena;
    std::unique_ptr<Pool> pool;

    explicit ArenaPool(std::size_t workers, unsigned retries = 2) {
        Arena::Options ao;
        ao.limit_bytes = 256u << 20;
        arena = std::make_shared<Arena>(Arena::create(ao));
        auto o = options(workers);
        o.arena = arena;
        o.scheduler.retries = retries;
        pool = std::make_unique<Pool>(*zygote, o);
    }
    ~ArenaPool() {
        pool->close(false);
        pool->join(10'000 * k_ms);
    }
    /// Submits one task and waits for its completion.
    Completion run(std::uint64_t id, std::string const& payload, std::span<BufferRef const> refs = {}) {
        pool->submit(id, 0, 1, bytes_of(payload), refs);
        auto all = collect(*pool, 30'000 * k_ms, [](auto const& a) { return !a.empty(); });
        EXPECT_EQ(all.size(), 1u);
        return all.empty() ? Completion{} : std::move(all[0]);
    }
};

TEST(PoolArena, ResultBuffersBecomeTheDriversAndAreFreedWithTheCompletion) {
    ArenaPool ap(2);
    {
        Completion c = ap.run(1, "arena:1000000");
        ASSERT_EQ(c.kind, Completion::result);
        ASSERT_EQ(c.buffers.size(), 1u);
        auto const& b = c.buffers[0];
        EXPECT_EQ(b.ref().length, 1000000u);
        auto const* p = reinterpret_cast<std::uint8_t const*>(b.data());
        EXPECT_TRUE(std::all_of(p, p + 1000000, [](std::uint8_t v) { return v == 0x5A; }));
        EXPECT_GE(ap.arena->used_bytes(), 1000000u);
    }
    EXPECT_EQ(ap.arena->used_bytes(), 0u);  // the completion owned the block
}

TEST(PoolArena, TaskBuffersReachTheWorker) {
    ArenaPool ap(1);
    auto off = ap.arena->allocate(300000, Arena::k_creator);
    std::memset(ap.arena->data() + off, 2, 300000);
    BufferRef refs[2] = {{off, 300000}, {off + 1000, 10}};
    Completion c = ap.run(1, "sum-refs", refs);
    ASSERT_EQ(c.kind, Completion::result);
    EXPECT_EQ(text_of(std::span<std::byte const>(c.payload).subspan(c.payload_offset)),
              std::to_string(2 * (300000 + 10)));
}

TEST(PoolArena, BlocksOfAWorkerKilledWhileHoldingThemAreReclaimed) {
    ArenaPool ap(1, /*retries=*/0);
    EXPECT_EQ(ap.run(1, "arena-kill:5000000").kind, Completion::crashed);
    EXPECT_EQ(ap.arena->used_bytes(), 0u);
    EXPECT_EQ(ap.run(2, "arena:100").kind, Completion::result);  // the replacement works
}

TEST(PoolArena, AForgedReferenceIsTreatedAsACrash) {
    ArenaPool ap(1, /*retries=*/0);
    auto mine = ap.arena->allocate(Arena::k_page, Arena::k_creator);
    // Killed for the garbage, not retried; the driver's block is still the driver's.
    EXPECT_EQ(ap.run(1, "arena-forge:" + std::to_string(mine)).kind, Completion::crashed);
    EXPECT_EQ(ap.arena->used_bytes(), Arena::k_page);
    EXPECT_TRUE(ap.arena->free(mine, Arena::k_creator));
}

TEST(Pool, DefaultOptionsStartOneWorkerPerCpu) {
    auto zygote = start_zygote();
    Pool pool(*zygote, PoolOptions{});
    EXPECT_EQ(pool.workers(), static_cast<std::size_t>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN))));
    submit_echoes(pool, 1, 100);
    auto all = collect(pool, 30'000 * k_ms, [](auto const& a) { return a.size() >= 100; });
    EXPECT_EQ(all.size(), 100u);
    close_and_join(pool);
}

TEST(Pool, TenThousandTasksAllComeBack) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    submit_echoes(pool, 1, 10'000);
    auto all = collect(pool, 60'000 * k_ms, [](auto const& a) { return a.size() >= 10'000; });
    EXPECT_EQ(all.size(), 10'000u);
    EXPECT_EQ(count_kind(all, Completion::result), 10'000u);
    check_echoes(all, 1, 10'000);
    EXPECT_EQ(pool.queued(), 0u);
    EXPECT_EQ(pool.inflight(), 0u);
    EXPECT_EQ(pool.worker_pids().size(), 2u);
    close_and_join(pool);
}

TEST(Pool, ASubmittingCallerIsToldToDeliverAndTakesWhatIsReady) {
    // While submitting, the caller drains results (submit does) and takes them when told to.
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    std::vector<Completion> all;
    std::uint64_t last_seq = 0;
    std::size_t told = 0, taken = 0;
    // 20,000 tasks, and more until the caller was told once: on a loaded machine the workers
    // may not run at all (or not be forked yet) while the first 20,000 go in.
    std::uint64_t n = 0;
    std::int64_t const deadline = now_ns() + 20'000 * k_ms;
    while (n < 20'000 || (told == 0 && now_ns() < deadline)) {
        std::uint64_t const id = ++n;
        if (!pool.submit(id, 0, 1, bytes_of(id_payload(id)))) continue;
        ++told;
        std::uint64_t seq = 0;
        std::size_t before = all.size();
        pool.take_ready(all, &seq);
        ASSERT_GT(all.size(), before) << "told to deliver, but nothing was ready";
        EXPECT_EQ(seq, last_seq + 1) << "batches are numbered in order";
        last_seq = seq;
    }
    taken = all.size();
    EXPECT_GT(told, 0u);
    EXPECT_GT(taken, 0u) << "the submitter should have delivered some results itself";
    std::size_t empty_before = all.size();
    pool.take_ready(all, nullptr);  // whatever is left drained; never blocks
    EXPECT_GE(all.size(), empty_before);
    auto rest = collect(pool, 60'000 * k_ms, [&](auto const& a) { return a.size() + all.size() >= n; });
    all.insert(all.end(), std::make_move_iterator(rest.begin()), std::make_move_iterator(rest.end()));
    EXPECT_EQ(count_kind(all, Completion::result), n);
    check_echoes(all, 1, n);
    close_and_join(pool);
}

TEST(Pool, LargePayloadsLargerThanTheRings) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    std::vector<std::string> payloads;
    for (int i = 0; i < 6; ++i) payloads.push_back(std::string(300'000 + static_cast<std::size_t>(i), static_cast<char>('a' + i)));
    for (std::uint64_t i = 0; i < payloads.size(); ++i) pool.submit(i + 1, 0, 1, bytes_of(payloads[i]));
    auto all = collect(pool, 30'000 * k_ms, [&](auto const& a) { return a.size() >= payloads.size(); });
    ASSERT_EQ(all.size(), payloads.size());
    for (auto const& c : all) {
        ASSERT_EQ(c.kind, Completion::result);
        EXPECT_TRUE(text_of(std::span(c.payload).subspan(c.payload_offset)) == payloads.at(c.task_id - 1)) << c.task_id;
    }
    close_and_join(pool);
}

TEST(Pool, KilledWorkerIsReplacedAndItsTasksRetried) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    // The pool has no thread of its own: take() is what hears the zygote's fork reports.
    std::vector<Completion> none;
    std::int64_t deadline = now_ns() + 5'000 * k_ms;
    while (pool.worker_pids().size() < 2 && now_ns() < deadline) pool.take(none, 1 * k_ms);
    EXPECT_TRUE(none.empty());
    auto pids = pool.worker_pids();
    ASSERT_EQ(pids.size(), 2u);

    // Slow tasks, so that the victim surely has some in flight.
    for (std::uint64_t id = 1; id <= 40; ++id) pool.submit(id, 0, 1, bytes_of("sleep:5"));
    auto first = collect(pool, 10'000 * k_ms, [](auto const& a) { return a.size() >= 4; });
    ASSERT_GE(first.size(), 4u);
    ::kill(static_cast<pid_t>(pids[0]), SIGKILL);
    auto rest = collect(pool, 30'000 * k_ms, [&](auto const& a) { return first.size() + a.size() >= 40; });
    first.insert(first.end(), std::make_move_iterator(rest.begin()), std::make_move_iterator(rest.end()));
    EXPECT_EQ(count_kind(first, Completion::result), 40u) << "crashed: " << count_kind(first, Completion::crashed);
    std::set<std::uint64_t> ids;
    for (auto const& c : first) EXPECT_TRUE(ids.insert(c.task_id).second) << "task " << c.task_id << " twice";

    auto now_pids = pool.worker_pids();
    EXPECT_EQ(now_pids.size(), 2u);
    EXPECT_EQ(std::count(now_pids.begin(), now_pids.end(), pids[0]), 0) << "the dead worker is still listed";
    close_and_join(pool);
}

TEST(Pool, TenThousandTasksWithAWorkerKilledMidway) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    submit_echoes(pool, 1, 10'000);
    bool killed = false;
    auto all = collect(pool, 60'000 * k_ms, [&](auto const& a) {
        if (!killed && a.size() >= 2'000) {
            auto pids = pool.worker_pids();
            if (!pids.empty()) ::kill(static_cast<pid_t>(pids[0]), SIGKILL);
            killed = true;
        }
        return a.size() >= 10'000;
    });
    EXPECT_TRUE(killed);
    EXPECT_EQ(all.size(), 10'000u);
    check_echoes(all, 1, 10'000);
    close_and_join(pool);
}

TEST(Pool, TaskThatKillsItsWorkerFailsAfterRetries) {
    auto zygote = start_zygote();
    PoolOptions o = options(2);
    o.scheduler.retries = 2;
    Pool pool(*zygote, o);
    pool.submit(1, 0, 1, bytes_of("exit:3"));
    auto all = collect(pool, 20'000 * k_ms, [](auto const& a) { return !a.empty(); });
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(all[0].kind, Completion::crashed);
    EXPECT_EQ(all[0].task_id, 1u);
    EXPECT_EQ(all[0].status.kind, ExitStatus::exited);
    EXPECT_EQ(all[0].status.value, 3);

    // The pool keeps working.
    submit_echoes(pool, 100, 50);
    auto more = collect(pool, 20'000 * k_ms, [](auto const& a) { return a.size() >= 50; });
    check_echoes(more, 100, 50);
    close_and_join(pool);
}

TEST(Pool, SignalNamedInTheCrash) {
    auto zygote = start_zygote();
    PoolOptions o = options(1);
    o.scheduler.retries = 0;
    Pool pool(*zygote, o);
    pool.submit(1, 0, 1, bytes_of("kill"));
    auto all = collect(pool, 20'000 * k_ms, [](auto const& a) { return !a.empty(); });
    ASSERT_EQ(all.size(), 1u);
    EXPECT_EQ(all[0].kind, Completion::crashed);
    EXPECT_EQ(all[0].status.kind, ExitStatus::signaled);
    EXPECT_EQ(all[0].status.value, SIGKILL);
    close_and_join(pool);
}

TEST(Pool, WorkerOutputIsForwarded) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(1));
    pool.submit(1, 0, 1, bytes_of("print:hello"));
    auto all = collect(pool, 10'000 * k_ms, [](auto const& a) { return a.size() >= 2; });
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].kind, Completion::output);
    EXPECT_EQ(all[0].flags, 1u);
    EXPECT_EQ(text_of(std::span(all[0].payload).subspan(all[0].payload_offset)), "hello");
    EXPECT_EQ(all[1].kind, Completion::result);
    close_and_join(pool);
}

TEST(Pool, InitializerFailureBreaksThePool) {
    auto zygote = start_zygote();
    PoolOptions o = options(2);
    std::string const why = "fail-init";
    auto b = bytes_of(why);
    o.init_payload.assign(b.begin(), b.end());
    Pool pool(*zygote, o);
    submit_echoes(pool, 1, 5);
    auto all = collect(pool, 3'000 * k_ms, [](auto const& a) { return a.size() >= 5; });
    ASSERT_EQ(all.size(), 5u) << "stranded: " << pool.queued() << " queued, " << pool.inflight() << " in flight";
    for (auto const& c : all) EXPECT_EQ(int(c.kind), int(Completion::init_failed)) << "task " << c.task_id << ": " << text_of(std::span(c.payload).subspan(c.payload_offset));
    // Later submissions fail at once, the same way.
    pool.submit(6, 0, 1, bytes_of(id_payload(6)));
    auto later = collect(pool, 5'000 * k_ms, [](auto const& a) { return !a.empty(); });
    ASSERT_EQ(later.size(), 1u);
    EXPECT_EQ(later[0].kind, Completion::init_failed);
    close_and_join(pool);
}

TEST(Pool, PreloadAskedOfTheZygote) {
    auto zygote = start_zygote();
    PoolOptions o = options(1);
    o.preload = {"alpha", "beta"};
    Pool pool(*zygote, o);
    submit_echoes(pool, 1, 3);
    auto all = collect(pool, 10'000 * k_ms, [](auto const& a) { return a.size() >= 3; });
    check_echoes(all, 1, 3);
    close_and_join(pool);

    o.preload = {"no_such_module"};
    try {
        Pool bad(*zygote, o);
        ADD_FAILURE() << "a failed preload must throw";
    } catch (std::runtime_error const& e) {
        EXPECT_NE(std::string(e.what()).find("no_such_module"), std::string::npos) << e.what();
    }
}

TEST(Pool, CloseLetsQueuedTasksFinish) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    submit_echoes(pool, 1, 500);
    pool.close(false);
    pool.join(20'000 * k_ms);
    std::vector<Completion> all;
    std::int64_t deadline = now_ns() + 5'000 * k_ms;
    while (pool.take(all, 100 * k_ms) && now_ns() < deadline) {}
    check_echoes(all, 1, 500);
    // After close, a submission completes at once as broken.
    pool.submit(9999, 0, 1, bytes_of("late"));
    std::vector<Completion> late;
    pool.take(late, 1'000 * k_ms);
    ASSERT_EQ(late.size(), 1u);
    EXPECT_EQ(late[0].kind, Completion::broken);
}

TEST(Pool, CloseWithKillEndsPromptly) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    for (std::uint64_t id = 1; id <= 100; ++id) pool.submit(id, 0, 1, bytes_of("sleep:50"));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::int64_t start = now_ns();
    pool.close(true);
    pool.join(5'000 * k_ms);
    EXPECT_LT(now_ns() - start, 3'000 * k_ms);
    std::vector<Completion> all;
    std::int64_t deadline = now_ns() + 5'000 * k_ms;
    while (pool.take(all, 100 * k_ms) && now_ns() < deadline) {}
    // Every task is accounted for: a result, or broken/crashed because of the kill.
    std::set<std::uint64_t> ids;
    for (auto const& c : all) ids.insert(c.task_id);
    EXPECT_EQ(ids.size(), 100u);
    EXPECT_LT(count_kind(all, Completion::result), 100u);
}

TEST(Pool, ZygoteDeathBreaksThePoolWithoutHanging) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    submit_echoes(pool, 1, 10);
    auto first = collect(pool, 10'000 * k_ms, [](auto const& a) { return a.size() >= 10; });
    ASSERT_EQ(first.size(), 10u);
    ::kill(zygote->pid(), SIGKILL);  // its workers die with it
    std::int64_t deadline = now_ns() + 5'000 * k_ms;
    while (zygote->alive() && now_ns() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // its workers die with it (PDEATHSIG)
    pool.submit(11, 0, 1, bytes_of(id_payload(11)));
    auto after = collect(pool, 5'000 * k_ms, [](auto const& a) { return !a.empty(); });
    ASSERT_EQ(after.size(), 1u);
    EXPECT_NE(after[0].kind, Completion::result);
    close_and_join(pool);
}

// ---------------------------------------------------------------- pinned tasks (agents)

TEST(Pool, PinnedTasksRunOnTheirSlotOnly) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(3));
    EXPECT_EQ(pool.workers(), 3u);
    for (std::uint64_t id = 1; id <= 60; ++id)
        pool.submit(id, 0, 1, bytes_of(id_payload(id)), {}, false, static_cast<std::int64_t>(id % 3));
    submit_echoes(pool, 100, 30);  // unpinned work mixed in
    auto all = collect(pool, 30'000 * k_ms, [](auto const& a) { return a.size() >= 90; });
    ASSERT_EQ(all.size(), 90u);
    for (auto const& c : all) {
        ASSERT_EQ(c.kind, Completion::result);
        if (c.task_id <= 60) EXPECT_EQ(c.worker, c.task_id % 3) << "task " << c.task_id;
    }
    EXPECT_THROW(pool.submit(999, 0, 1, bytes_of("x"), {}, false, 3), std::out_of_range);
    EXPECT_THROW(pool.submit(999, 0, 1, bytes_of("x"), {}, false, -2), std::out_of_range);
    close_and_join(pool);
}

TEST(Pool, PinnedTasksOfADeadWorkerCrashWithItsStatusAndAreNotRetried) {
    auto zygote = start_zygote();
    PoolOptions o = options(2);
    o.scheduler.retries = 2;
    Pool pool(*zygote, o);
    std::vector<Completion> none;
    std::int64_t deadline = now_ns() + 5'000 * k_ms;
    while (pool.worker_pids().size() < 2 && now_ns() < deadline) pool.take(none, 1 * k_ms);
    auto pids = pool.worker_pids();
    ASSERT_EQ(pids.size(), 2u);  // slot order: pids[1] serves slot 1

    // Slot 0: a task that exits with status 3, then four more behind it (in its ring and in
    // its pinned queue). Retried elsewhere, "exit:3" would kill slot 1's worker too.
    pool.submit(1, 0, 1, bytes_of("sleep:50"), {}, false, 0);
    pool.submit(2, 0, 1, bytes_of("exit:3"), {}, false, 0);
    for (std::uint64_t id = 3; id <= 6; ++id) pool.submit(id, 0, 1, bytes_of(id_payload(id)), {}, false, 0);
    auto all = collect(pool, 20'000 * k_ms, [](auto const& a) { return a.size() >= 6; });
    ASSERT_EQ(all.size(), 6u);
    std::map<std::uint64_t, Completion const*> by_id;
    for (auto const& c : all) by_id[c.task_id] = &c;
    ASSERT_EQ(by_id.size(), 6u);
    EXPECT_EQ(by_id[1]->kind, Completion::result);
    for (std::uint64_t id = 2; id <= 6; ++id) {
        EXPECT_EQ(by_id[id]->kind, Completion::crashed) << "task " << id;
        EXPECT_EQ(by_id[id]->status.kind, ExitStatus::exited) << "task " << id;
        EXPECT_EQ(by_id[id]->status.value, 3) << "task " << id;
        EXPECT_EQ(by_id[id]->worker, 0u) << "task " << id;
    }
    // Slot 1's worker never ran any of it.
    auto now_pids = pool.worker_pids();
    EXPECT_EQ(std::count(now_pids.begin(), now_pids.end(), pids[1]), 1) << "slot 1's worker was replaced";
    EXPECT_EQ(std::count(now_pids.begin(), now_pids.end(), pids[0]), 0) << "slot 0's worker still listed";

    // The replacement serves slot 0's pinned work again.
    for (std::uint64_t id = 10; id < 20; ++id) pool.submit(id, 0, 1, bytes_of(id_payload(id)), {}, false, 0);
    auto more = collect(pool, 20'000 * k_ms, [](auto const& a) { return a.size() >= 10; });
    check_echoes(more, 10, 10);
    for (auto const& c : more) EXPECT_EQ(c.worker, 0u);
    close_and_join(pool);
}

TEST(Pool, PinnedTaskKilledBySignalNamesIt) {
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    pool.submit(1, 0, 1, bytes_of("kill"), {}, false, 1);
    submit_echoes(pool, 10, 20);  // unpinned tasks on the same slot are retried as usual
    auto all = collect(pool, 20'000 * k_ms, [](auto const& a) { return a.size() >= 21; });
    ASSERT_EQ(all.size(), 21u);
    EXPECT_EQ(count_kind(all, Completion::result), 20u);
    for (auto const& c : all) {
        if (c.task_id != 1) continue;
        EXPECT_EQ(c.kind, Completion::crashed);
        EXPECT_EQ(c.status.kind, ExitStatus::signaled);
        EXPECT_EQ(c.status.value, SIGKILL);
        EXPECT_EQ(c.worker, 1u);
    }
    close_and_join(pool);
}

int main(int argc, char** argv) {
    if (argc == 2 && std::string(argv[1]) == k_zygote_flag) return zygote_main();
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}

TEST(Pool, AForkedCopyLeavesTheOriginalsWorkersAlone) {
    // A forked copy of the driver that closes, joins or destroys its inherited Pool must not
    // stop (or wait for) the original's workers: they keep serving the original.
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    submit_echoes(pool, 1, 100);
    auto first = collect(pool, 30'000 * k_ms, [](auto const& a) { return a.size() >= 100; });
    ASSERT_EQ(count_kind(first, Completion::result), 100u);
    std::int64_t const up = now_ns() + 20'000 * k_ms;  // both workers forked and serving
    std::vector<Completion> none;
    while (pool.worker_pids().size() < 2 && now_ns() < up) pool.take(none, 10 * k_ms);
    auto pids = pool.worker_pids();
    ASSERT_EQ(pids.size(), 2u);
    std::int64_t const start = now_ns();
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::alarm(10);  // a hang in the copy fails the test instead of blocking it
        pool.close(true);
        pool.join(5'000 * k_ms);
        pool.~Pool();
        ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status)) << "the copy died: " << status;
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_LT(now_ns() - start, 2'000 * k_ms) << "the copy waited for the original's workers";
    submit_echoes(pool, 101, 100);
    auto second = collect(pool, 30'000 * k_ms, [](auto const& a) { return a.size() >= 100; });
    EXPECT_EQ(count_kind(second, Completion::result), 100u);
    check_echoes(second, 101, 100);
    EXPECT_EQ(pool.worker_pids(), pids) << "the copy stopped the original's workers";
    close_and_join(pool);
}

TEST(Pool, AForkedCopyCannotUseTheOriginalsPool) {
    // In a forked copy of the driver every entry point that would read or write the rings
    // (or take the copied mutex) throws InheritedPoolError before touching anything; the
    // original keeps working.
    auto zygote = start_zygote();
    Pool pool(*zygote, options(2));
    submit_echoes(pool, 1, 20);
    auto first = collect(pool, 30'000 * k_ms, [](auto const& a) { return a.size() >= 20; });
    ASSERT_EQ(count_kind(first, Completion::result), 20u);
    submit_echoes(pool, 21, 10);  // in flight or queued at the fork
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::alarm(10);  // a hang in the copy fails the test instead of blocking it
        int thrown = 0;
        auto expect_throw = [&](auto&& call) {
            try {
                call();
            } catch (InheritedPoolError const& e) {
                if (e.owner() == ::getppid() && std::string(e.what()).find("fork") != std::string::npos) ++thrown;
            } catch (...) {
            }
        };
        std::vector<Completion> out;
        expect_throw([&] { pool.submit(100, 0, 1, bytes_of(id_payload(100))); });
        expect_throw([&] { pool.take(out, 100 * k_ms); });
        expect_throw([&] { pool.take_ready(out); });
        expect_throw([&] { pool.define_function(7, bytes_of("f")); });
        expect_throw([&] { pool.forget_function(7); });
        expect_throw([&] { pool.cancel(25); });
        expect_throw([&] { pool.interrupt(); });
        expect_throw([&] { pool.worker_pids(); });
        expect_throw([&] { pool.queued(); });
        expect_throw([&] { pool.inflight(); });
        if (!pool.cancel_all().empty()) ::_exit(3);  // a copy lets go: nothing is its own
        pool.close(false);
        pool.join(1'000 * k_ms);
        ::_exit(thrown == 10 && out.empty() ? 0 : 4);
    }
    ChildGuard guard(child);
    auto end = guard.wait(std::chrono::seconds(20));
    EXPECT_TRUE(end.exited(0)) << "the copy: " << end.str();
    auto second = collect(pool, 30'000 * k_ms, [](auto const& a) { return count_kind(a, Completion::result) >= 10; });
    check_echoes(second, 21, 10);
    submit_echoes(pool, 31, 50);
    auto third = collect(pool, 30'000 * k_ms, [](auto const& a) { return count_kind(a, Completion::result) >= 50; });
    check_echoes(third, 31, 50);
    std::int64_t const start = now_ns();
    close_and_join(pool);
    EXPECT_LT(now_ns() - start, 5'000 * k_ms);
}

// ---------------------------------------------------------------- bounded messages from workers

TEST(Pool, MessagesFromWorkersAreBoundedByDefault) {
    EXPECT_LE(PoolOptions{}.max_message_bytes, std::size_t{1} << 30);
    EXPECT_GE(PoolOptions{}.max_message_bytes, std::size_t{64} << 20);
}

TEST(Pool, AWorkerSendingAnEndlessMessageIsKilledAtTheBound) {
    // Fragment after fragment of one message that never ends: the driver must not buffer it
    // (it did, up to 16 GiB). Past the bound the worker is killed, its task fails as crashed
    // saying why, and the pool goes on with a new worker.
    auto zygote = start_zygote();
    PoolOptions o = options(1);
    o.max_message_bytes = std::size_t{1} << 20;
    o.scheduler.retries = 0;
    Pool pool(*zygote, std::move(o));
    pool.submit(1, 0, 1, bytes_of("flood"));
    auto got = collect(pool, 20'000 * k_ms, [](auto const& a) { return count_kind(a, Completion::crashed) >= 1; });
    ASSERT_EQ(count_kind(got, Completion::crashed), 1u) << "the driver kept reading the endless message";
    for (auto const& c : got) {
        if (c.kind != Completion::crashed) continue;
        EXPECT_EQ(c.task_id, 1u);
        EXPECT_EQ(c.status.kind, ExitStatus::signaled);
        std::string why = text_of(std::span(c.payload).subspan(c.payload_offset));
        EXPECT_NE(why.find("larger than the 1048576-byte bound"), std::string::npos) << why;
    }
    submit_echoes(pool, 2, 20);
    auto after = collect(pool, 30'000 * k_ms, [](auto const& a) { return count_kind(a, Completion::result) >= 20; });
    check_echoes(after, 2, 20);
    close_and_join(pool);
}

TEST(Pool, AResultLargerThanTheBoundFailsItsTaskOnly) {
    auto zygote = start_zygote();
    PoolOptions o = options(2);
    o.max_message_bytes = std::size_t{1} << 20;
    o.scheduler.retries = 1;  // retried once on a new worker, then failed
    Pool pool(*zygote, std::move(o));
    pool.submit(1, 0, 1, bytes_of("big:" + std::to_string(900 * 1024)));  // under the bound: fine
    pool.submit(2, 0, 1, bytes_of("big:" + std::to_string(3 << 20)));
    auto got = collect(pool, 30'000 * k_ms, [](auto const& a) { return a.size() >= 2; });
    ASSERT_EQ(got.size(), 2u);
    for (auto const& c : got) {
        if (c.task_id == 1) {
            EXPECT_EQ(c.kind, Completion::result);
            EXPECT_EQ(c.payload.size() - c.payload_offset, 900u * 1024);
        } else {
            EXPECT_EQ(c.kind, Completion::crashed);
        }
    }
    submit_echoes(pool, 3, 20);
    auto after = collect(pool, 30'000 * k_ms, [](auto const& a) { return count_kind(a, Completion::result) >= 20; });
    check_echoes(after, 3, 20);
    close_and_join(pool);
}
