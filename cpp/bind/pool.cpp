// pool.cpp (binding) — shoal._core.Pool: the driver's process pool.
#include "shoal/pool.hpp"
#include "arena.hpp"

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
/// [(kind, flags, task_id, aux, status kind, status value, status text, worker, payload,
/// arena blocks or None), ...] for the Python layer.
nb::list completions_to_python(Pool& p, std::vector<Completion>& out) {
    nb::list items;
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
        items.append(nb::make_tuple(static_cast<int>(c.kind), c.flags, c.task_id, c.aux,
                                    static_cast<int>(c.status.kind), c.status.value,
                                    status_text,
                                    c.worker, nb::bytes(data, size), buffers));
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
    nb::class_<Pool>(m, "Pool")
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
             nb::arg("zygote"), nb::arg("workers"), nb::arg("retries"), nb::arg("max_items_per_worker"),
             nb::arg("preload"), nb::arg("spin_ns"), nb::arg("task_ring_bytes"), nb::arg("result_ring_bytes"),
             nb::arg("init_payload"), nb::arg("hints"), nb::arg("arena").none() = nb::none(),
             nb::arg("concurrency") = 1)
        .def("define_function",
             [](Pool& p, std::uint64_t fn_id, nb::bytes pickled) { p.define_function(fn_id, view(pickled)); })
        .def("forget_function", &Pool::forget_function)
        .def("submit",
             [](Pool& p, std::uint64_t task_id, std::uint64_t fn_id, std::uint32_t count, nb::bytes payload,
                nb::handle refs, bool concurrent, std::int64_t worker) {
                 if (refs.is_none()) return p.submit(task_id, fn_id, count, view(payload), {}, concurrent, worker);
                 auto r = buffer_refs(refs);
                 return p.submit(task_id, fn_id, count, view(payload), r, concurrent, worker);
             },
             nb::arg("task_id"), nb::arg("fn_id"), nb::arg("count"), nb::arg("payload"),
             nb::arg("refs") = nb::none(), nb::arg("concurrent") = false, nb::arg("worker") = -1)
        .def("cancel", &Pool::cancel)
        .def("cancel_all", &Pool::cancel_all)
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
                 // KeyboardInterrupt raised after this call returns cannot lose it.
                 if (!out.empty()) keep_pending(p, out, seq, pending);
                 if (!open) return nb::none();
                 return nb::bool_(true);
             },
             nb::arg("timeout"), nb::arg("background"), nb::arg("epoch"), nb::arg("pending"))
        .def("take_ready",
             [](Pool& p, nb::dict pending) {
                 std::vector<Completion> out;
                 std::uint64_t seq = 0;
                 p.take_ready(out, &seq);
                 if (!out.empty()) keep_pending(p, out, seq, pending);
             },
             nb::arg("pending"))
        .def_prop_ro("epoch", &Pool::epoch)
        .def("interrupt", &Pool::interrupt, nb::call_guard<nb::gil_scoped_release>())
        .def("close", &Pool::close, nb::arg("kill"), nb::call_guard<nb::gil_scoped_release>())
        .def("join",
             [](Pool& p, double timeout) { p.join(static_cast<std::int64_t>(timeout * 1e9)); },
             nb::arg("timeout"), nb::call_guard<nb::gil_scoped_release>())
        .def("worker_pids", &Pool::worker_pids)
        .def_prop_ro("workers", &Pool::workers)
        .def_prop_ro("queued", &Pool::queued)
        .def_prop_ro("inflight", &Pool::inflight);

    m.attr("COMPLETION_RESULT") = static_cast<int>(Completion::result);
    m.attr("COMPLETION_OUTPUT") = static_cast<int>(Completion::output);
    m.attr("COMPLETION_CRASHED") = static_cast<int>(Completion::crashed);
    m.attr("COMPLETION_INIT_FAILED") = static_cast<int>(Completion::init_failed);
    m.attr("COMPLETION_BROKEN") = static_cast<int>(Completion::broken);
    m.attr("STATUS_EXITED") = static_cast<int>(ExitStatus::exited);
    m.attr("STATUS_SIGNALED") = static_cast<int>(ExitStatus::signaled);
}
