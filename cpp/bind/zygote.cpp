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
    nb::class_<ZygoteClient>(m, "ZygoteClient")
        .def(nb::init<std::vector<std::string> const&>(), nb::arg("argv"))
        .def_prop_ro("pid", &ZygoteClient::pid)
        .def("alive", &ZygoteClient::alive);

    using Action = ZygoteServer::Action;
    nb::class_<Action>(m, "ZygoteAction")
        .def_prop_ro("kind", [](Action const& a) {
            switch (a.kind) {
                case Action::fork: return "fork";
                case Action::import_modules: return "import";
                case Action::idle: return "idle";
                default: return "exit";
            }
        })
        .def_prop_ro("modules", [](Action const& a) { return a.modules; })
        .def_prop_ro("slot", [](Action const& a) { return a.spec.slot; });

    nb::class_<ZygoteServer>(m, "ZygoteServer")
        .def("__init__", [](ZygoteServer* self, int fd) { new (self) ZygoteServer(Fd(fd)); }, nb::arg("fd"))
        .def("next", &ZygoteServer::next, nb::arg("timeout_ms") = -1, nb::call_guard<nb::gil_scoped_release>())
        .def("forked", &ZygoteServer::forked)
        .def("imported", &ZygoteServer::imported)
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
        })
        .def_prop_ro("worker_count", &ZygoteServer::worker_count);
}
