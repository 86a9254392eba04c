// Chapter 4, Linux twin - epoll, level-triggered, one thread.
// See echo_server.h and docs/pages/ch04.md. The Windows twin is echo_eventselect.cpp.
//
// The shape: one epoll instance holds the listener, an eventfd that stop() writes
// to, and every client. epoll_wait returns only the sockets that are ready, so the
// cost of a round follows the number of active clients, not of connected ones, and
// there is no FD_SETSIZE: a client is one more entry in a kernel table.
#include "echo_server.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>

namespace ch04 {

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;
constexpr int kMaxRoundsPerTurn = 16;   // echo rounds for one client before the others' turn
constexpr std::chrono::milliseconds kAcceptBackoff{100};  // after accept() ran out of descriptors or memory
constexpr int kMaxEvents = 256;         // readiness reports taken per epoll_wait
constexpr int kMaxAcceptsPerTurn = 64;  // a burst of connections must not starve the clients

using Connection = EchoServer::Connection;

// ---------------------------------------------------------------------------------------
// Moving bytes: the same three functions as in echo_eventselect.cpp. Readiness is a
// hint ("a recv would probably not block now"), so each call still handles EAGAIN.

enum class Read { kData, kWouldBlock, kEof, kFailed };

//! [read]
Read read_some(Connection& c) {
    char buffer[kReadChunk];
    const ssize_t n = ::recv(c.socket.get(), buffer, sizeof buffer, 0);
    if (n > 0) {
        c.pending.append(buffer, static_cast<std::size_t>(n));
        return Read::kData;
    }
    if (n == 0) return Read::kEof;
    const int err = iocp::last_socket_error();
    if (iocp::is_would_block(err) || err == EINTR) return Read::kWouldBlock;
    if (!iocp::is_disconnect_error(err)) std::cerr << "ch04: recv failed: " << iocp::error_text(err) << "\n";
    return Read::kFailed;
}
//! [read]

//! [flush]
// false: close this connection. Leaves c.pending non-empty only after a send that
// would have blocked; update_interest() then asks epoll for EPOLLOUT.
bool flush(Connection& c) {
    while (!c.pending.empty()) {
        // MSG_NOSIGNAL: a client that reset must not kill the server with SIGPIPE.
        const ssize_t n = ::send(c.socket.get(), c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
        if (n < 0) {
            const int err = iocp::last_socket_error();
            if (iocp::is_would_block(err) || err == EINTR) return true;
            if (!iocp::is_disconnect_error(err)) std::cerr << "ch04: send failed: " << iocp::error_text(err) << "\n";
            return false;
        }
        c.pending.erase(0, static_cast<std::size_t>(n));  // a partial send keeps the tail
    }
    return true;
}
//! [flush]

//! [pump]
// Echo what is pending, then read more, until one side would block. false: close.
// Level-triggered epoll reports a socket again for as long as it stays readable (or
// writable), so stopping early for fairness loses nothing: the rest is reported in
// the next round. (Edge-triggered would not; the chapter's page shows why.)
bool pump(Connection& c) {
    for (int round = 0;; ++round) {
        if (!flush(c)) return false;
        if (!c.pending.empty()) return true;    // the client reads slowly: stop reading (flow control)
        if (c.peer_done) return false;          // FIN came and everything is echoed: close
        if (round == kMaxRoundsPerTurn) return true;  // fairness: the other sockets get a turn
        switch (read_some(c)) {
            case Read::kData: break;
            case Read::kWouldBlock: return true;
            case Read::kEof: c.peer_done = true; break;
            case Read::kFailed: return false;
        }
    }
}
//! [pump]

// The epoll_event for a descriptor; data.fd tells the loop which one is ready.
epoll_event event_for(int fd, std::uint32_t interest) {
    epoll_event ev{};
    ev.events = interest;
    ev.data.fd = fd;
    return ev;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The server: one epoll instance and the thread that waits on it.

EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {}

EchoServer::~EchoServer() { stop(); }

//! [start]
void EchoServer::start() {
    listener_ = iocp::listen_tcp(where_);
    iocp::set_nonblocking(listener_.get(), true);  // accept() must never block the loop
    port_ = iocp::local_port(listener_.get());
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) iocp::throw_last_error("epoll_create1");
    wake_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!wake_) iocp::throw_last_error("eventfd");
    for (const int fd : {listener_.get(), wake_.get()}) {
        epoll_event ev = event_for(fd, EPOLLIN);
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) iocp::throw_last_error("epoll_ctl(ADD)");
    }
    thread_ = std::thread([this] { loop(); });
}
//! [start]

//! [loop]
void EchoServer::loop() {
    epoll_event ready[kMaxEvents];
    bool accepting = true;
    std::chrono::steady_clock::time_point resume_accepting{};
    while (!stopping_) {
        int timeout = -1;  // wait for ever, unless the listener is sitting out
        if (!accepting) {
            const auto left = std::chrono::ceil<std::chrono::milliseconds>(resume_accepting - std::chrono::steady_clock::now());
            if (left.count() <= 0) {  // the pause is over: watch the listener again
                epoll_event ev = event_for(listener_.get(), EPOLLIN);
                if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev) != 0) {
                    std::cerr << "ch04: epoll_ctl(MOD, listener) failed: " << iocp::error_text(errno)
                              << "; no longer accepting\n";
                }
                accepting = true;
            } else {
                timeout = static_cast<int>(left.count());
            }
        }
        const int n = ::epoll_wait(epoll_.get(), ready, kMaxEvents, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;  // a signal arrived; nothing is wrong
            std::cerr << "ch04: epoll_wait failed: " << iocp::error_text(errno) << "\n";
            break;
        }
        for (int i = 0; i < n; ++i) {
            const int fd = ready[i].data.fd;
            if (fd == wake_.get()) continue;  // stop(): the while condition sees it
            if (fd == listener_.get()) {
                if (!accept_clients()) {
                    accepting = false;
                    resume_accepting = std::chrono::steady_clock::now() + kAcceptBackoff;
                }
                continue;
            }
            // Each descriptor appears at most once per epoll_wait, and only this one
            // can be closed while handling it: the lookup never finds a stale entry.
            const auto it = connections_.find(fd);
            if (it == connections_.end()) continue;
            // EPOLLERR/EPOLLHUP come whatever the interest; recv()/send() will report
            // the error itself, so pump() is the one place that decides.
            if (!pump(it->second) || !update_interest(it->second)) {
                connections_.erase(it);  // closes the socket; epoll forgets it by itself
                close_connection();
            }
        }
    }
    // Stopping: every connection is closed; clients see the close.
    live_ -= connections_.size();
    connections_.clear();
}
//! [loop]

//! [accept-loop]
// Takes the clients waiting, up to 64 per report (level-triggered epoll reports the
// listener again while more wait, and the connected clients get their turn first).
// false: accept() ran out of descriptors or memory, and the listener must sit out for
// a moment (it stays readable, and epoll would report it again at once, for ever).
bool EchoServer::accept_clients() {
    for (int taken = 0; taken < kMaxAcceptsPerTurn; ++taken) {
        iocp::UniqueSocket client(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
        if (!client) {
            const int err = errno;
            if (iocp::is_would_block(err) || err == EINTR) return true;  // all taken
            if (iocp::is_disconnect_error(err)) continue;                  // that one gave up already
            std::cerr << "ch04: accept failed: " << iocp::error_text(err) << "\n";
            if (!iocp::is_resource_exhaustion(err)) return true;
            epoll_event ev = event_for(listener_.get(), 0);  // no interest: sit out
            ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
            return false;
        }
        if (connections_.size() >= limits_.max_clients) {
            ++refused_;
            std::cerr << "ch04: refusing " << iocp::peer_address(client.get()) << ": at the --max-clients cap of "
                      << limits_.max_clients << "\n";
            continue;  // closed here: EOF for the client (a reset if it had sent bytes already)
        }
        const int fd = client.get();
        Connection& c = connections_[fd];
        c.socket = std::move(client);
        c.interest = EPOLLIN;
        epoll_event ev = event_for(fd, c.interest);
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
            std::cerr << "ch04: epoll_ctl(ADD) failed: " << iocp::error_text(errno) << "\n";
            ++refused_;
            connections_.erase(fd);
            continue;
        }
        ++live_;
    }
    return true;
}
//! [accept-loop]

//! [interest]
// Level-triggered epoll reports what we ask for as long as it holds, so we ask only
// for what we can act on: readable while nothing waits to be echoed, writable while
// something does. (Watching EPOLLOUT all the time would wake the loop at once, for
// ever: a socket with room in its send buffer is always writable.)
bool EchoServer::update_interest(Connection& c) {
    const std::uint32_t want = c.pending.empty() ? EPOLLIN : EPOLLOUT;
    if (want == c.interest) return true;  // no system call when nothing changes
    epoll_event ev = event_for(c.socket.get(), want);
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.socket.get(), &ev) != 0) {
        std::cerr << "ch04: epoll_ctl(MOD) failed: " << iocp::error_text(errno) << "\n";
        return false;
    }
    c.interest = want;
    return true;
}
//! [interest]

void EchoServer::close_connection() {
    --live_;
    ++served_;
}

std::size_t EchoServer::waiting_threads() const { return thread_.joinable() ? 1 : 0; }

//! [stop]
void EchoServer::stop() {
    if (!thread_.joinable()) return;
    stopping_ = true;
    const std::uint64_t one = 1;
    if (::write(wake_.get(), &one, sizeof one) < 0)  // epoll_wait returns; the loop sees stopping_
        std::cerr << "ch04: write(eventfd) failed: " << iocp::error_text(errno) << "\n";
    thread_.join();
    listener_.reset();
    wake_.reset();
    epoll_.reset();
}
//! [stop]

}  // namespace ch04
