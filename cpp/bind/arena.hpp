// arena.hpp (binding) — the Python faces of the arena, shared by the binding files.
#pragma once

#include "shoal/arena.hpp"

#include <nanobind/nanobind.h>

/// shoal._core.Arena: this process's view of the arena and its owner id in it.
struct PyArena {
    std::shared_ptr<shoal::Arena> arena;
    std::uint32_t owner = 0;
};

/// shoal._core.Block: a buffer in the arena (buffer protocol). Owning blocks free their pages
/// when garbage collected; views of another process's block do not.
struct PyBlock {
    shoal::ArenaBlock owned;
    std::shared_ptr<shoal::Arena> arena;  // keeps the mapping alive as long as any view
    shoal::ArenaPrivateView cow;           // a copy-on-write view's own mapping, else empty
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    bool readonly = true;
};

/// A Python Block that owns `block` (writable).
nanobind::object make_owned_block(shoal::ArenaBlock&& block, std::shared_ptr<shoal::Arena> const& arena,
                                  std::uint64_t length);
