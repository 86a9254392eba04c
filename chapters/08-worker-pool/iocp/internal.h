// Chapter 8, Windows side: what the files of iocp/ share and no one else sees, the
// constants and the small helpers. Its twin is uring/internal.h, the same file name
// on the Linux side.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>

#include "echo_server.h"

namespace ch08 {

// The exit packet's key. Every connection's key is its address, which is never 0.
inline constexpr ULONG_PTR kExitKey = 0;
inline constexpr std::chrono::milliseconds kAcceptBackoff{100};

// A call on our own port failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] inline void fatal(const char* call, DWORD error) {
    std::cerr << "ch08: " << call << " failed: " << error << " " << iocp::error_text(static_cast<int>(error))
              << "; cannot continue\n";
    std::abort();
}

// Records n as the new maximum if it is one. For a statistic only: tests read it.
inline void raise_to(std::atomic<int>& max, int n) {
    int seen = max.load();
    while (n > seen && !max.compare_exchange_weak(seen, n)) {
    }
}

}  // namespace ch08
