// record.hpp (binding) — named records: tuples whose items also have names (struct sequences).
//
// What the hot path hands to Python in bulk (a completion, a frame) is a CPython struct
// sequence, the type behind os.stat_result: a tuple subclass whose items are also read-only
// attributes with docstrings. It unpacks like a tuple (`kind, flags, ... = record`), so code
// written for plain tuples keeps working. Building one costs about what a tuple costs, and
// less once the garbage collector is counted: PyStructSequence_New does not track the record
// (it cannot be part of a cycle the collector must find unless Python code puts it in one),
// whereas every tuple is tracked. Unpacking one costs ~35 ns more than a tuple (CPython's fast
// path is for exact tuples only).
#pragma once

#include <nanobind/nanobind.h>

#include <cstring>
#include <stdexcept>
#include <utility>

/// A struct sequence type of N items, created once when the module is bound.
template <int N>
class RecordType {
public:
    /// Creates the type from `desc` and adds it to `m` under the name after the last dot of
    /// desc.name. `desc` and its fields must have static storage: the type points into
    /// them for its whole life. `stub` is the class line of its type stub, with the items'
    /// types ("class Point(tuple[int, int])"): nanobind's stubgen reads it from
    /// __nb_signature__, as nb::sig sets it on a bound class. GIL held; throws nb::python_error.
    void define(nanobind::module_& m, PyStructSequence_Desc& desc, char const* stub) {
        if (desc.n_in_sequence != N) throw std::logic_error("RecordType::define: item count differs from N");
        PyTypeObject* type = PyStructSequence_NewType(&desc);
        if (!type) throw nanobind::python_error();
        // This reference is never dropped: a pool drained by a daemon thread may build a
        // record after the module's dict was cleared at interpreter exit.
        m_type = type;
        nanobind::handle(reinterpret_cast<PyObject*>(type)).attr("__nb_signature__") = stub;
        char const* dot = std::strrchr(desc.name, '.');
        m.attr(dot ? dot + 1 : desc.name) = nanobind::borrow(reinterpret_cast<PyObject*>(type));
    }

    /// A new record holding `items` (each converted with nb::cast), in field order. GIL held;
    /// allocates; throws nb::python_error or nb::cast_error (nothing leaks).
    template <typename... Items>
    nanobind::object operator()(Items&&... items) const {
        static_assert(sizeof...(Items) == N, "a record takes exactly one value per field");
        PyObject* record = PyStructSequence_New(m_type);
        if (!record) throw nanobind::python_error();
        nanobind::object owner = nanobind::steal(record);  // freed with the items set so far on a throw
        // The macro form of PyStructSequence_SetItem: no call per item. It steals the reference.
        Py_ssize_t i = 0;
        (PyStructSequence_SET_ITEM(record, i++, nanobind::cast(std::forward<Items>(items)).release().ptr()), ...);
        return owner;
    }

private:
    PyTypeObject* m_type = nullptr;
};
