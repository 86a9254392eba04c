// Chapter 9 - connection lifetime and shutdown on a worker pool, Windows side. See
// echo_server.h and docs/pages/ch09.md. Its Linux twin is echo_uring.cpp: the same
// functions in the same order, so that `diff echo_iocp.cpp echo_uring.cpp` shows only
// what the OS changes.
#include "echo_server.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <string>
#include <utility>

namespace ch09 {

namespace {

// The exit packet's key. Every connection's key is a tag whose generation is at least
// 1, so it is never 0.
constexpr ULONG_PTR kExitKey = 0;
constexpr std::chrono::milliseconds kAcceptBackoff{100};

//! [tag]
// A connection's completion key: its slot in the table in the low half, its generation
// in the high half. A ULONG_PTR is as wide as a pointer: 64 bits in the x64 builds this
// tutorial makes. (A 32-bit build would need a narrower split.)
static_assert(sizeof(ULONG_PTR) == 8, "the completion key carries a 32-bit slot and a 32-bit generation");
ULONG_PTR make_tag(std::uint32_t slot, std::uint32_t generation) {
    return (static_cast<ULONG_PTR>(generation) << 32) | slot;
}
std::uint32_t slot_of(ULONG_PTR tag) { return static_cast<std::uint32_t>(tag & 0xFFFFFFFFu); }
std::uint32_t generation_of(ULONG_PTR tag) { return static_cast<std::uint32_t>(tag >> 32); }
// 0 is never a generation: a slot's first occupant is 1, and 4 billion reuses later the
// count starts over at 1.
std::uint32_t next_generation(std::uint32_t g) { return g == std::numeric_limits<std::uint32_t>::max() ? 1 : g + 1; }
//! [tag]

// A failed operation on a connection we had not closed: the peer's doing (a reset, an
// abort), or something unexpected. 995 cannot be the peer's: only a cancel makes it,
// and we cancel only what we have closed; so here it is unexpected, and logged.
bool is_peer_reset(int error) { return iocp::is_disconnect_error(error) && error != ERROR_OPERATION_ABORTED; }

// A call on our own port failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] void fatal(const char* call, DWORD error) {
    std::cerr << "ch09: " << call << " failed: " << error << " " << iocp::error_text(static_cast<int>(error))
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
    if (limits_.max_clients == 0) limits_.max_clients = 1;
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

std::map<int, std::uint64_t> EchoServer::results_after_close() const {
    std::lock_guard<std::mutex> lock(results_mutex_);
    return results_after_close_;
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
    // The connection table: one entry per client the server may hold. Workers read it
    // without a lock, so it is sized once, here, and never moves.
    slot_count_ = std::min<std::size_t>(limits_.max_clients, std::numeric_limits<std::uint32_t>::max());
    slots_ = std::make_unique<Slot[]>(slot_count_);
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
            std::cerr << "ch09: accept failed: " << err << " " << iocp::error_text(err) << "\n";
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
        std::cerr << "ch09: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << limits_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF, or a reset if it had already sent bytes
    }
    try {
        // An echo split over two sends would wait ~40 ms for the peer's delayed ACK
        // under Nagle's algorithm; a request/response server turns Nagle off.
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "ch09: " << e.what() << "\n";
        return;
    }
    auto owned = std::make_unique<Connection>();
    Connection* c = owned.get();
    c->socket = std::move(client);
    c->recv.op = Op::kRecv;
    c->recv.connection = c;
    c->recv.buffer.resize(limits_.buffer_size);
    c->send.op = Op::kSend;
    c->send.connection = c;
    c->send.buffer.resize(limits_.buffer_size);
    live_contexts_ += 2;  // its receive and its send
    {
        std::lock_guard<std::mutex> lock(mutex_);
        //! [take-slot]
        // The slot freed last is taken first, so slots, like socket values and freed
        // memory, are reused at once. The generation tells this occupant from the last.
        if (!free_slots_.empty()) {
            c->slot = free_slots_.back();
            free_slots_.pop_back();
        } else {
            c->slot = static_cast<std::uint32_t>(slots_used_++);  // below slot_count_: live_ < max_clients
        }
        Slot& s = slots_[c->slot];
        c->generation = s.generation.load();
        s.connection.store(owned.release());  // the table owns it now
        //! [take-slot]
    }
    ++live_;
    bool free_now = false;
    {
        // From the first receive on, any worker may take c's packets: they wait here.
        std::lock_guard<std::mutex> lock(c->mutex);
        //! [associate]
        // Associate the socket with the port. From now on every completion of an
        // operation on this socket is queued to the port, carrying this key: the
        // connection's tag, (slot, generation), not its address. The socket's value may
        // be the one a closed connection had a moment ago (closesocket's page: a value
        // "may immediately be reused"), and the connection may sit at its address; the
        // generation in the key still tells the two apart.
        if (CreateIoCompletionPort(reinterpret_cast<HANDLE>(c->socket.get()), completion_port_.get(),
                                   make_tag(c->slot, c->generation), 0) == nullptr) {
            const DWORD err = GetLastError();
            std::cerr << "ch09: CreateIoCompletionPort(socket) failed: " << err << " "
                      << iocp::error_text(static_cast<int>(err)) << "\n";
            close_connection(*c, Why::kByUs);
        } else {
            post_recv(*c);
            // The test hook: an operation that no completion will ever take back.
            if (!c->closing && hold_next_.exchange(false)) {
                ++c->outstanding;
                ++in_flight_;
            }
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
    //! [count-up]
    // Both counts go up before the call. Another worker may take the packet before
    // WSARecv has returned here, but it waits for c.mutex, which we hold, so it finds
    // c.outstanding right either way. in_flight_ is read without c's lock (stop()'s
    // drain, the tests): counted first, it never shows fewer operations than the
    // kernel holds.
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    //! [count-up]
    // lpNumberOfBytesRecvd is nullptr: with an OVERLAPPED, Microsoft's WSARecv page
    // says to pass NULL "to avoid potentially erroneous results"; the count comes with
    // the completion. Returning 0 (done at once) still queues a completion packet.
    if (WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.recv.overlapped, nullptr) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {  // failed to start: no packet will come for it
            --in_flight_;
            c.receiving = false;
            --c.outstanding;
            if (!is_peer_reset(err))
                std::cerr << "ch09: WSARecv failed: " << err << " " << iocp::error_text(err) << "\n";
            close_connection(c, is_peer_reset(err) ? Why::kPeerReset : Why::kByUs);
        }
    }
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    c.send.overlapped = OVERLAPPED{};
    WSABUF buf{static_cast<ULONG>(c.to_send - c.sent), c.send.buffer.data() + c.sent};
    raise_to(max_sends_, ++c.sending);  // 1, always: see start_echo and advance
    ++c.outstanding;
    ++in_flight_;
    if (WSASend(c.socket.get(), &buf, 1, nullptr, 0, &c.send.overlapped, nullptr) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            --in_flight_;
            --c.sending;
            --c.outstanding;
            if (!is_peer_reset(err))
                std::cerr << "ch09: WSASend failed: " << err << " " << iocp::error_text(err) << "\n";
            close_connection(c, is_peer_reset(err) ? Why::kPeerReset : Why::kByUs);
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
        //! [reset-or-not]
        // We had not closed c (complete() checked), so this error is news: the peer
        // reset or vanished (64, 10054; counted, not logged), or something unexpected
        // (logged). 995 here would be a cancel we never made: unexpected too.
        if (is_peer_reset(error)) {
            close_connection(c, Why::kPeerReset);  // that connection only; the others never notice
            return;
        }
        std::cerr << "ch09: " << (io.op == Op::kRecv ? "WSARecv" : "WSASend") << " completed with error " << error
                  << " " << iocp::error_text(error) << "\n";
        close_connection(c, Why::kByUs);
        return;
        //! [reset-or-not]
    case Outcome::kPeerClosed:
        c.peer_done = true;  // no receive is posted again
        if (c.sending == 0) close_connection(c, Why::kPeerFin);  // else: once the echo in flight is out
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
        std::cerr << "ch09: WSASend completed with 0 bytes; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.to_send) {  // partial send: post the rest, and only the rest
        ++reposted_;
        post_send(c);
    } else if (c.held > 0) {   // the bytes that waited: their turn
        start_echo(c, std::exchange(c.held, 0));
    } else if (c.peer_done) {  // everything before the FIN is echoed: close (our FIN)
        close_connection(c, Why::kPeerFin);
    }
}
//! [advance]

// An operation of a connection we had closed came home: counted by what it said, and
// otherwise ignored. It is the kernel giving back the context and its buffer.
void EchoServer::note_after_close(int result) {
    ++after_close_;
    std::lock_guard<std::mutex> lock(results_mutex_);
    ++results_after_close_[result];
}

//! [complete]
// One finished operation of connection c, from whichever worker dequeued its packet.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    bool free_now = false;
    bool drained = false;
    {
        // c's other operation may be completing on another worker right now.
        std::lock_guard<std::mutex> lock(c.mutex);
        --c.outstanding;
        drained = --in_flight_ == 0;
        if (io.op == Op::kRecv) {
            c.receiving = false;
        } else {
            --c.sending;
        }
        // The closing flag first, before the outcome: an operation of a socket we closed
        // fails (995, or 64 exactly as for a reset; Wine 8: 676), or, says Microsoft's
        // GetQueuedCompletionStatus page, comes back TRUE with 0 bytes, just like a FIN,
        // or even succeeds, if it finished before the cancel reached it (CancelIoEx's
        // page). Only our flag tells, and it was set before anything was cancelled.
        if (c.closing) {
            note_after_close(outcome == Outcome::kFailed ? error : 0);
        } else {
            advance(c, io, outcome, bytes, error);
        }
        // Closing, and this was its last operation: no packet will name c again, and
        // whoever took the count to zero frees it. Outside its own lock (the table's
        // lock comes first, see close_all).
        free_now = c.closing && idle(c);
    }
    if (free_now) free_connection(c);
    if (drained && stopping_) {  // stop() waits for this
        std::lock_guard<std::mutex> lock(mutex_);
        drained_.notify_all();
    }
}
//! [complete]

//! [find]
// The connection a packet's key names, or nullptr if that connection is gone: its slot
// has moved on to another generation (or lies empty). No lock: the table never moves,
// and a packet that is not stale holds one of its connection's outstanding operations,
// so that connection cannot be freed, nor its slot change, while we look.
EchoServer::Connection* EchoServer::find(ULONG_PTR key) {
    const std::uint32_t slot = slot_of(key);
    if (slot >= slot_count_) return nullptr;
    const Slot& s = slots_[slot];
    if (s.generation.load() != generation_of(key)) return nullptr;
    return s.connection.load();
}
//! [find]

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
            std::cerr << "ch09: ignoring a posted packet with unknown key " << key << "\n";
            continue;
        }
        // With an OVERLAPPED, the packet is one of our operations, whether it succeeded
        // or not; key and bytes are valid either way. The key names the per-handle data
        // (the connection), the OVERLAPPED leads to the per-I/O data (the operation).
        //! [stale]
        // The key is looked up first, and the OVERLAPPED not even looked at unless the
        // key's connection still lives: a late packet's OVERLAPPED may point into memory
        // that now belongs to another connection, and to the kernel.
        Connection* c = find(key);
        if (c == nullptr) {
            ++stale_;
            std::cerr << "ch09: dropped a completion for a connection that is gone (slot " << slot_of(key)
                      << ", generation " << generation_of(key) << ")\n";
            continue;
        }
        //! [stale]
        IoContext* io = CONTAINING_RECORD(overlapped, IoContext, overlapped);
        if (io->connection != c) fatal("a packet whose key and OVERLAPPED disagree", ERROR_INVALID_DATA);
        ++w.completions;
        if (!ok) {
            // FALSE with an OVERLAPPED: that I/O failed. GetLastError() says why: 64
            // (ERROR_NETNAME_DELETED) for a reset, and after our own closesocket too; 995
            // (ERROR_OPERATION_ABORTED) after CancelIoEx; Wine 8 adds 676 for a receive
            // whose socket we closed. complete() sorts ours from the peer's.
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
// freed by whoever sees it closing with nothing outstanding (complete, admit, close_all).
void EchoServer::close_connection(Connection& c, Why why) {
    if (c.closing) return;
    // The flag first, then the cancel: every packet of c handled from here on, whatever
    // error it brings (995, or 64 just like a reset), is the echo of this close. A
    // worker that has dequeued one already is waiting for c.mutex, and will see the flag.
    c.closing = true;
    c.why = why;
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
// outstanding (no packet will name it), and it leaves the table here (close_all will
// not find it). Its mutex is not held: it is destroyed with c.
void EchoServer::free_connection(Connection& c) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        //! [retire]
        // Retire the tag before the slot can be taken again: from now on a packet that
        // names (slot, this generation) is stale, whoever occupies the slot.
        Slot& s = slots_[c.slot];
        s.generation.store(next_generation(c.generation));
        s.connection.store(nullptr);
        free_slots_.push_back(c.slot);
        last_freed_ = make_tag(c.slot, c.generation);
        //! [retire]
    }
    switch (c.why) {
    case Why::kPeerFin: ++peer_closes_; break;
    case Why::kPeerReset: ++resets_; break;
    case Why::kByUs: ++closed_by_us_; break;
    }
    ++served_;
    delete &c;  // the table owned it (admit released it there)
    live_contexts_ -= 2;
    --live_;    // last: once live_connections() says 0, nothing of any connection is left
}
//! [close]

//! [close-all]
// Runs on stop()'s thread, after the accept thread has ended, while the workers go on
// taking packets: every connection is locked in turn and closed.
void EchoServer::close_all() {
    std::vector<Connection*> ours;
    {
        std::lock_guard<std::mutex> lock(mutex_);  // nobody frees a connection while we walk
        for (std::size_t i = 0; i < slots_used_; ++i) {
            Connection* c = slots_[i].connection.load();
            if (c == nullptr) continue;
            std::lock_guard<std::mutex> connection_lock(c->mutex);
            const bool was_closing = c->closing;
            close_connection(*c, Why::kByUs);
            // A connection always has an operation in flight unless a worker holds its
            // lock, so this stays false; if it were not, the connection would be ours,
            // to free once the table's lock is let go.
            if (!was_closing && idle(*c)) ours.push_back(c);
        }
    }
    for (Connection* c : ours) free_connection(*c);
}
//! [close-all]

//! [abandon]
// After a drain that ran out of time, with every worker joined: the connections still
// in the table have operations the kernel has not given back, and may yet write to.
// They are parked for the life of the process, on purpose: memory the log names,
// never handed back to the heap while the kernel may own it.
void EchoServer::abandon() {
    std::size_t connections = 0;
    for (std::size_t i = 0; i < slots_used_; ++i) {
        Connection* c = slots_[i].connection.exchange(nullptr);
        if (c == nullptr) continue;
        ++connections;
        abandoned_ += static_cast<std::size_t>(c->outstanding);
        park(std::unique_ptr<Connection>(c));
    }
    if (connections > 0)
        std::cerr << "ch09: stop: " << abandoned_ << " operation(s) of " << connections
                  << " connection(s) never came home; their memory is left allocated\n";
}

// A list that lives as long as the process and is never destroyed: what it holds is
// never freed, and stays reachable, so a leak checker does not report it either.
void EchoServer::park(std::unique_ptr<Connection> c) {
    static std::mutex mutex;
    static auto* const parked = new std::vector<std::unique_ptr<Connection>>;
    std::lock_guard<std::mutex> lock(mutex);
    parked->push_back(std::move(c));
}
//! [abandon]

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
    // 2. Close every connection: the closing flag, then CancelIoEx and closesocket. The
    // workers handle each cancelled operation as it comes home, and the one that takes
    // a connection's count to zero frees it.
    close_all();
    // 3. Wait for the drain: nothing is posted any more, so the count only goes down.
    // Bounded: an operation the kernel never gives back must not hang stop() for ever.
    bool drained = false;
    {
        std::unique_lock<std::mutex> lock(mutex_);
        drained = drained_.wait_for(lock, limits_.drain_timeout, [this] { return in_flight_ == 0; });
    }
    if (!drained)
        std::cerr << "ch09: stop: " << in_flight_ << " operation(s) still outstanding after "
                  << limits_.drain_timeout.count() << " ms\n";
    // 4. One exit packet per worker. A worker that takes one leaves at once, so each
    // packet ends a different worker. Posted after the drain: a worker gone early would
    // leave the packets of cancelled operations, and their connections, to nobody.
    for (std::size_t i = 0; i < workers_.size(); ++i) {
        while (!PostQueuedCompletionStatus(completion_port_.get(), 0, kExitKey, nullptr)) {
            const DWORD err = GetLastError();
            std::cerr << "ch09: PostQueuedCompletionStatus failed: " << err << " "
                      << iocp::error_text(static_cast<int>(err)) << "; retrying\n";
            std::this_thread::sleep_for(kAcceptBackoff);
        }
    }
    // 5. Join them all: from here on no thread of ours touches a connection.
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    // 6. Close the port, last: nobody waits on it any more, and a packet still to come
    // for an abandoned operation is dropped with it.
    completion_port_.reset();
    if (!drained) abandon();
    stopped_ = true;  // the Worker records stay: their counts remain readable
}
//! [stop]

//! [inject]
// The test hook. A packet with the key of the connection freed last, as a late packet
// for it would carry; its OVERLAPPED points at the receive context of whichever
// connection holds that slot now, as a late packet's would if that connection sat at
// the old one's address. Only the generation stands between it and that connection.
void EchoServer::inject_stale_completion() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (last_freed_ == 0 || !completion_port_) return;
    Connection* now = slots_[slot_of(last_freed_)].connection.load();
    OVERLAPPED* overlapped = now != nullptr ? &now->recv.overlapped : &probe_.overlapped;
    if (!PostQueuedCompletionStatus(completion_port_.get(), 0, last_freed_, overlapped)) {
        const DWORD err = GetLastError();
        std::cerr << "ch09: PostQueuedCompletionStatus(stale) failed: " << err << " "
                  << iocp::error_text(static_cast<int>(err)) << "\n";
    }
}
//! [inject]

}  // namespace ch09
