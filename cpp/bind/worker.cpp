// worker.cpp (binding) — shoal._core.WorkerChannel: the worker's rings; frames as plain tuples named by Frame.
#include "shoal/frame.hpp"
#include "shoal/worker.hpp"
#include "arena.hpp"
#include "record.hpp"

#include <nanobind/stl/pair.h>
#include <vector>

#include <nanobind/nanobind.h>

namespace nb = nanobind;
using namespace shoal;

namespace {

PyStructSequence_Field frame_fields[] = {
    {"kind", "FRAME_TASK, FRAME_FUNCTION, FRAME_FORGET or FRAME_SHUTDOWN."},
    {"flags", "A task: its time limit in ms (0: none; see Pool.submit). Other frames: 0."},
    {"task_id", "A task: its id, to send back in the result frame. Otherwise 0."},
    {"aux", "A task: the id of the function to run. Function and forget: the function's id (0 in a "
            "function frame: the payload is the pickled initializer and its arguments)."},
    {"count", "A task: how many items its chunk holds (1 for a single call)."},
    {"payload", "A task: its pickled arguments. A function: its pickle."},
    {"refs", "A task's out-of-band arguments in the arena, as a list of (offset, length) pairs "
             "(length's top bit set: the task only reads the buffer); None when there are none."},
    {nullptr, nullptr}};

PyStructSequence_Desc frame_desc = {
    "shoal._core.Frame",
    "The items of a frame from the driver, by name. WorkerChannel.recv() and try_recv() hand over each "
    "frame as a plain tuple of 7 items in this order, (kind, flags, task_id, aux, count, payload, refs), "
    "which is faster to unpack than this record; Frame(item) names one's items.",
    frame_fields, 7};

/// A frame as a plain tuple in Frame's order (record.hpp says why not the record). GIL held;
/// throws std::runtime_error on a malformed frame.
nb::object frame_to_python(Bytes const& msg) {
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
                          nb::bytes(reinterpret_cast<char const*>(f.payload.data()), f.payload.size()),
                          std::move(refs));
}
}  // namespace

void bind_worker(nb::module_& m) {
    define_record_type(m, frame_desc,
                       "class Frame(tuple[int, int, int, int, int, bytes, list[tuple[int, int]] | None])");
    nb::class_<WorkerChannel>(m, "WorkerChannel",
                              "A worker's end of its two rings: frames from the driver in, result frames out. "
                              "Made by ZygoteServer.become_worker(); one thread uses it.")
        .def("recv",
             [](WorkerChannel& ch, double timeout) -> nb::object {
                 Bytes msg;
                 bool ok;
                 {
                     nb::gil_scoped_release release;
                     ok = ch.recv(msg, timeout < 0 ? -1 : static_cast<std::int64_t>(timeout * 1e9));
                 }
                 if (!ok) return nb::none();
                 return frame_to_python(msg);
             },
             nb::arg("timeout") = -1.0, nb::sig("def recv(self, timeout: float = -1.0) -> tuple[int, int, int, int, int, bytes, list[tuple[int, int]] | None] | None"),
             "Waits for the next frame from the driver (spins, then sleeps on the ring; the GIL is released) and "
             "returns it as a plain tuple of Frame's items in its order (kind, flags, task_id, aux, count, payload, "
             "refs). "
             "timeout: seconds (< 0: no limit). None when the timeout passes or the stream is corrupt; "
             "raises on a malformed frame.")
        .def("try_recv",
             [](WorkerChannel& ch) -> nb::object {
                 Bytes msg;
                 switch (ch.try_recv(msg)) {
                     case WorkerChannel::Poll::message: return frame_to_python(msg);
                     case WorkerChannel::Poll::empty: return nb::none();
                     case WorkerChannel::Poll::corrupt: break;
                 }
                 throw std::runtime_error("shoal worker: the task stream is corrupt");
             },
             nb::sig("def try_recv(self) -> tuple[int, int, int, int, int, bytes, list[tuple[int, int]] | None] | None"),
             "The next frame if one is there, as a plain tuple of Frame's items in its order (as recv()), "
             "else None. Never blocks; a corrupt stream raises.")
        .def("watch_fd", &WorkerChannel::watch_fd,
             "An eventfd for an event loop to watch: readable once arm() saw a frame arrive (starts the "
             "watcher thread on first call).")
        .def("arm", &WorkerChannel::arm,
             "Hands the task ring to the watcher thread, which sleeps until a frame arrives and then makes "
             "watch_fd() readable. False, handing nothing over, when a frame is already there. Clears "
             "watch_fd() first.")
        .def("disarm", &WorkerChannel::disarm, nb::call_guard<nb::gil_scoped_release>(),
             "Takes the ring back from the watcher now (waits until it lets go) and clears watch_fd().")
        .def_prop_ro("armed", &WorkerChannel::armed, "True while the watcher thread owns the ring.")
        .def("clear_watch", &WorkerChannel::clear_watch,
             "Clears watch_fd() after its wake-up was handled. Never blocks.")
        .def("pending", &WorkerChannel::pending,
             "True when a frame (or part of one) waits in the task ring. Never blocks; the ring's owner only.")
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
             nb::arg("payload"), nb::arg("refs") = nb::none(),
             nb::sig("def send(self, kind: int, flags: int, task_id: int, aux: int, count: int, payload: bytes, "
                     "refs: collections.abc.Sequence[tuple[int, int]] | None = None) -> None"),
             "Sends a frame to the driver and rings its doorbell; blocks (GIL released) while the result "
             "ring is full.\n\n"
             "kind: FRAME_RESULT, FRAME_OUTPUT, FRAME_READY or FRAME_INIT_FAILED.\n"
             "flags: a result: FLAG_ERROR when the payload is an exception. Output: 1 stdout, 2 stderr.\n"
             "task_id, count: the task's, from its frame. aux: a result: the run time in ns; ready: the "
             "worker's owner id in the arena.\n"
             "refs: (offset, length) of the result's buffers in the arena, handed to the driver.");

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
