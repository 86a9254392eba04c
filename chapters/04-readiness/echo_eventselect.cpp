// Chapter 4, Windows twin - WSAEventSelect + WSAWaitForMultipleEvents.
// See echo_server.h and docs/pages/ch04.md. The Linux twin is echo_epoll.cpp.
//
// The shape: one thread accepts; every accepted socket gets its own event object,
// which Winsock sets whenever one of the socket's network events (FD_READ, FD_WRITE,
// FD_CLOSE) is recorded; groups of up to 63 sockets each have a thread that waits on
// their events (plus its own wake-up event: 64, the most one wait can take).
#include "echo_server.h"

#include <initializer_list>
#include <iostream>
#include <utility>
#include <system_error>

namespace ch04 {

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;
constexpr int kMaxRoundsPerTurn = 16;   // echo rounds for one client before the others' turn
constexpr DWORD kAcceptBackoffMs = 100;  // after accept() ran out of sockets or memory
// A safety net for Wine 8, which runs on Windows too: after 250 ms without a signal the
// accepting thread tries one accept() anyway. Windows re-enables FD_ACCEPT on any
// accept() call, even a failed one (WSAEventSelect's page); Wine clears its "reported"
// mark only on a successful one (its server/sock.c, accept_socket()), so there a queued
// client may never set the event. On Windows the net costs four wake-ups a second of an
// idle server, each an accept() that finds nobody (WSAEWOULDBLOCK), and nothing else.
constexpr DWORD kAcceptSafetyNetMs = 250;

using Connection = EchoServer::Connection;

// ---------------------------------------------------------------------------------------
// Moving bytes: the same three functions as in echo_epoll.cpp. Readiness is a hint
// ("a recv would probably not block now"), so each call still handles WSAEWOULDBLOCK.

enum class Read { kData, kWouldBlock, kEof, kFailed };

//! [read]
Read read_some(Connection& c) {
    char buffer[kReadChunk];
    const int n = ::recv(c.socket.get(), buffer, static_cast<int>(sizeof buffer), 0);
    if (n > 0) {
        c.pending.append(buffer, static_cast<std::size_t>(n));
        return Read::kData;
    }
    if (n == 0) return Read::kEof;
    const int err = iocp::last_socket_error();
    if (iocp::is_would_block(err)) return Read::kWouldBlock;
    if (!iocp::is_disconnect_error(err)) std::cerr << "ch04: recv failed: " << iocp::error_text(err) << "\n";
    return Read::kFailed;
}
//! [read]

//! [flush]
// false: close this connection. Leaves c.pending non-empty only after a send that
// would have blocked, which is exactly what makes Winsock record FD_WRITE later.
bool flush(Connection& c) {
    while (!c.pending.empty()) {
        const int n = ::send(c.socket.get(), c.pending.data(), static_cast<int>(c.pending.size()), 0);
        if (n < 0) {
            const int err = iocp::last_socket_error();
            if (iocp::is_would_block(err)) return true;
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
// When it returns true, the next wake-up is already arranged by Winsock's own rules
// (WSAEventSelect's page): a send that would have blocked re-enables FD_WRITE, which
// comes when there is room; and every recv() re-enables FD_READ, which is
// level-triggered, so it is recorded again at once if bytes are still waiting. That is
// why Microsoft calls one recv() per FD_READ "appropriate", and why stopping after
// kMaxRoundsPerTurn rounds loses nothing. The end of a connection is FD_CLOSE, which is
// "posted after all data is read from a socket", so it too is still to come.
bool pump(Connection& c) {
    for (int round = 0;; ++round) {
        if (!flush(c)) return false;
        if (!c.pending.empty()) return true;    // the client reads slowly: stop reading (flow control)
        if (c.peer_done) return false;          // FIN came and everything is echoed: close
        if (round == kMaxRoundsPerTurn) {       // fairness: the other sockets get a turn
            // Belt and braces: the rules above already promise another FD_READ or
            // FD_CLOSE for this socket. Setting its event costs one extra wake-up, and
            // it brings us back here even if an implementation were to get them wrong.
            WSASetEvent(c.event.get());
            return true;
        }
        switch (read_some(c)) {
            case Read::kData: break;
            case Read::kWouldBlock: return true;
            case Read::kEof: c.peer_done = true; break;
            case Read::kFailed: return false;
        }
    }
}
//! [pump]

// The index of the first signalled event at or after `from`, or events.size().
// WSAWaitForMultipleEvents reports only the LOWEST signalled index (its documented
// return value); a server that served only that one would let a busy socket in slot 1
// starve the rest. So after each one we wait again, with a zero timeout, on the
// events after it.
//! [next-signalled]
std::size_t next_signalled(const std::vector<WSAEVENT>& events, std::size_t from) {
    if (from >= events.size()) return events.size();
    const auto count = static_cast<DWORD>(events.size() - from);
    const DWORD rc = WSAWaitForMultipleEvents(count, events.data() + from, FALSE, 0, FALSE);
    const DWORD index = rc - WSA_WAIT_EVENT_0;  // WSA_WAIT_TIMEOUT/FAILED land past count
    return index < count ? from + index : events.size();
}
//! [next-signalled]

}  // namespace

// ---------------------------------------------------------------------------------------
// A group: up to 63 sockets and the one thread that waits for their events.

//! [group]
class EchoServer::Group {
public:
    explicit Group(EchoServer& server);
    ~Group() { stop(); }
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;

    bool has_room() const { return !gone_.load() && load_.load() < kSocketsPerGroup; }
    bool adopt(Connection& c);  // from the accepting thread; false (c untouched) if the group is gone
    void stop();

private:
    void run();
    bool on_network_events(Connection& c);  // false: close this connection
    void close_all(std::vector<Connection>& connections);

    EchoServer& server_;
    iocp::UniqueHandle wake_;           // slot 0 of every wait: new sockets, or stop
    std::mutex inbox_mutex_;
    std::vector<Connection> inbox_;     // handed over, not yet in connections_
    bool closed_ = false;               // under inbox_mutex_: the thread has left
    std::atomic<bool> gone_{false};     // closed_, readable without the lock (has_room)
    std::atomic<bool> leaving_{false};  // set by stop(): this group's own signal to leave
    std::atomic<std::size_t> load_{0};  // connections + inbox: how full, for the acceptor
    std::vector<Connection> connections_;  // the group's thread only
    std::thread thread_;                // last: starts once everything above exists
};
//! [group]

EchoServer::Group::Group(EchoServer& server) : server_(server), wake_(WSACreateEvent()) {
    if (!wake_) iocp::throw_socket_error("WSACreateEvent");
    thread_ = std::thread([this] { run(); });
}

//! [adopt-stop]
// From the accepting thread. closed_ is read under the lock the group's thread takes
// to set it on its way out, so a socket either lands in the inbox while the thread
// will still look there (and serve it, or close it as it leaves), or is refused and
// stays with the caller.
bool EchoServer::Group::adopt(Connection& c) {
    {
        std::lock_guard<std::mutex> lock(inbox_mutex_);
        if (closed_) return false;
        inbox_.push_back(std::move(c));
        ++load_;
    }
    WSASetEvent(wake_.get());
    return true;
}

void EchoServer::Group::stop() {
    if (!thread_.joinable()) return;
    leaving_ = true;
    WSASetEvent(wake_.get());  // the thread sees leaving_ and leaves
    thread_.join();
}
//! [adopt-stop]

//! [group-loop]
void EchoServer::Group::run() {
    std::vector<WSAEVENT> events;
    std::vector<bool> closing;
    while (!leaving_) {
        // Slot 0 is the wake-up event; slot i + 1 is connections_[i]'s event.
        events.assign(1, wake_.get());
        for (const Connection& c : connections_) events.push_back(c.event.get());
        const DWORD rc = WSAWaitForMultipleEvents(static_cast<DWORD>(events.size()), events.data(), FALSE,
                                                  WSA_INFINITE, FALSE);
        if (rc == WSA_WAIT_FAILED) {
            std::cerr << "ch04: WSAWaitForMultipleEvents failed: " << iocp::error_text(iocp::last_socket_error())
                      << "; closing this group's " << connections_.size() << " client(s)\n";
            break;
        }
        closing.assign(connections_.size(), false);
        const bool woken = rc == WSA_WAIT_EVENT_0;  // slot 0 is the lowest: reported first
        for (std::size_t i = rc - WSA_WAIT_EVENT_0; i < events.size(); i = next_signalled(events, i + 1)) {
            if (i == 0) continue;  // the wake-up event: handled below, after the sockets
            closing[i - 1] = !on_network_events(connections_[i - 1]);
        }
        // Closed connections leave (swapped to the back: order does not matter here).
        for (std::size_t i = connections_.size(); i-- > 0;) {
            if (!closing[i]) continue;
            std::swap(connections_[i], connections_.back());
            connections_.pop_back();  // closes the socket (the client sees FIN), then its event
            --load_;
            server_.close_connection();
        }
        if (!woken) continue;
        WSAResetEvent(wake_.get());  // manual-reset: reset before looking, so no hand-over is missed
        std::lock_guard<std::mutex> lock(inbox_mutex_);
        for (Connection& c : inbox_) connections_.push_back(std::move(c));
        inbox_.clear();
    }
    std::vector<Connection> leftovers;
    {
        std::lock_guard<std::mutex> lock(inbox_mutex_);
        closed_ = true;
        gone_ = true;
        leftovers.swap(inbox_);
    }
    close_all(connections_);
    close_all(leftovers);
}
//! [group-loop]

void EchoServer::Group::close_all(std::vector<Connection>& connections) {
    load_ -= connections.size();
    server_.live_ -= connections.size();
    connections.clear();  // every client sees its connection end
}

//! [network-events]
bool EchoServer::Group::on_network_events(Connection& c) {
    // Which events were recorded since the last call; this also resets the event
    // object (it is manual-reset), atomically with reading the record.
    WSANETWORKEVENTS happened{};
    if (WSAEnumNetworkEvents(c.socket.get(), c.event.get(), &happened) != 0) {
        std::cerr << "ch04: WSAEnumNetworkEvents failed: " << iocp::error_text(iocp::last_socket_error()) << "\n";
        return false;
    }
    // FD_CLOSE with an error is a reset or an abort: nothing more will come, and
    // nothing we send would arrive. With error 0 it is the client's FIN. Winsock posts
    // it after all data has been read, and still tells programs to "check for remaining
    // data upon receipt of FD_CLOSE" (WSAEventSelect's page), so it is handled like
    // FD_READ: pump() reads until recv() returns 0, then echoes the rest and closes.
    for (const int bit : {FD_READ_BIT, FD_WRITE_BIT, FD_CLOSE_BIT}) {
        const int err = happened.iErrorCode[bit];
        if ((happened.lNetworkEvents & (1L << bit)) && err != 0) {
            if (!iocp::is_disconnect_error(err)) std::cerr << "ch04: network event error: " << iocp::error_text(err) << "\n";
            return false;
        }
    }
    // FD_READ, FD_WRITE or a clean FD_CLOSE: the same thing to do for each.
    return pump(c);
}
//! [network-events]

// ---------------------------------------------------------------------------------------
// The server: a listener, a thread that accepts, and the groups.

EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {}

EchoServer::~EchoServer() {
    stop();
    listener_.reset();  // before accept_event_, even when start() failed half-way
}

//! [start]
void EchoServer::start() {
    listener_ = iocp::listen_tcp(where_);
    port_ = iocp::local_port(listener_.get());
    accept_event_.reset(WSACreateEvent());
    stop_event_.reset(WSACreateEvent());
    if (!accept_event_ || !stop_event_) iocp::throw_socket_error("WSACreateEvent");
    // From here on the listener is non-blocking, and FD_ACCEPT sets accept_event_
    // whenever a connection is waiting to be accepted.
    if (WSAEventSelect(listener_.get(), accept_event_.get(), FD_ACCEPT) != 0)
        iocp::throw_socket_error("WSAEventSelect(listener)");
    acceptor_ = std::thread([this] { accept_loop(); });
}
//! [start]

//! [accept-loop]
void EchoServer::accept_loop() {
    const WSAEVENT waits[2] = {stop_event_.get(), accept_event_.get()};
    while (!stopping_) {
        const DWORD rc = WSAWaitForMultipleEvents(2, waits, FALSE, kAcceptSafetyNetMs, FALSE);
        if (rc == WSA_WAIT_FAILED) {
            std::cerr << "ch04: WSAWaitForMultipleEvents failed: " << iocp::error_text(iocp::last_socket_error())
                      << "; no longer accepting\n";
            return;
        }
        if (rc == WSA_WAIT_EVENT_0 || stopping_) return;  // stop()
        // Read and clear the listener's record of network events; this also resets
        // accept_event_ (WSAEnumNetworkEvents, not WSAResetEvent, is the documented
        // way: the record and the event are reset together). After a timeout there is
        // nothing to read: we try one accept() anyway (kAcceptSafetyNetMs, for Wine).
        WSANETWORKEVENTS happened{};
        if (rc != WSA_WAIT_TIMEOUT && WSAEnumNetworkEvents(listener_.get(), accept_event_.get(), &happened) != 0) {
            std::cerr << "ch04: WSAEnumNetworkEvents(listener) failed: "
                      << iocp::error_text(iocp::last_socket_error()) << "; no longer accepting\n";
            return;
        }
        // One client per signal. FD_ACCEPT is level-triggered: accept() re-enables it,
        // and if more clients are queued the event is set again at once, so none is
        // left behind (WSAEventSelect's page).
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (!client) {
            const int err = iocp::last_socket_error();
            if (iocp::is_would_block(err) || iocp::is_disconnect_error(err)) continue;  // gone already
            std::cerr << "ch04: accept failed: " << iocp::error_text(err) << "\n";
            if (iocp::is_resource_exhaustion(err))
                WaitForSingleObject(stop_event_.get(), kAcceptBackoffMs);  // pause, unless stopping
            continue;
        }
        hand_over(std::move(client));
    }
}
//! [accept-loop]

//! [hand-over]
bool EchoServer::hand_over(iocp::UniqueSocket client) {
    const auto refuse = [&](const std::string& why) {
        ++refused_;
        std::cerr << "ch04: refusing " << iocp::peer_address(client.get()) << ": " << why << "\n";
        client.reset();  // now: before c.event (a local) is closed, never after
        return false;    // EOF for the client (a reset if it had sent bytes already)
    };
    if (live_.load() >= limits_.max_clients)
        return refuse("at the --max-clients cap of " + std::to_string(limits_.max_clients));
    Connection c;
    c.event.reset(WSACreateEvent());
    if (!c.event) return refuse("WSACreateEvent: " + iocp::error_text(iocp::last_socket_error()));
    // The accepted socket inherited the listener's WSAEventSelect (FD_ACCEPT on
    // accept_event_, and non-blocking mode). Selecting again replaces that.
    if (WSAEventSelect(client.get(), c.event.get(), FD_READ | FD_WRITE | FD_CLOSE) != 0)
        return refuse("WSAEventSelect: " + iocp::error_text(iocp::last_socket_error()));
    c.socket = std::move(client);
    ++live_;
    for (auto& group : groups_)
        if (group->has_room() && group->adopt(c)) return true;
    try {  // every group is full: one more group, one more thread
        auto group = std::make_unique<Group>(*this);
        std::lock_guard<std::mutex> lock(groups_mutex_);
        groups_.push_back(std::move(group));
    } catch (const std::exception& e) {  // no thread or no event: this client is refused
        --live_;
        client = std::move(c.socket);
        return refuse(std::string("no new group: ") + e.what());
    }
    if (groups_.back()->adopt(c)) return true;
    --live_;  // the new group's thread has already failed (it logged why)
    client = std::move(c.socket);
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
    WSASetEvent(stop_event_.get());
    acceptor_.join();  // no more hand-overs from here on
    for (auto& group : groups_) group->stop();  // each closes its clients and leaves
    {
        std::lock_guard<std::mutex> lock(groups_mutex_);
        groups_.clear();
    }
    listener_.reset();
    accept_event_.reset();
    stop_event_.reset();
}
//! [stop]

}  // namespace ch04
