// Chapter 2 - One thread per client.
// New here: an accept thread that hands each connection to a thread of its own, so
// every client is served at once; the bookkeeping that takes (a list of sessions,
// reaping finished threads) and a cap on how many threads a flood of clients can make.
// Left out on purpose: any way to serve many clients with few threads. That is the
// rest of the book, and this chapter's page measures why it is needed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <thread>

#include "iocp/net.h"

namespace ch02 {

//! [limits]
struct Limits {
    // Each client costs a thread (a stack, a kernel object, a scheduler entry). A
    // server without a cap lets any client population decide how many it makes.
    std::size_t max_clients = 1000;
};
//! [limits]

//! [server-class]
class EchoServer {
public:
    explicit EchoServer(iocp::Endpoint where, Limits limits = {});
    ~EchoServer();
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;

    void start();                      // bind + listen now; accept on a background thread
    void stop();                       // stop accepting, wake every session, join them all
    std::uint16_t port() const { return port_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }

private:
    //! [session]
    struct Session {
        iocp::UniqueSocket socket;     // closed by the session's own thread when it ends
        std::thread thread;
        bool finished = false;         // set by the session's thread as its last act
    };
    //! [session]

    void accept_loop();
    void serve(Session& session);      // the echo loop, exactly chapter 1's
    void reap_finished();              // join sessions whose thread has ended

    iocp::Endpoint where_;
    Limits limits_;
    iocp::UniqueSocket listener_;
    std::uint16_t port_ = 0;
    std::thread acceptor_;
    std::atomic<bool> stopping_{false};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::uint64_t> served_{0};
    std::atomic<std::uint64_t> refused_{0};

    std::mutex mutex_;                 // guards sessions_ and every Session's fields
    std::list<Session> sessions_;      // a list: a Session never moves once it is in
};
//! [server-class]

}  // namespace ch02
