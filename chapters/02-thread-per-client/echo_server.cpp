// Chapter 2 - One thread per client. See echo_server.h and docs/pages/ch02.md.
#include "echo_server.h"

#include <chrono>
#include <iostream>
#include <system_error>

namespace ch02 {

namespace {
constexpr std::size_t kBufferSize = 16 * 1024;
constexpr std::chrono::milliseconds kAcceptBackoff{100};
}  // namespace

EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {}

EchoServer::~EchoServer() { stop(); }

void EchoServer::start() {
    listener_ = iocp::listen_tcp(where_);
    port_ = iocp::local_port(listener_.get());
    acceptor_ = std::thread([this] { accept_loop(); });
}

//! [accept-loop]
void EchoServer::accept_loop() {
    while (!stopping_) {
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (!client) {
            if (stopping_) break;
            const int err = iocp::last_socket_error();
            std::cerr << "ch02: accept failed: " << iocp::error_text(err) << "\n";
            // Out of descriptors or memory: an immediate retry fails the same way and
            // spins a core. Pause; the backlog keeps the waiting clients meanwhile.
            if (iocp::is_resource_exhaustion(err)) std::this_thread::sleep_for(kAcceptBackoff);
            continue;
        }
        if (stopping_) break;
        reap_finished();
        if (live_ >= limits_.max_clients) {
            // Refuse with an orderly close rather than let one more thread in.
            ++refused_;
            std::cerr << "ch02: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                      << limits_.max_clients << " clients (one thread each)\n";
            // Closed here: EOF for the client (a reset if its bytes had arrived already).
            continue;
        }
        std::lock_guard lock(mutex_);
        Session& session = sessions_.emplace_back();
        session.socket = std::move(client);
        ++live_;
        try {
            // The new thread gets a reference to its Session; std::list never moves it.
            session.thread = std::thread([this, &session] { serve(session); });
        } catch (const std::system_error& e) {
            // No thread to be had (memory for its stack, or a per-user thread limit).
            // That costs this one client, not the server.
            ++refused_;
            --live_;
            std::cerr << "ch02: refusing " << iocp::peer_address(session.socket.get()) << ": no thread for it: "
                      << e.what() << "\n";
            sessions_.pop_back();  // closes its socket
        }
    }
}
//! [accept-loop]

void EchoServer::serve(Session& session) {
    const iocp::socket_t client = session.socket.get();  // fixed for the session's life
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
                std::cerr << "ch02: recv failed: " << iocp::error_text(err) << "\n";
            // A reset, or (on Windows) stop() cancelled the call: this client is done.
            break;
        }
        if (iocp::send_all(client, buffer, static_cast<std::size_t>(n)) != iocp::SendResult::kSent) break;
    }
    //! [echo-loop]
    //! [session-end]
    // Close under the lock: stop() only touches sockets of sessions not yet finished,
    // so it can never interrupt a socket number that was closed and handed out again.
    std::lock_guard lock(mutex_);
    session.socket.reset();
    session.finished = true;
    --live_;
    ++served_;
    //! [session-end]
}

//! [reap]
void EchoServer::reap_finished() {
    // A thread that has ended still has to be joined, or its resources stay taken.
    std::list<Session> done;
    {
        std::lock_guard lock(mutex_);
        for (auto it = sessions_.begin(); it != sessions_.end();) {
            auto next = std::next(it);
            if (it->finished) done.splice(done.end(), sessions_, it);
            it = next;
        }
    }
    for (auto& s : done) s.thread.join();  // quick: each has already left serve()
}
//! [reap]

//! [stop]
void EchoServer::stop() {
    if (!acceptor_.joinable()) return;
    stopping_ = true;
    iocp::poke_listener(listener_.get());  // wake accept(), exactly as in chapter 1
    acceptor_.join();                      // from here on nobody adds a session
    listener_.reset();
    {
        std::lock_guard lock(mutex_);
        for (auto& s : sessions_)
            if (!s.finished) iocp::interrupt_blocking_io(s.socket.get());
    }
    // Join outside the lock: a session's last act takes the lock.
    for (auto& s : sessions_) s.thread.join();
    sessions_.clear();
}
//! [stop]

}  // namespace ch02
