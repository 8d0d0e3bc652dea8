// scheduler.cpp — queue, in-flight limits, function prerequisites and retries.
#include "shoal/scheduler.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace shoal {

Scheduler::Scheduler(std::size_t workers, SchedulerOptions options)
    : m_options(options), m_workers(workers) {}

void Scheduler::submit(Task task) {
    if (task.worker < 0) {
        m_queue.push_back(std::move(task));
        return;
    }
    auto const slot = static_cast<std::size_t>(task.worker);
    if (slot >= m_workers.size())
        throw std::out_of_range("Scheduler::submit: task pinned to slot " + std::to_string(slot) + " of " +
                                std::to_string(m_workers.size()));
    m_workers[slot].pinned.push_back(std::move(task));
    ++m_pinned_queued;
}

bool Scheduler::cancel(std::uint64_t task_id) {
    auto same = [&](Task const& t) { return t.id == task_id; };
    auto it = std::find_if(m_queue.begin(), m_queue.end(), same);
    if (it != m_queue.end()) {
        m_queue.erase(it);
        return true;
    }
    for (auto& w : m_workers) {
        auto p = std::find_if(w.pinned.begin(), w.pinned.end(), same);
        if (p != w.pinned.end()) {
            w.pinned.erase(p);
            --m_pinned_queued;
            return true;
        }
    }
    return false;
}

std::vector<std::uint64_t> Scheduler::cancel_all() {
    std::vector<std::uint64_t> ids;
    for (auto const& t : m_queue) ids.push_back(t.id);
    m_queue.clear();
    for (auto& w : m_workers) {
        for (auto const& t : w.pinned) ids.push_back(t.id);
        w.pinned.clear();
    }
    m_pinned_queued = 0;
    return ids;
}

void Scheduler::define_function(std::uint64_t fn_id, SharedBytes frame) {
    m_functions[fn_id] = std::move(frame);
}

void Scheduler::forget_function(std::uint64_t fn_id, SharedBytes const& forget_frame) {
    m_functions.erase(fn_id);
    for (auto& w : m_workers)
        if (w.known_functions.erase(fn_id)) w.control.push_back(forget_frame);
}

std::uint32_t Scheduler::inflight_limit() const noexcept {
    std::uint32_t const most = std::max<std::uint32_t>(1, m_options.max_inflight);
    if (m_task_ns >= 20e6) return 1;  // long tasks: never park one behind another
    if (m_task_ns <= 0) return std::min<std::uint32_t>(2, most);
    double n = static_cast<double>(m_options.target_inflight_ns) / m_task_ns;
    return static_cast<std::uint32_t>(std::clamp(n, std::min(2.0, static_cast<double>(most)),
                                                 static_cast<double>(most)));
}

bool Scheduler::exhausted(std::size_t worker) const {
    auto const& w = m_workers.at(worker);
    return m_options.max_items_per_worker && w.items_started >= m_options.max_items_per_worker;
}

bool Scheduler::has_room(std::size_t worker, std::uint32_t limit, bool concurrent, bool alone) const {
    // Concurrent tasks run side by side in a worker and have their own limit; the others
    // run one after another under the adaptive one, an `alone` task only on an idle worker.
    auto const& w = m_workers[worker];
    std::size_t const load = concurrent ? w.concurrent : w.inflight.size() - w.concurrent;
    std::size_t const cap = concurrent ? std::max<std::uint32_t>(1, m_options.concurrency) : alone ? 1 : limit;
    return w.alive && w.accepting && load < cap && !exhausted(worker);
}

void Scheduler::send(std::size_t worker, Task t, std::vector<std::pair<std::size_t, SharedBytes>>& out) {
    auto& w = m_workers[worker];
    if (t.fn_id && !w.known_functions.count(t.fn_id)) {
        auto f = m_functions.find(t.fn_id);
        if (f != m_functions.end()) {
            out.emplace_back(worker, f->second);
            w.known_functions.insert(t.fn_id);
        }
    }
    ++t.attempts;
    w.items_started += t.count;
    if (t.concurrent) ++w.concurrent;
    out.emplace_back(worker, t.frame);
    w.inflight.push_back(std::move(t));
}

void Scheduler::assign(std::vector<std::pair<std::size_t, SharedBytes>>& out) {
    for (std::size_t i = 0; i < m_workers.size(); ++i) {
        auto& w = m_workers[i];
        for (auto& c : w.control) out.emplace_back(i, std::move(c));
        w.control.clear();
    }
    std::uint32_t const limit = inflight_limit();
    // Pinned work first: nobody else can run it, and it must not wait behind shared work.
    if (m_pinned_queued) {
        for (std::size_t i = 0; i < m_workers.size(); ++i) {
            auto& w = m_workers[i];
            while (!w.pinned.empty() &&
                   has_room(i, limit, w.pinned.front().concurrent, w.pinned.front().alone)) {
                Task t = std::move(w.pinned.front());
                w.pinned.pop_front();
                --m_pinned_queued;
                send(i, std::move(t), out);
            }
        }
    }
    while (!m_queue.empty()) {
        // Among the workers with room for this kind of task, the one with the fewest of
        // that kind in flight (then the fewest in all). Concurrent tasks run side by side
        // in a worker and have their own limit; the others run one after another.
        bool const concurrent = m_queue.front().concurrent;
        bool const alone = m_queue.front().alone && !concurrent;
        std::size_t best = m_workers.size();
        std::size_t best_load = 0;
        for (std::size_t i = 0; i < m_workers.size(); ++i) {
            if (!has_room(i, limit, concurrent, alone)) continue;
            auto const& w = m_workers[i];
            std::size_t const load = concurrent ? w.concurrent : w.inflight.size() - w.concurrent;
            if (best == m_workers.size() || load < best_load ||
                (load == best_load && w.inflight.size() < m_workers[best].inflight.size())) {
                best = i;
                best_load = load;
            }
        }
        if (best == m_workers.size()) return;
        Task t = std::move(m_queue.front());
        m_queue.pop_front();
        send(best, std::move(t), out);
    }
}

std::optional<Task> Scheduler::complete(std::size_t worker, std::uint64_t task_id, std::int64_t elapsed_ns) {
    auto& w = m_workers.at(worker);
    auto& q = w.inflight;
    // Results come back in order (concurrent tasks aside), so this is almost always the front.
    auto it = std::find_if(q.begin(), q.end(), [&](Task const& t) { return t.id == task_id; });
    if (it == q.end()) return std::nullopt;
    Task t = std::move(*it);
    q.erase(it);
    if (t.concurrent) {
        --w.concurrent;  // its time is mostly waiting, not work: it does not steer the limit
    } else if (elapsed_ns > 0) {
        double per_task = static_cast<double>(elapsed_ns);
        m_task_ns = m_task_ns <= 0 ? per_task : 0.8 * m_task_ns + 0.2 * per_task;
    }
    return t;
}

Task const* Scheduler::running(std::size_t worker) const {
    for (auto const& t : m_workers.at(worker).inflight)
        if (!t.concurrent) return &t;
    return nullptr;
}

std::int64_t Scheduler::slot_of(std::uint64_t task_id) const {
    for (std::size_t i = 0; i < m_workers.size(); ++i)
        for (auto const& t : m_workers[i].inflight)
            if (t.id == task_id) return static_cast<std::int64_t>(i);
    return -1;
}

std::vector<Task> Scheduler::worker_died(std::size_t worker, std::vector<std::uint64_t> const& blame) {
    auto& w = m_workers.at(worker);
    std::vector<Task> failed;
    if (!blame.empty()) {
        // The death has a known cause (the driver killed the worker for these tasks, or one
        // overran its limit): they end here; the others go back with their attempt refunded,
        // concurrent ones too.
        for (auto it = w.inflight.begin(); it != w.inflight.end();) {
            if (std::find(blame.begin(), blame.end(), it->id) != blame.end()) {
                failed.push_back(std::move(*it));
                it = w.inflight.erase(it);
            } else {
                --it->attempts;
                ++it;
            }
        }
    } else {
        // A worker runs its plain tasks in order: the oldest was running when it died; the
        // others were waiting in its ring and did not run, so their attempt does not count.
        // Concurrent tasks run side by side: any of them may have been running (or be the
        // culprit), so each is charged.
        bool oldest = true;
        for (auto& t : w.inflight) {
            if (t.concurrent) continue;
            if (!oldest) --t.attempts;
            oldest = false;
        }
    }
    std::size_t const first = failed.size();
    // Re-queue at the front in the original order; pinned tasks fail (their slot's state died).
    for (auto it = w.inflight.rbegin(); it != w.inflight.rend(); ++it) {
        if (it->worker >= 0 || it->attempts > m_options.retries) failed.push_back(std::move(*it));
        else m_queue.push_front(std::move(*it));
    }
    std::reverse(failed.begin() + static_cast<std::ptrdiff_t>(first), failed.end());
    for (auto& t : w.pinned) failed.push_back(std::move(t));
    m_pinned_queued -= w.pinned.size();
    w.pinned.clear();
    w.inflight.clear();
    w.concurrent = 0;
    w.known_functions.clear();
    w.control.clear();
    w.alive = false;
    w.accepting = false;
    return failed;
}

void Scheduler::worker_started(std::size_t worker) {
    auto& w = m_workers.at(worker);
    std::deque<Task> pinned = std::move(w.pinned);  // queued while the slot had no worker
    w = WorkerState{};
    w.pinned = std::move(pinned);
    w.alive = true;
    w.accepting = true;
}

void Scheduler::set_accepting(std::size_t worker, bool accepting) { m_workers.at(worker).accepting = accepting; }

std::size_t Scheduler::inflight() const noexcept {
    std::size_t n = 0;
    for (auto const& w : m_workers) n += w.inflight.size();
    return n;
}

}  // namespace shoal
