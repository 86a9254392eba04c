// Chapter 5 - overlapped WSARecv/WSASend, an event per operation: the server. A listener,
// a thread that accepts, and the groups it hands sockets to (chapter 4's, nearly).
// See echo_server.h and docs/pages/ch05.md. Windows only: Linux has no twin here.
//
// Files, in reading order: group.h (the operation record, the connection, the group),
// io.cpp (one operation's life), group.cpp (a group's thread and its wait loop), and this
// one (accept, hand over, stop).
#include "group.h"

#include <chrono>
#include <string>
#include <utility>

namespace ch05 {

namespace {

constexpr std::chrono::milliseconds kAcceptBackoff{100};  // after accept() ran out of sockets or memory
constexpr std::size_t kMaxBufferSize = std::size_t{1} << 30;  // a WSABUF length is a ULONG

}  // namespace

EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    if (limits_.buffer_size == 0) limits_.buffer_size = 1;
    if (limits_.buffer_size > kMaxBufferSize) limits_.buffer_size = kMaxBufferSize;
}

EchoServer::~EchoServer() { stop(); }

//! [start]
void EchoServer::start() {
    // Nothing special is needed for overlapped I/O: a socket made by socket() "will have
    // the overlapped attribute as a default" (socket's page), and accept() gives the
    // accepted socket the listener's attributes.
    listener_ = iocp::listen_tcp(where_);
    port_ = iocp::local_port(listener_.get());
    acceptor_ = std::thread([this] { accept_loop(); });
}
//! [start]

//! [accept-loop]
// Chapter 2's acceptor: a blocking accept(), woken for stop() by poke_listener().
// Chapter 4 waited for FD_ACCEPT with WSAEventSelect instead; this chapter does not.
// Overlapped sockets want nothing from WSAEventSelect, and an accepted socket would
// inherit the listener's selection and non-blocking mode (accept's and WSAEventSelect's
// pages), to be undone before its first WSARecv. A thread of its own costs one thread,
// and needs no timeout: a blocking accept() cannot miss a client. (It also keeps clear
// of Wine 8's lost FD_ACCEPT; see the Wine notes on the chapter page.)
void EchoServer::accept_loop() {
    while (!stopping_) {
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (!client) {
            if (stopping_) break;
            const int err = iocp::last_socket_error();
            if (iocp::is_disconnect_error(err)) continue;  // that one gave up already
            log_error("accept", err);
            // Out of sockets or memory: an immediate retry fails the same way and spins
            // a core. Pause; the backlog keeps the waiting clients meanwhile.
            if (iocp::is_resource_exhaustion(err)) std::this_thread::sleep_for(kAcceptBackoff);
            continue;
        }
        if (stopping_) break;
        hand_over(std::move(client));
    }
}
//! [accept-loop]

//! [hand-over]
bool EchoServer::hand_over(iocp::UniqueSocket client) {
    const auto refuse = [&](const std::string& why) {
        ++refused_;
        std::cerr << "ch05: refusing " << iocp::peer_address(client.get()) << ": " << why << "\n";
        return false;  // closed on return: EOF for the client (a reset if it had sent bytes already)
    };
    if (live_.load() >= limits_.max_clients)
        return refuse("at the --max-clients cap of " + std::to_string(limits_.max_clients));
    ++live_;  // before a group sees it: its close must never take the count below zero
    for (auto& group : groups_)
        if (group->has_room() && group->adopt(client)) return true;
    try {  // every group is full: one more group, one more thread
        auto group = std::make_unique<Group>(*this);
        std::lock_guard<std::mutex> lock(groups_mutex_);
        groups_.push_back(std::move(group));
    } catch (const std::exception& e) {  // no thread or no event: this client is refused
        --live_;
        return refuse(std::string("no new group: ") + e.what());
    }
    if (groups_.back()->adopt(client)) return true;
    --live_;  // the new group's thread has already failed (it logged why)
    return refuse("the new group is gone");
}
//! [hand-over]

void EchoServer::close_connection() {
    --live_;
    ++served_;
}

std::size_t EchoServer::waiting_threads() const {
    std::lock_guard<std::mutex> lock(groups_mutex_);
    return groups_.size();
}

//! [stop]
void EchoServer::stop() {
    if (!acceptor_.joinable()) return;
    stopping_ = true;
    // Wake accept(), as in chapter 2. poke_listener() connects once, which wakes it
    // with no race; should that connect fail, cancelling the blocked accept() wakes it
    // too (Windows reports WSAEINTR, Wine 995), and the listener is closed right after.
    iocp::poke_listener(listener_.get());
    CancelIoEx(reinterpret_cast<HANDLE>(listener_.get()), nullptr);
    acceptor_.join();  // no more hand-overs from here on
    listener_.reset();
    // Each group cancels its operations, waits for every one, closes its clients, leaves.
    for (auto& group : groups_) group->stop();
    std::lock_guard<std::mutex> lock(groups_mutex_);
    groups_.clear();
}
//! [stop]

}  // namespace ch05
