// Chapter 9, Windows side: what the files in iocp/ share and nobody else sees - the
// constants, the connection's tag in a completion key, and three small helpers. Its
// twin is uring/internal.h. Everything here is inline: each file that includes it
// gets the same one.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>

#include "echo_server.h"

namespace ch09 {

// The exit packet's key. Every connection's key is a tag whose generation is at least
// 1, so it is never 0.
inline constexpr ULONG_PTR kExitKey = 0;
inline constexpr std::chrono::milliseconds kAcceptBackoff{100};

//! [tag]
// A connection's completion key: its slot in the table in the low half, its generation
// in the high half. A ULONG_PTR is as wide as a pointer: 64 bits in the x64 builds this
// tutorial makes. (A 32-bit build would need a narrower split.)
static_assert(sizeof(ULONG_PTR) == 8, "the completion key carries a 32-bit slot and a 32-bit generation");
inline ULONG_PTR make_tag(std::uint32_t slot, std::uint32_t generation) {
    return (static_cast<ULONG_PTR>(generation) << 32) | slot;
}
inline std::uint32_t slot_of(ULONG_PTR tag) { return static_cast<std::uint32_t>(tag & 0xFFFFFFFFu); }
inline std::uint32_t generation_of(ULONG_PTR tag) { return static_cast<std::uint32_t>(tag >> 32); }
// 0 is never a generation: a slot's first occupant is 1, and 4 billion reuses later the
// count starts over at 1.
inline std::uint32_t next_generation(std::uint32_t g) {
    return g == std::numeric_limits<std::uint32_t>::max() ? 1 : g + 1;
}
//! [tag]

// A failed operation on a connection we had not closed: the peer's doing (a reset, an
// abort), or something unexpected. 995 cannot be the peer's: only a cancel makes it,
// and we cancel only what we have closed; so here it is unexpected, and logged.
inline bool is_peer_reset(int error) {
    return iocp::is_disconnect_error(error) && error != ERROR_OPERATION_ABORTED;
}

// A call on our own port failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] inline void fatal(const char* call, DWORD error) {
    std::cerr << "ch09: " << call << " failed: " << error << " " << iocp::error_text(static_cast<int>(error))
              << "; cannot continue\n";
    std::abort();
}

// Records n as the new maximum if it is one. For a statistic only: tests read it.
inline void raise_to(std::atomic<int>& max, int n) {
    int seen = max.load();
    while (n > seen && !max.compare_exchange_weak(seen, n)) {
    }
}

}  // namespace ch09
