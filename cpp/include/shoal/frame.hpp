// frame.hpp — the wire format of one message between the driver and a worker.
//
// A frame is a 32-byte header, then `buffers` references into the shared arena (16 bytes
// each: offset, length), then the payload (opaque bytes: pickles, for the Python layer). Frames arriving from another process are untrusted: decode_frame()
// checks every field and reports a malformed frame as an error, never a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace shoal {

enum class FrameKind : std::uint8_t {
    // driver -> worker
    task = 1,        // run fn `aux` on payload; `count` items
    function = 2,    // define function `aux` (payload: its pickle)
    forget = 3,      // drop function `aux`
    shutdown = 4,    // finish and exit 0
    // worker -> driver
    result = 16,     // flags: k_flag_error when payload is an exception; aux: run time in ns
    output = 17,     // flags: 1 stdout, 2 stderr; payload: utf-8 text
    ready = 18,      // the worker ran its initializer
    init_failed = 19 // payload: the initializer's exception
};

inline constexpr std::uint32_t k_flag_error = 1;

struct FrameHeader {
    std::uint16_t magic;     // k_frame_magic
    std::uint8_t version;    // k_frame_version
    FrameKind kind;
    std::uint32_t flags;
    std::uint64_t task_id;
    std::uint64_t aux;
    std::uint32_t count;
    std::uint32_t buffers;   // arena references after the header (task and result frames only)
};
static_assert(sizeof(FrameHeader) == 32);

inline constexpr std::uint16_t k_frame_magic = 0x5348;  // "SH"
inline constexpr std::uint8_t k_frame_version = 2;
// A chunk of many items that each pass a shared placement carries one reference per item (each
// item gets its own copy-on-write view): map's largest adaptive chunk (65,536 items) times 16.
inline constexpr std::uint32_t k_max_frame_buffers = 1u << 20;

/// One out-of-band buffer: `length` bytes at `offset` in the arena's data region. The
/// decoder checks only the count; whoever maps a reference checks it against the arena.
struct BufferRef {
    std::uint64_t offset;
    std::uint64_t length;
};
static_assert(sizeof(BufferRef) == 16);

/// A decoded frame: the header, its buffer references and the payload, as views inside the
/// decoded bytes.
struct FrameView {
    FrameHeader header;
    std::span<std::byte const> refs;  // header.buffers * 16 bytes (unaligned: read with ref())
    std::span<std::byte const> payload;

    BufferRef ref(std::size_t i) const noexcept {
        BufferRef r;
        std::memcpy(&r, refs.data() + i * sizeof r, sizeof r);
        return r;
    }
};

/// Builds a frame: header, buffer references, payload. Allocates.
std::vector<std::byte> encode_frame(FrameKind kind, std::uint32_t flags, std::uint64_t task_id,
                                    std::uint64_t aux, std::uint32_t count,
                                    std::span<std::byte const> payload,
                                    std::span<BufferRef const> refs = {});

/// Checks and decodes `bytes`. On success fills `out` and returns true; otherwise returns
/// false and puts the broken rule in `error`. Never throws, never reads out of bounds.
bool decode_frame(std::span<std::byte const> bytes, FrameView& out, std::string& error) noexcept;

/// True for kinds a worker may send (the driver rejects the others).
bool is_worker_frame(FrameKind k) noexcept;
/// True for kinds the driver may send (a worker rejects the others).
bool is_driver_frame(FrameKind k) noexcept;

}  // namespace shoal
