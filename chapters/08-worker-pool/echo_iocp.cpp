// Chapter 8 - a worker pool on one completion port, Windows side. See echo_server.h and
// docs/pages/ch08.md. Its Linux twin is echo_uring.cpp: the same functions in the same
// order, so that `diff echo_iocp.cpp echo_uring.cpp` shows only what the OS changes.
#include "echo_server.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <utility>

namespace ch08 {

namespace {

// The exit packet's key. Every connection's key is its address, which is never 0.
constexpr ULONG_PTR kExitKey = 0;
constexpr std::chrono::milliseconds kAcceptBackoff{100};

// A call on our own port failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] void fatal(const char* call, DWORD error) {
    std::cerr << "ch08: " << call << " failed: " << error << " " << iocp::error_text(static_cast<int>(error))
              << "; cannot continue\n";
    std::abort();
}

// Records n as the new maximum if it is one. For a statistic only: tests read it.
void raise_to(std::atomic<int>& max, int n) {
    int seen = max.load();
    while (n > seen && !max.compare_exchange_weak(seen, n)) {
    }
}

}  // namespace

//! [threads]
EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    if (limits_.buffer_size == 0) limits_.buffer_size = 1;
    // The original article's pool: two workers per CPU. The port lets only one per CPU
    // run at a time (concurrency 0, see start); the second one of each pair stands by,
    // and the port lets it in when a running worker blocks (a page fault, a connection's
    // lock, a log line written to a slow console), so that the CPU does not sit idle.
    // hardware_concurrency() may be 0 when the count is unknown.
    const std::size_t cpus = std::max(1u, std::thread::hardware_concurrency());
    threads_ = limits_.threads != 0 ? limits_.threads : 2 * cpus;
}
//! [threads]

EchoServer::~EchoServer() { stop(); }

std::vector<std::uint64_t> EchoServer::completions_per_worker() const {
    std::vector<std::uint64_t> counts;
    for (const auto& w : workers_) counts.push_back(w->completions.load());
    return counts;
}

//! [start]
void EchoServer::start() {
    //! [create-port]
    // A port with no file handle yet: INVALID_HANDLE_VALUE and no existing port create
    // it. The last argument, NumberOfConcurrentThreads, is how many of the threads that
    // wait on it the port lets run at once; 0 means "as many as there are processors"
    // (learn.microsoft.com/windows/win32/api/ioapiset/nf-ioapiset-createiocompletionport).
    // Wine 8 ignores the value: there, every worker with a packet runs.
    completion_port_ = iocp::UniqueHandle(CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 0));
    if (!completion_port_) iocp::throw_last_error("CreateIoCompletionPort");
    //! [create-port]
    listener_ = iocp::listen_tcp(where_);  // socket() makes overlapped-capable sockets
    port_ = iocp::local_port(listener_.get());
    // Workers first: a client's first packet may come as soon as it is admitted.
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        w.thread = std::thread([this, &w] { worker_loop(w); });
    }
    accept_thread_ = std::thread([this] { accept_clients(); });
}
//! [start]

//! [accept]
// The accept thread, as in the original article: a blocking accept() in a loop. It
// only admits clients; the workers do all the I/O.
void EchoServer::accept_clients() {
    while (!stopping_) {
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (stopping_) break;  // woken by stop(): its own connection, or a cancelled accept
        if (!client) {
            const int err = iocp::last_socket_error();
            if (iocp::is_disconnect_error(err)) continue;  // that client gave up while queued
            // Out of sockets or memory (WSAEMFILE, WSAENOBUFS), or anything else: pause,
            // since trying again at once would fail again at once.
            ++accept_failures_;
            std::cerr << "ch08: accept failed: " << err << " " << iocp::error_text(err) << "\n";
            std::this_thread::sleep_for(kAcceptBackoff);
            continue;
        }
        admit(std::move(client));
    }
}
//! [accept]

//! [admit]
void EchoServer::admit(iocp::UniqueSocket client) {
    if (live_ >= limits_.max_clients) {  // only this thread adds connections: no race
        ++refused_;
        std::cerr << "ch08: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << limits_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF, or a reset if it had already sent bytes
    }
    try {
        // An echo split over two sends would wait ~40 ms for the peer's delayed ACK
        // under Nagle's algorithm; a request/response server turns Nagle off.
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "ch08: " << e.what() << "\n";
        return;
    }
    // Filled in while no other thread can see it, then spliced into the list: close_all
    // never meets a connection half made. splice moves the node itself, so c and
    // c->self stay valid and now point into connections_.
    std::list<Connection> fresh;
    Connection* c = &fresh.emplace_back();
    c->self = fresh.begin();
    c->socket = std::move(client);
    c->recv.op = Op::kRecv;
    c->recv.connection = c;
    c->recv.buffer.resize(limits_.buffer_size);
    c->send.op = Op::kSend;
    c->send.connection = c;
    c->send.buffer.resize(limits_.buffer_size);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        connections_.splice(connections_.end(), fresh);
    }
    ++live_;
    bool free_now = false;
    {
        // From the first receive on, any worker may take c's packets: they wait here.
        std::lock_guard<std::mutex> lock(c->mutex);
        //! [associate]
        // Associate the socket with the port. From now on every completion of an
        // operation on this socket is queued to the port, carrying this key: the
        // connection's address, its per-handle data. A key is a ULONG_PTR, as wide as a
        // pointer; a DWORD would cut it in half.
        if (CreateIoCompletionPort(reinterpret_cast<HANDLE>(c->socket.get()), completion_port_.get(),
                                   reinterpret_cast<ULONG_PTR>(c), 0) == nullptr) {
            const DWORD err = GetLastError();
            std::cerr << "ch08: CreateIoCompletionPort(socket) failed: " << err << " "
                      << iocp::error_text(static_cast<int>(err)) << "\n";
            close_connection(*c);
        } else {
            post_recv(*c);
        }
        //! [associate]
        free_now = c->closing && idle(*c);  // the receive could not even start
    }
    if (free_now) free_connection(*c);
    // From here on c may be gone: a worker may have taken its packet, closed it, freed it.
}
//! [admit]

//! [post-recv]
// Called with c.mutex held, like everything that touches a connection.
void EchoServer::post_recv(Connection& c) {
    c.recv.overlapped = OVERLAPPED{};  // a fresh OVERLAPPED for every operation
    // WSARecv copies the WSABUF array before it returns, so it may live on the stack;
    // the bytes it points to are the kernel's until the completion.
    WSABUF buf{static_cast<ULONG>(c.recv.buffer.size()), c.recv.buffer.data()};
    DWORD flags = 0;
    c.receiving = true;
    // Counted before the call, so that in_flight_, read without c's lock (stop()'s drain,
    // the tests), never shows fewer operations than the kernel holds.
    ++in_flight_;
    // lpNumberOfBytesRecvd is nullptr: with an OVERLAPPED, Microsoft's WSARecv page
    // says to pass NULL "to avoid potentially erroneous results"; the count comes with
    // the completion. Returning 0 (done at once) still queues a completion packet.
    if (WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.recv.overlapped, nullptr) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {  // failed to start: no packet will come for it
            --in_flight_;
            c.receiving = false;
            if (!iocp::is_disconnect_error(err))
                std::cerr << "ch08: WSARecv failed: " << err << " " << iocp::error_text(err) << "\n";
            close_connection(c);
        }
    }
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    c.send.overlapped = OVERLAPPED{};
    WSABUF buf{static_cast<ULONG>(c.to_send - c.sent), c.send.buffer.data() + c.sent};
    raise_to(max_sends_, ++c.sending);  // 1, always: see start_echo and advance
    ++in_flight_;
    if (WSASend(c.socket.get(), &buf, 1, nullptr, 0, &c.send.overlapped, nullptr) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            --in_flight_;
            --c.sending;
            if (!iocp::is_disconnect_error(err))
                std::cerr << "ch08: WSASend failed: " << err << " " << iocp::error_text(err) << "\n";
            close_connection(c);
        }
    }
}
//! [post-send]

//! [start-echo]
// `bytes` have arrived in c.recv.buffer and no send is in flight. The two buffers swap
// places: the received bytes become the send's, and the receive gets the other buffer,
// so the next receive runs while this echo goes out. The receive is posted first: once
// the peer has its echo, it may act on it (even reset), and its next bytes must find a
// receive waiting.
void EchoServer::start_echo(Connection& c, std::size_t bytes) {
    std::swap(c.recv.buffer, c.send.buffer);  // neither is the kernel's right now
    c.to_send = bytes;
    c.sent = 0;
    post_recv(c);
    if (!c.closing) post_send(c);
}
//! [start-echo]

//! [advance]
// One finished operation of c, with c.mutex held and c not closing: what it means for
// the echo.
void EchoServer::advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    switch (outcome) {
    case Outcome::kFailed:
        ++failed_;
        if (!iocp::is_disconnect_error(error))
            std::cerr << "ch08: " << (io.op == Op::kRecv ? "WSARecv" : "WSASend") << " completed with error "
                      << error << " " << iocp::error_text(error) << "\n";
        close_connection(c);  // that connection only; the others never notice
        return;
    case Outcome::kPeerClosed:
        ++peer_closes_;
        c.peer_done = true;  // no receive is posted again
        if (c.sending == 0) close_connection(c);  // else: once the echo in flight is out
        return;
    case Outcome::kBytes:
        break;
    }
    if (io.op == Op::kRecv) {
        if (c.sending > 0) {  // at most one send in flight: these bytes wait for it
            c.held = bytes;   // and no receive is posted meanwhile (two buffers, no more)
            ++deferred_;
            return;
        }
        start_echo(c, bytes);
        return;
    }
    if (bytes == 0) {  // a send that moved nothing and reported no error: never expected
        std::cerr << "ch08: WSASend completed with 0 bytes; closing\n";
        close_connection(c);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.to_send) {  // partial send: post the rest, and only the rest
        ++reposted_;
        post_send(c);
    } else if (c.held > 0) {   // the bytes that waited: their turn
        start_echo(c, std::exchange(c.held, 0));
    } else if (c.peer_done) {  // everything before the FIN is echoed: close (our FIN)
        close_connection(c);
    }
}
//! [advance]

//! [complete]
// One finished operation of connection c, from whichever worker dequeued its packet.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    bool free_now = false;
    bool drained = false;
    {
        // c's other operation may be completing on another worker right now.
        std::lock_guard<std::mutex> lock(c.mutex);
        drained = --in_flight_ == 0;
        if (io.op == Op::kRecv) {
            c.receiving = false;
        } else {
            --c.sending;
        }
        // The closing flag first, before the outcome: an operation of a socket we closed
        // fails (995, or 64; Wine 8: 676), or, says Microsoft's GetQueuedCompletionStatus
        // page, comes back TRUE with 0 bytes, just like a FIN. Only our flag tells.
        if (!c.closing) advance(c, io, outcome, bytes, error);
        // Closing, and this was its last operation: no packet will name c again. Freed
        // outside its own lock (the list's lock comes first, see close_all).
        free_now = c.closing && idle(c);
    }
    if (free_now) free_connection(c);
    if (drained && stopping_) {  // stop() waits for this
        std::lock_guard<std::mutex> lock(mutex_);
        drained_.notify_all();
    }
}
//! [complete]

//! [worker]
void EchoServer::worker_loop(Worker& w) {
    for (;;) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        OVERLAPPED* overlapped = nullptr;
        const BOOL ok = GetQueuedCompletionStatus(completion_port_.get(), &bytes, &key, &overlapped, INFINITE);
        const DWORD error = ok ? ERROR_SUCCESS : GetLastError();
        //! [matrix]
        if (overlapped == nullptr) {
            // FALSE, no OVERLAPPED: nothing was dequeued. With INFINITE this is not a
            // timeout: the port itself failed (ERROR_ABANDONED_WAIT_0: closed under us;
            // Wine 8 does not even wake us then). As in chapter 7, the process stops
            // loudly: a worker that quietly left would leave its share of the
            // completions, and stop()'s drain, waiting forever.
            if (!ok) fatal("GetQueuedCompletionStatus", error);
            // TRUE, no OVERLAPPED: a packet we posted ourselves. The exit packet: this
            // worker leaves, and takes no other packet (stop() posts one per worker).
            if (key == kExitKey) return;
            std::cerr << "ch08: ignoring a posted packet with unknown key " << key << "\n";
            continue;
        }
        // With an OVERLAPPED, the packet is one of our operations, whether it succeeded
        // or not; key and bytes are valid either way. The key is the per-handle data
        // (the connection), the OVERLAPPED leads to the per-I/O data (the operation).
        IoContext* io = CONTAINING_RECORD(overlapped, IoContext, overlapped);
        Connection* c = reinterpret_cast<Connection*>(key);
        if (io->connection != c) fatal("a packet whose key and OVERLAPPED disagree", ERROR_INVALID_DATA);
        ++w.completions;
        if (!ok) {
            // FALSE with an OVERLAPPED: that I/O failed. GetLastError() says why: 64
            // (ERROR_NETNAME_DELETED) for a reset, 995 (ERROR_OPERATION_ABORTED) after
            // CancelIoEx; Wine 8 adds 676 for a receive whose socket we closed. Close
            // that connection, and only that one.
            complete(*c, *io, Outcome::kFailed, bytes, static_cast<int>(error));
        } else if (bytes == 0 && io->op == Op::kRecv) {
            // TRUE, 0 bytes, a receive: the peer sent FIN. An orderly end, not an error.
            // (Or our own close: complete() looks at the closing flag first.)
            complete(*c, *io, Outcome::kPeerClosed, 0, 0);
        } else {
            // TRUE with bytes: the operation moved `bytes` (a send may move fewer than
            // asked: the rest is posted again).
            complete(*c, *io, Outcome::kBytes, bytes, 0);
        }
        //! [matrix]
    }
}
//! [worker]

//! [close]
// With c.mutex held. Cancels what is in flight and closes the socket; the connection is
// freed by whoever sees it closing with nothing in flight (complete, admit, close_all).
void EchoServer::close_connection(Connection& c) {
    if (c.closing) return;
    c.closing = true;
    // Each cancelled operation still completes, with an error, and its packet is how we
    // learn the kernel is done with that context and its buffer. On Windows
    // closesocket() alone cancels pending operations (closesocket, Remarks). Wine 8
    // leaves a send that waits for the peer to read pending after closesocket(), so the
    // drain in stop() would wait forever; CancelIoEx completes it there too (995,
    // ERROR_OPERATION_ABORTED), and is harmless on Windows. Holding c.mutex keeps every
    // other Winsock call on this socket away: "never issue closesocket on s
    // concurrently with another Winsock function call" (closesocket, Remarks).
    if (!idle(c)) CancelIoEx(reinterpret_cast<HANDLE>(c.socket.get()), nullptr);
    c.socket.reset();
}

// Nobody can reach c any more: it is closing (nothing new is posted), nothing of it is
// in flight (no packet will name it), and it leaves the list here (close_all will not
// find it). Its mutex is not held: it is destroyed with c.
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
// Runs on stop()'s thread, after the accept thread has ended, while the workers go on
// taking packets: every connection is locked in turn and closed.
void EchoServer::close_all() {
    std::lock_guard<std::mutex> lock(mutex_);  // nobody frees a connection while we walk
    for (auto it = connections_.begin(); it != connections_.end();) {
        Connection& c = *it++;
        bool free_now = false;
        {
            std::lock_guard<std::mutex> connection_lock(c.mutex);
            const bool was_closing = c.closing;
            close_connection(c);
            // A connection always has an operation in flight unless a worker holds its
            // lock, so this stays false; if it were not, the connection would be ours.
            free_now = !was_closing && idle(c);
        }
        if (free_now) {
            connections_.erase(c.self);
            --live_;
            ++served_;
        }
    }
}
//! [close-all]

//! [stop]
void EchoServer::stop() {
    if (workers_.empty() || stopped_) return;  // never started, or stopped already
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
    // 2. Close every connection. The workers handle each cancelled operation as it comes
    // home and free its connection after the last one.
    close_all();
    // 3. Wait for the drain: nothing is posted any more, so the count only goes down.
    {
        std::unique_lock<std::mutex> lock(mutex_);
        drained_.wait(lock, [this] { return in_flight_ == 0; });
    }
    // 4. One exit packet per worker. A worker that takes one leaves at once, so each
    // packet ends a different worker; then nothing the kernel could write to is left.
    for (std::size_t i = 0; i < workers_.size(); ++i) {
        while (!PostQueuedCompletionStatus(completion_port_.get(), 0, kExitKey, nullptr)) {
            const DWORD err = GetLastError();
            std::cerr << "ch08: PostQueuedCompletionStatus failed: " << err << " "
                      << iocp::error_text(static_cast<int>(err)) << "; retrying\n";
            std::this_thread::sleep_for(kAcceptBackoff);
        }
    }
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    completion_port_.reset();
    stopped_ = true;  // the Worker records stay: their counts remain readable
}
//! [stop]

}  // namespace ch08
