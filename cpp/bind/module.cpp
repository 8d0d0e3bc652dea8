// module.cpp — the one nanobind module, shoal._core: each area binds itself.
#include <nanobind/nanobind.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace nb = nanobind;

namespace {
/// A re-entrant lock that never waits: its owner is a thread, held only with the GIL (every
/// method runs under it, so plain fields suffice). See TurnLock's docstring.
struct TurnLock {
    unsigned long owner = 0;
    std::size_t depth = 0;
};
}  // namespace

void bind_arena(nb::module_& m);
void bind_pool(nb::module_& m);
void bind_zygote(nb::module_& m);
void bind_worker(nb::module_& m);
void bind_items(nb::module_& m);

NB_MODULE(_core, m) {
    m.doc() = "shoal's C++ core: shared-memory rings, zygote, process pool.";
    // Pools held by daemon completion threads may outlive module teardown at exit.
    nb::set_leak_warnings(false);
    // The root of every exception shoal raises for its own reasons: the Python layer's errors
    // (shoal/_errors.py) derive from it, and so does ArenaFull, bound below.
    m.attr("ShoalError") = nb::steal(PyErr_NewExceptionWithDoc(
        "shoal.ShoalError",
        "Raised for shoal's own reasons (not a task's): every shoal error derives from it as well\n"
        "as from the standard library class it already subclasses.",
        PyExc_Exception, nullptr));
    bind_arena(m);
    bind_pool(m);
    bind_zygote(m);
    bind_worker(m);
    bind_items(m);
    nb::class_<TurnLock>(
        m, "TurnLock",
        "A turn that one thread takes at a time, without ever waiting for it: `with turn as mine:` "
        "gives mine=True when this thread took it (or already held it: re-entrant), False when "
        "another thread holds it; leaving the block gives it back only if this thread took it. "
        "Taking and giving back happen in C with the GIL held, so a KeyboardInterrupt cannot fall "
        "between taking it and the block that gives it back.")
        .def(nb::init<>())
        .def("__enter__",
             [](TurnLock& t) {
                 unsigned long const me = PyThread_get_thread_ident();
                 if (t.depth == 0) t.owner = me;
                 else if (t.owner != me) return false;
                 ++t.depth;
                 return true;
             })
        .def("__exit__",
             [](TurnLock& t, nb::args) {
                 // A thread that did not get the turn does not hold it: nothing to give back.
                 if (t.depth != 0 && t.owner == PyThread_get_thread_ident() && --t.depth == 0) t.owner = 0;
                 return false;
             })
        .def_prop_ro("taken", [](TurnLock const& t) { return t.depth != 0; },
                     "True while a thread holds the turn.");
    m.def("trim_heap", [] {
#if defined(__GLIBC__)
        nb::gil_scoped_release release;
        return ::malloc_trim(0) != 0;
#else
        return false;
#endif
    }, "Returns the C heap's free pages to the system (glibc's malloc_trim); True if any were.");
}
