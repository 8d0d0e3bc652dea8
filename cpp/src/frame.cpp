// frame.cpp — encoding and checked decoding of frames.
#include "shoal/frame.hpp"

#include <cstring>

namespace shoal {

std::vector<std::byte> encode_frame(FrameKind kind, std::uint32_t flags, std::uint64_t task_id,
                                    std::uint64_t aux, std::uint32_t count,
                                    std::span<std::byte const> payload,
                                    std::span<BufferRef const> refs) {
    FrameHeader h{k_frame_magic, k_frame_version, kind, flags, task_id, aux, count,
                  static_cast<std::uint32_t>(refs.size())};
    std::size_t const refs_bytes = refs.size() * sizeof(BufferRef);
    std::vector<std::byte> out(sizeof h + refs_bytes + payload.size());
    std::memcpy(out.data(), &h, sizeof h);
    if (!refs.empty()) std::memcpy(out.data() + sizeof h, refs.data(), refs_bytes);
    if (!payload.empty()) std::memcpy(out.data() + sizeof h + refs_bytes, payload.data(), payload.size());
    return out;
}

bool is_worker_frame(FrameKind k) noexcept {
    switch (k) {
        case FrameKind::result: case FrameKind::output: case FrameKind::ready:
        case FrameKind::init_failed: return true;
        default: return false;
    }
}

bool is_driver_frame(FrameKind k) noexcept {
    switch (k) {
        case FrameKind::task: case FrameKind::function: case FrameKind::forget:
        case FrameKind::shutdown: return true;
        default: return false;
    }
}

bool decode_frame(std::span<std::byte const> bytes, FrameView& out, std::string& error) noexcept {
    if (bytes.size() < sizeof(FrameHeader)) {
        error = "frame shorter than its header";
        return false;
    }
    FrameHeader h;
    std::memcpy(&h, bytes.data(), sizeof h);
    if (h.magic != k_frame_magic) { error = "bad frame magic"; return false; }
    if (h.version != k_frame_version) { error = "unknown frame version"; return false; }
    if (!is_worker_frame(h.kind) && !is_driver_frame(h.kind)) { error = "unknown frame kind"; return false; }
    if (h.buffers != 0 && h.kind != FrameKind::task && h.kind != FrameKind::result) {
        error = "buffer references in a frame that cannot carry them";
        return false;
    }
    if (h.buffers > k_max_frame_buffers) { error = "too many buffer references"; return false; }
    std::size_t const refs_bytes = std::size_t{h.buffers} * sizeof(BufferRef);
    if (bytes.size() - sizeof h < refs_bytes) { error = "buffer references past the end of the frame"; return false; }
    if (h.kind == FrameKind::task && h.count == 0) { error = "task frame with zero items"; return false; }
    out.header = h;
    out.refs = bytes.subspan(sizeof h, refs_bytes);
    out.payload = bytes.subspan(sizeof h + refs_bytes);
    return true;
}

}  // namespace shoal
