// Chapter 6 - completion routines and alertable waits. See echo_server.h and docs/pages/ch06.md.
//
// Every Win32 fact below was checked against Microsoft's documentation; the page named
// in each comment is where it is written down.
#include "echo_server.h"

#include <cstddef>
#include <exception>
#include <iostream>
#include <iterator>
#include <string>
#include <type_traits>
#include <utility>

namespace ch06 {

namespace {

constexpr std::chrono::milliseconds kAcceptBackoff{100};
constexpr std::chrono::milliseconds kDrainLimit{10000};
// How long the loop goes without an accept() call before it tries one even though
// FD_ACCEPT was not signalled: a safety net for Wine 8, which runs on Windows too.
// Windows re-enables FD_ACCEPT after any accept() call, even a failed one
// (WSAEventSelect, Remarks). Wine clears its "reported" mark for FD_ACCEPT only on a
// successful accept() (its server/sock.c, accept_socket()), so after a stale "listener
// readable" notice it can stop setting accept_event_ for good, with clients waiting.
// On Windows the net costs one accept() that finds nobody (WSAEWOULDBLOCK) per 250 ms.
constexpr std::chrono::milliseconds kAcceptRecheck{250};

std::string win32_error(const char* call, DWORD code) {
    return std::string(call) + " failed: " + std::to_string(code) + " " + iocp::error_text(static_cast<int>(code));
}

}  // namespace

// The routine receives a pointer to our WSAOVERLAPPED and nothing else of ours. Since it
// is the first member of a standard-layout struct, that pointer is also a pointer to the
// whole IoContext (Microsoft's samples do the same with CONTAINING_RECORD).
static_assert(std::is_standard_layout_v<WSAOVERLAPPED>);

EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    static_assert(std::is_standard_layout_v<IoContext> && offsetof(IoContext, overlapped) == 0,
                  "the routine turns &overlapped back into the IoContext");
    if (limits_.buffer_size == 0) limits_.buffer_size = 1;
}

EchoServer::~EchoServer() { stop(); }

//! [start]
void EchoServer::start() {
    stop_event_.reset(CreateEventW(nullptr, TRUE, FALSE, nullptr));  // manual reset: stays set
    if (!stop_event_) iocp::throw_last_error("CreateEvent");
    accept_event_.reset(WSACreateEvent());
    if (!accept_event_) iocp::throw_socket_error("WSACreateEvent");
    listener_ = iocp::listen_tcp(where_);
    // FD_ACCEPT sets accept_event_ whenever a client waits in the backlog; it also makes
    // the listener non-blocking (WSAEventSelect, Remarks), so accept() never waits.
    if (WSAEventSelect(listener_.get(), accept_event_.get(), FD_ACCEPT) != 0)
        iocp::throw_socket_error("WSAEventSelect(listener)");
    port_ = iocp::local_port(listener_.get());
    thread_ = std::thread([this] { loop(); });
}
//! [start]

//! [loop]
void EchoServer::loop() {
    using Clock = std::chrono::steady_clock;
    io_thread_ = GetCurrentThreadId();  // every WSARecv/WSASend is issued by this thread
    // When to try accept() even though FD_ACCEPT was not signalled (kAcceptRecheck). A
    // deadline, not a fresh timeout for every wait: on a busy server a routine ends
    // nearly every wait early, and a timeout restarted each time would never expire.
    auto recheck_at = Clock::now() + kAcceptRecheck;
    for (;;) {
        // Two handles, however many clients: a routine needs no handle at all. While
        // accept() is out of resources the listener sits out (its event would stay set).
        const auto now = Clock::now();
        const bool accepting = now >= accept_paused_until_;
        const auto wake_at = accepting ? recheck_at : accept_paused_until_;
        const WSAEVENT events[2] = {stop_event_.get(), accept_event_.get()};
        const DWORD timeout = wake_at <= now ? 0 : static_cast<DWORD>(
            std::chrono::ceil<std::chrono::milliseconds>(wake_at - now).count());
        // fAlertable = TRUE: the routines queued to this thread run here, inside this
        // call, which then returns WSA_WAIT_IO_COMPLETION (WSAWaitForMultipleEvents,
        // fAlertable); they have done their work by then. Whatever else the call
        // returns, routines still queued run at the next turn's wait.
        const DWORD rc = WSAWaitForMultipleEvents(accepting ? 2 : 1, events, FALSE, timeout, TRUE);
        if (rc == WSA_WAIT_EVENT_0) break;  // stop()
        if (rc == WSA_WAIT_FAILED) {
            std::cerr << "ch06: " << win32_error("WSAWaitForMultipleEvents", static_cast<DWORD>(WSAGetLastError())) << "\n";
            break;
        }
        // Routines ran, FD_ACCEPT was signalled, or the wait timed out. Accept on the
        // signal, and also whenever recheck_at has passed, whatever ended the wait.
        const bool signalled = rc == WSA_WAIT_EVENT_0 + 1;
        const auto after = Clock::now();
        if (after >= accept_paused_until_ && (signalled || after >= recheck_at)) {
            if (!signalled) ++accept_rechecks_;
            accept_clients();
            recheck_at = Clock::now() + kAcceptRecheck;
        }
    }
    drain();
}
//! [loop]

//! [accept]
void EchoServer::accept_clients() {
    WSANETWORKEVENTS happened{};  // also resets accept_event_ (WSAEnumNetworkEvents)
    if (WSAEnumNetworkEvents(listener_.get(), accept_event_.get(), &happened) != 0)
        std::cerr << "ch06: " << win32_error("WSAEnumNetworkEvents", static_cast<DWORD>(WSAGetLastError())) << "\n";
    for (;;) {
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (!client) {
            const int err = iocp::last_socket_error();
            if (iocp::is_would_block(err)) return;        // all taken
            if (iocp::is_disconnect_error(err)) continue;  // that one gave up while queued
            std::cerr << "ch06: accept failed: " << iocp::error_text(err) << "\n";
            if (iocp::is_resource_exhaustion(err))
                accept_paused_until_ = std::chrono::steady_clock::now() + kAcceptBackoff;
            return;
        }
        if (connections_.size() >= limits_.max_clients) {
            ++refused_;
            std::cerr << "ch06: refusing " << iocp::peer_address(client.get()) << ": at the --max-clients cap of "
                      << limits_.max_clients << "\n";
            continue;  // closed here: the client sees EOF
        }
        // The accepted socket inherits the listener's WSAEventSelect association and so
        // is non-blocking too (accept, Remarks; WSAEventSelect, Remarks). Overlapped
        // calls do not need either: cancel the association (lNetworkEvents 0) and put
        // the socket back in blocking mode, which that cancellation must come before.
        if (WSAEventSelect(client.get(), nullptr, 0) != 0) {
            std::cerr << "ch06: " << win32_error("WSAEventSelect(client, 0)", static_cast<DWORD>(WSAGetLastError())) << "\n";
            continue;
        }
        Connection* c = nullptr;
        try {
            iocp::set_nonblocking(client.get(), false);
            c = &connections_.emplace_back();
            c->buffer.resize(limits_.buffer_size);
        } catch (const std::exception& e) {
            if (c) connections_.pop_back();
            std::cerr << "ch06: dropping a new client: " << e.what() << "\n";
            continue;
        }
        c->self = std::prev(connections_.end());
        c->socket = std::move(client);
        c->io.connection = c;
        ++live_;
        post_recv(*c);
    }
}
//! [accept]

//! [post-recv]
void EchoServer::post_recv(Connection& c) {
    c.io.overlapped = WSAOVERLAPPED{};
    // With a completion routine Winsock ignores hEvent, and the application may use it
    // to carry context (WSARecv, lpOverlapped; WSAOVERLAPPED, hEvent). The routine is a
    // plain function; this is how it finds the server.
    c.io.overlapped.hEvent = this;
    c.io.op = Op::kRecv;
    // The WSABUF may live on the stack: Winsock captures it before WSARecv returns
    // (WSARecv, Remarks). The bytes it points to are another matter: c.buffer is the
    // kernel's until the routine runs.
    WSABUF buf{static_cast<ULONG>(c.buffer.size()), c.buffer.data()};
    DWORD flags = 0;
    c.pending = true;
    ++in_flight_;
    if (WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.io.overlapped, &EchoServer::on_completion) != 0) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {  // not started: no routine will run for it
            c.pending = false;
            --in_flight_;
            if (!iocp::is_disconnect_error(err)) std::cerr << "ch06: WSARecv failed: " << iocp::error_text(err) << "\n";
            free_connection(c);
        }
    }
    // 0 (done already) or WSA_IO_PENDING: either way the routine has been or will be
    // queued to this thread, and runs at its next alertable wait (WSARecv, Return value).
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    c.io.overlapped = WSAOVERLAPPED{};
    c.io.overlapped.hEvent = this;
    c.io.op = Op::kSend;
    WSABUF buf{static_cast<ULONG>(c.filled - c.sent), c.buffer.data() + c.sent};
    c.pending = true;
    ++in_flight_;
    if (WSASend(c.socket.get(), &buf, 1, nullptr, 0, &c.io.overlapped, &EchoServer::on_completion) != 0) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            c.pending = false;
            --in_flight_;
            if (!iocp::is_disconnect_error(err)) std::cerr << "ch06: WSASend failed: " << iocp::error_text(err) << "\n";
            free_connection(c);
        }
    }
}
//! [post-send]

//! [routine]
// A completion routine: the kernel queued it as an APC to the thread that issued the
// I/O, which runs it inside its next alertable wait (Alertable I/O: the result goes
// "only to the thread that initiated it"). So this always runs on the I/O thread,
// between two of its waits; no lock is needed. Nothing in here may wait alertably
// (SleepEx(..., TRUE) and the like): that wait would run the other queued routines
// inside this one, with this connection half-updated.
void CALLBACK EchoServer::on_completion(DWORD error, DWORD bytes, LPWSAOVERLAPPED overlapped, DWORD /*flags*/) {
    auto* server = static_cast<EchoServer*>(overlapped->hEvent);
    auto* io = reinterpret_cast<IoContext*>(overlapped);  // overlapped is its first member
    server->complete(*io->connection, error, bytes);
}

void EchoServer::complete(Connection& c, DWORD error, DWORD bytes) {
    ++routines_run_;
    if (GetCurrentThreadId() != io_thread_.load()) ++routines_elsewhere_;  // never, says the APC rule
    // From here on the kernel is done with c.io and c.buffer (LPWSAOVERLAPPED_COMPLETION_ROUTINE).
    c.pending = false;
    --in_flight_;
    if (error == WSA_OPERATION_ABORTED) ++routines_cancelled_;
    if (c.closing) {  // we cancelled it; this was the last thing holding the connection
        free_connection(c);
        return;
    }
    if (error != 0) {  // a reset arrives as WSAECONNRESET here
        if (!iocp::is_disconnect_error(static_cast<int>(error)))
            std::cerr << "ch06: " << win32_error(c.io.op == Op::kRecv ? "WSARecv (routine)" : "WSASend (routine)", error)
                      << "\n";
        free_connection(c);
        return;
    }
    if (c.io.op == Op::kRecv) {
        if (bytes == 0) {  // FIN. Nothing is owed: we never read while an echo is going out
            free_connection(c);
            return;
        }
        c.filled = bytes;
        c.sent = 0;
        post_send(c);
        return;
    }
    if (bytes == 0) {  // a send that moved nothing would loop forever
        std::cerr << "ch06: WSASend completed with 0 bytes; closing\n";
        free_connection(c);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.filled) {
        post_send(c);  // short send: send the rest
    } else {
        post_recv(c);  // all echoed: read again
    }
}
//! [routine]

//! [close]
void EchoServer::close_connection(Connection& c) {
    if (c.closing) return;
    c.closing = true;
    if (!c.pending) {
        free_connection(c);
        return;
    }
    // The kernel still owns c.io and c.buffer. Cancel the operation and free nothing:
    // its routine runs with WSA_OPERATION_ABORTED (995) at a later alertable wait on
    // this thread, and frees the connection (CancelIoEx). ERROR_NOT_FOUND means it
    // completed already and its routine is queued: same outcome.
    if (!CancelIoEx(reinterpret_cast<HANDLE>(c.socket.get()), &c.io.overlapped)) {
        const DWORD err = GetLastError();
        if (err != ERROR_NOT_FOUND) {
            std::cerr << "ch06: " << win32_error("CancelIoEx", err) << "; closing the socket instead\n";
            // closesocket cancels it too, and the routine still runs (closesocket,
            // Remarks), with 995 on Windows; Wine 8 reports 10022 (WSAEINVAL) there.
            c.socket.reset();
        }
    }
}

void EchoServer::free_connection(Connection& c) {
    // Only ever called with nothing in flight: the kernel is done with this memory.
    connections_.erase(c.self);  // UniqueSocket closes the socket: the client sees FIN
    --live_;
    ++served_;
}
//! [close]

//! [drain]
void EchoServer::drain() {
    for (auto it = connections_.begin(); it != connections_.end();) {
        Connection& c = *it++;  // advance first: close_connection may erase c
        close_connection(c);
    }
    // The cancelled operations' routines run only here, on this thread, and only while
    // it waits alertably. A thread that exited instead would never run them.
    const auto deadline = std::chrono::steady_clock::now() + kDrainLimit;
    while (in_flight_ > 0 && std::chrono::steady_clock::now() < deadline) SleepEx(100, TRUE);
    if (in_flight_ > 0) {
        // Freeing now would hand memory the kernel may still write to back to the heap.
        // Leaking it is the lesser evil; live_connections() stays non-zero and says so.
        std::cerr << "ch06: " << in_flight_.load() << " operation(s) still in flight after "
                  << kDrainLimit.count() << " ms; leaking their connections\n";
        auto* orphans = new std::list<Connection>;
        orphans->splice(orphans->end(), connections_);
    }
}
//! [drain]

//! [stop]
void EchoServer::stop() {
    if (!thread_.joinable()) return;
    SetEvent(stop_event_.get());  // the I/O thread's wait returns; it drains and exits
    thread_.join();
    listener_.reset();
    accept_event_.reset();
    stop_event_.reset();
}
//! [stop]

}  // namespace ch06
