// worker.cpp (binding) — shoal._core.WorkerChannel: the worker's rings, frames as tuples.
#include "shoal/frame.hpp"
#include "shoal/worker.hpp"
#include "arena.hpp"

#include <nanobind/stl/pair.h>
#include <vector>

#include <nanobind/nanobind.h>

namespace nb = nanobind;
using namespace shoal;

namespace {
nb::object frame_tuple(Bytes const& msg) {
    FrameView f;
    std::string error;
    if (!decode_frame(msg, f, error) || !is_driver_frame(f.header.kind))
        throw std::runtime_error("shoal worker: malformed frame from the driver: " +
                                 (error.empty() ? std::string("unexpected kind") : error));
    nb::object refs = nb::none();
    if (f.header.buffers != 0) {
        nb::list l;
        for (std::size_t i = 0; i < f.header.buffers; ++i) {
            BufferRef r = f.ref(i);
            l.append(nb::make_tuple(r.offset, r.length));
        }
        refs = l;
    }
    return nb::make_tuple(static_cast<int>(f.header.kind), f.header.flags, f.header.task_id, f.header.aux,
                          f.header.count,
                          nb::bytes(reinterpret_cast<char const*>(f.payload.data()), f.payload.size()), refs);
}
}  // namespace

void bind_worker(nb::module_& m) {
    nb::class_<WorkerChannel>(m, "WorkerChannel")
        .def("recv",
             [](WorkerChannel& ch, double timeout) -> nb::object {
                 Bytes msg;
                 bool ok;
                 {
                     nb::gil_scoped_release release;
                     ok = ch.recv(msg, timeout < 0 ? -1 : static_cast<std::int64_t>(timeout * 1e9));
                 }
                 if (!ok) return nb::none();
                 return frame_tuple(msg);
             },
             nb::arg("timeout") = -1.0)
        // The next frame if one is there, else None; never blocks. A corrupt stream raises.
        .def("try_recv",
             [](WorkerChannel& ch) -> nb::object {
                 Bytes msg;
                 switch (ch.try_recv(msg)) {
                     case WorkerChannel::Poll::message: return frame_tuple(msg);
                     case WorkerChannel::Poll::empty: return nb::none();
                     case WorkerChannel::Poll::corrupt: break;
                 }
                 throw std::runtime_error("shoal worker: the task stream is corrupt");
             })
        .def("watch_fd", &WorkerChannel::watch_fd)
        .def("arm", &WorkerChannel::arm)
        .def("disarm", &WorkerChannel::disarm, nb::call_guard<nb::gil_scoped_release>())
        .def_prop_ro("armed", &WorkerChannel::armed)
        .def("clear_watch", &WorkerChannel::clear_watch)
        .def("pending", &WorkerChannel::pending)
        .def("send",
             [](WorkerChannel& ch, int kind, std::uint32_t flags, std::uint64_t task_id, std::uint64_t aux,
                std::uint32_t count, nb::bytes payload, nb::handle refs) {
                 std::vector<BufferRef> r;
                 if (!refs.is_none())
                     for (nb::handle item : refs) {
                         auto t = nb::cast<std::pair<std::uint64_t, std::uint64_t>>(item);
                         r.push_back({t.first, t.second});
                     }
                 auto frame = encode_frame(static_cast<FrameKind>(kind), flags, task_id, aux, count,
                                           {reinterpret_cast<std::byte const*>(payload.c_str()), payload.size()}, r);
                 nb::gil_scoped_release release;
                 ch.send(frame);
             },
             nb::arg("kind"), nb::arg("flags"), nb::arg("task_id"), nb::arg("aux"), nb::arg("count"),
             nb::arg("payload"), nb::arg("refs") = nb::none());

    m.attr("FRAME_TASK") = static_cast<int>(FrameKind::task);
    m.attr("FRAME_FUNCTION") = static_cast<int>(FrameKind::function);
    m.attr("FRAME_FORGET") = static_cast<int>(FrameKind::forget);
    m.attr("FRAME_SHUTDOWN") = static_cast<int>(FrameKind::shutdown);
    m.attr("FRAME_RESULT") = static_cast<int>(FrameKind::result);
    m.attr("FRAME_OUTPUT") = static_cast<int>(FrameKind::output);
    m.attr("FRAME_READY") = static_cast<int>(FrameKind::ready);
    m.attr("FRAME_INIT_FAILED") = static_cast<int>(FrameKind::init_failed);
    m.attr("FLAG_ERROR") = k_flag_error;
    m.attr("MAX_FRAME_BUFFERS") = k_max_frame_buffers;
}
