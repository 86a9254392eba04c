// tests/fuzz/frame_target.h - chapter 14's frame decoder under arbitrary input: the body
// that libFuzzer drives (frame_fuzzer.cpp, clang builds) and that the corpus replay test
// runs on every build flavour, Wine included.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fuzz {

/// One input: its first byte seeds how the rest is split into reads, the rest is the
/// byte stream. Aborts (a crash libFuzzer reports) when a property fails: the frames
/// depend on the split; a frame does not encode back to the bytes it came from; a server
/// message read back does not build the same bytes; the decoder reserves past the maximum.
int frame_one_input(const std::uint8_t* data, std::size_t size);

}  // namespace fuzz
