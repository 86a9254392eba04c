// Chapter 14, Linux side: what the engine's files in uring/ share - the constants,
// a request's tag in user_data and a connection's id, and small helpers. Everything
// here is inline: each file that includes it gets the same one.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>

#include <unistd.h>

#include "engine/engine.h"

namespace ch14 {

// Submission queue entries per ring: requests prepared between two submits (a full
// queue is submitted at once). The completion queue is sized from max_clients in start().
inline constexpr unsigned kRingEntries = 256;
inline constexpr long long kAcceptBackoffNs = 100'000'000;  // 100 ms
inline constexpr std::uint16_t kBufferGroup = 0;  // the id of each worker's buffer ring in its io_uring

//! [tag]
// The user_data of a connection's request: its generation in the high half, its slot
// and which of its requests below (slot << 2 | kind: the receive or the send).
// Generations start at 1, so a connection's tag is at least 2^32; the ring's own
// requests use the small numbers below. A cancel names its target by this tag, so it
// can only ever find the request of this generation, never a later connection's in
// the same slot.
inline constexpr std::uint64_t kCancelTag = 0;    // a cancel request's own completion
inline constexpr std::uint64_t kAcceptTag = 1;    // the accept, or its pause
inline constexpr std::uint64_t kDoorbellTag = 2;  // the poll on the worker's eventfd
inline constexpr std::uint64_t kTickTag = 3;      // the sweep's timeout
enum class Kind : std::uint32_t { kRecv = 0, kSend = 1 };
inline std::uint64_t make_tag(std::uint32_t slot, std::uint32_t generation, Kind kind) {
    return (static_cast<std::uint64_t>(generation) << 32) | (static_cast<std::uint64_t>(slot) << 2) |
           static_cast<std::uint64_t>(kind);
}
inline std::uint32_t slot_of(std::uint64_t tag) { return static_cast<std::uint32_t>((tag & 0xFFFFFFFFu) >> 2); }
inline std::uint32_t generation_of(std::uint64_t tag) { return static_cast<std::uint32_t>(tag >> 32); }
inline Kind kind_of(std::uint64_t tag) { return static_cast<Kind>(tag & 3u); }
// 0 is never a generation: a slot's first occupant is 1, and 4 billion reuses later the
// count starts over at 1.
inline std::uint32_t next_generation(std::uint32_t g) {
    return g == std::numeric_limits<std::uint32_t>::max() ? 1 : g + 1;
}
//! [tag]

//! [id]
// A connection's id for the application: its worker in the top 8 bits, its slot in
// the next 24, its generation in the low 32. The worker says whose inbox a command
// goes to; slot and generation find the connection there, or find it gone.
inline ConnectionId make_id(std::size_t worker, std::uint32_t slot, std::uint32_t generation) {
    return (static_cast<ConnectionId>(worker) << 56) | (static_cast<ConnectionId>(slot & 0xFFFFFFu) << 32) | generation;
}
inline std::size_t worker_of_id(ConnectionId id) { return static_cast<std::size_t>(id >> 56); }
inline std::uint32_t slot_of_id(ConnectionId id) { return static_cast<std::uint32_t>((id >> 32) & 0xFFFFFFu); }
inline std::uint32_t generation_of_id(ConnectionId id) { return static_cast<std::uint32_t>(id); }
inline constexpr std::size_t kMaxWorkers = 256;
inline constexpr std::size_t kMaxSlots = 1u << 24;

// The worker whose thread this is (set by worker_loop), or nullptr: push() sends a
// callback's command to the worker's own list, everyone else's to its inbox.
extern thread_local const void* tl_worker;
//! [id]

// A failed operation on a connection we had not closed: the peer's doing (a reset, a
// send to a peer that has gone), or something unexpected. -ECANCELED cannot be the
// peer's: only our cancel makes it, and we cancel only what we have closed.
inline bool is_peer_reset(int error) { return iocp::is_disconnect_error(error); }

// A call on our own ring failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] inline void fatal(const char* call, int error) {
    std::cerr << "engine: " << call << " failed: " << error << " " << iocp::error_text(error) << "; cannot continue\n";
    std::abort();
}

// Records n as the new maximum if it is one. For a statistic only: tests read it.
template <class T>
inline void raise_to(std::atomic<T>& max, T n) {
    T seen = max.load();
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

}  // namespace ch14
