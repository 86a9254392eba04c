// Chapter 5 - overlapped WSARecv/WSASend, an event per operation.
// See echo_server.h and docs/pages/ch05.md. Windows only: Linux has no twin here.
//
// The shape is chapter 4's: one thread accepts; groups of up to 63 connections each
// have a thread that waits on their events (plus its own wake-up event: 64, the most
// one wait can take). What changed is what an event means. In chapter 4 it said "this
// socket is ready, you may call recv() now". Here it says "the receive you started
// earlier is DONE: the bytes are already in your buffer". Read top to bottom: the
// operation record, starting an operation, collecting it, closing (cancel, then wait),
// the group's loop, and the server that accepts and hands sockets over.
#include "echo_server.h"

#include <chrono>
#include <iostream>
#include <new>
#include <string>
#include <utility>

namespace ch05 {

namespace {

constexpr std::chrono::milliseconds kAcceptBackoff{100};  // after accept() ran out of sockets or memory
constexpr std::size_t kMaxBufferSize = std::size_t{1} << 30;  // a WSABUF length is a ULONG

// "ch05: WSARecv failed: 10054 An existing connection was forcibly closed..."
void log_error(const char* call, int code) { std::cerr << "ch05: " << iocp::SystemError(call, code).what() << "\n"; }

// The index of the first signalled event at or after `from`, or events.size().
// WSAWaitForMultipleEvents reports only the LOWEST signalled index (its Remarks: it
// checks the handles in order from index 0); a server that served only that one would
// let a busy connection in slot 1 starve the rest. Microsoft's page stops there; the
// remedy is ours: wait again, with a zero timeout, on the events after the one
// reported. (The same helper as chapter 4's.)
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

//! [operation]
// One overlapped operation: everything the kernel may read or write between the call
// that starts it and the moment its completion is collected. The OVERLAPPED comes
// first, as in every per-I/O record from here on (chapter 7 gets from the OVERLAPPED
// the kernel hands back to the record around it).
struct Operation {
    WSAOVERLAPPED overlapped{};      // the kernel writes the status and byte count here
    iocp::UniqueHandle event;        // overlapped.hEvent: signalled when the operation completes
    WSABUF wsabuf{};                 // which bytes: a slice of buffer
    DWORD flags = 0;                 // WSARecv's in/out flags
    std::unique_ptr<char[]> buffer;  // the bytes themselves
    std::size_t capacity = 0;
    enum class Kind { kRecv, kSend } kind = Kind::kRecv;
    bool in_flight = false;          // the kernel's: from a started call until collected
};
//! [operation]

//! [connection]
// One client. An echo needs one operation at a time: receive, send back what came
// (posting the rest again after a partial send), receive again. No receive is posted
// while a send is pending, so a client that stops reading soon stops being read from:
// flow control comes with the shape of the loop. Connections live on the heap and are
// never moved or copied: the kernel holds the address of their Operation.
struct Connection {
    iocp::UniqueSocket socket;
    Operation op;
    std::size_t filled = 0;  // bytes the last receive put into op.buffer
    std::size_t sent = 0;    // how many of those have been sent back so far
};
//! [connection]

// ---------------------------------------------------------------------------------------
// A group: up to 63 connections and the one thread that waits for their operations.

//! [group]
// The thread that starts an operation is the thread that collects it, and it never
// leaves while one of its operations is in flight (Windows also cancels a thread's
// pending I/O when the thread exits, WSARecv's page says; we never rely on that).
class EchoServer::Group {
public:
    explicit Group(EchoServer& server);
    ~Group() { stop(); }
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;

    bool has_room() const { return load_.load() < kSocketsPerGroup; }
    bool adopt(iocp::UniqueSocket& client);  // from the accepting thread; false (client untouched) if gone
    void stop();

private:
    void run();
    void start_connection(iocp::UniqueSocket socket);
    bool post_recv(Connection& c);
    bool post_send(Connection& c);
    void begin(Operation& op, Operation::Kind kind, char* data, std::size_t len);
    bool started(Operation& op, int rc, const char* call);
    void finish(Operation& op);
    bool on_completion(Connection& c);  // false: close this connection
    bool close_connection(Connection& c);  // false: c must not be freed (see there)

    EchoServer& server_;
    iocp::UniqueHandle wake_;                   // slot 0 of every wait: new sockets, or stop
    std::mutex inbox_mutex_;
    std::vector<iocp::UniqueSocket> inbox_;     // handed over, not yet adopted by the thread
    bool closed_ = false;                       // under inbox_mutex_: the thread has left
    std::atomic<bool> leaving_{false};          // set by stop(): this group's own signal to leave
    std::atomic<std::size_t> load_{0};          // connections + inbox: how full, for the acceptor
    std::vector<std::unique_ptr<Connection>> connections_;  // the group's thread only
    std::thread thread_;                        // last: starts once everything above exists
};
//! [group]

EchoServer::Group::Group(EchoServer& server) : server_(server), wake_(WSACreateEvent()) {
    if (!wake_) iocp::throw_socket_error("WSACreateEvent");
    inbox_.reserve(kSocketsPerGroup);  // adopt() never allocates while holding the lock
    connections_.reserve(kSocketsPerGroup);
    thread_ = std::thread([this] { run(); });
}

bool EchoServer::Group::adopt(iocp::UniqueSocket& client) {
    {
        std::lock_guard<std::mutex> lock(inbox_mutex_);
        if (closed_) return false;
        inbox_.push_back(std::move(client));
        ++load_;
    }
    WSASetEvent(wake_.get());  // the group's thread posts the first receive itself
    return true;
}

// The group's own flag, not the server's stopping_: a group destroyed on its own (in
// hand_over(), when storing it throws) must make its thread leave too, or join for ever.
void EchoServer::Group::stop() {
    if (!thread_.joinable()) return;
    leaving_ = true;
    WSASetEvent(wake_.get());  // the thread sees leaving_, drains and leaves
    thread_.join();
}

//! [group-loop]
void EchoServer::Group::run() {
    std::vector<WSAEVENT> events;
    std::vector<bool> closing;
    std::vector<iocp::UniqueSocket> adopted;
    adopted.reserve(kSocketsPerGroup);  // swapped with inbox_: both keep room for a full group
    while (!leaving_) {
        // Slot 0 is the wake-up event; slot i + 1 is connections_[i]'s operation's event.
        events.assign(1, wake_.get());
        for (const auto& c : connections_) events.push_back(c->op.event.get());
        const DWORD rc = WSAWaitForMultipleEvents(static_cast<DWORD>(events.size()), events.data(), FALSE,
                                                  WSA_INFINITE, FALSE);
        if (rc == WSA_WAIT_FAILED) {
            log_error("WSAWaitForMultipleEvents", WSAGetLastError());
            break;
        }
        closing.assign(connections_.size(), false);
        for (std::size_t i = rc - WSA_WAIT_EVENT_0; i < events.size(); i = next_signalled(events, i + 1)) {
            if (i == 0) continue;  // the wake-up event: handled below, after the connections
            closing[i - 1] = !on_completion(*connections_[i - 1]);
        }
        for (std::size_t i = connections_.size(); i-- > 0;) {
            if (!closing[i]) continue;
            if (!close_connection(*connections_[i])) (void)connections_[i].release();  // see there
            std::swap(connections_[i], connections_.back());  // swaps pointers: no Connection moves
            connections_.pop_back();
        }
        WSAResetEvent(wake_.get());  // manual-reset: reset before looking, so no hand-over is missed
        {
            std::lock_guard<std::mutex> lock(inbox_mutex_);
            adopted.swap(inbox_);
        }
        for (auto& s : adopted) start_connection(std::move(s));
        adopted.clear();
    }
    // Stopping (or the wait failed): no operation may outlive this thread.
    {
        std::lock_guard<std::mutex> lock(inbox_mutex_);
        closed_ = true;
        adopted.swap(inbox_);
    }
    for (auto& c : connections_)
        if (!close_connection(*c)) (void)c.release();
    connections_.clear();
    for (auto& s : adopted) {
        s.reset();
        --load_;
        server_.close_connection();
    }
}
//! [group-loop]

//! [start-connection]
// On the group's thread: a handed-over socket gets its Connection, buffer and event,
// and its first receive. Whatever is missing, the client is closed at once.
void EchoServer::Group::start_connection(iocp::UniqueSocket socket) {
    std::unique_ptr<Connection> c;
    try {
        c = std::make_unique<Connection>();
        c->op.buffer = std::make_unique<char[]>(server_.limits_.buffer_size);
    } catch (const std::bad_alloc&) {
        std::cerr << "ch05: out of memory for a new connection; closing it\n";
        socket.reset();
        --load_;
        server_.close_connection();
        return;
    }
    c->socket = std::move(socket);
    c->op.capacity = server_.limits_.buffer_size;
    c->op.event.reset(WSACreateEvent());  // manual-reset, not signalled
    if (!c->op.event) {
        log_error("WSACreateEvent", WSAGetLastError());
        close_connection(*c);
        return;
    }
    connections_.push_back(std::move(c));  // reserved: never reallocates, never throws
    if (!post_recv(*connections_.back())) {
        if (!close_connection(*connections_.back())) (void)connections_.back().release();
        connections_.pop_back();
    }
}
//! [start-connection]

//! [post]
// Hands op to the kernel. From the call until on_completion() or close_connection()
// collects it, the OVERLAPPED, the WSABUF, the flags and the buffer are the kernel's:
// nothing may write them, move them or free them. (WSASend's page: "once the WSASend
// function is called, the system owns these buffers and the application may not access
// them"; WSARecv's: lpOverlapped "must be valid for the duration of the overlapped
// operation", and each outstanding operation needs "a separate WSAOVERLAPPED".)
void EchoServer::Group::begin(Operation& op, Operation::Kind kind, char* data, std::size_t len) {
    // The event is manual-reset and still signalled by the last completion. Reset it
    // before the call, never after: the operation may complete before the call returns.
    WSAResetEvent(op.event.get());
    op.overlapped = WSAOVERLAPPED{};  // a clean OVERLAPPED for every operation
    op.overlapped.hEvent = op.event.get();
    op.wsabuf.buf = data;
    op.wsabuf.len = static_cast<ULONG>(len);
    op.kind = kind;
    op.in_flight = true;
    ++server_.in_flight_;  // before the call, for the same reason
}

bool EchoServer::Group::post_recv(Connection& c) {
    Operation& op = c.op;
    begin(op, Operation::Kind::kRecv, op.buffer.get(), op.capacity);
    op.flags = 0;
    // lpNumberOfBytesRecvd is NULL, as WSARecv's page asks when lpOverlapped is not
    // ("to avoid potentially erroneous results"): the count comes from
    // WSAGetOverlappedResult, for an immediate completion as for a later one.
    const int rc = WSARecv(c.socket.get(), &op.wsabuf, 1, nullptr, &op.flags, &op.overlapped, nullptr);
    return started(op, rc, "WSARecv");
}

bool EchoServer::Group::post_send(Connection& c) {
    Operation& op = c.op;
    begin(op, Operation::Kind::kSend, op.buffer.get() + c.sent, c.filled - c.sent);
    const int rc = WSASend(c.socket.get(), &op.wsabuf, 1, nullptr, 0, &op.overlapped, nullptr);
    return started(op, rc, "WSASend");
}

// What the call returned (WSARecv's and WSASend's pages, "Return value"):
//   0               completed already. Its event is signalled all the same, and it is
//                   collected like any other: one path for both cases.
//   WSA_IO_PENDING  started, completes later: success, not an error.
//   anything else   never started, and "no completion indication will occur": the
//                   operation is ours again at once, and this connection is finished.
bool EchoServer::Group::started(Operation& op, int rc, const char* call) {
    if (rc == 0) {
        ++server_.at_once_;
        return true;
    }
    const int err = WSAGetLastError();
    if (err == WSA_IO_PENDING) return true;
    finish(op);
    if (!iocp::is_disconnect_error(err)) log_error(call, err);
    return false;
}

// begin()'s mirror: the operation has been collected (or never started), and the
// buffer and the OVERLAPPED are ours again.
void EchoServer::Group::finish(Operation& op) {
    op.in_flight = false;
    --server_.in_flight_;
}
//! [post]

//! [complete]
// op's event is signalled: collect the result, and with it the buffer and the OVERLAPPED.
bool EchoServer::Group::on_completion(Connection& c) {
    Operation& op = c.op;
    DWORD bytes = 0, flags = 0;
    // fWait FALSE: the event says it is done; WSA_IO_INCOMPLETE would say it is not.
    const BOOL ok = WSAGetOverlappedResult(c.socket.get(), &op.overlapped, &bytes, FALSE, &flags);
    const int err = ok ? 0 : WSAGetLastError();
    if (err == WSA_IO_INCOMPLETE) {
        // Signalled yet not complete: never seen, but nothing promises it cannot be.
        // The operation is still the kernel's, so close_connection() cancels and waits.
        log_error("WSAGetOverlappedResult after its event was signalled", err);
        return false;
    }
    finish(op);  // from here on, the buffer and the OVERLAPPED are ours again
    const bool recv = op.kind == Operation::Kind::kRecv;
    if (!ok) {  // a reset (10054) or an abort: this connection only
        if (!iocp::is_disconnect_error(err)) log_error(recv ? "WSARecv (completion)" : "WSASend (completion)", err);
        return false;
    }
    if (recv) {
        if (bytes == 0) return false;  // the client's FIN: everything before it is echoed already
        c.filled = bytes;
        c.sent = 0;
        return post_send(c);
    }
    if (bytes == 0) {  // a send that moved nothing would loop forever
        std::cerr << "ch05: WSASend completed with 0 bytes; closing\n";
        return false;
    }
    c.sent += bytes;
    if (c.sent < c.filled) return post_send(c);  // a partial send: post the rest
    return post_recv(c);
}
//! [complete]

//! [close]
// Closing with an operation in flight: cancel it, then WAIT until the kernel is done
// with it. CancelIoEx's page: it "does not wait for all canceled operations to
// complete", and the OVERLAPPED must not be freed or reused until they have. (Closing
// the socket cancels pending operations too, but closesocket's page warns not to assume
// they have completed when it returns.) Returns false if c must NOT be freed.
bool EchoServer::Group::close_connection(Connection& c) {
    Operation& op = c.op;
    if (op.in_flight) {
        if (CancelIoEx(reinterpret_cast<HANDLE>(c.socket.get()), &op.overlapped) ||
            GetLastError() == ERROR_NOT_FOUND) {  // ERROR_NOT_FOUND: it had completed already
            // fWait TRUE, allowed because the operation has an event (WSAGetOverlappedResult's
            // page). The result no longer matters: usually 995, ERROR_OPERATION_ABORTED.
            DWORD bytes = 0, flags = 0;
            WSAGetOverlappedResult(c.socket.get(), &op.overlapped, &bytes, TRUE, &flags);
        } else {
            log_error("CancelIoEx", static_cast<int>(GetLastError()));
            // closesocket cancels the socket's pending operations and still signals their
            // events (closesocket's page): close first, then wait on the event itself.
            c.socket.reset();
            WSAEVENT event = op.event.get();
            WSAWaitForMultipleEvents(1, &event, FALSE, WSA_INFINITE, FALSE);
        }
        // The kernel's own word, not ours: Internal leaves STATUS_PENDING only when the
        // operation is complete. If a wait above failed to wait, the kernel may still
        // write into op: leak the connection, loudly, rather than free what it owns.
        if (!HasOverlappedIoCompleted(&op.overlapped)) {
            std::cerr << "ch05: an operation is still pending after cancel and wait; "
                         "leaking its connection rather than freeing memory the kernel owns\n";
            c.socket.reset();
            return false;  // and it stays counted in operations_in_flight()
        }
        finish(op);
    }
    c.socket.reset();  // closesocket: the client sees FIN (RST if it sent bytes we never read)
    --load_;
    server_.close_connection();
    return true;
}
//! [close]

// ---------------------------------------------------------------------------------------
// The server: a listener, a thread that accepts, and the groups. Chapter 4's, nearly.

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
// Chapter 4 waits for FD_ACCEPT with WSAEventSelect instead; this chapter does not,
// for two reasons. Overlapped sockets want nothing from WSAEventSelect (and an
// accepted socket would inherit the listener's selection and non-blocking mode, to be
// undone before use). And under Wine 8 that event is now and then never set while a
// client waits in the backlog, when clients connect while the acceptor is busy
// accepting (1 client in 250 in about half our runs): that client would never be
// served. A blocking accept() cannot miss one.
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
