// Chapter 3 - One thread, many clients: non-blocking sockets and select().
// New here: non-blocking sockets, a readiness loop around select(), a per-connection
// output buffer for the bytes a send could not take yet, flow control by not reading
// while that buffer is full, and FD_SETSIZE: how many sockets select() can watch.
// Left out on purpose: anything that scales past FD_SETSIZE, or past one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <string>
#include <thread>

#include "iocp/net.h"

namespace ch03 {

/// How many clients select() can watch in this build. An fd_set is a fixed-size
/// structure, and the two platforms even disagree on what its size limits:
/// on Windows it holds up to FD_SETSIZE (64) sockets, and the listener and the
/// wake-up socket take two of them; with glibc it is a bitmap indexed by descriptor
/// number, so no descriptor numbered FD_SETSIZE (1024) or more can be watched at all,
/// however few clients there are (see fits_in_fd_set in echo_server.cpp).
//! [capacity]
#ifdef _WIN32
inline constexpr std::size_t kSelectCapacity = FD_SETSIZE - 2;
#else
// An upper bound: the descriptor numbers decide (fits_in_fd_set).
inline constexpr std::size_t kSelectCapacity = FD_SETSIZE;
#endif
//! [capacity]

//! [limits]
struct Limits {
    std::size_t max_clients = kSelectCapacity;
    // Bytes received but not yet echoed, per connection. At this mark we stop reading
    // from that client until its echo drains: a client that sends and never reads
    // fills its own TCP window, not our memory.
    std::size_t max_pending = 64 * 1024;
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
    void stop();                       // wake the loop, which closes everything
    std::uint16_t port() const { return port_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }

private:
    //! [server-class]
    //! [connection]
    struct Connection {
        iocp::UniqueSocket socket;
        std::string pending;           // received, not yet echoed
        bool peer_done = false;        // the client sent FIN: echo the rest, then close
    };
    //! [connection]

    //! [server-members]
    void loop();
    void accept_clients();
    bool on_readable(Connection& c);   // false: close this connection
    bool flush(Connection& c);         // false: close this connection

    iocp::Endpoint where_;
    Limits limits_;
    iocp::UniqueSocket listener_;
    iocp::UniqueSocket waker_;         // a UDP socket stop() sends a byte to
    std::uint16_t port_ = 0;
    std::thread thread_;
    std::atomic<bool> stopping_{false};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::uint64_t> served_{0};
    std::atomic<std::uint64_t> refused_{0};

    std::list<Connection> connections_;  // touched by the loop thread only
    std::chrono::steady_clock::time_point accept_paused_until_{};  // loop thread only
};
//! [server-members]

}  // namespace ch03
