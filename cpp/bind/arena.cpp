// arena.cpp (binding) — shoal._core.Arena and shoal._core.Block.
#include "arena.hpp"

#include <cstring>
#include <nanobind/stl/string.h>

namespace nb = nanobind;
using namespace shoal;

namespace {

int block_getbuffer(PyObject* self, Py_buffer* view, int flags) {
    PyBlock* b = nb::inst_ptr<PyBlock>(self);
    if (!b->arena) {
        PyErr_SetString(PyExc_BufferError, "shoal: released block");
        view->obj = nullptr;
        return -1;
    }
    // A read-only block is a view through the read-only mapping (in a worker): a C extension
    // that writes to it anyway faults here instead of changing shared data for everyone.
    // A copy-on-write view has its own private mapping of the block's pages.
    std::byte* p = b->readonly ? const_cast<std::byte*>(b->arena->read_only_data()) : b->arena->data();
    p += b->offset;
    if (b->cow.data() != nullptr) p = b->cow.data();
    return PyBuffer_FillInfo(view, self, p, static_cast<Py_ssize_t>(b->length), b->readonly ? 1 : 0,
                             flags);
}

void block_releasebuffer(PyObject*, Py_buffer*) {}

PyType_Slot block_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(block_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(block_releasebuffer)},
    {0, nullptr}};

nb::object new_block(PyBlock&& value) {
    return nb::cast(new PyBlock(std::move(value)), nb::rv_policy::take_ownership);
}

/// A contiguous buffer of `obj` (released on scope exit).
struct Buffer {
    Py_buffer view{};
    explicit Buffer(nb::handle obj) {
        if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_ANY_CONTIGUOUS) != 0) throw nb::python_error();
    }
    ~Buffer() { PyBuffer_Release(&view); }
    Buffer(Buffer const&) = delete;
    Buffer& operator=(Buffer const&) = delete;
};

}  // namespace

nb::object make_owned_block(ArenaBlock&& block, std::shared_ptr<Arena> const& arena, std::uint64_t length) {
    PyBlock b;
    b.offset = block.ref().offset;
    b.length = length;
    b.owned = std::move(block);
    b.arena = arena;
    b.readonly = false;
    return new_block(std::move(b));
}

void bind_arena(nb::module_& m) {
    nb::class_<PyBlock>(m, "Block", nb::type_slots(block_slots),
                        "A buffer in the arena (buffer protocol: memoryview(block)). An owning block frees its "
                        "pages when garbage collected; a view of another process's block does not.")
        .def_ro("offset", &PyBlock::offset, "Where the block starts in the arena, in bytes.")
        .def_ro("length", &PyBlock::length, "The block's size in bytes.")
        .def_ro("readonly", &PyBlock::readonly, "True if the buffer it exposes is read-only.")
        .def_prop_ro("owned", [](PyBlock const& b) { return b.owned.owned(); },
                     "True while this object frees the block when garbage collected (see detach()).")
        .def("detach", [](PyBlock& b) { b.owned.release(); },
             "Stops owning the block without freeing it (it was handed to another process).")
        .def("__len__", [](PyBlock const& b) { return b.length; }, "The block's size in bytes.")
        .def("__repr__", [](PyBlock const& b) {
            return "<shoal Block offset=" + std::to_string(b.offset) + " length=" + std::to_string(b.length) +
                   (b.owned.owned() ? " owned" : "") + (b.readonly ? " readonly" : "") + ">";
        });

    nb::class_<PyArena>(m, "Arena",
                        "This process's view of the arena, the shared memory that large arguments and results "
                        "travel through by reference, and its owner id in it.")
        .def_static("create",
                    [](std::uint64_t limit_bytes, std::uint64_t keep_free_bytes) {
                        Arena::Options o;
                        o.limit_bytes = limit_bytes;
                        o.keep_free_bytes = keep_free_bytes;
                        auto* a = new PyArena;
                        a->arena = std::make_shared<Arena>(Arena::create(o));
                        a->owner = Arena::k_creator;
                        return a;
                    },
                    nb::arg("limit_bytes") = 0, nb::arg("keep_free_bytes") = std::uint64_t{256} << 20,
                    nb::rv_policy::take_ownership,
                    "A new arena, created by this process (the driver).\n\n"
                    "limit_bytes: the size of its data region, the most its blocks can hold (0: the "
                    "machine's physical memory).\n"
                    "keep_free_bytes: freed pages, up to this many bytes, stay resident for reuse; the rest "
                    "go back to the system.")
        .def_prop_ro("fd", [](PyArena const& a) { return a.arena->fd(); },
                     "The arena's memfd (handed to each worker at its fork).")
        .def_prop_ro("owner", [](PyArena const& a) { return a.owner; },
                     "This process's owner id in the arena: the blocks it allocates are charged to it.")
        .def_prop_ro("limit_bytes", [](PyArena const& a) { return a.arena->limit_bytes(); },
                     "The size of the data region: the most its blocks can hold.")
        .def_prop_ro("used_bytes", [](PyArena const& a) { return a.arena->used_bytes(); },
                     "Bytes in blocks in use, every process's (approximate while others allocate).")
        .def_prop_ro("file_bytes", [](PyArena const& a) { return a.arena->file_bytes(); },
                     "Bytes of the arena's file that exist: it grows in segments as pages are first used.")
        .def("allocate",
             [](PyArena& a, std::uint64_t nbytes) {
                 std::uint64_t off;
                 {
                     nb::gil_scoped_release release;
                     off = a.arena->allocate(nbytes, a.owner);
                 }
                 return make_owned_block(ArenaBlock(a.arena, {off, nbytes}, a.owner), a.arena, nbytes);
             },
             nb::arg("nbytes"), nb::sig("def allocate(self, nbytes: int) -> Block"),
             "A new writable block of `nbytes` bytes, freed when garbage collected.")
        .def("copy_in",
             [](PyArena& a, nb::handle obj) {
                 Buffer buf(obj);
                 auto const n = static_cast<std::uint64_t>(buf.view.len);
                 std::uint64_t off;
                 {
                     nb::gil_scoped_release release;
                     off = a.arena->allocate(n, a.owner);
                     std::memcpy(a.arena->data() + off, buf.view.buf, n);
                 }
                 return make_owned_block(ArenaBlock(a.arena, {off, n}, a.owner), a.arena, n);
             },
             nb::arg("buffer"), nb::sig("def copy_in(self, buffer: typing_extensions.Buffer) -> Block"),
             "A new block holding a copy of a contiguous buffer.")
        .def("view",
             [](PyArena& a, std::uint64_t offset, std::uint64_t length, bool readonly) {
                 if (!a.arena->contains(offset, length))
                     throw nb::value_error("shoal: a buffer reference outside the arena");
                 PyBlock b;
                 b.arena = a.arena;
                 b.offset = offset;
                 b.length = length;
                 b.readonly = readonly;
                 return new_block(std::move(b));
             },
             nb::arg("offset"), nb::arg("length"), nb::arg("readonly") = true,
             nb::sig("def view(self, offset: int, length: int, readonly: bool = True) -> Block"),
             "A view of bytes another process placed in the arena (checked; not owned).")
        .def("private_view",
             [](PyArena& a, std::uint64_t offset, std::uint64_t length) {
                 PyBlock b;
                 try {
                     b.cow = a.arena->private_view(offset, length);  // checks the range first
                 } catch (std::out_of_range const&) {
                     throw nb::value_error("shoal: a buffer reference outside the arena");
                 }
                 b.arena = a.arena;
                 b.offset = offset;
                 b.length = length;
                 b.readonly = false;
                 return new_block(std::move(b));
             },
             nb::arg("offset"), nb::arg("length"),
             "A writable copy-on-write view of bytes in the arena (checked; not owned): reads share "
             "the arena's pages, writes stay in this view.")
        .def_prop_ro("blocks", [](PyArena const& a) { return a.arena->block_count(); },
                     "Blocks in use in the whole arena (all processes).")
        .def("locate",
             [](PyArena& a, nb::handle obj) -> std::int64_t {
                 Buffer buf(obj);
                 std::int64_t off = a.arena->offset_of(buf.view.buf);
                 if (off < 0 || !a.arena->contains(static_cast<std::uint64_t>(off),
                                                   static_cast<std::uint64_t>(buf.view.len)))
                     return -1;
                 return off;
             },
             nb::arg("buffer"), nb::sig("def locate(self, buffer: typing_extensions.Buffer) -> int"),
             "The offset of a contiguous buffer that lies in the arena, else -1.")
        .def("collapse",
             [](PyArena& a, std::uint64_t offset, std::uint64_t length) {
                 nb::gil_scoped_release release;
                 return a.arena->collapse(offset, length);
             },
             nb::arg("offset"), nb::arg("length"),
             "Backs the huge-page-aligned part of a block with huge pages; bytes collapsed (0: declined).")
        .def_prop_ro_static("huge_page_bytes", [](nb::handle) { return Arena::huge_page_bytes(); },
                            nb::sig("def huge_page_bytes(cls, /) -> int"),
                            "The huge page size the arena's mapping is aligned to, in bytes (2 MiB if unknown).");

    m.def("buffer_address",
          [](nb::handle obj) -> std::uintptr_t {
              Buffer buf(obj);
              return reinterpret_cast<std::uintptr_t>(buf.view.buf);
          },
          nb::arg("buffer"), "The address of a contiguous buffer's first byte (an identity, never dereferenced).");

    // A MemoryError and a shoal.ShoalError (made first, in module.cpp).
    nb::exception<ArenaFull> arena_full(m, "ArenaFull",
                                        nb::make_tuple(nb::handle(PyExc_MemoryError), m.attr("ShoalError")));
    arena_full.attr("__doc__") =
        "Raised when the arena cannot hold a new block: it would pass the arena's limit (shoal.set_arena_limit).";
}
