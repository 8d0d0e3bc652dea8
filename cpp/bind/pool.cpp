// pool.cpp (binding) — shoal._core.Pool: the driver's process pool.
#include "shoal/pool.hpp"
#include "arena.hpp"
#include "record.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

namespace nb = nanobind;
using namespace shoal;

namespace {
std::span<std::byte const> view(nb::bytes const& b) {
    return {reinterpret_cast<std::byte const*>(b.c_str()), b.size()};
}
}  // namespace

/// (offset, length) pairs from Python; None or empty: none.
std::vector<BufferRef> buffer_refs(nb::handle refs) {
    std::vector<BufferRef> out;
    if (refs.is_none()) return out;
    for (nb::handle item : refs) {
        auto t = nb::cast<std::pair<std::uint64_t, std::uint64_t>>(item);
        out.push_back({t.first, t.second});
    }
    return out;
}

namespace {

PyStructSequence_Field completion_fields[] = {
    {"kind", "What happened: COMPLETION_RESULT, _OUTPUT, _CRASHED, _INIT_FAILED, _BROKEN, _TIMED_OUT or _KILLED."},
    {"flags", "A result: FLAG_ERROR if the task raised (payload: the pickled exception and traceback). "
              "Output: 1 for stdout, 2 for stderr."},
    {"task_id", "The task's id as given to Pool.submit (0 for output)."},
    {"aux", "A result: the task's run time in the worker, in ns."},
    {"status_kind", "Crashed (or broken by a death): how the worker ended, STATUS_EXITED or STATUS_SIGNALED. "
                    "Otherwise STATUS_EXITED."},
    {"status_value", "Crashed (or broken by a death): the exit code or the signal number. A result: how many "
                     "times the task was run again after a worker died running it (its retries). Otherwise 0."},
    {"status_text", "Crashed: how the worker ended, in words (\"killed by signal 9 (SIGKILL)\"), and why if the "
                    "driver killed it. Otherwise ''."},
    {"worker", "The worker slot the completion came from (0 when none did: broken)."},
    {"payload", "A result: the pickled value (or exception). Output: the text. Crashed: why the driver killed "
                "the worker (a malformed or oversized message), or empty. Init failed: the pickled exception. "
                "Broken: the reason, in UTF-8 (may be empty)."},
    {"buffers", "A result's out-of-band arena buffers, as a list of owning Blocks; None when there are none."},
    {nullptr, nullptr}};

PyStructSequence_Desc completion_desc = {
    "shoal._core.Completion",
    "The items of a completion, by name. Pool.take() and Pool.take_ready() hand over each finished task or "
    "piece of output as a plain tuple of 10 items in this order, (kind, flags, task_id, aux, status_kind, "
    "status_value, status_text, worker, payload, buffers), which is faster to unpack than this record; "
    "Completion(item) names one's items.",
    completion_fields, 10};

/// [completion, ...] for the Python layer, each completion a plain tuple in
/// Completion's order (record.hpp says why not the record). GIL held.
nb::object completions_to_python(Pool& p, std::vector<Completion>& out) {
    nb::object items = nb::steal(PyList_New(static_cast<Py_ssize_t>(out.size())));
    if (!items) throw nb::python_error();
    Py_ssize_t i = 0;
    for (auto& c : out) {
        nb::object buffers = nb::none();
        if (!c.buffers.empty()) {
            nb::list blocks;
            for (auto& b : c.buffers) {
                auto length = b.ref().length;
                blocks.append(make_owned_block(std::move(b), p.arena(), length));
            }
            buffers = blocks;
        }
        auto const* data = reinterpret_cast<char const*>(c.payload.data()) + c.payload_offset;
        std::size_t size = c.payload.size() - c.payload_offset;
        std::string status_text;
        if (c.kind == Completion::crashed) {
            status_text = c.status.describe();
            if (size != 0) status_text += " (the driver killed it: " + std::string(data, size) + ")";
        }
        nb::object item = nb::make_tuple(static_cast<int>(c.kind), c.flags, c.task_id, c.aux,
                                         static_cast<int>(c.status.kind), c.status.value, std::move(status_text),
                                         c.worker, nb::bytes(data, size), std::move(buffers));
        PyList_SET_ITEM(items.ptr(), i++, item.release().ptr());  // steals; the slots start as NULL
    }
    return items;
}

/// pending[seq] = [batch, 0]: the batch and the index of its next completion to deliver
/// (driver.py's _deliver resumes there, whichever thread it runs on).
void keep_pending(Pool& p, std::vector<Completion>& out, std::uint64_t seq, nb::dict& pending) {
    nb::list record;
    record.append(completions_to_python(p, out));
    record.append(0);
    pending[nb::int_(seq)] = record;
}
}  // namespace

void bind_pool(nb::module_& m) {
    // InheritedPoolError -> shoal.InheritedExecutorError (a RuntimeError), defined in Python
    // where it is documented; plain RuntimeError should that module not import.
    nb::register_exception_translator([](std::exception_ptr const& p, void*) {
        try {
            std::rethrow_exception(p);
        } catch (InheritedPoolError const& e) {
            PyObject* type = PyExc_RuntimeError;
            nb::object cls;
            try {
                cls = nb::module_::import_("shoal._errors").attr("InheritedExecutorError");
                type = cls.ptr();
            } catch (nb::python_error const&) {
            }
            PyErr_SetString(type, e.what());
        }
    });
    PoolOptions const defaults{};
    define_record_type(m, completion_desc,
                       "class Completion(tuple[int, int, int, int, int, int, str, int, bytes, list[Block] | None])");
    nb::class_<Pool>(m, "Pool",
                     "The driver's process pool: workers forked by the zygote, tasks in, completions out. It "
                     "has no thread of its own: the threads that call submit(), take() and join() serve it. "
                     "Thread-safe.")
        .def("__init__",
             [](Pool* self, ZygoteClient& zygote, std::size_t workers, unsigned retries,
                std::uint64_t max_items_per_worker, std::vector<std::string> preload,
                std::int64_t spin_ns, std::size_t task_ring_bytes, std::size_t result_ring_bytes,
                nb::bytes init_payload, std::vector<std::string> hints, PyArena* arena,
                std::uint32_t concurrency) {
                 PoolOptions o;
                 o.workers = workers;
                 o.scheduler.retries = retries;
                 o.scheduler.max_items_per_worker = max_items_per_worker;
                 if (concurrency < 1) throw std::invalid_argument("Pool: concurrency must be at least 1");
                 o.scheduler.concurrency = concurrency;
                 o.preload = std::move(preload);
                 o.hints = std::move(hints);
                 o.spin_ns = spin_ns;
                 o.task_ring_bytes = task_ring_bytes;
                 o.result_ring_bytes = result_ring_bytes;
                 auto iv = view(init_payload);
                 o.init_payload.assign(iv.begin(), iv.end());
                 if (arena) o.arena = arena->arena;
                 nb::gil_scoped_release release;  // the zygote may take a while to import
                 new (self) Pool(zygote, std::move(o));
             },
             // One source of truth: every default is PoolOptions{}'s (see pool.hpp for each one's trade-off).
             nb::arg("zygote"), nb::kw_only(), nb::arg("workers") = defaults.workers,
             nb::arg("retries") = defaults.scheduler.retries,
             nb::arg("max_items_per_worker") = defaults.scheduler.max_items_per_worker,
             nb::arg("preload") = defaults.preload, nb::arg("spin_ns") = defaults.spin_ns,
             nb::arg("task_ring_bytes") = defaults.task_ring_bytes,
             nb::arg("result_ring_bytes") = defaults.result_ring_bytes,
             nb::arg("init_payload") = nb::bytes(reinterpret_cast<char const*>(defaults.init_payload.data()),
                                                 defaults.init_payload.size()),
             nb::arg("hints") = defaults.hints, nb::arg("arena").none() = nb::none(),
             nb::arg("concurrency") = defaults.scheduler.concurrency,
             "Starts a pool: `workers` worker processes forked from `zygote` (0: one per CPU), once it has "
             "imported `preload` (a failure raises) and `hints` (best effort).\n\n"
             "retries: times a task is run again after its worker died running it.\n"
             "max_items_per_worker: items a worker starts before it is replaced (0: no limit).\n"
             "spin_ns: how long waiting workers and callers spin before they sleep, in ns.\n"
             "task_ring_bytes, result_ring_bytes: each worker's ring capacity, each way.\n"
             "init_payload: the pickled initializer every new worker runs first.\n"
             "arena: shared with the workers for out-of-band buffers (None: everything in the rings).\n"
             "concurrency: coroutine tasks in flight per worker at most (>= 1).")
        .def("define_function",
             [](Pool& p, std::uint64_t fn_id, nb::bytes pickled) { p.define_function(fn_id, view(pickled)); },
             nb::arg("fn_id"), nb::arg("pickled"),
             "Registers function `fn_id` (`pickled`: its pickle). It is sent once to each worker, before "
             "that worker's first task that needs it. Never blocks.")
        .def("forget_function", &Pool::forget_function, nb::arg("fn_id"),
             "Drops function `fn_id`: the workers that have it are told to forget it. Never blocks.")
        .def("submit",
             [](Pool& p, std::uint64_t task_id, std::uint64_t fn_id, std::uint32_t count, nb::bytes payload,
                nb::handle refs, bool concurrent, std::int64_t worker, std::uint32_t limit_ms, bool alone) {
                 if (refs.is_none())
                     return p.submit(task_id, fn_id, count, view(payload), {}, concurrent, worker, limit_ms, alone);
                 auto r = buffer_refs(refs);
                 return p.submit(task_id, fn_id, count, view(payload), r, concurrent, worker, limit_ms, alone);
             },
             nb::arg("task_id"), nb::arg("fn_id"), nb::arg("count"), nb::arg("payload"),
             nb::arg("refs") = nb::none(), nb::arg("concurrent") = false, nb::arg("worker") = -1,
             nb::arg("limit_ms") = 0, nb::arg("alone") = false,
             nb::sig("def submit(self, task_id: int, fn_id: int, count: int, payload: bytes, "
                     "refs: collections.abc.Sequence[tuple[int, int]] | None = None, concurrent: bool = False, "
                     "worker: int = -1, limit_ms: int = 0, alone: bool = False) -> bool"),
             "Queues task `task_id`: function `fn_id` on `payload` (its pickled arguments), a chunk of "
             "`count` items, and hands it to a worker at once if one has room. Never blocks on workers.\n\n"
             "refs: (offset, length) of the arguments' buffers in the arena; keep them alive until the task "
             "completes.\n"
             "concurrent: a coroutine task; it counts against `concurrency`, not the adaptive in-flight limit.\n"
             "worker: a slot index to run the task there or nowhere (-1: any worker); if that worker dies, "
             "the task completes as crashed instead of being retried.\n"
             "limit_ms: a time limit for the task (each item of a chunk), in ms (0: none); past it the "
             "worker is killed and the task completes as timed out, not retried.\n"
             "alone: hand the task only to a worker with no plain task in flight (it never waits behind "
             "another task in a worker's ring); tasks queued after it wait while it is the oldest.\n\n"
             "After close(), or once the pool is broken, the task completes as broken. Returns True when "
             "completions wait that the caller should deliver now (take_ready()).")
        .def("cancel", &Pool::cancel, nb::arg("task_id"),
             "Drops task `task_id` if no worker has it yet; True if it was dropped.")
        .def("cancel_all", &Pool::cancel_all,
             "Drops every task no worker has yet; returns their ids.")
        .def("kill", &Pool::kill, nb::arg("task_id"),
             "Stops task `task_id`: 1 if it was queued and is dropped; 2 if a worker has it: that worker "
             "is killed and replaced and the task completes as killed (unless its result came first); "
             "0 if the task is not here (done).")
        .def("take",
             [](Pool& p, double timeout, bool background, std::uint64_t epoch, nb::dict pending) -> nb::object {
                 std::vector<Completion> out;
                 bool open;
                 std::uint64_t seq = 0;
                 {
                     nb::gil_scoped_release release;
                     open = p.take(out, timeout < 0 ? -1 : static_cast<std::int64_t>(timeout * 1e9), background,
                                   epoch, &seq);
                 }
                 // The batch goes into `pending` here, in C, before any bytecode runs: a
                 // KeyboardInterrupt raised once this call returns cannot lose it.
                 if (!out.empty()) keep_pending(p, out, seq, pending);
                 if (!open) return nb::none();
                 return nb::bool_(true);
             },
             nb::arg("timeout"), nb::arg("background"), nb::arg("epoch"), nb::arg("pending"),
             nb::sig("def take(self, timeout: float, background: bool, epoch: int, "
                     "pending: dict[int, list[list[tuple[int, int, int, int, int, int, str, int, bytes, "
                     "list[Block] | None]] | int]]) -> bool | None"),
             "Serves the pool (drains the result rings, hears the zygote, refills the workers) until "
             "completions are ready, and stores them in `pending` before returning: pending[seq] = "
             "[[completion, ...], 0], each completion a plain tuple of Completion's items in its order "
             "(kind, flags, task_id, aux, status_kind, status_value, status_text, worker, payload, buffers), "
             "and 0 the index of the next one to deliver. The caller delivers the pending batches in `seq` "
             "order, whichever thread took them; a signal raised after the call cannot lose a batch. "
             "Releases the GIL.\n\n"
             "timeout: seconds to wait at most (< 0: until something completes); on timeout nothing is stored.\n"
             "background: True only for the completion thread. It leaves completions to callers blocked on "
             "a result (who take them with no thread hop) and never spins.\n"
             "epoch: the value of `epoch` read before checking that what the caller waits for is not done. "
             "A foreground take returns as soon as the pool's epoch differs (another thread delivered "
             "completions), so no wake-up is lost in between.\n\n"
             "Returns True, or None once the pool is closed and every worker has exited.")
        .def("take_ready",
             [](Pool& p, nb::dict pending) {
                 std::vector<Completion> out;
                 std::uint64_t seq = 0;
                 p.take_ready(out, &seq);
                 if (!out.empty()) keep_pending(p, out, seq, pending);
             },
             nb::arg("pending"),
             nb::sig("def take_ready(self, pending: dict[int, list[list[tuple[int, int, int, int, int, int, str, "
                     "int, bytes, list[Block] | None]] | int]]) -> None"),
             "Stores the completions already drained (by submit()) in `pending` as take() does, each a "
             "plain tuple of Completion's items in its order, without waiting or serving the pool.")
        .def_prop_ro("epoch", &Pool::epoch,
                     "Bumped by interrupt(). Read it before checking a future and pass it to take().")
        .def("interrupt", &Pool::interrupt, nb::call_guard<nb::gil_scoped_release>(),
             "Bumps `epoch` and wakes the foreground takers: call it after delivering completions that "
             "another thread may wait for. No system call when nobody waits.")
        .def("close", &Pool::close, nb::arg("kill"), nb::call_guard<nb::gil_scoped_release>(),
             "Starts closing: queued and running tasks finish, then the workers exit. kill: SIGKILL the "
             "workers now; unfinished tasks complete as broken. Never blocks.")
        .def("join",
             [](Pool& p, double timeout) { p.join(static_cast<std::int64_t>(timeout * 1e9)); },
             nb::arg("timeout"), nb::call_guard<nb::gil_scoped_release>(),
             "Waits up to `timeout` seconds for every worker to exit (after close()), serving the pool "
             "meanwhile, then kills what is left. Completions found meanwhile stay for take().")
        .def("worker_pids", &Pool::worker_pids,
             "Process ids of the live workers (a worker whose fork the zygote has not reported yet is missing).")
        .def_prop_ro("workers", &Pool::workers,
                     "The number of worker slots; fixed for the pool's life (a slot's process may be replaced).")
        .def_prop_ro("queued", &Pool::queued, "Tasks no worker has yet.")
        .def_prop_ro("inflight", &Pool::inflight, "Tasks sent to workers and not finished.");

    m.attr("COMPLETION_RESULT") = static_cast<int>(Completion::result);
    m.attr("COMPLETION_OUTPUT") = static_cast<int>(Completion::output);
    m.attr("COMPLETION_CRASHED") = static_cast<int>(Completion::crashed);
    m.attr("COMPLETION_INIT_FAILED") = static_cast<int>(Completion::init_failed);
    m.attr("COMPLETION_BROKEN") = static_cast<int>(Completion::broken);
    m.attr("COMPLETION_TIMED_OUT") = static_cast<int>(Completion::timed_out);
    m.attr("COMPLETION_KILLED") = static_cast<int>(Completion::killed);
    m.attr("STATUS_EXITED") = static_cast<int>(ExitStatus::exited);
    m.attr("STATUS_SIGNALED") = static_cast<int>(ExitStatus::signaled);
}
