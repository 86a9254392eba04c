// Chapter 3 - non-blocking sockets and select(). See echo_server.h and docs/pages/ch03.md.
#include "echo_server.h"

#include <cerrno>
#include <chrono>
#include <stdexcept>
#include <string>
#include <iostream>

#ifndef _WIN32
#include <sys/select.h>
#endif

namespace ch03 {

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;
constexpr std::chrono::milliseconds kAcceptBackoff{100};

#ifdef MSG_NOSIGNAL
constexpr int kSendFlags = MSG_NOSIGNAL;
#else
constexpr int kSendFlags = 0;
#endif

//! [fits]
// Can select() watch this socket, with `clients` clients already watched?
bool fits_in_fd_set(iocp::socket_t s, std::size_t clients) {
#ifdef _WIN32
    (void)s;
    return clients < kSelectCapacity;  // a count: listener + waker + clients <= 64
#else
    (void)clients;
    return s < FD_SETSIZE;  // a bit index: FD_SET(1024, ...) would write past the set
#endif
}
//! [fits]

//! [waker]
// A UDP socket connected to itself: sending a byte to it makes it readable, which
// wakes select(). select() on Windows takes sockets only (no pipes, no events), so
// this is the one wake-up that works the same on both platforms.
iocp::UniqueSocket make_waker() {
    iocp::UniqueSocket s(::socket(AF_INET, SOCK_DGRAM, IPPROTO_UDP));
    if (!s) iocp::throw_socket_error("socket(UDP)");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) iocp::throw_socket_error("bind(waker)");
    addr.sin_port = htons(iocp::local_port(s.get()));
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        iocp::throw_socket_error("connect(waker)");
    iocp::set_nonblocking(s.get(), true);
    return s;
}
//! [waker]

}  // namespace

EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    if (limits_.max_clients > kSelectCapacity) limits_.max_clients = kSelectCapacity;
}

EchoServer::~EchoServer() { stop(); }

//! [start]
void EchoServer::start() {
    listener_ = iocp::listen_tcp(where_);
    iocp::set_nonblocking(listener_.get(), true);  // accept() must never block the loop
    port_ = iocp::local_port(listener_.get());
    waker_ = make_waker();
    // Both are watched in every round; on Linux that needs descriptor numbers below
    // FD_SETSIZE, which a process already holding ~1024 descriptors would not get.
    if (!fits_in_fd_set(listener_.get(), 0) || !fits_in_fd_set(waker_.get(), 0))
        throw std::runtime_error("ch03: descriptor beyond FD_SETSIZE; select() cannot watch the listener");
    thread_ = std::thread([this] { loop(); });
}
//! [start]

//! [loop]
void EchoServer::loop() {
    while (!stopping_) {
        // select() overwrites its sets, so they are rebuilt every round.
        fd_set readable, writable;
        FD_ZERO(&readable);
        FD_ZERO(&writable);
        // After accept() ran out of descriptors the listener sits out for a moment: it
        // stays readable, and watching it would make select() return at once, forever.
        const bool accepting = std::chrono::steady_clock::now() >= accept_paused_until_;
        if (accepting) FD_SET(listener_.get(), &readable);
        FD_SET(waker_.get(), &readable);
        iocp::socket_t highest = listener_.get() > waker_.get() ? listener_.get() : waker_.get();
        for (const Connection& c : connections_) {
            const iocp::socket_t s = c.socket.get();
            // Read only while there is room to keep what we read (flow control).
            if (!c.peer_done && c.pending.size() < limits_.max_pending) FD_SET(s, &readable);
            if (!c.pending.empty()) FD_SET(s, &writable);
            if (s > highest) highest = s;
        }
        // The first argument is ignored on Windows; elsewhere it is highest + 1.
        // No timeout (nullptr) unless the listener is sitting out.
        timeval pause{0, static_cast<long>(kAcceptBackoff.count() * 1000)};
        const int ready = ::select(static_cast<int>(highest + 1), &readable, &writable, nullptr,
                                   accepting ? nullptr : &pause);
        if (ready < 0) {
#ifndef _WIN32
            if (errno == EINTR) continue;  // a signal arrived; nothing is wrong
#endif
            std::cerr << "ch03: select failed: " << iocp::error_text(iocp::last_socket_error()) << "\n";
            break;
        }
        if (FD_ISSET(waker_.get(), &readable)) {
            char drain[16];
            while (::recv(waker_.get(), drain, sizeof drain, 0) > 0) {
            }
        }
        if (stopping_) break;
        if (accepting && FD_ISSET(listener_.get(), &readable)) accept_clients();
        for (auto it = connections_.begin(); it != connections_.end();) {
            Connection& c = *it;
            const iocp::socket_t s = c.socket.get();
            bool keep = true;
            if (FD_ISSET(s, &readable)) keep = on_readable(c);
            if (keep && FD_ISSET(s, &writable)) keep = flush(c);
            if (keep && c.peer_done && c.pending.empty()) keep = false;  // all echoed: close
            if (keep) {
                ++it;
            } else {
                it = connections_.erase(it);  // UniqueSocket closes it
                --live_;
                ++served_;
            }
        }
    }
    // Stopping: every connection is closed; clients see the close.
    live_ -= connections_.size();
    connections_.clear();
}
//! [loop]

//! [accept]
void EchoServer::accept_clients() {
    // The listener is non-blocking: take every client waiting, then go back to select().
    for (;;) {
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (!client) {
            const int err = iocp::last_socket_error();
            // All taken (would block), or one that gave up while queued: done for now.
            if (iocp::is_would_block(err) || iocp::is_disconnect_error(err)) return;
            std::cerr << "ch03: accept failed: " << iocp::error_text(err) << "\n";
            if (iocp::is_resource_exhaustion(err))
                accept_paused_until_ = std::chrono::steady_clock::now() + kAcceptBackoff;
            return;
        }
        const bool at_cap = connections_.size() >= limits_.max_clients;
        if (at_cap || !fits_in_fd_set(client.get(), connections_.size())) {
            ++refused_;
            std::cerr << "ch03: refusing " << iocp::peer_address(client.get()) << ": "
                      << (at_cap ? "at the --max-clients cap of " + std::to_string(limits_.max_clients)
                                 : "select() can watch no more (FD_SETSIZE " + std::to_string(FD_SETSIZE) + ")")
                      << "\n";
            // Closed here: EOF for the client (a reset if its bytes had arrived already).
            continue;
        }
        iocp::set_nonblocking(client.get(), true);
        connections_.push_back(Connection{std::move(client), {}, false});
        ++live_;
    }
}
//! [accept]

//! [read]
bool EchoServer::on_readable(Connection& c) {
    char buffer[kReadChunk];
    const std::size_t room = limits_.max_pending - c.pending.size();
    const auto n = ::recv(c.socket.get(), buffer, static_cast<iocp::io_size_t>(room < sizeof buffer ? room : sizeof buffer), 0);
    if (n == 0) {
        // FIN: no more input, but the echo of what came before it still goes out.
        c.peer_done = true;
        return true;
    }
    if (n < 0) {
        const int err = iocp::last_socket_error();
        if (iocp::is_would_block(err)) return true;  // readiness was only a hint
        if (!iocp::is_disconnect_error(err)) std::cerr << "ch03: recv failed: " << iocp::error_text(err) << "\n";
        return false;
    }
    c.pending.append(buffer, static_cast<std::size_t>(n));
    return flush(c);  // echo at once; what does not fit waits for writability
}
//! [read]

//! [flush]
bool EchoServer::flush(Connection& c) {
    while (!c.pending.empty()) {
        const auto n = ::send(c.socket.get(), c.pending.data(), static_cast<iocp::io_size_t>(c.pending.size()), kSendFlags);
        if (n < 0) {
            const int err = iocp::last_socket_error();
            // Send buffer full: the rest goes when select() says writable.
            if (iocp::is_would_block(err)) return true;
            if (!iocp::is_disconnect_error(err)) std::cerr << "ch03: send failed: " << iocp::error_text(err) << "\n";
            return false;
        }
        c.pending.erase(0, static_cast<std::size_t>(n));  // a partial send keeps the tail
    }
    return true;
}
//! [flush]

//! [stop]
void EchoServer::stop() {
    if (!thread_.joinable()) return;
    stopping_ = true;
    const char byte = 1;
    ::send(waker_.get(), &byte, 1, 0);  // select() returns; the loop sees stopping_
    thread_.join();
    listener_.reset();
    waker_.reset();
}
//! [stop]

}  // namespace ch03
