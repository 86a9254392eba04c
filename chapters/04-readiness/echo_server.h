// Chapter 4 - Readiness notification: WSAEventSelect on Windows, epoll on Linux.
// New here: the OS tells us which socket is ready, instead of us asking about all of
// them every round (select). Windows: one event object per socket, waited on with
// WSAWaitForMultipleEvents - at most 64 per wait, so sockets come in groups, one
// waiting thread per group. Linux: one epoll instance, level-triggered, one thread.
// Left out on purpose: anything where the kernel does the I/O for us (chapter 5 on).
//
// The same header serves both twins: echo_eventselect.cpp (Win32) and echo_epoll.cpp
// (Linux). Each is complete on its own; CMakeLists.txt picks one.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"

namespace ch04 {

//! [limits]
struct Limits {
    // Clients served at once; one more is accepted and closed at once (EOF, or a
    // reset if it had already sent bytes). Neither model has a small built-in limit
    // any more: this is a choice, not FD_SETSIZE.
    std::size_t max_clients = 1024;
};
//! [limits]

#ifdef _WIN32
/// WSAWaitForMultipleEvents takes at most WSA_MAXIMUM_WAIT_EVENTS (64) handles, and
/// each group's thread spends one on its own wake-up event: 63 sockets per thread.
//! [group-size]
inline constexpr std::size_t kSocketsPerGroup = WSA_MAXIMUM_WAIT_EVENTS - 1;
//! [group-size]
#endif

//! [server-class]
class EchoServer {
public:
    explicit EchoServer(iocp::Endpoint where, Limits limits = {});
    ~EchoServer();
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;

    void start();
    void stop();                       // stop accepting, close every client, join every thread
    std::uint16_t port() const { return port_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }
    /// Threads that wait for readiness: one per group of 63 sockets on Windows,
    /// always one on Linux. (Windows adds one more thread that accepts.)
    std::size_t waiting_threads() const;

    //! [server-class]
    //! [connection]
    /// One client. Only the thread that waits for its readiness touches it.
    struct Connection {
#ifdef _WIN32
        // Declared before the socket, so destroyed after it: closesocket() ends the
        // association first, and Winsock never signals an event already closed.
        iocp::UniqueHandle event;      // WSAEventSelect's event object for this socket
#else
        std::uint32_t interest = 0;    // what epoll watches for it now (EPOLLIN/EPOLLOUT)
#endif
        iocp::UniqueSocket socket;
        std::string pending;           // received, not yet echoed
        bool peer_done = false;        // the client sent FIN: echo the rest, then close
    };
    //! [connection]
    //! [server-members]

private:
#ifdef _WIN32
    class Group;
    void accept_loop();
    bool hand_over(iocp::UniqueSocket client);  // false: refused
#else
    void loop();
    bool accept_clients();             // false: out of descriptors, pause accepting
    bool update_interest(Connection& c);
#endif
    void close_connection();           // the bookkeeping every closed client shares

    iocp::Endpoint where_;
    Limits limits_;
    iocp::UniqueSocket listener_;
    std::uint16_t port_ = 0;
    std::atomic<bool> stopping_{false};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::uint64_t> served_{0};
    std::atomic<std::uint64_t> refused_{0};

#ifdef _WIN32
    iocp::UniqueHandle accept_event_;  // FD_ACCEPT on the listener
    iocp::UniqueHandle stop_event_;    // set by stop(): the accepting thread leaves
    std::thread acceptor_;
    std::vector<std::unique_ptr<Group>> groups_;  // grown by the accepting thread only
    mutable std::mutex groups_mutex_;  // guards groups_.size() for waiting_threads()
#else
    iocp::UniqueFd epoll_;
    iocp::UniqueFd wake_;              // an eventfd: stop() writes to it
    std::thread thread_;
    std::unordered_map<int, Connection> connections_;  // loop thread only
#endif
};
//! [server-members]

}  // namespace ch04
