// Chapter 8 - the worker pool's Linux twin: one io_uring per worker. See echo_server.h
// and docs/pages/ch08.md. The same functions in the same order as echo_iocp.cpp, so
// that `diff echo_iocp.cpp echo_uring.cpp` shows only what the OS changes.
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
#include <stdexcept>
#include <string>
#include <utility>

#include <poll.h>
#include <sys/eventfd.h>

namespace ch08 {

namespace {

// Submission queue entries per ring: requests prepared between two submits (a full
// queue is submitted at once). The completion queue is sized from max_clients in start().
constexpr unsigned kRingEntries = 256;
constexpr long long kAcceptBackoffNs = 100'000'000;  // 100 ms

// A call on our own ring failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] void fatal(const char* call, int error) {
    std::cerr << "ch08: " << call << " failed: " << error << " " << iocp::error_text(error) << "; cannot continue\n";
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
            throw std::runtime_error("ch08: max_clients " + std::to_string(limits_.max_clients) +
                                     " needs completion queues of " + std::to_string(4 * max_clients + 4) +
                                     " entries; this kernel allows " + std::to_string(params.cq_entries) +
                                     ", enough for at most " + std::to_string(most) + " clients");
        // Should a queue fill up all the same, a completion must never be dropped:
        // IORING_FEAT_NODROP (Linux 5.5) keeps the overflow in the kernel until there is room.
        if ((params.features & IORING_FEAT_NODROP) == 0)
            throw std::runtime_error("ch08: this kernel's io_uring may drop completions (Linux 5.5 or later needed)");
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
    if (probe == nullptr) throw std::runtime_error("ch08: this kernel has no io_uring opcode probe (Linux 5.6 or later needed)");
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
    if (!missing.empty()) throw std::runtime_error("ch08: this kernel's io_uring lacks " + missing + " (Linux 5.6 or later needed)");
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
    io_uring_sqe_set_data(sqe, &w.accept_io);
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
        std::cerr << "ch08: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << limits_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF
    }
    try {
        // An echo split over two sends would wait ~40 ms for the peer's delayed ACK
        // under Nagle's algorithm; a request/response server turns Nagle off.
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "ch08: " << e.what() << "\n";
        --live_;
        return;
    }
    Connection* c = &w.connections.emplace_back();  // w's thread is the only one here
    c->self = std::prev(w.connections.end());
    c->worker = &w;
    c->socket = std::move(client);
    c->recv.op = Op::kRecv;
    c->recv.connection = c;
    c->recv.buffer.resize(limits_.buffer_size);
    c->send.op = Op::kSend;
    c->send.connection = c;
    c->send.buffer.resize(limits_.buffer_size);
    //! [associate]
    // Nothing to associate: a ring takes requests on any descriptor, and each request
    // carries its own context (user_data). There is no per-handle key: the per-I/O
    // context points to its connection, the per-handle data.
    post_recv(*c);
    //! [associate]
    if (c->closing && idle(*c)) free_connection(*c);  // the receive could not even start
}
//! [admit]

//! [post-recv]
// On c's worker, like everything that touches a connection: no lock needed.
void EchoServer::post_recv(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch08: no submission queue entry for a receive; closing\n";
        close_connection(c);
        return;
    }
    // The buffer is the kernel's from the submission until the completion. There is no
    // "failed to start" here: an error, even a bad descriptor, comes back as the
    // completion's result.
    io_uring_prep_recv(sqe, c.socket.get(), c.recv.buffer.data(), c.recv.buffer.size(), 0);
    io_uring_sqe_set_data(sqe, &c.recv);  // user_data: what the completion hands back
    c.receiving = true;
    ++in_flight_;
    ++c.worker->in_flight;
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch08: no submission queue entry for a send; closing\n";
        close_connection(c);
        return;
    }
    // MSG_NOSIGNAL: a peer that has gone makes this send fail with EPIPE instead of
    // raising SIGPIPE, whose default action ends the process.
    io_uring_prep_send(sqe, c.socket.get(), c.send.buffer.data() + c.sent, c.to_send - c.sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, &c.send);
    raise_to(max_sends_, ++c.sending);  // 1, always: see start_echo and advance
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
        if (!iocp::is_disconnect_error(error))
            std::cerr << "ch08: " << (io.op == Op::kRecv ? "recv" : "send") << " completed with error "
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
        std::cerr << "ch08: send completed with 0 bytes; closing\n";
        close_connection(c);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.to_send) {  // short send: adjust and requeue the rest
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
// One finished operation of connection c, always on c's own worker.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    --in_flight_;
    --c.worker->in_flight;
    if (io.op == Op::kRecv) {
        c.receiving = false;
    } else {
        --c.sending;
    }
    if (!c.closing) advance(c, io, outcome, bytes, error);
    // Closing, and this was its last operation: no completion will name c again.
    if (c.closing && idle(c)) free_connection(c);
}
//! [complete]

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
            // peer that has gone, -ECANCELED after our cancel. Close that connection only.
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
            std::cerr << "ch08: accept failed: " << -result << " " << iocp::error_text(-result) << "\n";
            io_uring_sqe* sqe = get_sqe(w);
            if (sqe == nullptr) {  // no entry for the pause either: accept again after the next submit
                w.accept_retry = true;
                return;
            }
            w.accept_io.op = Op::kAcceptPause;
            io_uring_prep_timeout(sqe, &accept_pause_, 0, 0);
            io_uring_sqe_set_data(sqe, &w.accept_io);
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
        if (result < 0) std::cerr << "ch08: poll(eventfd) failed: " << iocp::error_text(-result) << "\n";
        // Reset the eventfd first, then empty the inbox: a client added after the reset
        // rings again, and the next poll finds it.
        std::uint64_t count = 0;
        if (::read(w.doorbell.get(), &count, sizeof count) < 0 && errno != EAGAIN)
            std::cerr << "ch08: read(eventfd) failed: " << iocp::error_text(errno) << "\n";
        std::vector<iocp::UniqueSocket> arrived;
        {
            std::lock_guard<std::mutex> lock(w.inbox_mutex);
            arrived.swap(w.inbox);
        }
        if (stopping_) {  // stop()'s exit packet. Clients still in `arrived` just close.
            w.draining = true;
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
    io_uring_sqe_set_data(sqe, &w.doorbell_io);
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
        // Only this thread ever submits to or reaps from w.ring: no lock.
        const int rc = io_uring_submit_and_wait(&w.ring, polling ? 0 : 1);
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
            // A completion is user_data, given back untouched (our IoContext*, the key and
            // the OVERLAPPED in one), and res: a byte count or -errno, never both.
            struct Done {
                IoContext* io;
                int result;
            } done[64];
            for (unsigned i = 0; i < n; ++i) done[i] = {static_cast<IoContext*>(io_uring_cqe_get_data(cqes[i])), cqes[i]->res};
            io_uring_cq_advance(&w.ring, n);  // the slots are the kernel's again: read them first
            for (unsigned i = 0; i < n; ++i) {
                if (done[i].io != nullptr) {
                    on_completion(w, *done[i].io, done[i].result);
                } else {  // a cancel request's own completion; its target completes separately
                    --w.cancels_in_flight;
                    // -ENOENT: the target had finished already; -EALREADY: it was running and
                    // has been told to stop. Both are normal: the target still completes.
                    const int r = done[i].result;
                    if (r < 0 && r != -ENOENT && r != -EALREADY)
                        std::cerr << "ch08: cancel: " << -r << " " << iocp::error_text(-r) << "\n";
                }
            }
            handled += n;
        }
        // Leave only when every request of this ring has come home: each context is
        // free by then. The other workers drain their own rings.
        if (w.draining && w.in_flight == 0 && !w.accept_pending && !w.doorbell_pending && w.cancels_in_flight == 0)
            return;
        if (polling && handled == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}
//! [worker]

//! [close]
// On c's worker. Cancels what is in flight; the connection is freed by whoever sees it
// closing with nothing in flight (complete, admit, close_all), and its socket with it.
void EchoServer::close_connection(Connection& c) {
    if (c.closing) return;
    c.closing = true;
    // close() would cancel nothing here: a request in the ring holds its own reference
    // to the socket. So each pending operation is cancelled by name; it still completes
    // (-ECANCELED, or its real result if it finished first), and that completion is how
    // we learn the kernel is done with its context and its buffer.
    if (c.receiving) cancel(*c.worker, c.recv, c.socket.get());
    if (c.sending > 0) cancel(*c.worker, c.send, c.socket.get());
}

void EchoServer::free_connection(Connection& c) {
    c.worker->connections.erase(c.self);  // closes the socket: the client sees FIN
    --live_;
    ++served_;
}

// IORING_OP_ASYNC_CANCEL finds the request by its user_data. A closing connection posts
// nothing new and is freed only after both its operations have completed, so no other
// request of this ring can carry the same address (chapter 9 adds generation tags for
// the general case).
void EchoServer::cancel(Worker& w, IoContext& io, iocp::socket_t fd) {
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) {
        // The kernel takes no more requests right now: wake the operation the blunt way.
        // A pending recv then returns 0, a send EPIPE, an accept EINVAL.
        ::shutdown(fd, SHUT_RDWR);
        return;
    }
    io_uring_prep_cancel(sqe, &io, 0);
    io_uring_sqe_set_data(sqe, nullptr);
    ++w.cancels_in_flight;
}
//! [close]

//! [close-all]
// Runs on worker w, for w's connections only: each worker drains its own ring.
void EchoServer::close_all(Worker& w) {
    if (w.accept_pending) cancel(w, w.accept_io, listener_.get());
    for (auto it = w.connections.begin(); it != w.connections.end();) {
        Connection& c = *it++;  // free_connection may erase c
        const bool was_closing = c.closing;
        close_connection(c);
        // A connection always has an operation in flight between two completions, so
        // this stays false; if it were not, the connection would be ours to free.
        if (!was_closing && idle(c)) free_connection(c);
    }
}
//! [close-all]

//! [stop]
void EchoServer::stop() {
    if (workers_.empty() || stopped_) return;  // never started, or stopped already
    stopping_ = true;
    // 1. Stop accepting: nothing to do here. The accept is a request in worker 0's ring,
    // and worker 0 cancels it with everything else.
    // 2. The exit packets: every worker's doorbell rings, and each worker cancels every
    // request of its own ring, handles each one as it comes home (freeing its
    // connections), and returns once none is left in flight.
    for (auto& w : workers_) {
        if (w->doorbell) ring_doorbell(w->doorbell.get());
    }
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    // 3. A client handed to a worker after it had stopped was never admitted: close it.
    // Then no request is left in any ring, and the rings can go.
    for (auto& w : workers_) {
        std::lock_guard<std::mutex> lock(w->inbox_mutex);
        w->inbox.clear();
    }
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

}  // namespace ch08
