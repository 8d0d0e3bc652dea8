// fuzz_decoders.cpp — libFuzzer target over every decoder of untrusted bytes (see decoders.hpp).
// Built by `make fuzz` with clang (-fsanitize=fuzzer,address,undefined); the same harness runs
// seeded in every build as tests/cpp/test_fuzz.cpp.
#include "decoders.hpp"

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
    shoal_fuzz::Reach reach;
    shoal_fuzz::run_one({reinterpret_cast<std::byte const*>(data), size}, reach);
    return 0;
}
