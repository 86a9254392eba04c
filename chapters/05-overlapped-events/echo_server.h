// Chapter 5 - Overlapped I/O with events: hand the kernel a buffer, be told when it is done.
// New here: WSARecv/WSASend with an OVERLAPPED and an event per operation,
// WSAWaitForMultipleEvents over those events, WSAGetOverlappedResult to collect a
// completion, and the ownership rule that comes with them: from the call until its
// completion is collected, the buffer and the OVERLAPPED belong to the kernel, so a
// connection with an operation in flight is closed by cancelling it and WAITING for it.
// The 64-handle limit of chapter 4 comes back: groups of connections, one thread each.
// Left out on purpose: more than one operation in flight per connection (an echo needs
// one: receive, send it all back, receive again), completion routines (chapter 6) and
// the completion port (chapter 7).
#pragma once

#ifndef _WIN32
#error "Chapter 5 is Windows only: Linux had no overlapped socket I/O before io_uring (see docs/pages/ch05.md)"
#endif

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"

namespace ch05 {

//! [limits]
struct Limits {
    // Clients served at once; one more is accepted and closed at once (EOF, or a
    // reset if it had already sent bytes).
    std::size_t max_clients = 1024;
    // Per connection: the one buffer its one operation uses. Every byte of an echo
    // passes through it, buffer_size bytes per receive at most.
    std::size_t buffer_size = 16 * 1024;
};
//! [limits]

/// WSAWaitForMultipleEvents takes at most WSA_MAXIMUM_WAIT_EVENTS (64) handles, and
/// each group's thread spends one on its own wake-up event: 63 connections per thread,
/// each with exactly one operation (and so one event) at a time.
//! [group-size]
inline constexpr std::size_t kSocketsPerGroup = WSA_MAXIMUM_WAIT_EVENTS - 1;
//! [group-size]

//! [server-class]
class EchoServer {
public:
    explicit EchoServer(iocp::Endpoint where, Limits limits = {});
    ~EchoServer();
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;

    void start();
    void stop();                       // stop accepting; cancel, drain and close everything
    std::uint16_t port() const { return port_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }
    /// Threads that wait for completions: one per group of up to 63 connections.
    /// (One more thread accepts.)
    std::size_t waiting_threads() const;

    /// Operations handed to the kernel and not yet collected: counted from a
    /// successful WSARecv/WSASend until WSAGetOverlappedResult has taken the result.
    /// While it is above zero, some buffer and OVERLAPPED are the kernel's, not ours.
    std::size_t operations_in_flight() const { return in_flight_.load(); }
    /// WSARecv/WSASend calls that returned 0: done before the call returned. They are
    /// collected through their event like all the others.
    std::uint64_t completed_at_once() const { return at_once_.load(); }

private:
    class Group;
    void accept_loop();
    bool hand_over(iocp::UniqueSocket client);  // false: refused
    void close_connection();                    // the bookkeeping every closed client shares

    iocp::Endpoint where_;
    Limits limits_;
    iocp::UniqueSocket listener_;
    std::uint16_t port_ = 0;
    std::atomic<bool> stopping_{false};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::uint64_t> served_{0};
    std::atomic<std::uint64_t> refused_{0};
    std::atomic<std::size_t> in_flight_{0};
    std::atomic<std::uint64_t> at_once_{0};

    std::thread acceptor_;             // blocks in accept(); stop() pokes the listener
    std::vector<std::unique_ptr<Group>> groups_;  // grown by the accepting thread only
    mutable std::mutex groups_mutex_;  // guards groups_.size() for waiting_threads()
};
//! [server-class]

}  // namespace ch05
