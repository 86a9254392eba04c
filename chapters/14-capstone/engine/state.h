// Chapter 14 - what the engine keeps: a pool buffer, the per-I/O and per-handle data,
// a command, a slot, a worker. Chapter 13's, with two changes: a connection's output
// is the application's bytes (a queue of strings, not of received buffers), and the
// engine takes commands (send, close) from any thread: on Linux into the owning
// worker's inbox, on Windows into the connection's own, announced by a packet.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#ifdef _WIN32
#include <mswsock.h>
#else
#include <liburing.h>
#endif

#include "engine/options.h"
#include "iocp/handle.h"
#include "iocp/net.h"

namespace ch14::detail {

struct Connection;
struct Worker;

using Clock = std::chrono::steady_clock;

// One buffer of the pool (Linux: of the worker's ring): lent only while its bytes are
// handed to on_data.
struct Buffer {
    char* data = nullptr;
#ifdef _WIN32
    Buffer* next = nullptr;  // the next in the pool's free list
#else
    std::uint16_t id = 0;  // its id in the worker's buffer ring
#endif
    bool lent = false;
};

#ifdef _WIN32
// kPeek: the zero-byte receive; kRecv: the real one, into a pool buffer; kGrant: the
// pool's packet handing a waiting connection its buffer; kCommand: the packet that
// says the connection's inbox has commands (send, close) to carry out.
enum class Op { kPeek, kRecv, kSend, kGrant, kCommand };
struct IoContext {
    OVERLAPPED overlapped;   // first: GQCS hands back &overlapped; CONTAINING_RECORD finds us
    Op op;
    Connection* connection;
    bool done_inline;        // finished at once, with no packet: ours to handle (run_inline)
    DWORD inline_bytes;
};
#else
enum class Op { kRecv, kSend, kAccept, kAcceptPause, kWake, kTick };
struct IoContext {
    Op op;
    Connection* connection;  // nullptr for a ring's own requests
};
#endif
enum class Outcome { kBytes, kPeerClosed, kFailed };
enum class Why { kPeerFin, kPeerReset, kByUs };

//! [command]
// What another thread (or a callback on this one) asks of a worker. Commands for one
// connection are carried out in the order they were pushed from each thread.
struct Command {
    enum Kind { kSend, kClose, kCloseAfterSends } kind = kSend;
    ConnectionId id = 0;
    std::string bytes;
};
//! [command]

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
#ifdef _WIN32
struct Connection {
    // Guards everything below but the inbox: two workers may hold two of its packets at
    // once (and the sweep, and stop() may come too). Held while the handler is called for this connection, which is what keeps
    // its calls one at a time and in order; send() and close() never take it.
    std::mutex mutex;
    bool skip = false;        // FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set on its socket
    IoContext recv{};
    IoContext send{};
    IoContext command{};      // the inbox's packet
    Clock::time_point recv_deadline{};
    Clock::time_point send_deadline{};
    Clock::time_point linger_deadline{};  // set once FIN is sent on a close after sends
    iocp::UniqueSocket socket;
    std::uint32_t slot = 0;
    std::uint32_t generation = 0;
    int outstanding = 0;      // operations, and a wait for a buffer
    bool receiving = false;   // a receive (or a zero-byte one, or a wait for a buffer) is out
    bool waiting = false;     // in line for a pool buffer
    bool paused = false;      // output at the high watermark: no receive until the low
    int sending = 0;          // never more than 1
    Buffer* recv_buffer = nullptr;  // the buffer of the real receive in flight
    // The output, as on Linux: the application's bytes, oldest first.
    std::deque<std::string> out;
    std::size_t head_sent = 0;
    std::size_t queued = 0;
    bool finishing = false;
    bool fin_sent = false;
    bool peer_done = false;
    bool connected = false;   // on_connect has been called: the application knows the id
    bool told = false;        // on_close has been called
    bool closing = false;
    bool retired = false;     // out of its slot (retire): the thread that retired it frees it
    Why why = Why::kByUs;
    // The inbox and its flag, guarded by the slot's lock, not by `mutex`: any thread adds.
    std::vector<Command> inbox;
    bool inbox_posted = false;  // its packet is in the port: the connection must stay
};
#else
struct Connection {
    Worker* worker = nullptr;
    IoContext recv{};
    IoContext send{};
    Clock::time_point recv_deadline{};
    Clock::time_point send_deadline{};
    Clock::time_point linger_deadline{};  // set once FIN is sent on a close after sends
    iocp::UniqueSocket socket;
    std::uint32_t slot = 0;
    std::uint32_t generation = 0;
    int outstanding = 0;
    bool receiving = false;   // the multishot receive is armed
    bool waiting = false;     // in line for a buffer of the ring
    bool paused = false;      // output at the high watermark: no receive until the low
    bool cancelling = false;  // the armed receive's cancel (the pause) is on its way
    int sending = 0;          // never more than 1
    Buffer* recv_buffer = nullptr;  // the buffer the last receive's completion brought
    bool fixed = false;       // the socket is in the ring's table of registered files
    // The output: the application's bytes, oldest first; the head's first head_sent
    // bytes are out. A small send joins the last string while that one is not yet out.
    std::deque<std::string> out;
    std::size_t head_sent = 0;
    std::size_t queued = 0;   // bytes in `out` not yet sent: the budget's count
    bool finishing = false;   // no more for the application: close once `out` is empty
    bool fin_sent = false;    // finishing, and our FIN is out: reading to drop until theirs
    bool peer_done = false;   // the peer's FIN came
    bool told = false;        // on_close has been called
    bool closing = false;
    Why why = Why::kByUs;
};
#endif
//! [connection]

#ifdef _WIN32
// One entry of the connection table, which never moves (start() sizes it). A packet's
// key is looked up without a lock, so generation and connection are atomics; the
// slot's lock guards their changes and the occupant's inbox: send() from any thread
// finds the connection and adds to its inbox under it, and nothing else is taken
// inside it, so a callback holding its connection's mutex may send to any id.
struct Slot {
    std::mutex lock;
    std::atomic<std::uint32_t> generation{1};
    std::atomic<Connection*> connection{nullptr};
};
#else
struct Slot {
    std::uint32_t generation = 1;
    std::unique_ptr<Connection> connection;
};
#endif

//! [worker-state]
#ifdef _WIN32
// Every worker runs the same loop on the same port: a worker has no state of its own.
struct Worker {
    std::thread thread;
    std::atomic<std::uint64_t> completions{0};
};
#else
struct Worker {
    std::size_t index = 0;
    std::thread thread;
    io_uring ring{};
    bool ring_ready = false;
    iocp::UniqueFd doorbell;     // eventfd: clients or commands in the inbox, or stop()
    IoContext doorbell_io{};
    IoContext accept_io{};
    IoContext tick_io{};
    std::mutex inbox_mutex;      // guards the inboxes: any thread adds, this one takes
    std::vector<iocp::UniqueSocket> inbox;
    std::vector<Command> commands;
    // Touched by this worker's thread only:
    std::vector<ConnectionId> to_free;  // closed by a command with nothing in flight: freed after the batch
    io_uring_buf_ring* buffer_ring = nullptr;
    std::size_t ring_bytes = 0;
    char* buffer_memory = nullptr;
    std::size_t ring_buffers = 0;
    std::size_t buffers_out = 0;
    std::vector<Buffer> buffers;
    std::vector<std::uint64_t> waiting;
    std::vector<Slot> slots;
    std::vector<std::uint32_t> free_slots;
    std::size_t in_flight = 0;
    std::size_t cancels_in_flight = 0;
    unsigned file_slots = 0;
    bool ring_fd_registered = false;
    bool tick_pending = false;
    Clock::time_point now{};
    bool accept_pending = false;
    bool accept_retry = false;    // the accept found no free entry: armed after the next submit
    bool multishot = true;        // false on a kernel without multishot accept
    bool doorbell_pending = false;
    bool doorbell_retry = false;
    bool draining = false;
    Clock::time_point drain_deadline{};
    bool gave_up = false;
};
#endif
//! [worker-state]

}  // namespace ch14::detail
