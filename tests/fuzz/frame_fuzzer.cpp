// tests/fuzz/frame_fuzzer.cpp - the libFuzzer entry point (clang -fsanitize=fuzzer):
//   build/clang/tests/ch14_frame_fuzzer tests/fuzz/corpus/frame -max_total_time=60
#include <cstddef>
#include <cstdint>

#include "frame_target.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return fuzz::frame_one_input(data, size);
}
