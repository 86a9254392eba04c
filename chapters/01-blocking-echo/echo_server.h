// Chapter 1 - A blocking echo server.
// New here: socket, bind, listen, accept, recv, send, and the loop that ties them.
// Left out on purpose: serving two clients at once. That is chapter 2's whole point,
// and seeing a second client wait here is the lesson of this one.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>

#include "iocp/net.h"

namespace ch01 {

//! [server-class]
/// Serves one client at a time: accept, echo until the client is done, accept the next.
class EchoServer {
public:
    explicit EchoServer(iocp::Endpoint where);
    ~EchoServer();
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;

    void start();                      // bind + listen now; serve on a background thread
    void stop();                       // wake the thread, close everything, join
    std::uint16_t port() const { return port_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }

private:
    void run();                        // the accept loop
    void serve(iocp::socket_t client); // the echo loop for one client

    iocp::Endpoint where_;
    iocp::UniqueSocket listener_;
    std::uint16_t port_ = 0;
    std::thread thread_;
    std::atomic<bool> stopping_{false};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::uint64_t> served_{0};

    // The client being served, so that stop() can wake a thread blocked in recv().
    std::mutex mutex_;
    iocp::socket_t current_ = iocp::kInvalidSocket;
};
//! [server-class]

}  // namespace ch01
