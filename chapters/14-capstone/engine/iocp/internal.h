// Chapter 14, Windows side: what the engine's files in iocp/ share - the constants, a
// connection's tag (its completion key, and its id for the application), and small
// helpers. Its twin is uring/internal.h. Everything here is inline: each file that
// includes it gets the same one.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>

#include "engine/engine.h"

namespace ch14 {

// The keys of our own packets. Every connection's key is a tag whose generation is at
// least 1, so it is at least 2^32: never one of these.
inline constexpr ULONG_PTR kExitKey = 0;      // stop()'s exit packet
inline constexpr ULONG_PTR kListenerKey = 1;  // the listener's association: every AcceptEx packet
inline constexpr std::chrono::milliseconds kAcceptBackoff{100};
inline constexpr ULONG kBatch = 64;  // packets per GetQueuedCompletionStatusEx
// Room for one address in AcceptEx's buffer: the largest address of any family, plus
// the 16 bytes its page asks for.
inline constexpr DWORD kAddressSlot = sizeof(sockaddr_storage) + 16;

//! [tag]
// A connection's completion key: its slot in the table in the low half, its generation
// in the high half (chapter 13's). It is also the connection's id for the application:
// on Windows no worker owns a connection, so the id needs to name only the slot and
// the occupant. The generation starts at 1, so no id is ever 0.
static_assert(sizeof(ULONG_PTR) == 8, "the completion key carries a 32-bit slot and a 32-bit generation");
inline ULONG_PTR make_tag(std::uint32_t slot, std::uint32_t generation) {
    return (static_cast<ULONG_PTR>(generation) << 32) | slot;
}
inline std::uint32_t slot_of(ULONG_PTR tag) { return static_cast<std::uint32_t>(tag & 0xFFFFFFFFu); }
inline std::uint32_t generation_of(ULONG_PTR tag) { return static_cast<std::uint32_t>(tag >> 32); }
inline std::uint32_t next_generation(std::uint32_t g) {
    return g == std::numeric_limits<std::uint32_t>::max() ? 1 : g + 1;
}
//! [tag]

// The connection whose handler call this thread is making (set around each call), or
// nullptr: push() leaves that connection's commands for the caller, which carries them
// out before it lets go of the connection, instead of posting a packet for them.
extern thread_local const void* tl_calling;

// A failed operation on a connection we had not closed: the peer's doing (a reset, an
// abort), or something unexpected. 995 cannot be the peer's: only a cancel makes it,
// and we cancel only what we have closed.
inline bool is_peer_reset(int error) {
    return iocp::is_disconnect_error(error) && error != ERROR_OPERATION_ABORTED;
}

// A call on our own port failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] inline void fatal(const char* call, DWORD error) {
    std::cerr << "engine: " << call << " failed: " << error << " " << iocp::error_text(static_cast<int>(error))
              << "; cannot continue\n";
    std::abort();
}

// Records n as the new maximum if it is one. For a statistic only: tests read it.
template <class T>
inline void raise_to(std::atomic<T>& max, T n) {
    T seen = max.load();
    while (n > seen && !max.compare_exchange_weak(seen, n)) {
    }
}

}  // namespace ch14
