// module.cpp — the one nanobind module, shoal._core: each area binds itself.
#include <nanobind/nanobind.h>

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
    bind_arena(m);
    bind_pool(m);
    bind_zygote(m);
    bind_worker(m);
    bind_items(m);
}
