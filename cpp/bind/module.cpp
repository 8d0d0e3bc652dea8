// module.cpp — the one nanobind module, shoal._core: each area binds itself.
#include <nanobind/nanobind.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace nb = nanobind;

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
    m.def("trim_heap", [] {
#if defined(__GLIBC__)
        nb::gil_scoped_release release;
        return ::malloc_trim(0) != 0;
#else
        return false;
#endif
    }, "Returns the C heap's free pages to the system (glibc's malloc_trim); True if any were.");
}
