// Chapter 6 - Completion routines: overlapped I/O that calls us back, on one thread.
// New here: WSARecv/WSASend given a completion routine instead of an event, so no
// event per operation and no 64-handle limit on clients; the kernel queues each
// routine as an APC to the thread that issued the I/O, and that thread runs it during
// its next alertable wait. Ownership stays chapter 5's: a connection is freed only
// after its pending routine has run, even when the operation was cancelled.
// Left out on purpose: more than one thread. APCs cannot be shared out; chapter 7's
// completion port is what lets any thread take any completion.
// Windows only (Linux has no APCs and no overlapped socket I/O; see docs/pages/ch06.md).
#pragma once

#ifndef _WIN32
#error "Chapter 6 is Windows only: Linux has no APCs and had no overlapped socket I/O before io_uring (see docs/pages/ch06.md)"
#endif

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <thread>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"

namespace ch06 {

//! [limits]
struct Limits {
    // No handle limit applies: the I/O thread waits on two handles however many clients
    // there are. The cap is about memory (one buffer per connection), not about Windows.
    std::size_t max_clients = 10000;
    // Bytes one receive asks for; also all a connection ever holds, since it never
    // reads while an echo is still going out (flow control for free).
    std::size_t buffer_size = 16 * 1024;
};
//! [limits]

//! [server-class]
class EchoServer {
public:
    explicit EchoServer(iocp::Endpoint where, Limits limits = {});
    ~EchoServer();
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;

    void start();
    void stop();  // signal the stop event; the I/O thread cancels, drains and exits
    std::uint16_t port() const { return port_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }

    /// WSARecv/WSASend calls issued whose completion routine has not run yet. Each one
    /// pins its connection: the kernel owns that OVERLAPPED and that buffer.
    std::size_t operations_in_flight() const { return in_flight_.load(); }
    /// Completion routines run so far, and how many of them ran with 995
    /// (WSA_OPERATION_ABORTED: cancelled by us while closing).
    std::uint64_t routines_run() const { return routines_run_.load(); }
    std::uint64_t routines_cancelled() const { return routines_cancelled_.load(); }
    /// Routines that ran on any thread but the I/O thread. The APC rule says 0, always.
    std::uint64_t routines_on_other_threads() const { return routines_elsewhere_.load(); }
    /// The Win32 id of the one thread that issues every operation (0 before start()).
    DWORD io_thread_id() const { return io_thread_.load(); }
    /// accept() tries made because 250 ms had passed without one, not because FD_ACCEPT
    /// was signalled: the safety net for Wine's lost FD_ACCEPT (kAcceptRecheck).
    std::uint64_t accept_rechecks() const { return accept_rechecks_.load(); }

private:
    struct Connection;
    //! [server-class]
    //! [io-context]
    enum class Op { kRecv, kSend };

    // One per connection: each connection has at most one operation in flight (receive,
    // then send all of it, then receive again), so one context is all it needs.
    struct IoContext {
        WSAOVERLAPPED overlapped;  // first: the routine gets &overlapped, which is this
        Op op;
        Connection* connection;
    };
    //! [io-context]

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
    //! [server-members]

    static void CALLBACK on_completion(DWORD error, DWORD bytes, LPWSAOVERLAPPED overlapped, DWORD flags);
    void complete(Connection& c, DWORD error, DWORD bytes);
    void loop();
    void accept_clients();
    void post_recv(Connection& c);
    void post_send(Connection& c);
    void close_connection(Connection& c);  // now, or once its routine has run
    void free_connection(Connection& c);
    void drain();

    iocp::Endpoint where_;
    Limits limits_;
    iocp::UniqueSocket listener_;
    iocp::UniqueHandle accept_event_;  // FD_ACCEPT on the listener (WSAEventSelect)
    iocp::UniqueHandle stop_event_;    // set by stop()
    std::uint16_t port_ = 0;
    std::thread thread_;
    std::atomic<DWORD> io_thread_{0};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::uint64_t> served_{0};
    std::atomic<std::uint64_t> refused_{0};
    std::atomic<std::size_t> in_flight_{0};
    std::atomic<std::uint64_t> routines_run_{0};
    std::atomic<std::uint64_t> routines_cancelled_{0};
    std::atomic<std::uint64_t> routines_elsewhere_{0};
    std::atomic<std::uint64_t> accept_rechecks_{0};

    std::list<Connection> connections_;  // touched by the I/O thread only (routines too)
    std::chrono::steady_clock::time_point accept_paused_until_{};  // I/O thread only
};
//! [server-members]

}  // namespace ch06
