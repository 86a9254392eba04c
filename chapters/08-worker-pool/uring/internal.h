// Chapter 8, Linux side: what the files of uring/ share and no one else sees, the
// constants and the small helpers. Its twin is iocp/internal.h, the same file name on
// the Windows side.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <iostream>

#include <unistd.h>

#include "echo_server.h"

namespace ch08 {

// Submission queue entries per ring: requests prepared between two submits (a full
// queue is submitted at once). The completion queue is sized from max_clients in start().
inline constexpr unsigned kRingEntries = 256;
inline constexpr long long kAcceptBackoffNs = 100'000'000;  // 100 ms

// A call on our own ring failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] inline void fatal(const char* call, int error) {
    std::cerr << "ch08: " << call << " failed: " << error << " " << iocp::error_text(error) << "; cannot continue\n";
    std::abort();
}

// Records n as the new maximum if it is one. For a statistic only: tests read it.
inline void raise_to(std::atomic<int>& max, int n) {
    int seen = max.load();
    while (n > seen && !max.compare_exchange_weak(seen, n)) {
    }
}

// Eight bytes on an eventfd: the poll a worker's ring has on it completes.
inline void ring_doorbell(int fd) {
    const std::uint64_t one = 1;
    while (::write(fd, &one, sizeof one) < 0) {
        if (errno != EINTR) fatal("write(eventfd)", errno);
    }
}

}  // namespace ch08
