// Chapter 9 - connection lifetime and shutdown, the Linux twin: one io_uring per
// worker. See echo_server.h and docs/pages/ch09.md. The same functions in the same
// order as echo_iocp.cpp, so that `diff echo_iocp.cpp echo_uring.cpp` shows only what
// the OS changes.
//
// The choice: a port is one queue that any number of threads may wait on, and the
// kernel spreads the packets over them. A ring has one submitter and one reaper; sharing
// it means a lock around every submission and every reaping. So each worker owns a
// ring, and each connection belongs to one worker for its whole life: worker 0 accepts
// and hands clients out in turn through each worker's inbox and doorbell. No lock
// guards a connection, since only its worker ever touches it; the price is that a
// busy worker cannot pass its connections to an idle one, as the port would.
#include "echo_server.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include <poll.h>
#include <sys/eventfd.h>

namespace ch09 {

namespace {

// Submission queue entries per ring: requests prepared between two submits (a full
// queue is submitted at once). The completion queue is sized from max_clients in start().
constexpr unsigned kRingEntries = 256;
constexpr long long kAcceptBackoffNs = 100'000'000;  // 100 ms

//! [tag]
// The user_data of a connection's request: its generation in the high half, its slot
// and which of its two operations below (slot << 1 | 1 for the send). Generations start
// at 1, so a connection's tag is at least 2^32; the ring's own requests use the small
// numbers below. A cancel names its target by this tag, so it can only ever find the
// request of this generation, never a later connection's in the same slot.
constexpr std::uint64_t kCancelTag = 0;    // a cancel request's own completion
constexpr std::uint64_t kAcceptTag = 1;    // the accept, or its pause
constexpr std::uint64_t kDoorbellTag = 2;  // the poll on the worker's eventfd
std::uint64_t make_tag(std::uint32_t slot, std::uint32_t generation, bool send) {
    return (static_cast<std::uint64_t>(generation) << 32) | (static_cast<std::uint64_t>(slot) << 1) | (send ? 1u : 0u);
}
std::uint32_t slot_of(std::uint64_t tag) { return static_cast<std::uint32_t>((tag & 0xFFFFFFFFu) >> 1); }
std::uint32_t generation_of(std::uint64_t tag) { return static_cast<std::uint32_t>(tag >> 32); }
bool is_send(std::uint64_t tag) { return (tag & 1u) != 0; }
// 0 is never a generation: a slot's first occupant is 1, and 4 billion reuses later the
// count starts over at 1.
std::uint32_t next_generation(std::uint32_t g) { return g == std::numeric_limits<std::uint32_t>::max() ? 1 : g + 1; }
//! [tag]

// A failed operation on a connection we had not closed: the peer's doing (a reset, a
// send to a peer that has gone), or something unexpected. -ECANCELED cannot be the
// peer's: only our cancel makes it, and we cancel only what we have closed.
bool is_peer_reset(int error) { return iocp::is_disconnect_error(error); }

// A call on our own ring failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] void fatal(const char* call, int error) {
    std::cerr << "ch09: " << call << " failed: " << error << " " << iocp::error_text(error) << "; cannot continue\n";
    std::abort();
}

// Records n as the new maximum if it is one. For a statistic only: tests read it.
void raise_to(std::atomic<int>& max, int n) {
    int seen = max.load();
    while (n > seen && !max.compare_exchange_weak(seen, n)) {
    }
}

// Eight bytes on an eventfd: the poll a worker's ring has on it completes.
void ring_doorbell(int fd) {
    const std::uint64_t one = 1;
    while (::write(fd, &one, sizeof one) < 0) {
        if (errno != EINTR) fatal("write(eventfd)", errno);
    }
}

}  // namespace

//! [threads]
EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    if (limits_.buffer_size == 0) limits_.buffer_size = 1;
    if (limits_.max_clients == 0) limits_.max_clients = 1;
    // One ring per CPU. A ring's loop makes no blocking call but its wait for
    // completions, so a ring more than the CPUs only adds wake-ups. (If the handling
    // blocked, more rings would help, as more workers help a port; what no ring count
    // fixes is that a connection cannot leave a blocked worker for an idle one.)
    // hardware_concurrency() may be 0 when the count is unknown.
    const std::size_t cpus = std::max(1u, std::thread::hardware_concurrency());
    threads_ = limits_.threads != 0 ? limits_.threads : cpus;
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
    listener_ = iocp::listen_tcp(where_);
    port_ = iocp::local_port(listener_.get());
    accept_pause_.tv_nsec = kAcceptBackoffNs;
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        //! [create-port]
        // One ring per worker: a submission queue we fill with requests, a completion
        // queue the kernel fills with results. The port's queue has no fixed size; a
        // ring's has, so each is sized for the worst case: every connection on this one
        // ring (clients are dealt in turn, but leave when they like), each with a
        // receive, a send and a cancel of each in flight, plus the accept, its cancel and
        // the doorbell's poll (and one spare). IORING_SETUP_CLAMP turns a size beyond the
        // kernel's limit into that limit, which is then checked.
        const std::size_t max_clients = std::min<std::size_t>(limits_.max_clients, UINT_MAX / 4 - 1);
        const std::size_t needed = std::max<std::size_t>(4 * max_clients + 4, 2 * kRingEntries);
        io_uring_params params{};
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        params.cq_entries = static_cast<unsigned>(needed);
        if (const int rc = io_uring_queue_init_params(kRingEntries, &w.ring, &params); rc < 0) {
            // EINVAL: a kernel older than 5.6 lacks CLAMP (5.5 added CQSIZE). ENOMEM: before Linux 5.12
            // the rings' memory counts against RLIMIT_MEMLOCK (ulimit -l).
            throw iocp::SystemError(rc == -EINVAL   ? "io_uring_queue_init_params (Linux 5.6 or later needed)"
                                    : rc == -ENOMEM ? "io_uring_queue_init_params (locked memory: see ulimit -l)"
                                                    : "io_uring_queue_init_params",
                                    -rc);
        }
        w.ring_ready = true;
        if (const std::size_t most = (params.cq_entries - 4) / 4; limits_.max_clients > most)
            throw std::runtime_error("ch09: max_clients " + std::to_string(limits_.max_clients) +
                                     " needs completion queues of " + std::to_string(4 * max_clients + 4) +
                                     " entries; this kernel allows " + std::to_string(params.cq_entries) +
                                     ", enough for at most " + std::to_string(most) + " clients");
        // Should a queue fill up all the same, a completion must never be dropped:
        // IORING_FEAT_NODROP (Linux 5.5) keeps the overflow in the kernel until there is room.
        if ((params.features & IORING_FEAT_NODROP) == 0)
            throw std::runtime_error("ch09: this kernel's io_uring may drop completions (Linux 5.5 or later needed)");
        check_kernel(w);
        //! [create-port]
        w.doorbell = iocp::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!w.doorbell) iocp::throw_last_error("eventfd");
    }
    // Threads last: every ring exists before any worker can hand a client to another.
    for (auto& w : workers_) {
        Worker* worker = w.get();
        w->thread = std::thread([this, worker] { worker_loop(*worker); });
    }
}
//! [start]

// Every request this server makes must be one the kernel knows: IORING_OP_SEND and
// IORING_OP_RECV came in Linux 5.6, and a kernel without them would fail each receive
// with -EINVAL at run time. The opcode probe (also 5.6) answers up front.
void EchoServer::check_kernel(Worker& w) {
    io_uring_probe* probe = io_uring_get_probe_ring(&w.ring);
    if (probe == nullptr) throw std::runtime_error("ch09: this kernel has no io_uring opcode probe (Linux 5.6 or later needed)");
    struct Needed {
        int op;
        const char* name;
    };
    const Needed needed[] = {{IORING_OP_RECV, "RECV"},   {IORING_OP_SEND, "SEND"},
                             {IORING_OP_ACCEPT, "ACCEPT"}, {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
                             {IORING_OP_TIMEOUT, "TIMEOUT"}, {IORING_OP_POLL_ADD, "POLL_ADD"}};
    std::string missing;
    for (const Needed& n : needed)
        if (!io_uring_opcode_supported(probe, n.op)) missing += std::string(missing.empty() ? "" : ", ") + "IORING_OP_" + n.name;
    io_uring_free_probe(probe);
    if (!missing.empty()) throw std::runtime_error("ch09: this kernel's io_uring lacks " + missing + " (Linux 5.6 or later needed)");
}

//! [get-sqe]
// The next free submission queue entry of w's ring. It is only filled in here; the
// kernel sees it at the next io_uring_submit*. A full queue is handed to the kernel.
io_uring_sqe* EchoServer::get_sqe(Worker& w) {
    io_uring_sqe* sqe = io_uring_get_sqe(&w.ring);
    if (sqe == nullptr) {
        io_uring_submit(&w.ring);
        sqe = io_uring_get_sqe(&w.ring);
    }
    return sqe;  // nullptr only when the kernel would take nothing more right now
}
//! [get-sqe]

//! [accept]
// No accept thread: the accept is one more request in worker 0's ring, posted again
// each time it completes (see on_completion).
void EchoServer::accept_clients(Worker& w) {
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) {  // the kernel takes no more requests right now: worker_loop tries again
        w.accept_retry = true;
        return;
    }
    w.accept_retry = false;
    w.accept_io.op = Op::kAccept;
    io_uring_prep_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, kAcceptTag);
    w.accept_pending = true;
}
//! [accept]

//! [hand-over]
// On worker 0, for each accepted client: the next worker in turn gets it. Another
// worker's ring is not ours to submit to, so the client goes into that worker's inbox
// (under its lock: the one piece of data two workers share) and its doorbell rings.
void EchoServer::hand_over(iocp::UniqueSocket client) {
    Worker& to = *workers_[next_worker_++ % workers_.size()];
    if (&to == workers_.front().get()) {
        admit(to, std::move(client));
        return;
    }
    {
        std::lock_guard<std::mutex> lock(to.inbox_mutex);
        to.inbox.push_back(std::move(client));
    }
    ring_doorbell(to.doorbell.get());
}
//! [hand-over]

//! [admit]
// On the worker that will own the connection.
void EchoServer::admit(Worker& w, iocp::UniqueSocket client) {
    // Several workers admit at once: take a place first, then check it.
    if (live_.fetch_add(1) >= limits_.max_clients) {
        --live_;
        ++refused_;
        std::cerr << "ch09: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << limits_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF
    }
    try {
        // An echo split over two sends would wait ~40 ms for the peer's delayed ACK
        // under Nagle's algorithm; a request/response server turns Nagle off.
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "ch09: " << e.what() << "\n";
        --live_;
        return;
    }
    auto owned = std::make_unique<Connection>();
    Connection* c = owned.get();
    c->worker = &w;
    c->socket = std::move(client);
    c->recv.op = Op::kRecv;
    c->recv.connection = c;
    c->recv.buffer.resize(limits_.buffer_size);
    c->send.op = Op::kSend;
    c->send.connection = c;
    c->send.buffer.resize(limits_.buffer_size);
    live_contexts_ += 2;  // its receive and its send
    //! [take-slot]
    // The slot freed last is taken first, so slots, like descriptors and freed memory,
    // are reused at once. The generation tells this occupant from the last. Only w's
    // thread touches w's table: no lock.
    if (!w.free_slots.empty()) {
        c->slot = w.free_slots.back();
        w.free_slots.pop_back();
    } else {
        c->slot = static_cast<std::uint32_t>(w.slots.size());
        w.slots.emplace_back();
        ++slots_used_;
    }
    Slot& s = w.slots[c->slot];
    c->generation = s.generation;
    s.connection = std::move(owned);  // the table owns it now
    //! [take-slot]
    //! [associate]
    // Nothing to associate: a ring takes requests on any descriptor, and each request
    // carries its own user_data: here the connection's tag, (slot, generation), and
    // which operation. The descriptor's number may be one a closed connection had a
    // moment ago; the tag still tells the two apart.
    post_recv(*c);
    //! [associate]
    // The test hook: an operation that no completion will ever take back.
    if (!c->closing && hold_next_.exchange(false)) {
        ++c->outstanding;
        ++in_flight_;
        ++w.in_flight;
    }
    if (c->closing && idle(*c)) free_connection(*c);  // the receive could not even start
}
//! [admit]

//! [post-recv]
// On c's worker, like everything that touches a connection: no lock needed.
void EchoServer::post_recv(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch09: no submission queue entry for a receive; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    // The buffer is the kernel's from the submission until the completion. There is no
    // "failed to start" here: an error, even a bad descriptor, comes back as the
    // completion's result.
    io_uring_prep_recv(sqe, c.socket.get(), c.recv.buffer.data(), c.recv.buffer.size(), 0);
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, false));  // user_data: what the completion hands back
    //! [count-up]
    // The count goes up with the request: one more completion will name c, and c may
    // not be freed before it has come.
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    ++c.worker->in_flight;
    //! [count-up]
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch09: no submission queue entry for a send; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    // MSG_NOSIGNAL: a peer that has gone makes this send fail with EPIPE instead of
    // raising SIGPIPE, whose default action ends the process.
    io_uring_prep_send(sqe, c.socket.get(), c.send.buffer.data() + c.sent, c.to_send - c.sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, true));
    raise_to(max_sends_, ++c.sending);  // 1, always: see start_echo and advance
    ++c.outstanding;
    ++in_flight_;
    ++c.worker->in_flight;
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
// One finished operation of c, on c's worker, c not closing: what it means for the
// echo.
void EchoServer::advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    switch (outcome) {
    case Outcome::kFailed:
        ++failed_;
        //! [reset-or-not]
        // We had not closed c (complete() checked), so this error is news: the peer
        // reset or went away (-ECONNRESET, -EPIPE; counted, not logged), or something
        // unexpected (logged). -ECANCELED here would be a cancel we never made.
        if (is_peer_reset(error)) {
            close_connection(c, Why::kPeerReset);  // that connection only; the others never notice
            return;
        }
        std::cerr << "ch09: " << (io.op == Op::kRecv ? "recv" : "send") << " completed with error " << error << " "
                  << iocp::error_text(error) << "\n";
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
        std::cerr << "ch09: send completed with 0 bytes; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.to_send) {  // short send: adjust and requeue the rest
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
// One finished operation of connection c, always on c's own worker.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    --c.outstanding;
    --in_flight_;
    --c.worker->in_flight;
    if (io.op == Op::kRecv) {
        c.receiving = false;
    } else {
        --c.sending;
    }
    // The closing flag first, before the outcome: a request we cancelled comes back
    // -ECANCELED, or with its real result if it finished first (a byte count, 0 like a
    // FIN, -ECONNRESET like a reset). Only our flag tells, and it was set before the
    // cancel was made.
    if (c.closing) {
        note_after_close(outcome == Outcome::kFailed ? error : 0);
    } else {
        advance(c, io, outcome, bytes, error);
    }
    // Closing, and this was its last operation: no completion will name c again, and
    // whoever took the count to zero frees it (here, always c's own worker).
    if (c.closing && idle(c)) free_connection(c);
}
//! [complete]

//! [find]
// The context a completion's tag names: one of the ring's own, or an operation of a
// live connection; nullptr if that connection is gone, its slot having moved on to
// another generation (or lying empty). Only w's thread touches w's table: no lock.
EchoServer::IoContext* EchoServer::find(Worker& w, std::uint64_t tag) {
    if (tag == kAcceptTag) return &w.accept_io;
    if (tag == kDoorbellTag) return &w.doorbell_io;
    const std::uint32_t slot = slot_of(tag);
    if (slot >= w.slots.size()) return nullptr;
    Slot& s = w.slots[slot];
    if (s.generation != generation_of(tag) || !s.connection) return nullptr;
    return is_send(tag) ? &s.connection->send : &s.connection->recv;
}
//! [find]

//! [dispatch]
// What the port does with its completion key, the ring does with user_data: it names
// the request. Besides the connections' receives and sends, a ring has requests of its
// own: the accept and its pause (worker 0), and the poll on the worker's doorbell.
void EchoServer::on_completion(Worker& w, IoContext& io, int result) {
    switch (io.op) {
    case Op::kRecv:
    case Op::kSend:
        ++w.completions;
        //! [matrix]
        // The result matrix of a ring is one number: res.
        if (result < 0) {
            // -errno: that I/O failed. -ECONNRESET for a reset, -EPIPE for a send to a
            // peer that has gone, -ECANCELED after our cancel. complete() sorts ours from
            // the peer's.
            complete(*io.connection, io, Outcome::kFailed, 0, -result);
        } else if (result == 0 && io.op == Op::kRecv) {
            // 0 on a receive: the peer sent FIN. An orderly end, not an error.
            complete(*io.connection, io, Outcome::kPeerClosed, 0, 0);
        } else {
            // A byte count (a send may move fewer than asked: the rest is posted again).
            complete(*io.connection, io, Outcome::kBytes, static_cast<std::size_t>(result), 0);
        }
        //! [matrix]
        return;
    case Op::kAccept:
        w.accept_pending = false;
        if (w.draining) {
            if (result >= 0) iocp::close_socket(result);  // arrived as we stopped
            return;
        }
        if (result >= 0) {
            hand_over(iocp::UniqueSocket(result));
        } else if (!iocp::is_disconnect_error(-result) && -result != EINTR) {
            // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS), or anything else:
            // the client stays queued, and accepting again at once would fail at once.
            // Pause with a timeout request, so that the thread keeps serving the others.
            ++accept_failures_;
            std::cerr << "ch09: accept failed: " << -result << " " << iocp::error_text(-result) << "\n";
            io_uring_sqe* sqe = get_sqe(w);
            if (sqe == nullptr) {  // no entry for the pause either: accept again after the next submit
                w.accept_retry = true;
                return;
            }
            w.accept_io.op = Op::kAcceptPause;
            io_uring_prep_timeout(sqe, &accept_pause_, 0, 0);
            io_uring_sqe_set_data64(sqe, kAcceptTag);
            w.accept_pending = true;
            return;
        }
        accept_clients(w);  // the next client
        return;
    case Op::kAcceptPause:
        w.accept_pending = false;
        if (!w.draining) accept_clients(w);
        return;
    case Op::kWake: {  // the doorbell: clients in the inbox, or stop()
        w.doorbell_pending = false;
        if (result < 0) std::cerr << "ch09: poll(eventfd) failed: " << iocp::error_text(-result) << "\n";
        // Reset the eventfd first, then empty the inbox: a client added after the reset
        // rings again, and the next poll finds it.
        std::uint64_t count = 0;
        if (::read(w.doorbell.get(), &count, sizeof count) < 0 && errno != EAGAIN)
            std::cerr << "ch09: read(eventfd) failed: " << iocp::error_text(errno) << "\n";
        std::vector<iocp::UniqueSocket> arrived;
        {
            std::lock_guard<std::mutex> lock(w.inbox_mutex);
            arrived.swap(w.inbox);
        }
        // The test hook (inject_stale_completion): a completion that names the
        // connection this worker freed last, as a late completion for it would. A NOP
        // request completes at once, with res 0 and the user_data it was given.
        if (w.probe.exchange(false) && w.last_freed != 0) {
            if (io_uring_sqe* sqe = get_sqe(w)) {
                io_uring_prep_nop(sqe);
                io_uring_sqe_set_data64(sqe, w.last_freed);
            }
        }
        if (stopping_) {  // stop()'s exit packet. Clients still in `arrived` just close.
            w.draining = true;
            w.drain_deadline = std::chrono::steady_clock::now() + limits_.drain_timeout;
            close_all(w);
            return;
        }
        for (auto& client : arrived) admit(w, std::move(client));
        listen_for_doorbell(w);
        return;
    }
    }
}
//! [dispatch]

// A poll on the worker's eventfd, pending until someone writes it. (A poll, not a read:
// a poll request only waits, and never occupies one of the kernel's worker threads,
// whatever the kernel version.)
void EchoServer::listen_for_doorbell(Worker& w) {
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) {  // the kernel takes no more requests right now: worker_loop tries again
        w.doorbell_retry = true;
        return;
    }
    w.doorbell_retry = false;
    w.doorbell_io.op = Op::kWake;
    io_uring_prep_poll_add(sqe, w.doorbell.get(), POLLIN);
    io_uring_sqe_set_data64(sqe, kDoorbellTag);
    w.doorbell_pending = true;
}

//! [worker]
void EchoServer::worker_loop(Worker& w) {
    listen_for_doorbell(w);
    if (&w == workers_.front().get()) accept_clients(w);
    for (;;) {
        // A request that found no free entry last round (the kernel refused requests):
        // the submit in get_sqe may get through now. If it still does not, poll rather
        // than sleep until a completion, since none may come while every client is idle.
        if (w.doorbell_retry && !w.draining) listen_for_doorbell(w);
        if (w.accept_retry && !w.draining) accept_clients(w);
        const bool polling = (w.doorbell_retry || w.accept_retry) && !w.draining;
        // Hand the kernel every request prepared since the last round, and sleep until
        // at least one completion is queued: GetQueuedCompletionStatus, in one call.
        // Only this thread ever submits to or reaps from w.ring: no lock. While
        // draining, the sleep is bounded by the drain's deadline.
        int rc = 0;
        bool out_of_time = false;
        if (w.draining) {
            //! [drain-bound]
            // Draining, the wait is bounded by the drain's deadline. Past it, one last
            // round hands the kernel what is prepared (the cancels) and takes what has
            // come, without waiting.
            const auto left = w.drain_deadline - std::chrono::steady_clock::now();
            if (left <= std::chrono::steady_clock::duration::zero()) {
                out_of_time = true;
                rc = io_uring_submit(&w.ring);
            } else {
                const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
                __kernel_timespec timeout{ns / 1'000'000'000, ns % 1'000'000'000};
                io_uring_cqe* first = nullptr;
                rc = io_uring_submit_and_wait_timeout(&w.ring, &first, 1, &timeout, nullptr);
                if (rc == -ETIME) rc = 0;  // the deadline: the next round sees it
            }
            //! [drain-bound]
        } else {
            rc = io_uring_submit_and_wait(&w.ring, polling ? 0 : 1);
        }
        // A failed wait is the ring's "FALSE with no OVERLAPPED": nothing was dequeued.
        // Nobody can close a worker's ring under it (stop() does so after the join), so
        // this is a broken ring, and leaving would strand buffers the kernel owns.
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) fatal("io_uring_submit_and_wait", -rc);
        // Take every completion that is ready, not one per wake-up. Each batch is copied
        // out and its slots given back before any is handled: handling submits new
        // requests, and their completions need room in the queue.
        std::size_t handled = 0;
        for (;;) {
            if (io_uring_cq_has_overflow(&w.ring)) ++cq_overflows_;  // never, with the queue sized in start()
            io_uring_cqe* cqes[64];
            const unsigned n = io_uring_peek_batch_cqe(&w.ring, cqes, 64);
            if (n == 0) break;
            // A completion is user_data, given back untouched (our tag: the key and the
            // OVERLAPPED in one), and res: a byte count or -errno, never both.
            struct Done {
                std::uint64_t tag;
                int result;
            } done[64];
            for (unsigned i = 0; i < n; ++i) done[i] = {io_uring_cqe_get_data64(cqes[i]), cqes[i]->res};
            io_uring_cq_advance(&w.ring, n);  // the slots are the kernel's again: read them first
            for (unsigned i = 0; i < n; ++i) {
                const std::uint64_t tag = done[i].tag;
                if (tag == kCancelTag) {  // a cancel request's own completion; its target completes separately
                    --w.cancels_in_flight;
                    // -ENOENT: the target had finished already; -EALREADY: it was running and
                    // has been told to stop. Both are normal: the target still completes.
                    const int r = done[i].result;
                    if (r < 0 && r != -ENOENT && r != -EALREADY)
                        std::cerr << "ch09: cancel: " << -r << " " << iocp::error_text(-r) << "\n";
                } else if (tag == LIBURING_UDATA_TIMEOUT) {
                    // liburing's own timeout request, on a kernel without IORING_FEAT_EXT_ARG.
                } else if (IoContext* io = find(w, tag)) {
                    on_completion(w, *io, done[i].result);
                } else {
                    //! [stale]
                    // A tag whose connection is gone: counted and dropped, and nothing of
                    // the slot's new occupant (if any) is touched.
                    ++stale_;
                    std::cerr << "ch09: dropped a completion for a connection that is gone (slot " << slot_of(tag)
                              << ", generation " << generation_of(tag) << ")\n";
                    //! [stale]
                }
            }
            handled += n;
        }
        // Leave only when every request of this ring has come home: each context is
        // free by then. The other workers drain their own rings.
        if (w.draining && w.in_flight == 0 && !w.accept_pending && !w.doorbell_pending && w.cancels_in_flight == 0)
            return;
        //! [give-up]
        // Or when the drain is out of time: stop() abandons what is left, after the join.
        if (out_of_time) {
            std::cerr << "ch09: stop: " << w.in_flight << " operation(s) of this ring still outstanding after "
                      << limits_.drain_timeout.count() << " ms\n";
            w.gave_up = true;
            return;
        }
        //! [give-up]
        if (polling && handled == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}
//! [worker]

//! [close]
// On c's worker. Cancels what is in flight; the connection is freed by whoever sees it
// closing with nothing outstanding (complete, admit, close_all), and its socket with it.
void EchoServer::close_connection(Connection& c, Why why) {
    if (c.closing) return;
    // The flag first, then the cancels: every completion of c from here on, whatever
    // it says, is the echo of this close.
    c.closing = true;
    c.why = why;
    // close() would cancel nothing here: a request in the ring holds its own reference
    // to the socket. So each pending operation is cancelled by its tag; it still
    // completes (-ECANCELED, or its real result if it finished first), and that
    // completion is how we learn the kernel is done with its context and its buffer.
    if (c.receiving) cancel(*c.worker, make_tag(c.slot, c.generation, false), c.socket.get());
    if (c.sending > 0) cancel(*c.worker, make_tag(c.slot, c.generation, true), c.socket.get());
}

// Nobody can reach c any more: it is closing (nothing new is posted), nothing of it is
// outstanding (no completion will name it), and it leaves the table here.
void EchoServer::free_connection(Connection& c) {
    Worker& w = *c.worker;
    //! [retire]
    // Retire the tag before the slot can be taken again: from now on a completion that
    // names (slot, this generation) is stale, whoever occupies the slot.
    Slot& s = w.slots[c.slot];
    s.generation = next_generation(c.generation);
    w.free_slots.push_back(c.slot);
    w.last_freed = make_tag(c.slot, c.generation, false);
    //! [retire]
    switch (c.why) {
    case Why::kPeerFin: ++peer_closes_; break;
    case Why::kPeerReset: ++resets_; break;
    case Why::kByUs: ++closed_by_us_; break;
    }
    ++served_;
    s.connection.reset();  // destroys c and closes its socket: the client sees FIN
    live_contexts_ -= 2;
    --live_;  // last: once live_connections() says 0, nothing of any connection is left
}

// IORING_OP_ASYNC_CANCEL finds the request by its user_data: here a tag that names one
// generation of one slot, so the cancel can never find a later connection's request,
// even if it reaches the kernel after that connection has taken the slot.
void EchoServer::cancel(Worker& w, std::uint64_t tag, iocp::socket_t fd) {
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) {
        // The kernel takes no more requests right now: wake the operation the blunt way.
        // A pending recv then returns 0, a send EPIPE, an accept EINVAL.
        ::shutdown(fd, SHUT_RDWR);
        return;
    }
    io_uring_prep_cancel64(sqe, tag, 0);
    io_uring_sqe_set_data64(sqe, kCancelTag);
    ++w.cancels_in_flight;
}
//! [close]

//! [close-all]
// Runs on worker w, for w's connections only: each worker drains its own ring.
void EchoServer::close_all(Worker& w) {
    if (w.accept_pending) cancel(w, kAcceptTag, listener_.get());
    for (std::size_t i = 0; i < w.slots.size(); ++i) {
        Connection* c = w.slots[i].connection.get();
        if (c == nullptr) continue;
        const bool was_closing = c->closing;
        close_connection(*c, Why::kByUs);
        // A connection always has an operation in flight between two completions, so
        // this stays false; if it were not, the connection would be ours to free.
        if (!was_closing && idle(*c)) free_connection(*c);
    }
}
//! [close-all]

//! [abandon]
// After a drain that ran out of time, with every worker joined: the connections still
// in a table have requests the kernel has not given back, and may yet write to. They
// are parked for the life of the process, on purpose: memory the log names, never
// handed back to the heap while the kernel may own it.
void EchoServer::abandon() {
    std::size_t connections = 0;
    for (auto& w : workers_) {
        if (!w->gave_up) continue;
        for (Slot& s : w->slots) {
            if (!s.connection) continue;
            ++connections;
            abandoned_ += static_cast<std::size_t>(s.connection->outstanding);
            park(std::move(s.connection));
        }
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
    // 1-4 happen on each worker, in its own ring, once its doorbell rings: stop()'s
    // thread cannot submit to a ring it does not own. Each worker then
    //   1. stops accepting (worker 0: it cancels its accept first),
    //   2. closes its connections: the closing flag, then a cancel by tag for each
    //      pending request,
    //   3. drains: handles each request as it comes home, and the completion that takes
    //      a connection's count to zero frees it; bounded by drain_timeout,
    //   4. and returns, its ring empty: the exit packet and the drain in one.
    for (auto& w : workers_) {
        if (w->doorbell) ring_doorbell(w->doorbell.get());
    }
    // 5. Join them all: from here on no thread of ours touches a ring or a connection.
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    // A client handed to a worker after it had stopped was never admitted: close it.
    for (auto& w : workers_) {
        std::lock_guard<std::mutex> lock(w->inbox_mutex);
        w->inbox.clear();
    }
    // 6. Close the rings, last. A ring whose drain ran out of time still has requests;
    // closing it cancels them in the kernel, in the background, so what they point to
    // is abandoned, never freed.
    abandon();
    for (auto& w : workers_) {
        if (w->ring_ready) {
            io_uring_queue_exit(&w->ring);
            w->ring_ready = false;
        }
    }
    listener_.reset();
    stopped_ = true;  // the Worker records stay: their counts remain readable
}
//! [stop]

//! [inject]
// The test hook. Each worker is asked, through its doorbell, to submit a request whose
// user_data is the tag of the connection it freed last, as a late completion for it
// would carry. If a new connection has taken that slot, only the generation stands
// between the completion and that connection.
void EchoServer::inject_stale_completion() {
    if (workers_.empty() || stopped_) return;
    for (auto& w : workers_) {
        w->probe = true;
        if (w->doorbell) ring_doorbell(w->doorbell.get());
    }
}
//! [inject]

}  // namespace ch09
