// items.cpp (binding) — shoal._core.plain_items: the type check behind map()'s chunk packing.
//
// A chunk whose items (arguments or results) are all plain values travels as one pickle: such
// pickles cannot fail to load, so one bad item cannot take the others down with it. The check
// ran in Python at ~30 ns per item (set(map(type, items))), as much as pickling the items; here
// it is a pointer comparison per item.
#include <nanobind/nanobind.h>

namespace nb = nanobind;

namespace {

// Exact types only, as in Python (`type(x) in _PLAIN`): a subclass (numpy.float64 is a float)
// may pickle as something that fails to load.
bool is_plain(PyObject* o) noexcept {
    PyTypeObject* t = Py_TYPE(o);
    return t == &PyLong_Type || t == &PyFloat_Type || t == &PyUnicode_Type || t == &PyBytes_Type ||
           t == &PyBool_Type || o == Py_None || t == &PyComplex_Type;
}

// True if every item of `items` (a list) is plain or a tuple of plain values.
bool plain_items(nb::handle items) {
    PyObject* list = items.ptr();
    if (!PyList_CheckExact(list)) throw nb::type_error("plain_items: a list is expected");
    // The list cannot change under us: the GIL is held and nothing here runs Python code.
    Py_ssize_t const n = PyList_GET_SIZE(list);
    for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* o = PyList_GET_ITEM(list, i);
        if (is_plain(o)) continue;
        if (!PyTuple_CheckExact(o)) return false;
        Py_ssize_t const m = PyTuple_GET_SIZE(o);
        for (Py_ssize_t j = 0; j < m; ++j)
            if (!is_plain(PyTuple_GET_ITEM(o, j))) return false;
    }
    return true;
}

}  // namespace

void bind_items(nb::module_& m) {
    m.def("plain_items", &plain_items, nb::arg("items"), nb::sig("def plain_items(items: list) -> bool"),
          "True if every item of the list is an int, float, str, bytes, bool, None or complex "
          "(exact types), or a tuple of such values.");
}
