// Chapter 7 - The completion port: a kernel queue of finished I/O, and one worker.
// New here: a completion port instead of a thread's APC queue, so the thread that
// takes a completion no longer has to be the one that started the operation; each
// socket associated with the port under a completion key (its connection), each
// operation's context recovered from its OVERLAPPED with CONTAINING_RECORD; an accept
// thread as in the original article, which hands each client to the worker with a
// packet of its own; stop() by an exit packet and a drain.
// The Linux twin (echo_uring.cpp) is the same server on one io_uring: same header,
// same function names in the same order.
// Left out on purpose: more than one worker (chapter 8), AcceptEx (chapter 10).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"

#ifndef _WIN32
#include <liburing.h>
#endif

namespace ch07 {

//! [limits]
struct Limits {
    // One buffer per connection, always lent to the kernel (a receive is posted on every
    // idle connection), so the cap is about memory.
    std::size_t max_clients = 10000;
    // Bytes one receive asks for; also all a connection ever holds, since it never
    // reads while an echo is still going out (flow control for free).
    std::size_t buffer_size = 16 * 1024;
};
//! [limits]

//! [server-class]
class EchoServer {
public:
    explicit EchoServer(iocp::Endpoint where, Limits limits = {})
        : where_(std::move(where)), limits_(limits) {
        if (limits_.buffer_size == 0) limits_.buffer_size = 1;
    }
    ~EchoServer() { stop(); }
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;

    void start();
    void stop();  // stop accepting; the worker closes every connection, drains, exits
    std::uint16_t port() const { return port_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }

    /// Receives and sends started, and on Windows admit packets posted to the worker,
    /// whose completion has not been handled yet. Each one pins its connection: the
    /// kernel (or the port's queue) owns that context and that buffer until then.
    std::size_t operations_in_flight() const { return in_flight_.load(); }
    /// Sends completed with fewer bytes than asked, whose rest was posted again.
    std::uint64_t sends_reposted() const { return reposted_.load(); }
    /// Accepts that failed for a reason other than a client giving up (out of
    /// descriptors, for instance). Each is followed by a pause, never by a retry at once.
    std::uint64_t accept_failures() const { return accept_failures_.load(); }
    //! [server-class]
#ifndef _WIN32
    /// Times the worker found completions the ring's queue had no room for, waiting in
    /// the kernel. The queue is sized so that this stays 0 (a port's queue has no size).
    std::uint64_t completion_queue_overflows() const { return cq_overflows_.load(); }
#endif

private:
    struct Connection;
#ifdef _WIN32
    //! [io-context]
    enum class Op { kRecv, kSend, kAdmit };  // kAdmit: a client handed to the worker

    // One per connection: each connection has at most one operation in flight (receive,
    // then send all of it, then receive again), so one context is all it needs.
    struct IoContext {
        OVERLAPPED overlapped;  // first: CONTAINING_RECORD finds us from its address
        Op op;
        Connection* connection;
    };
    //! [io-context]
#else
    enum class Op { kRecv, kSend, kAccept, kAcceptPause, kWake, kCancel };

    struct IoContext {  // the same, without an OVERLAPPED: its address is the user_data
        Op op;
        Connection* connection;  // nullptr for the ring's own requests
    };
#endif

    //! [connection]
    struct Connection {
        IoContext io{};                  // the kernel's while pending is true
        iocp::UniqueSocket socket;
        std::vector<char> buffer;        // the kernel's while pending is true, too
        std::size_t filled = 0;          // bytes received, to echo
        std::size_t sent = 0;            // of those, bytes sent back so far
        bool pending = false;            // an operation is in flight: do not free
        bool closing = false;            // we decided to close; free once not pending
        std::list<Connection>::iterator self;  // where it lives, to erase it
    };
    //! [connection]

    void accept_clients();
    void admit(iocp::UniqueSocket client);
    void post_recv(Connection& c);
    void post_send(Connection& c);
#ifdef _WIN32
    void complete(Connection& c, DWORD error, DWORD bytes);
#else
    void on_completion(IoContext& io, int result);
    void complete(Connection& c, int result);
#endif
    void worker_loop();
    void close_connection(Connection& c);  // now, or once its operation has come back
    void free_connection(Connection& c);
    void close_all();

    iocp::Endpoint where_;
    Limits limits_;
    iocp::UniqueSocket listener_;
    std::uint16_t port_ = 0;
    std::thread worker_;
    std::atomic<bool> stopping_{false};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::uint64_t> served_{0};
    std::atomic<std::uint64_t> refused_{0};
    std::atomic<std::size_t> in_flight_{0};
    std::atomic<std::uint64_t> reposted_{0};
    std::atomic<std::uint64_t> accept_failures_{0};
#ifdef _WIN32
    iocp::UniqueHandle completion_port_;  // the port: a kernel queue of finished I/O
    std::thread accept_thread_;       // blocking accept(), as in the original article
    std::mutex mutex_;                // guards connections_: the accept thread adds, the worker removes
    std::list<Connection> connections_;  // the rest of a connection is the worker's once admitted
#else
    void check_kernel();
    io_uring_sqe* get_sqe();
    std::size_t take_completions();  // handles every completion that is ready; returns how many
    void cancel(IoContext& io, iocp::socket_t fd);

    io_uring ring_{};                 // the submission and completion queues
    bool ring_ready_ = false;
    iocp::UniqueFd wake_;             // an eventfd: stop() writes it, the ring has a poll posted on it
    __kernel_timespec accept_pause_{0, 100'000'000};  // accepting pauses 100 ms after EMFILE
    IoContext accept_io_{};           // the pending accept (or its pause)
    IoContext wake_io_{};             // the pending eventfd poll
    IoContext cancel_io_{Op::kCancel, nullptr};  // the context of every cancel request
    std::atomic<std::uint64_t> cq_overflows_{0};
    // Touched by the worker thread only:
    std::list<Connection> connections_;
    bool accept_pending_ = false;
    bool accept_retry_ = false;       // the accept found no free entry: post it after the next submit
    bool wake_pending_ = false;
    std::size_t cancels_in_flight_ = 0;
    bool draining_ = false;
#endif
};

}  // namespace ch07
