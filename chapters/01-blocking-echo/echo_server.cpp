// Chapter 1 - A blocking echo server. See echo_server.h and docs/pages/ch01.md.
#include "echo_server.h"

#include <chrono>
#include <iostream>

namespace ch01 {

namespace {
// One read at a time, at most this much. The size does not limit what a client may
// send: a longer message simply arrives over several recv() calls.
constexpr std::size_t kBufferSize = 16 * 1024;
constexpr std::chrono::milliseconds kAcceptBackoff{100};
}  // namespace

EchoServer::EchoServer(iocp::Endpoint where) : where_(std::move(where)) {}

EchoServer::~EchoServer() { stop(); }

//! [start]
void EchoServer::start() {
    listener_ = iocp::listen_tcp(where_);           // socket + bind + listen
    port_ = iocp::local_port(listener_.get());      // the real port when asked for 0
    thread_ = std::thread([this] { run(); });
}
//! [start]

//! [accept-loop]
void EchoServer::run() {
    while (!stopping_) {
        // Blocks until a client connects. While we are inside serve() below, new
        // clients are not refused: the kernel completes their handshake and queues
        // them (the listen backlog) until we come back here.
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (!client) {
            if (stopping_) break;
            const int err = iocp::last_socket_error();
            std::cerr << "ch01: accept failed: " << iocp::error_text(err) << "\n";
            // Out of descriptors or memory: an immediate retry fails the same way and
            // spins a core. Pause; the backlog keeps the waiting clients meanwhile.
            if (iocp::is_resource_exhaustion(err)) std::this_thread::sleep_for(kAcceptBackoff);
            // E.g. a client that reset while still in the backlog: only it is lost.
            continue;
        }
        if (stopping_) break;  // the wake-up connection from stop()
        serve(client.get());
    }
}
//! [accept-loop]

void EchoServer::serve(iocp::socket_t client) {
    {
        std::lock_guard lock(mutex_);
        // stop() sets stopping_ before it takes this lock. If it already looked for a
        // client to wake and found none, nobody would wake us in recv(): leave now.
        if (stopping_) return;
        current_ = client;
    }
    ++live_;
    //! [echo-loop]
    char buffer[kBufferSize];
    for (;;) {
        const auto n = ::recv(client, buffer, static_cast<int>(sizeof buffer), 0);
        // 0 is the end of the stream: the client sent FIN, and everything it sent has
        // been echoed. (On Linux, stop()'s shutdown() also wakes us with a 0.)
        if (n == 0) break;
        if (n < 0) {
            const int err = iocp::last_socket_error();
            if (!stopping_ && !iocp::is_disconnect_error(err))
                std::cerr << "ch01: recv failed: " << iocp::error_text(err) << "\n";
            // A reset, or (on Windows) stop() cancelled the call: this client is done.
            break;
        }
        // recv() returns what has arrived so far, which may be part of what the
        // client sent, or several of its sends run together. TCP is a byte stream.
        // Echo exactly those n bytes; send_all loops until all of them went out.
        if (iocp::send_all(client, buffer, static_cast<std::size_t>(n)) != iocp::SendResult::kSent)
            break;
    }
    //! [echo-loop]
    {
        std::lock_guard lock(mutex_);
        current_ = iocp::kInvalidSocket;
    }
    --live_;
    ++served_;
}  // the caller's UniqueSocket closes the client socket

//! [stop]
void EchoServer::stop() {
    if (!thread_.joinable()) return;
    stopping_ = true;
    {
        // A thread blocked in recv() or send() for the current client wakes up...
        std::lock_guard lock(mutex_);
        if (current_ != iocp::kInvalidSocket) iocp::interrupt_blocking_io(current_);
    }
    // ...and one blocked in accept() gets a connection to return.
    iocp::poke_listener(listener_.get());
    thread_.join();
    listener_.reset();  // clients still waiting in the backlog see the connection reset
}
//! [stop]

}  // namespace ch01
