// Chapter 7 - the completion port, Windows side. See echo_server.h and docs/pages/ch07.md.
// Its Linux twin is echo_uring.cpp: the functions this file has come there in the same
// order, so that `diff echo_iocp.cpp echo_uring.cpp` shows only what the OS changes.
#include "echo_server.h"

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>

namespace ch07 {

namespace {

// The exit packet's key. Every connection's key is its address, which is never 0.
constexpr ULONG_PTR kExitKey = 0;
constexpr std::chrono::milliseconds kAcceptBackoff{100};

// A call on our own port failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] void fatal(const char* call, DWORD error) {
    std::cerr << "ch07: " << call << " failed: " << error << " " << iocp::error_text(static_cast<int>(error))
              << "; cannot continue\n";
    std::abort();
}

// A call failed and the server goes on: say which, with the number and its text.
void report(const char* call, DWORD error) {
    std::cerr << "ch07: " << call << " failed: " << error << " "
              << iocp::error_text(static_cast<int>(error)) << "\n";
}

}  // namespace

//! [start]
void EchoServer::start() {
    //! [create-port]
    // A port with no file handle yet: INVALID_HANDLE_VALUE and no existing port create
    // it. The last argument, NumberOfConcurrentThreads, is how many threads the port lets
    // run at once; 1 matches our one worker (0 would mean "as many as processors").
    // (learn.microsoft.com/windows/win32/api/ioapiset/nf-ioapiset-createiocompletionport)
    completion_port_ =
        iocp::UniqueHandle(CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 1));
    if (!completion_port_) iocp::throw_last_error("CreateIoCompletionPort");
    //! [create-port]
    listener_ = iocp::listen_tcp(where_);  // socket() makes overlapped-capable sockets
    port_ = iocp::local_port(listener_.get());
    worker_ = std::thread([this] { worker_loop(); });
    accept_thread_ = std::thread([this] { accept_clients(); });
}
//! [start]

//! [accept]
// The accept thread, as in the original article: a blocking accept() in a loop. It
// only admits clients and hands them to the worker, which does all the I/O.
void EchoServer::accept_clients() {
    while (!stopping_) {
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (stopping_) break;  // woken by stop(): its own connection, or a cancel
        if (!client) {
            const int err = iocp::last_socket_error();
            if (iocp::is_disconnect_error(err)) continue;  // that client gave up, queued
            // Out of sockets or memory (WSAEMFILE, WSAENOBUFS), or anything else: pause,
            // since trying again at once would fail again at once.
            ++accept_failures_;
            report("accept", static_cast<DWORD>(err));
            std::this_thread::sleep_for(kAcceptBackoff);
            continue;
        }
        admit(std::move(client));
    }
}
//! [accept]

//! [admit]
void EchoServer::admit(iocp::UniqueSocket client) {
    if (live_ >= limits_.max_clients) {
        ++refused_;
        std::cerr << "ch07: refusing " << iocp::peer_address(client.get())
                  << ": at the cap of " << limits_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF (a reset if it had sent bytes)
    }
    try {
        // An echo split over two sends would wait ~40 ms for the peer's delayed ACK
        // under Nagle's algorithm; a request/response server turns Nagle off.
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "ch07: " << e.what() << "\n";
        return;
    }
    std::unique_lock<std::mutex> lock(mutex_);  // the worker erases from connections_
    Connection* c = &connections_.emplace_back();
    c->self = std::prev(connections_.end());
    lock.unlock();
    ++live_;
    c->socket = std::move(client);
    c->buffer.resize(limits_.buffer_size);
    c->io.connection = c;
    //! [admit]
    //! [associate]
    // Associate the socket with the port. From now on every completion of an operation
    // on this socket is queued to the port, carrying this key: the connection's
    // address. A key is a ULONG_PTR, as wide as a pointer; a DWORD would cut it in half.
    const auto handle = reinterpret_cast<HANDLE>(c->socket.get());
    const auto key = reinterpret_cast<ULONG_PTR>(c);
    if (CreateIoCompletionPort(handle, completion_port_.get(), key, 0) == nullptr) {
        report("CreateIoCompletionPort(socket)", GetLastError());
        close_connection(*c);  // no other thread knows c yet: closing it here is safe
        return;
    }
    //! [associate]
    //! [handover]
    // Start no I/O here: a receive started on this thread could complete, and the
    // worker close the socket, while WSARecv still ran here (closesocket, Remarks,
    // forbids that). So the worker gets c in a packet of our own; c's operation in
    // flight until the worker takes it. This thread does not touch c again.
    c->io.op = Op::kAdmit;
    c->io.overlapped = OVERLAPPED{};
    c->pending = true;
    ++in_flight_;
    if (!PostQueuedCompletionStatus(completion_port_.get(), 0, key, &c->io.overlapped)) {
        report("PostQueuedCompletionStatus(admit)", GetLastError());
        --in_flight_;
        c->pending = false;
        close_connection(*c);  // no packet will come, and the worker never saw c
    }
    //! [handover]
}

//! [post-recv]
void EchoServer::post_recv(Connection& c) {
    c.io.op = Op::kRecv;
    c.io.overlapped = OVERLAPPED{};  // a fresh OVERLAPPED for every operation
    // WSARecv copies the WSABUF array before it returns, so it may live on the stack;
    // the bytes it points to are the kernel's until the completion.
    WSABUF buf{static_cast<ULONG>(c.buffer.size()), c.buffer.data()};
    DWORD flags = 0;
    // Counted before the call: the packet may be queued (with more workers, handled)
    // before WSARecv returns.
    c.pending = true;
    ++in_flight_;
    // lpNumberOfBytesRecvd is nullptr: with an OVERLAPPED, Microsoft's WSARecv page
    // says to pass NULL "to avoid potentially erroneous results"; the count comes with
    // the completion. Returning 0 (done at once) still queues a completion packet.
    const int rc =
        WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.io.overlapped, nullptr);
    if (rc == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {  // failed to start: no packet will come for it
            --in_flight_;
            c.pending = false;
            if (!iocp::is_disconnect_error(err))
                report("WSARecv", static_cast<DWORD>(err));
            close_connection(c);
        }
    }
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    c.io.op = Op::kSend;
    c.io.overlapped = OVERLAPPED{};
    WSABUF buf{static_cast<ULONG>(c.filled - c.sent), c.buffer.data() + c.sent};
    c.pending = true;
    ++in_flight_;
    const int rc =
        WSASend(c.socket.get(), &buf, 1, nullptr, 0, &c.io.overlapped, nullptr);
    if (rc == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            --in_flight_;
            c.pending = false;
            if (!iocp::is_disconnect_error(err))
                report("WSASend", static_cast<DWORD>(err));
            close_connection(c);
        }
    }
}
//! [post-send]

//! [complete]
// One finished operation of connection c: `error` is 0 for success, else the error the
// packet brought back (64 for a reset, for instance), and `bytes` is what moved.
void EchoServer::complete(Connection& c, DWORD error, DWORD bytes) {
    --in_flight_;
    c.pending = false;
    // The closing flag first, before the result. Closing a socket with an operation
    // pending completes that operation, usually with an error (995 or 64; Wine 8:
    // 676), but an earlier version of Microsoft's GetQueuedCompletionStatus page said
    // it may come back TRUE with 0 bytes, exactly like a FIN. Only our own flag tells
    // them apart.
    if (c.closing) {  // we closed the socket: this is its cancelled operation coming home
        free_connection(c);
        return;
    }
    if (c.io.op == Op::kAdmit) {  // the hand-over: c is the worker's alone now
        post_recv(c);
        return;
    }
    if (error != ERROR_SUCCESS) {
        if (!iocp::is_disconnect_error(static_cast<int>(error)))
            report(c.io.op == Op::kRecv ? "receive" : "send", error);
        close_connection(c);
        return;
    }
    if (c.io.op == Op::kRecv) {
        if (bytes == 0) {  // FIN. Everything before it is echoed already: we never read
            close_connection(c);  // while a send is out. Closing sends our FIN.
            return;
        }
        c.filled = bytes;
        c.sent = 0;
        post_send(c);
        return;
    }
    if (bytes == 0) {  // a send that moved nothing and reported no error: never expected
        std::cerr << "ch07: WSASend completed with 0 bytes; closing\n";
        close_connection(c);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.filled) {  // partial send: post the rest
        ++reposted_;
        post_send(c);
    } else {
        post_recv(c);  // all echoed: read again
    }
}
//! [complete]

//! [worker]
void EchoServer::worker_loop() {
    bool draining = false;
    for (;;) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        OVERLAPPED* overlapped = nullptr;
        const BOOL ok = GetQueuedCompletionStatus(completion_port_.get(), &bytes, &key,
                                                  &overlapped, INFINITE);
        const DWORD error = ok ? ERROR_SUCCESS : GetLastError();
        if (overlapped != nullptr) {
            // TRUE: the operation succeeded (or it is an admit packet the accept thread
            // posted). FALSE with an OVERLAPPED: the operation failed, and `error` says
            // why; key and bytes are valid either way. The key names the connection (per
            // handle), the OVERLAPPED the operation (per I/O).
            IoContext* io = CONTAINING_RECORD(overlapped, IoContext, overlapped);
            Connection* c = reinterpret_cast<Connection*>(key);
            if (io->connection != c) fatal("key/OVERLAPPED check", ERROR_INVALID_DATA);
            complete(*c, error, bytes);
        } else if (!ok) {
            // FALSE with no OVERLAPPED: nothing was dequeued. With INFINITE this is not a
            // timeout; it means the port itself failed (ERROR_ABANDONED_WAIT_0: closed).
            fatal("GetQueuedCompletionStatus", error);
        } else if (key == kExitKey) {
            // TRUE with no OVERLAPPED: a packet we posted ourselves, the exit packet.
            close_all();
            draining = true;
        } else {
            std::cerr << "ch07: ignoring a packet with unknown key " << key << "\n";
        }
        // Leave only when every operation and admit packet has come home (in_flight_
        // counts both): each context is free by then.
        if (draining && in_flight_ == 0) return;
    }
}
//! [worker]

//! [close]
void EchoServer::close_connection(Connection& c) {
    if (c.closing) return;
    c.closing = true;
    // Cancel what is pending on the socket, then close it. The cancelled operation
    // still completes, and its packet is how we learn that the kernel is done with c.io
    // and c.buffer. On Windows closesocket() alone cancels pending operations
    // (closesocket, Remarks). Wine 8 leaves a send that waits for the peer to read
    // pending after closesocket(), so the worker's drain would wait forever; CancelIoEx
    // ends it there too (995). A cancel is not harmless in itself: after one, Microsoft
    // leaves any further use of the socket undefined and says to call closesocket
    // ("Overlapped I/O and Event Objects"), and a send cancelled part-way leaves the
    // client a stream cut short. Both are fine here only because the socket is closed on
    // the next line, and a connection we close is owed nothing more. Only the worker
    // starts I/O on an admitted socket and closes it, so no Winsock call runs on it
    // meanwhile (see admit); the accept thread closes one only when the hand-over
    // failed, before any other thread knew of it.
    if (c.pending) CancelIoEx(reinterpret_cast<HANDLE>(c.socket.get()), nullptr);
    c.socket.reset();
    if (!c.pending) free_connection(c);
}

void EchoServer::free_connection(Connection& c) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        connections_.erase(c.self);
    }
    --live_;
    ++served_;
}
//! [close]

//! [close-all]
// Runs on the worker, after the accept thread has ended: nobody else touches
// connections_ any more.
void EchoServer::close_all() {
    for (auto it = connections_.begin(); it != connections_.end();) {
        Connection& c = *it++;  // close_connection may erase c
        close_connection(c);
    }
}
//! [close-all]

//! [stop]
void EchoServer::stop() {
    if (!worker_.joinable()) return;
    stopping_ = true;
    // 1. Stop accepting. A connection of our own wakes a blocked accept() without a race
    // (an accept() about to start finds it waiting). CancelIoEx covers a connect that
    // could not get through; neither shutdown() nor closesocket() on the listener wakes
    // a blocked accept() under Wine 8, CancelIoEx does (error 995).
    if (accept_thread_.joinable()) {
        iocp::poke_listener(listener_.get());
        CancelIoEx(reinterpret_cast<HANDLE>(listener_.get()), nullptr);
        accept_thread_.join();
    }
    listener_.reset();
    // 2. The exit packet: the worker closes every connection, handles each cancelled
    // operation as it comes home (freeing its connection), and returns once none is
    // left in flight. Then nothing the kernel could still write to is freed early.
    while (!PostQueuedCompletionStatus(completion_port_.get(), 0, kExitKey, nullptr)) {
        report("PostQueuedCompletionStatus(exit)", GetLastError());  // and try again
        std::this_thread::sleep_for(kAcceptBackoff);
    }
    // 3. Wait for the worker thread to end; the drain is the worker's, not ours.
    worker_.join();
    completion_port_.reset();
}
//! [stop]

}  // namespace ch07
