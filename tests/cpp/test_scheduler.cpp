// test_scheduler.cpp — the scheduler's bookkeeping: in-flight limits, least-loaded assignment,
// function prerequisites, cancellation, retries after a worker died, per-worker item limits.
#include "shoal/scheduler.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

using namespace shoal;

namespace {

using Out = std::vector<std::pair<std::size_t, SharedBytes>>;

SharedBytes frame(std::string const& s) {
    auto const* p = reinterpret_cast<std::byte const*>(s.data());
    return std::make_shared<Bytes const>(p, p + s.size());
}
std::string str(SharedBytes const& b) { return {reinterpret_cast<char const*>(b->data()), b->size()}; }

Task task(std::uint64_t id, std::uint64_t fn = 0, std::uint32_t count = 1) {
    return Task{id, fn, count, 0, frame("t" + std::to_string(id))};
}

/// The assignment as "worker:frame" strings, in send order.
std::vector<std::string> assign(Scheduler& s) {
    Out out;
    s.assign(out);
    std::vector<std::string> r;
    for (auto const& [w, f] : out) r.push_back(std::to_string(w) + ":" + str(f));
    return r;
}

using V = std::vector<std::string>;

Scheduler started(std::size_t workers, SchedulerOptions o = {}) {
    Scheduler s(workers, o);
    for (std::size_t i = 0; i < workers; ++i) s.worker_started(i);
    return s;
}

}  // namespace

TEST(Scheduler, NothingGoesToWorkersNotStarted) {
    Scheduler s(2, {});
    EXPECT_FALSE(s.alive(0));
    s.submit(task(1));
    EXPECT_EQ(assign(s), V{});
    EXPECT_EQ(s.queued(), 1u);
    s.worker_started(1);
    EXPECT_TRUE(s.alive(1));
    EXPECT_EQ(assign(s), V{"1:t1"});
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.inflight(), 1u);
}

TEST(Scheduler, InflightLimitPerWorker) {
    auto s = started(1);
    EXPECT_EQ(s.inflight_limit(), 2u);  // nothing measured yet
    for (int i = 1; i <= 5; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s), (V{"0:t1", "0:t2"}));
    EXPECT_EQ(assign(s), V{});  // full
    EXPECT_EQ(s.queued(), 3u);
    EXPECT_FALSE(s.idle(0));
    ASSERT_TRUE(s.complete(0, 1, 0));
    EXPECT_EQ(assign(s), V{"0:t3"});
    ASSERT_TRUE(s.complete(0, 2, 0));
    ASSERT_TRUE(s.complete(0, 3, 0));
    EXPECT_EQ(assign(s), (V{"0:t4", "0:t5"}));
    ASSERT_TRUE(s.complete(0, 4, 0));
    ASSERT_TRUE(s.complete(0, 5, 0));
    EXPECT_TRUE(s.idle(0));
    EXPECT_EQ(s.inflight(), 0u);
}

TEST(Scheduler, LeastLoadedWorkerFirst) {
    auto s = started(3);
    for (int i = 1; i <= 6; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s), (V{"0:t1", "1:t2", "2:t3", "0:t4", "1:t5", "2:t6"}));
    ASSERT_TRUE(s.complete(1, 2, 0));
    ASSERT_TRUE(s.complete(1, 5, 0));
    ASSERT_TRUE(s.complete(2, 3, 0));
    // Now worker 1 has 0 in flight, worker 2 has 1, worker 0 has 2 (full).
    for (int i = 7; i <= 9; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s), (V{"1:t7", "1:t8", "2:t9"}));
}

TEST(Scheduler, CompleteChecksTheWorker) {
    auto s = started(2);
    s.submit(task(1));
    s.submit(task(2));
    assign(s);  // t1 -> 0, t2 -> 1
    EXPECT_FALSE(s.complete(1, 1, 0));  // t1 is not in flight on worker 1
    EXPECT_FALSE(s.complete(0, 99, 0));
    auto t = s.complete(0, 1, 0);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->id, 1u);
    EXPECT_EQ(t->attempts, 1u);
    EXPECT_EQ(str(t->frame), "t1");
    EXPECT_FALSE(s.complete(0, 1, 0));  // only once
    EXPECT_THROW(s.complete(7, 2, 0), std::out_of_range);
}

TEST(Scheduler, ResultsOutOfOrderAreAccepted) {
    auto s = started(1, {.retries = 2, .max_items_per_worker = 0, .target_inflight_ns = 2'000'000, .max_inflight = 64});
    s.submit(task(1));
    s.submit(task(2));
    assign(s);
    EXPECT_TRUE(s.complete(0, 2, 0));
    EXPECT_TRUE(s.complete(0, 1, 0));
}

TEST(Scheduler, FunctionFrameSentOncePerWorker) {
    auto s = started(2);
    s.define_function(5, frame("f5"));
    s.submit(task(1, 5));
    s.submit(task(2, 5));
    s.submit(task(3, 5));
    EXPECT_EQ(assign(s), (V{"0:f5", "0:t1", "1:f5", "1:t2", "0:t3"}));
    s.complete(0, 1, 0);
    s.submit(task(4, 5));
    EXPECT_EQ(assign(s), (V{"0:t4"}));  // a tie (one each in flight) goes to the lowest slot; it knows f5
}

TEST(Scheduler, FunctionFrameSentAgainAfterRestart) {
    auto s = started(1);
    s.define_function(5, frame("f5"));
    s.submit(task(1, 5));
    EXPECT_EQ(assign(s), (V{"0:f5", "0:t1"}));
    s.complete(0, 1, 0);
    s.submit(task(2, 5));
    EXPECT_EQ(assign(s), (V{"0:t2"}));
    EXPECT_TRUE(s.worker_died(0).empty());  // t2 goes back to the queue
    EXPECT_FALSE(s.alive(0));
    EXPECT_EQ(assign(s), V{});
    s.worker_started(0);  // a fresh process knows no function
    EXPECT_EQ(assign(s), (V{"0:f5", "0:t2"}));
}

TEST(Scheduler, TasksWithoutFunctionOrWithUnknownFunction) {
    auto s = started(1);
    s.submit(task(1, 0));  // fn 0: none needed
    s.submit(task(2, 77));  // never defined: sent as is (the worker reports the error)
    EXPECT_EQ(assign(s), (V{"0:t1", "0:t2"}));
}

TEST(Scheduler, ForgetFramesGoOnlyToWorkersThatKnowTheFunction) {
    auto s = started(3);
    s.define_function(5, frame("f5"));
    s.define_function(6, frame("f6"));
    s.submit(task(1, 5));  // -> 0
    s.submit(task(2, 6));  // -> 1
    assign(s);
    s.complete(0, 1, 0);
    s.complete(1, 2, 0);
    s.forget_function(5, frame("forget5"));
    EXPECT_EQ(assign(s), (V{"0:forget5"}));  // sent even with an empty queue
    EXPECT_EQ(assign(s), V{});               // once
    // Defined again later: worker 0 must get it again.
    s.define_function(5, frame("f5b"));
    s.submit(task(3, 5));
    EXPECT_EQ(assign(s), (V{"0:f5b", "0:t3"}));
}

TEST(Scheduler, ForgetFrameComesBeforeTasks) {
    auto s = started(1);
    s.define_function(5, frame("f5"));
    s.submit(task(1, 5));
    assign(s);
    s.complete(0, 1, 0);
    s.forget_function(5, frame("forget5"));
    s.submit(task(2, 0));
    EXPECT_EQ(assign(s), (V{"0:forget5", "0:t2"}));
}

TEST(Scheduler, CancelOnlyQueuedTasks) {
    auto s = started(1);
    for (int i = 1; i <= 5; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    assign(s);  // t1, t2 in flight
    EXPECT_FALSE(s.cancel(1));   // in flight
    EXPECT_TRUE(s.cancel(4));
    EXPECT_FALSE(s.cancel(4));   // already gone
    EXPECT_FALSE(s.cancel(42));  // never existed
    EXPECT_EQ(s.queued(), 2u);
    s.complete(0, 1, 0);
    s.complete(0, 2, 0);
    EXPECT_EQ(assign(s), (V{"0:t3", "0:t5"}));
}

TEST(Scheduler, CancelAllReturnsQueuedIdsInOrder) {
    auto s = started(1);
    for (int i = 1; i <= 5; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    assign(s);
    EXPECT_EQ(s.cancel_all(), (std::vector<std::uint64_t>{3, 4, 5}));
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.inflight(), 2u);  // in-flight tasks are not touched
    EXPECT_TRUE(s.cancel_all().empty());
}

TEST(Scheduler, WorkerDiedRequeuesAtTheFrontInOrderUntilRetriesAreUsed) {
    SchedulerOptions o;
    o.retries = 2;
    auto s = started(1, o);
    for (int i = 1; i <= 3; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    // t1 runs, t2 waits behind it. Each death charges t1 only (it was running); both go back
    // to the front, in order, before t3.
    for (int attempt = 1; attempt <= 3; ++attempt) {
        ASSERT_EQ(assign(s), (V{"0:t1", "0:t2"})) << "attempt " << attempt;
        auto failed = s.worker_died(0);
        EXPECT_EQ(s.inflight(), 0u);
        if (attempt <= 2) {
            EXPECT_TRUE(failed.empty()) << "attempt " << attempt;
            EXPECT_EQ(s.queued(), 3u);
        } else {
            // t1 ran 1 + retries times: returned with its attempt count.
            ASSERT_EQ(failed.size(), 1u);
            EXPECT_EQ(failed[0].id, 1u);
            EXPECT_EQ(failed[0].attempts, 3u);
            EXPECT_EQ(s.queued(), 2u);
        }
        s.worker_started(0);
    }
    EXPECT_EQ(assign(s), (V{"0:t2", "0:t3"}));
    auto t2 = s.complete(0, 2, 0);
    ASSERT_TRUE(t2);
    EXPECT_EQ(t2->attempts, 1u);  // the three rounds it waited behind t1 were not charged
}

TEST(Scheduler, OnlyTheRunningTaskIsCharged) {
    SchedulerOptions o;
    o.retries = 0;
    auto s = started(1, o);
    s.submit(task(1));
    s.submit(task(2));
    assign(s);
    auto failed = s.worker_died(0);
    ASSERT_EQ(failed.size(), 1u);
    EXPECT_EQ(failed[0].id, 1u);
    EXPECT_EQ(s.cancel_all(), (std::vector<std::uint64_t>{2}));
}

TEST(Scheduler, ABlamedTaskFailsAloneAndTheOthersAreRefunded) {
    // A worker killed for one task (a time limit, Future.kill): that task fails whatever its
    // retries, the running task and those behind it go back charged nothing.
    SchedulerOptions o;
    o.retries = 0;
    auto s = started(1, o);
    s.submit(task(1));
    s.submit(task(2));
    assign(s);
    ASSERT_NE(s.running(0), nullptr);
    EXPECT_EQ(s.running(0)->id, 1u);
    EXPECT_EQ(s.slot_of(2), 0);
    EXPECT_EQ(s.slot_of(9), -1);
    auto failed = s.worker_died(0, {2});  // killed for the task behind the running one
    ASSERT_EQ(failed.size(), 1u);
    EXPECT_EQ(failed[0].id, 2u);
    s.worker_started(0);
    EXPECT_EQ(assign(s), (V{"0:t1"}));  // retries=0, yet t1 runs again: it was not charged
    auto t1 = s.complete(0, 1, 0);
    ASSERT_TRUE(t1);
    EXPECT_EQ(t1->attempts, 1u);
    EXPECT_EQ(s.running(0), nullptr);
}

TEST(Scheduler, WorkerDiedMixesRetriedAndFailedTasksKeepingOrder) {
    SchedulerOptions o;
    o.retries = 1;
    o.max_inflight = 64;
    auto s = started(2, o);
    s.submit(task(1));
    s.submit(task(2));
    EXPECT_EQ(assign(s), (V{"0:t1", "1:t2"}));
    s.worker_died(0);  // t1: attempt 1 of 2, back to the queue
    s.worker_started(0);
    s.submit(task(3));
    s.complete(1, 2, 0);
    s.worker_died(1);
    s.worker_started(1);
    // t1 then t3 in the queue; make worker 0 take both.
    s.set_accepting(1, false);
    EXPECT_EQ(assign(s), (V{"0:t1", "0:t3"}));
    auto failed = s.worker_died(0);  // t1 used its retry, t3 has one left
    ASSERT_EQ(failed.size(), 1u);
    EXPECT_EQ(failed[0].id, 1u);
    EXPECT_EQ(failed[0].attempts, 2u);
    EXPECT_EQ(s.cancel_all(), (std::vector<std::uint64_t>{3}));
}

TEST(Scheduler, LateResultFromADeadWorkerIsIgnored) {
    auto s = started(2);
    s.submit(task(1));
    assign(s);  // -> 0
    s.worker_died(0);
    EXPECT_FALSE(s.complete(0, 1, 0));  // t1 is queued again, not in flight on 0
    EXPECT_EQ(assign(s), (V{"1:t1"}));
}

TEST(Scheduler, RetriesZeroFailsAtOnce) {
    SchedulerOptions o;
    o.retries = 0;
    auto s = started(1, o);
    s.submit(task(1));
    assign(s);
    auto failed = s.worker_died(0);
    ASSERT_EQ(failed.size(), 1u);
    EXPECT_EQ(failed[0].id, 1u);
    EXPECT_EQ(s.queued(), 0u);
}

TEST(Scheduler, MaxItemsPerWorkerExhausts) {
    SchedulerOptions o;
    o.max_items_per_worker = 3;
    auto s = started(1, o);
    for (int i = 1; i <= 5; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s), (V{"0:t1", "0:t2"}));
    EXPECT_FALSE(s.exhausted(0));
    s.complete(0, 1, 0);
    s.complete(0, 2, 0);
    EXPECT_EQ(assign(s), (V{"0:t3"}));
    EXPECT_TRUE(s.exhausted(0));
    s.complete(0, 3, 0);
    EXPECT_EQ(assign(s), V{});  // idle but exhausted: it must be replaced
    EXPECT_TRUE(s.idle(0));
    s.worker_started(0);  // the replacement starts from zero
    EXPECT_FALSE(s.exhausted(0));
    EXPECT_EQ(assign(s), (V{"0:t4", "0:t5"}));
}

TEST(Scheduler, MaxItemsCountsItemsOfChunks) {
    SchedulerOptions o;
    o.max_items_per_worker = 10;
    auto s = started(1, o);
    s.submit(task(1, 0, 10));
    s.submit(task(2, 0, 1));
    EXPECT_EQ(assign(s), (V{"0:t1"}));
    EXPECT_TRUE(s.exhausted(0));
}

TEST(Scheduler, NoLimitMeansNeverExhausted) {
    auto s = started(1);
    for (int i = 1; i <= 1000; ++i) {
        s.submit(task(static_cast<std::uint64_t>(i)));
        assign(s);
        s.complete(0, static_cast<std::uint64_t>(i), 0);
    }
    EXPECT_FALSE(s.exhausted(0));
}

TEST(Scheduler, SetAcceptingStopsAssignment) {
    auto s = started(2);
    s.set_accepting(0, false);
    s.submit(task(1));
    s.submit(task(2));
    EXPECT_EQ(assign(s), (V{"1:t1", "1:t2"}));
    s.set_accepting(1, false);
    s.submit(task(3));
    EXPECT_EQ(assign(s), V{});
    s.set_accepting(0, true);
    EXPECT_EQ(assign(s), (V{"0:t3"}));
}

TEST(Scheduler, InflightLimitAdaptsToMeasuredTimes) {
    SchedulerOptions o;
    o.target_inflight_ns = 2'000'000;
    o.max_inflight = 64;
    auto s = started(1, o);
    std::uint64_t id = 0;
    auto run = [&](std::int64_t ns, int n) {
        for (int i = 0; i < n; ++i) {
            s.submit(task(++id));
            assign(s);
            ASSERT_TRUE(s.complete(0, id, ns));
        }
    };
    EXPECT_EQ(s.inflight_limit(), 2u);
    run(10'000, 50);                     // 10 us tasks: 2 ms / 10 us = 200, capped at 64
    EXPECT_EQ(s.inflight_limit(), 64u);
    run(100'000, 50);                    // 100 us: 20 in flight
    EXPECT_NEAR(s.inflight_limit(), 20u, 1u);
    run(1'000'000, 50);                  // 1 ms: the floor of 2
    EXPECT_EQ(s.inflight_limit(), 2u);
    run(50'000'000, 50);                 // long tasks: one at a time
    EXPECT_EQ(s.inflight_limit(), 1u);
    run(0, 50);                          // no measurement: unchanged
    EXPECT_EQ(s.inflight_limit(), 1u);

    // The limit applies to assignment.
    for (int i = 0; i < 5; ++i) s.submit(task(++id));
    EXPECT_EQ(assign(s).size(), 1u);
}

TEST(Scheduler, InflightLimitHonoursMaxInflight) {
    SchedulerOptions o;
    o.max_inflight = 8;
    auto s = started(1, o);
    s.submit(task(1));
    assign(s);
    s.complete(0, 1, 1'000);  // 1 us tasks
    EXPECT_EQ(s.inflight_limit(), 8u);
}

// max_inflight is "tasks per worker at most". With max_inflight = 1 the unmeasured default
// (2) and the lower clamp bound (2) both exceed it; std::clamp(n, 2.0, 1.0) is also undefined
// behaviour (lo > hi).
TEST(Scheduler, InflightLimitNeverExceedsAMaxInflightOfOne) {
    SchedulerOptions o;
    o.max_inflight = 1;
    auto s = started(1, o);
    EXPECT_LE(s.inflight_limit(), 1u) << "before any measurement";
    for (int i = 1; i <= 3; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s).size(), 1u);
    s.complete(0, 1, 1'000'000);  // 1 ms: 2 ms / 1 ms = 2, above the maximum
    EXPECT_LE(s.inflight_limit(), 1u) << "after measuring 1 ms tasks";
}

// ---------------------------------------------------------------- concurrent (coroutine) tasks

namespace {
Task async_task(std::uint64_t id) {
    Task t = task(id);
    t.concurrent = true;
    return t;
}
}  // namespace

namespace {
Task alone_task(std::uint64_t id) {
    Task t = task(id);
    t.alone = true;
    return t;
}
}  // namespace

TEST(Scheduler, AloneTasksGoOnlyToIdleWorkers) {
    auto s = started(2);
    ASSERT_EQ(s.inflight_limit(), 2u);  // plain tasks would go two per worker
    for (int i = 1; i <= 4; ++i) s.submit(alone_task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s), (V{"0:t1", "1:t2"}));
    EXPECT_EQ(s.queued(), 2u);  // not parked behind t1 or t2
    // Worker 1 frees up first (worker 0's task runs long): the next one goes there, at once.
    ASSERT_TRUE(s.complete(1, 2, 1'000));
    EXPECT_EQ(assign(s), V{"1:t3"});
    ASSERT_TRUE(s.complete(1, 3, 1'000));
    EXPECT_EQ(assign(s), V{"1:t4"});
    EXPECT_EQ(s.queued(), 0u);
}

TEST(Scheduler, AnAloneTaskKeepsTheQueueInOrder) {
    auto s = started(1);
    s.submit(task(1));
    s.submit(alone_task(2));
    s.submit(task(3));
    // t1 is in flight: t2 waits for an idle worker, and t3 waits behind t2 (the queue's order).
    EXPECT_EQ(assign(s), V{"0:t1"});
    EXPECT_EQ(s.queued(), 2u);
    ASSERT_TRUE(s.complete(0, 1, 1'000));
    EXPECT_EQ(assign(s), (V{"0:t2", "0:t3"}));  // a plain task may follow it into the ring
}

TEST(Scheduler, AnAloneTaskIgnoresCoroutinesInFlight) {
    SchedulerOptions o;
    o.concurrency = 2;
    auto s = started(1, o);
    s.submit(async_task(1));
    s.submit(alone_task(2));
    s.submit(alone_task(3));
    // A coroutine runs beside plain tasks, not before them: t2 goes; t3 waits for t2.
    EXPECT_EQ(assign(s), (V{"0:t1", "0:t2"}));
    ASSERT_TRUE(s.complete(0, 2, 1'000));
    EXPECT_EQ(assign(s), V{"0:t3"});
}

// ---------------------------------------------------------------- pinned tasks (agents)

namespace {
Task pinned(std::uint64_t id, std::int64_t worker, std::uint64_t fn = 0) {
    Task t = task(id, fn);
    t.frame = frame("p" + std::to_string(id));
    t.worker = worker;
    return t;
}
}  // namespace

TEST(Scheduler, ConcurrentTasksFillKPerWorkerWhateverTheAdaptiveLimit) {
    SchedulerOptions o;
    o.concurrency = 5;
    auto s = started(2, o);
    // Long plain tasks measured: the adaptive limit is 1.
    s.submit(task(100));
    assign(s);
    s.complete(0, 100, 50'000'000);
    ASSERT_EQ(s.inflight_limit(), 1u);
    for (int i = 1; i <= 12; ++i) s.submit(async_task(static_cast<std::uint64_t>(i)));
    auto out = assign(s);
    ASSERT_EQ(out.size(), 10u);  // 5 on each worker, spread evenly
    EXPECT_EQ(out[0], "0:t1");
    EXPECT_EQ(out[1], "1:t2");
    EXPECT_EQ(out[2], "0:t3");
    EXPECT_EQ(s.queued(), 2u);  // exceeding K queues
    EXPECT_EQ(assign(s), V{});
    ASSERT_TRUE(s.complete(1, 4, 0));  // results of concurrent tasks come in any order
    EXPECT_EQ(assign(s), V{"1:t11"});
    // Their (waiting) time does not steer the adaptive limit.
    ASSERT_TRUE(s.complete(0, 3, 5'000));
    EXPECT_EQ(s.inflight_limit(), 1u);
    EXPECT_EQ(assign(s), V{"0:t12"});
}

TEST(Scheduler, PlainTasksKeepTheirOwnLimitBesideConcurrentOnes) {
    SchedulerOptions o;
    o.concurrency = 3;
    auto s = started(1, o);
    for (int i = 1; i <= 3; ++i) s.submit(async_task(static_cast<std::uint64_t>(i)));
    for (int i = 4; i <= 6; ++i) s.submit(task(static_cast<std::uint64_t>(i)));
    // Three coroutines and two plain tasks (the unmeasured plain limit) are in flight.
    EXPECT_EQ(assign(s), (V{"0:t1", "0:t2", "0:t3", "0:t4", "0:t5"}));
    EXPECT_EQ(s.queued(), 1u);
    ASSERT_TRUE(s.complete(0, 2, 0));  // a coroutine slot frees no plain room
    EXPECT_EQ(assign(s), V{});
    ASSERT_TRUE(s.complete(0, 4, 0));
    EXPECT_EQ(assign(s), V{"0:t6"});
}

TEST(Scheduler, ConcurrencyOfOneRunsOneCoroutineAtATime) {
    auto s = started(1);
    for (int i = 1; i <= 3; ++i) s.submit(async_task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s), V{"0:t1"});
    ASSERT_TRUE(s.complete(0, 1, 0));
    EXPECT_EQ(assign(s), V{"0:t2"});
}

TEST(Scheduler, EveryConcurrentTaskInFlightIsChargedWhenItsWorkerDies) {
    SchedulerOptions o;
    o.concurrency = 3;
    o.retries = 1;
    auto s = started(1, o);
    for (int i = 1; i <= 3; ++i) s.submit(async_task(static_cast<std::uint64_t>(i)));
    s.submit(task(4));
    s.submit(task(5));
    ASSERT_EQ(assign(s).size(), 5u);
    // All three coroutines may have been running; of the plain tasks only the oldest.
    EXPECT_TRUE(s.worker_died(0).empty());
    s.worker_started(0);
    EXPECT_EQ(assign(s), (V{"0:t1", "0:t2", "0:t3", "0:t4", "0:t5"}));  // original order
    auto failed = s.worker_died(0);
    ASSERT_EQ(failed.size(), 4u);  // t1..t4 used their retry; t5 never ran
    EXPECT_EQ(failed[0].id, 1u);
    EXPECT_EQ(failed[3].id, 4u);
    EXPECT_EQ(failed[0].attempts, 2u);
    EXPECT_EQ(s.cancel_all(), (std::vector<std::uint64_t>{5}));
    s.worker_started(0);
    // The slot's concurrent count was reset with it.
    for (int i = 6; i <= 9; ++i) s.submit(async_task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s).size(), 3u);
}

TEST(Scheduler, ConcurrentTasksAreRetriedUntilTheirRetriesAreUsed) {
    SchedulerOptions o;
    o.concurrency = 2;
    o.retries = 0;
    auto s = started(2, o);
    for (int i = 1; i <= 4; ++i) s.submit(async_task(static_cast<std::uint64_t>(i)));
    EXPECT_EQ(assign(s), (V{"0:t1", "1:t2", "0:t3", "1:t4"}));
    auto failed = s.worker_died(1);  // both of its coroutines fail at once
    ASSERT_EQ(failed.size(), 2u);
    EXPECT_EQ(failed[0].id, 2u);
    EXPECT_EQ(failed[1].id, 4u);
    EXPECT_EQ(s.inflight(), 2u);  // worker 0 is untouched
}

TEST(SchedulerPinned, GoesOnlyToItsSlotWithinTheInflightLimit) {
    auto s = started(3);
    for (std::uint64_t i = 1; i <= 4; ++i) s.submit(pinned(i, 1));
    EXPECT_EQ(s.queued(), 4u);
    EXPECT_EQ(assign(s), (V{"1:p1", "1:p2"}));  // the limit (2) holds for pinned work too
    EXPECT_EQ(s.queued(), 2u);
    EXPECT_TRUE(s.idle(0));
    EXPECT_TRUE(s.idle(2));
    ASSERT_TRUE(s.complete(1, 1, 0));
    EXPECT_EQ(assign(s), V{"1:p3"});
    ASSERT_TRUE(s.complete(1, 2, 0));
    ASSERT_TRUE(s.complete(1, 3, 0));
    EXPECT_EQ(assign(s), V{"1:p4"});
    EXPECT_EQ(s.queued(), 0u);
}

TEST(SchedulerPinned, SentBeforeUnpinnedWorkAndCountedInTheLimit) {
    auto s = started(2);
    s.submit(task(1));
    s.submit(task(2));
    s.submit(pinned(3, 0));
    s.submit(pinned(4, 0));
    // Slot 0 fills with its pinned tasks first; the shared queue goes to slot 1.
    EXPECT_EQ(assign(s), (V{"0:p3", "0:p4", "1:t1", "1:t2"}));
    s.submit(task(5));
    EXPECT_EQ(assign(s), V{});  // both slots full
    ASSERT_TRUE(s.complete(0, 3, 0));
    s.submit(pinned(6, 0));
    EXPECT_EQ(assign(s), V{"0:p6"});  // the pinned task takes the room, not t5
    ASSERT_TRUE(s.complete(1, 1, 0));
    EXPECT_EQ(assign(s), V{"1:t5"});
}

TEST(SchedulerPinned, FunctionFrameGoesToThePinnedSlotFirst) {
    auto s = started(2);
    s.define_function(9, frame("f9"));
    s.submit(pinned(1, 1, 9));
    s.submit(pinned(2, 1, 9));
    EXPECT_EQ(assign(s), (V{"1:f9", "1:p1", "1:p2"}));
}

TEST(SchedulerPinned, UnknownSlotIsRefused) {
    auto s = started(2);
    EXPECT_THROW(s.submit(pinned(1, 2)), std::out_of_range);
    EXPECT_EQ(s.queued(), 0u);
}

TEST(SchedulerPinned, WaitsWhileTheSlotHasNoWorker) {
    Scheduler s(2, {});
    s.worker_started(0);
    s.submit(pinned(1, 1));
    EXPECT_EQ(assign(s), V{});  // slot 1 never started: slot 0 must not take it
    EXPECT_EQ(s.queued(), 1u);
    s.worker_started(1);
    EXPECT_EQ(assign(s), V{"1:p1"});
}

TEST(SchedulerPinned, WorkerDeathFailsInflightAndQueuedPinnedTasksWithoutRetry) {
    SchedulerOptions o;
    o.retries = 5;
    auto s = started(2, o);
    s.submit(pinned(1, 0));
    s.submit(task(2));          // goes to slot 1
    s.submit(pinned(3, 0));
    s.submit(pinned(4, 0));     // queued behind the limit
    EXPECT_EQ(assign(s), (V{"0:p1", "0:p3", "1:t2"}));
    s.submit(task(5));
    s.submit(task(6));
    EXPECT_EQ(assign(s), V{"1:t5"});
    // Slot 0 dies: p1 (running) and p3 (in its ring) and p4 (queued for it) all fail, in that
    // order, however many retries are left; nothing of slot 0 goes to slot 1.
    auto failed = s.worker_died(0);
    ASSERT_EQ(failed.size(), 3u);
    EXPECT_EQ(failed[0].id, 1u);
    EXPECT_EQ(failed[1].id, 3u);
    EXPECT_EQ(failed[2].id, 4u);
    EXPECT_EQ(failed[2].attempts, 0u);  // never sent
    EXPECT_EQ(s.queued(), 1u);          // t6 only
    ASSERT_TRUE(s.complete(1, 2, 0));
    EXPECT_EQ(assign(s), V{"1:t6"});
    s.worker_started(0);
    s.submit(pinned(7, 0));
    EXPECT_EQ(assign(s), V{"0:p7"});  // the replacement serves the slot again
}

TEST(SchedulerPinned, UnpinnedTasksBehindAPinnedOneAreRequeuedUncharged) {
    SchedulerOptions o;
    o.retries = 0;
    o.max_inflight = 64;
    auto s = started(1, o);
    s.submit(pinned(1, 0));
    s.submit(task(2));
    EXPECT_EQ(assign(s), (V{"0:p1", "0:t2"}));
    auto failed = s.worker_died(0);
    ASSERT_EQ(failed.size(), 1u);  // the pinned task was running; t2 did not run
    EXPECT_EQ(failed[0].id, 1u);
    EXPECT_EQ(s.queued(), 1u);
    s.worker_started(0);
    EXPECT_EQ(assign(s), V{"0:t2"});
}

TEST(SchedulerPinned, TasksPinnedDuringTheGapWaitForTheReplacement) {
    auto s = started(2);
    s.submit(pinned(1, 1));
    assign(s);
    ASSERT_EQ(s.worker_died(1).size(), 1u);
    s.submit(pinned(2, 1));  // after the death, before the replacement: kept for it
    EXPECT_EQ(assign(s), V{});
    s.worker_started(1);
    EXPECT_EQ(assign(s), V{"1:p2"});
}

TEST(SchedulerPinned, CancelAndCancelAllReachPinnedQueues) {
    auto s = started(2);
    for (std::uint64_t i = 1; i <= 4; ++i) s.submit(pinned(i, 0));
    s.submit(task(5));
    s.set_accepting(1, false);
    assign(s);  // p1, p2 in flight on slot 0
    EXPECT_EQ(s.queued(), 3u);
    EXPECT_FALSE(s.cancel(1));  // in flight
    EXPECT_TRUE(s.cancel(3));
    EXPECT_FALSE(s.cancel(3));
    EXPECT_EQ(s.queued(), 2u);
    EXPECT_EQ(s.cancel_all(), (std::vector<std::uint64_t>{5, 4}));
    EXPECT_EQ(s.queued(), 0u);
    EXPECT_EQ(s.inflight(), 2u);
}

TEST(SchedulerPinned, NotSentToASlotThatStoppedAccepting) {
    auto s = started(2);
    s.set_accepting(0, false);
    s.submit(pinned(1, 0));
    EXPECT_EQ(assign(s), V{});
    s.set_accepting(0, true);
    EXPECT_EQ(assign(s), V{"0:p1"});
}
