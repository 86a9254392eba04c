// Chapter 13 - what the server keeps: a pool buffer, the per-I/O and per-handle data,
// a slot of the connection table, a worker. Split from echo_server.h (whose class
// names each of these as its own: EchoServer::Connection, ...), so that each file
// reads in one sitting. Nothing here is for a caller: it is the server's inside.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"

#ifdef _WIN32
#include <mswsock.h>
#else
#include <liburing.h>
#endif

namespace ch13::detail {

struct Connection;
struct Worker;

using Clock = std::chrono::steady_clock;

//! [buffer]
// One buffer of the pool. Lent, it holds received bytes until they are echoed:
// queued in its connection's output list, oldest first.
struct Buffer {
    char* data = nullptr;      // buffer_size bytes
    Buffer* next = nullptr;    // the next in an output queue (Windows: or the free list)
    std::uint32_t length = 0;  // bytes received into it
    std::uint32_t sent = 0;    // of those, bytes sent
    std::uint16_t id = 0;      // Linux: its buffer id in the worker's buffer ring
    bool lent = false;         // out of the pool: what the double-lend check looks at
};
//! [buffer]

//! [io-context]
#ifdef _WIN32
// kPeek: a zero-byte receive, waiting for data with no buffer. kRecv: the real one.
// kGrant: the pool's packet handing a waiting connection the buffer it waited for.
enum class Op { kPeek, kRecv, kSend, kGrant };
#else
// kTick: the timeout that wakes the worker to sweep its connections' deadlines.
enum class Op { kRecv, kSend, kAccept, kAcceptPause, kWake, kTick };
#endif
// Per-I/O data: a connection has two, since a receive and a send may be pending at
// once. No buffer of its own any more: the receive's comes from the pool.
struct IoContext {
#ifdef _WIN32
    OVERLAPPED overlapped;  // first: GQCS hands back &overlapped; CONTAINING_RECORD finds us
#endif
    Op op;
    Connection* connection;  // nullptr for a ring's own operations (Linux)
#ifdef _WIN32
    bool done_inline;        // it finished at once, with no packet: ours to handle (run_inline)
    DWORD inline_bytes;
#endif
};
enum class Outcome { kBytes, kPeerClosed, kFailed };
enum class Why { kPeerFin, kPeerReset, kByUs };  // decided once, when `closing` is set
//! [io-context]

#ifdef _WIN32
// Per-accept data: one per AcceptEx the listener may have pending (chapter 10).
struct AcceptContext {
    OVERLAPPED overlapped;
    iocp::UniqueSocket socket;
    std::vector<char> buffer;   // both addresses
    bool pending = false;       // guarded by accept_mutex_
    std::chrono::steady_clock::time_point retry_at{};
};
#endif

//! [connection]
// Per-handle data. Idle, it is all a connection costs: no buffer, no container
// that allocates (the output queue is a list threaded through the buffers).
struct Connection {
#ifdef _WIN32
    std::mutex mutex;  // guards all below: two workers may hold its two packets at once
    bool skip = false; // FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set on its socket
#else
    Worker* worker = nullptr;  // the worker whose ring runs all its I/O
#endif
    IoContext recv{};
    IoContext send{};
    Clock::time_point recv_deadline{};  // a receive is waiting, and must end by then (or {}: none)
    Clock::time_point send_deadline{};  // a send is in flight, and must move by then (or {})
    iocp::UniqueSocket socket;
    std::uint32_t slot = 0;
    std::uint32_t generation = 0;
    int outstanding = 0;       // operations (and, Windows, a wait for a buffer) not yet home
    bool receiving = false;    // a receive (or a zero-byte one, or a wait for a buffer) is out;
                               // Linux: the multishot receive is armed
    bool waiting = false;      // it waits for a pool buffer
    bool paused = false;       // at the high watermark: no receive until the low one
    int sending = 0;           // sends in flight: the rule is never more than 1
    Buffer* recv_buffer = nullptr;  // Windows: the buffer of the real receive in flight
    Buffer* head = nullptr;    // the output queue: oldest first
    Buffer* tail = nullptr;
    std::size_t queued = 0;    // the memory of the queued buffers: the budget's count
    bool peer_done = false;    // the peer sent FIN: close once the queue is empty
#ifndef _WIN32
    bool cancelling = false;   // the armed receive's cancel (backpressure) is on its way
    bool fixed = false;        // the socket is registered: requests name its slot
#endif
    bool closing = false;
    Why why = Why::kByUs;
};
//! [connection]

//! [slot]
#ifdef _WIN32
// One entry of the connection table. Any worker may take any packet and reads the
// entry without a lock, so both fields are atomics, and the table never grows
// (start() sizes it for max_clients). The entry owns the connection it points to.
struct Slot {
    std::atomic<std::uint32_t> generation{1};  // the current occupant's; moves on when it is freed
    std::atomic<Connection*> connection{nullptr};
};
#else
// One entry of a worker's connection table, touched by that worker only.
struct Slot {
    std::uint32_t generation = 1;  // the current occupant's; moves on when it is freed
    std::unique_ptr<Connection> connection;
};
#endif
//! [slot]

//! [worker-state]
#ifdef _WIN32
// Every worker runs the same loop on the same port: a worker has no state of its own.
struct Worker {
    std::thread thread;
    std::atomic<std::uint64_t> completions{0};
};
#else
// One ring per worker. A connection belongs to one worker for its whole life.
struct Worker {
    std::thread thread;
    std::atomic<std::uint64_t> completions{0};
    io_uring ring{};
    bool ring_ready = false;
    iocp::UniqueFd doorbell;    // eventfd: a new client in the inbox, or stop()
    IoContext doorbell_io{};    // the pending poll on it
    IoContext accept_io{};      // worker 0 only: the pending accept (or its pause)
    std::mutex inbox_mutex;     // guards inbox: the accepting worker adds, this one takes
    std::vector<iocp::UniqueSocket> inbox;
    // Touched by this worker's thread only:
    io_uring_buf_ring* buffer_ring = nullptr;  // the provided buffers, in memory shared with the kernel
    std::size_t ring_bytes = 0;
    char* buffer_memory = nullptr;  // ring_buffers * buffer_size bytes, mapped
    std::size_t ring_buffers = 0;   // a power of two
    std::size_t buffers_out = 0;    // of those, taken (take_buffer) and not given back
    std::vector<Buffer> buffers;    // by buffer id
    std::vector<std::uint64_t> waiting;  // tags of connections that found the ring empty
    std::vector<Slot> slots;    // its connection table
    std::vector<std::uint32_t> free_slots;
    std::size_t in_flight = 0;  // this ring's receives and sends
    std::size_t cancels_in_flight = 0;
    unsigned file_slots = 0;    // the size of its table of registered sockets (0: none)
    bool ring_fd_registered = false;
    IoContext tick_io{};        // the sweep's timeout
    bool tick_pending = false;
    Clock::time_point now{};    // read once per batch of completions: the deadlines' clock
    bool accept_pending = false;  // worker 0: the accept (or its pause) is in the ring
    bool multishot = true;        // false on a kernel without multishot accept (before 5.19)
    bool accept_retry = false;    // the accept found no free entry: post it after the next submit
    bool doorbell_pending = false;
    bool doorbell_retry = false;  // the same for the doorbell's poll
    bool draining = false;
    std::chrono::steady_clock::time_point drain_deadline{};
    bool gave_up = false;         // the drain ran out of time: stop() abandons what is left
};
#endif
//! [worker-state]

}  // namespace ch13::detail
