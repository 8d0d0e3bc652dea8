// record.hpp (binding) — named record types: the names of the items of the hot path's tuples.
//
// What the hot path hands to Python per task (a completion from Pool.take(), a frame from
// WorkerChannel.recv()) is a plain tuple, unpacked positionally into named locals. Its
// items' names and meanings live in a record type beside it, a CPython struct sequence (the
// type behind os.stat_result): a tuple subclass whose items are also read-only attributes
// with docstrings, constructible from the plain tuple (`Completion(item)`) when names help
// (a test, a debugger, a log line). The stubs and docstrings refer to it.
//
// Why not hand over the record itself: CPython's fast paths for unpacking and indexing
// (UNPACK_SEQUENCE, BINARY_SUBSCR) are for exact tuples only. Unpacking a 10-item struct
// sequence took ~58 ns against ~17 ns for a tuple, and handing over records made the
// benchmark's round_trip ~6% and map_tiny ~7-9% slower than plain tuples
// (docs/decisions/2026-12-05-hot-path-hands-over-plain-tuples.md).
#pragma once

#include <nanobind/nanobind.h>

#include <cstring>
#include <stdexcept>

/// Creates the struct sequence type that `desc` describes and adds it to `m` under the name
/// after the last dot of desc.name. `desc` and its fields must have static storage: the type
/// points into them for its whole life. `stub` is the class line of its type stub, with the
/// items' types ("class Point(tuple[int, int])"): nanobind's stubgen reads it from
/// __nb_signature__, as nb::sig sets it on a bound class. Called once, when the module is
/// bound; GIL held. Throws nb::python_error; std::logic_error if desc.n_in_sequence is not
/// the number of its named fields (every item must have a name).
inline void define_record_type(nanobind::module_& m, PyStructSequence_Desc& desc, char const* stub) {
    int named = 0;
    while (desc.fields[named].name != nullptr) ++named;
    if (desc.n_in_sequence != named)
        throw std::logic_error("define_record_type: n_in_sequence differs from the number of fields");
    PyTypeObject* type = PyStructSequence_NewType(&desc);
    if (!type) throw nanobind::python_error();
    nanobind::object owner = nanobind::steal(reinterpret_cast<PyObject*>(type));
    owner.attr("__nb_signature__") = stub;
    char const* dot = std::strrchr(desc.name, '.');
    m.attr(dot ? dot + 1 : desc.name) = owner;
}
