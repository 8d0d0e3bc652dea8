// zygote.cpp (binding) — shoal._core.ZygoteClient (driver) and ZygoteServer (zygote).
#include "shoal/worker.hpp"
#include "shoal/zygote.hpp"
#include "arena.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

namespace nb = nanobind;
using namespace shoal;

void bind_zygote(nb::module_& m) {
    nb::class_<ZygoteClient>(m, "ZygoteClient", "The driver's handle on its zygote process. Thread-safe.")
        .def(nb::init<std::vector<std::string> const&>(), nb::arg("argv"),
             "Starts the zygote: `argv` runs with the control socket as fd 3. Raises if it cannot start.")
        .def_prop_ro("pid", &ZygoteClient::pid, "The zygote's process id.")
        .def("alive", &ZygoteClient::alive,
             "False once the zygote has exited, and in a forked copy of the driver (it is the original's).");

    using Action = ZygoteServer::Action;
    nb::class_<Action>(m, "ZygoteAction", "What the zygote must do next, as ZygoteServer.next() says.")
        .def_prop_ro("kind", [](Action const& a) {
            switch (a.kind) {
                case Action::fork: return "fork";
                case Action::import_modules: return "import";
                case Action::idle: return "idle";
                default: return "exit";
            }
        }, "'fork' a worker, 'import' modules, 'idle' (nothing came for the timeout) or 'exit' (the driver is gone).")
        .def_prop_ro("modules", [](Action const& a) { return a.modules; },
                     "An import: the module names ('name' or 'name<TAB>file' for a best-effort hint).")
        .def_prop_ro("slot", [](Action const& a) { return a.spec.slot; }, "A fork: the worker slot.");

    nb::class_<ZygoteServer>(m, "ZygoteServer", "The zygote's loop: executors' requests in, actions out. One thread.")
        .def("__init__", [](ZygoteServer* self, int fd) { new (self) ZygoteServer(Fd(fd)); }, nb::arg("fd"),
             "Serves the control socket `fd` (it becomes the server's).")
        .def("next", &ZygoteServer::next, nb::arg("timeout_ms") = -1, nb::call_guard<nb::gil_scoped_release>(),
             "Serves until the caller must act, and says what to do. Blocks in poll() (GIL released); with "
             "timeout_ms >= 0, returns an 'idle' action once nothing has come for that long.")
        .def("forked", &ZygoteServer::forked, nb::arg("action"), nb::arg("pid"),
             "In the zygote after os.fork(): tracks child `pid` and reports it to the executor that asked.")
        .def("imported", &ZygoteServer::imported, nb::arg("action"), nb::arg("ok"), nb::arg("error"),
             "After an 'import' action: tells the executor whether it worked, and if not `error`.")
        .def("become_worker", [](ZygoteServer& z, Action& a) {
            WorkerSpec spec = a.spec;
            auto fds = z.become_worker(std::move(a));
            nb::object arena = nb::none();
            if (fds.size() > 2) {
                auto* pa = new PyArena;
                pa->arena = std::make_shared<Arena>(Arena::attach(std::move(fds[2])));
                pa->owner = pa->arena->register_owner();
                arena = nb::cast(pa, nb::rv_policy::take_ownership);
            }
            auto* ch = new WorkerChannel(spec, std::move(fds.at(0)), std::move(fds.at(1)));
            return nb::make_tuple(nb::cast(ch, nb::rv_policy::take_ownership), arena);
        }, nb::arg("action"),
           nb::sig("def become_worker(self, action: ZygoteAction) -> tuple[WorkerChannel, Arena | None]"),
           "In the child after os.fork() for a 'fork' action: closes the zygote's descriptors, arranges to "
           "die with the zygote, and returns the worker's channel and its view of the arena (None: the "
           "pool has none).")
        .def_prop_ro("worker_count", &ZygoteServer::worker_count, "Workers the zygote has forked and not yet reaped.");
}
