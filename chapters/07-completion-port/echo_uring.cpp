// Chapter 7 - the completion port's Linux twin: one io_uring, one thread. See echo_server.h
// and docs/pages/ch07.md. The functions echo_iocp.cpp has come in the same order, so that
// `diff echo_iocp.cpp echo_uring.cpp` shows only what the OS changes.
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

namespace ch07 {

namespace {

// Submission queue entries: requests prepared between two submits (a full queue is
// submitted at once). The completion queue is sized from max_clients in start().
constexpr unsigned kRingEntries = 256;

// A call on our own ring failed: the process is in a state we cannot reason about, and
// freeing any context now could hand the kernel memory that is no longer ours.
[[noreturn]] void fatal(const char* call, int error) {
    std::cerr << "ch07: " << call << " failed: " << error << " " << iocp::error_text(error) << "; cannot continue\n";
    std::abort();
}

// A call failed and the server goes on: say which, with the number and its text.
void report(const char* call, int error) {
    std::cerr << "ch07: " << call << " failed: " << error << " " << iocp::error_text(error) << "\n";
}

}  // namespace

//! [start]
void EchoServer::start() {
    //! [create-port]
    // One ring: a submission queue we fill with requests, a completion queue the kernel
    // fills with results. A port's queue has no size; a ring's has, so it is sized for
    // the worst case: each connection's one operation and a cancel of it, plus the accept,
    // its cancel and the eventfd poll (and a spare). IORING_SETUP_CLAMP turns a size past
    // the kernel's cap into the cap, checked below (never below the submission queue).
    const std::size_t max_clients = std::min<std::size_t>(limits_.max_clients, UINT_MAX / 2 - 2);
    const std::size_t needed = std::max<std::size_t>(2 * max_clients + 4, 2 * kRingEntries);
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
    params.cq_entries = static_cast<unsigned>(needed);
    if (const int rc = io_uring_queue_init_params(kRingEntries, &ring_, &params); rc < 0) {
        // EINVAL: a kernel older than 5.6 lacks CLAMP (5.5 added CQSIZE). ENOMEM: before Linux 5.12
        // the rings' memory counts against RLIMIT_MEMLOCK (ulimit -l).
        throw iocp::SystemError(rc == -EINVAL   ? "io_uring_queue_init_params (Linux 5.6 or later needed)"
                                : rc == -ENOMEM ? "io_uring_queue_init_params (locked memory: see ulimit -l)"
                                                : "io_uring_queue_init_params", -rc);
    }
    ring_ready_ = true;
    if (const std::size_t most = (params.cq_entries - 4) / 2; limits_.max_clients > most)
        throw std::runtime_error("ch07: max_clients " + std::to_string(limits_.max_clients) + " needs a completion queue of " +
                                 std::to_string(2 * max_clients + 4) + " entries; this kernel allows " +
                                 std::to_string(params.cq_entries) + ", enough for " + std::to_string(most) + " clients");
    // Should the queue fill up all the same, a completion must never be dropped:
    // IORING_FEAT_NODROP (Linux 5.5) keeps the overflow in the kernel until there is room.
    if ((params.features & IORING_FEAT_NODROP) == 0)
        throw std::runtime_error("ch07: this kernel's io_uring may drop completions (Linux 5.5 or later needed)");
    check_kernel();
    //! [create-port]
    wake_ = iocp::UniqueFd(::eventfd(0, EFD_CLOEXEC));
    if (!wake_) iocp::throw_last_error("eventfd");
    listener_ = iocp::listen_tcp(where_);
    port_ = iocp::local_port(listener_.get());
    worker_ = std::thread([this] { worker_loop(); });
}
//! [start]

// Every request this server makes must be one the kernel knows: IORING_OP_SEND and
// IORING_OP_RECV came in Linux 5.6, and a kernel without them would fail each receive
// with -EINVAL at run time. The opcode probe (also 5.6) answers up front.
void EchoServer::check_kernel() {
    io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
    if (probe == nullptr) throw std::runtime_error("ch07: this kernel has no io_uring opcode probe (Linux 5.6 or later needed)");
    std::string missing;
    for (const auto& [op, name] : {std::pair{IORING_OP_RECV, "RECV"}, {IORING_OP_SEND, "SEND"}, {IORING_OP_ACCEPT, "ACCEPT"},
                                   {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"}, {IORING_OP_TIMEOUT, "TIMEOUT"},
                                   {IORING_OP_POLL_ADD, "POLL_ADD"}})
        if (!io_uring_opcode_supported(probe, op)) missing += std::string(missing.empty() ? "" : ", ") + "IORING_OP_" + name;
    io_uring_free_probe(probe);
    if (!missing.empty()) throw std::runtime_error("ch07: this kernel's io_uring lacks " + missing + " (Linux 5.6 or later needed)");
}

//! [get-sqe]
// The next free submission queue entry. It is only filled in here; the kernel sees it
// at the next io_uring_submit*. A full queue is handed to the kernel at once.
io_uring_sqe* EchoServer::get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
        io_uring_submit(&ring_);
        sqe = io_uring_get_sqe(&ring_);
    }
    return sqe;  // nullptr only when the kernel would take nothing more right now
}
//! [get-sqe]

//! [accept]
// No accept thread: the accept is one more request in the ring, posted again each time
// it completes (see on_completion).
void EchoServer::accept_clients() {
    io_uring_sqe* sqe = get_sqe();
    if (sqe == nullptr) {  // the kernel takes no more requests right now: worker_loop tries again
        accept_retry_ = true;
        return;
    }
    accept_retry_ = false;
    accept_io_.op = Op::kAccept;
    io_uring_prep_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &accept_io_);
    accept_pending_ = true;
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
    Connection* c = &connections_.emplace_back();  // the worker is the only thread here
    c->self = std::prev(connections_.end());
    ++live_;
    c->socket = std::move(client);
    c->buffer.resize(limits_.buffer_size);
    c->io.connection = c;
    post_recv(*c);  // nothing to associate: each request carries its own context (user_data)
}
//! [admit]

//! [post-recv]
void EchoServer::post_recv(Connection& c) {
    io_uring_sqe* sqe = get_sqe();
    if (sqe == nullptr) {
        std::cerr << "ch07: no submission queue entry for a receive; closing\n";
        close_connection(c);
        return;
    }
    c.io.op = Op::kRecv;
    // The buffer is the kernel's from the submission until the completion. Once it has
    // an entry, a request cannot fail to start: an error, even a bad descriptor, comes
    // back as the completion's result. (No entry at all is handled above.)
    io_uring_prep_recv(sqe, c.socket.get(), c.buffer.data(), c.buffer.size(), 0);
    io_uring_sqe_set_data(sqe, &c.io);  // user_data: what the completion hands back
    c.pending = true;
    ++in_flight_;
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    io_uring_sqe* sqe = get_sqe();
    if (sqe == nullptr) {
        std::cerr << "ch07: no submission queue entry for a send; closing\n";
        close_connection(c);
        return;
    }
    c.io.op = Op::kSend;
    // MSG_NOSIGNAL: a peer that has gone makes this send fail with EPIPE instead of
    // raising SIGPIPE, whose default action ends the process.
    io_uring_prep_send(sqe, c.socket.get(), c.buffer.data() + c.sent, c.filled - c.sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, &c.io);
    c.pending = true;
    ++in_flight_;
}
//! [post-send]

//! [complete]
// One finished operation of connection c: `result` is the byte count, or -errno
// (-ECONNRESET for a reset, for instance).
void EchoServer::complete(Connection& c, int result) {
    --in_flight_;
    c.pending = false;
    if (c.closing) {  // we cancelled it: this is the operation coming home
        free_connection(c);
        return;
    }
    if (result < 0) {
        if (!iocp::is_disconnect_error(-result))
            report(c.io.op == Op::kRecv ? "receive" : "send", -result);
        close_connection(c);
        return;
    }
    const auto bytes = static_cast<std::size_t>(result);
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
        std::cerr << "ch07: send completed with 0 bytes; closing\n";
        close_connection(c);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.filled) {  // short send: adjust and requeue the rest
        ++reposted_;
        post_send(c);
    } else {
        post_recv(c);  // all echoed: read again
    }
}
//! [complete]

//! [dispatch]
// What the port does with its completion key, the ring does with user_data: it names
// the request. Besides the connections' receives and sends, the ring has four kinds of
// its own: the accept, the pause after a failed accept, the poll on the wake-up eventfd,
// and the cancel requests.
void EchoServer::on_completion(IoContext& io, int result) {
    switch (io.op) {
    case Op::kRecv:
    case Op::kSend:
        complete(*io.connection, result);
        return;
    case Op::kAccept:
        accept_pending_ = false;
        if (draining_ && result >= 0) iocp::close_socket(result);  // arrived as we stopped
        if (draining_) return;
        if (result >= 0) {
            admit(iocp::UniqueSocket(result));
        } else if (!iocp::is_disconnect_error(-result) && -result != EINTR) {
            // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS), or anything else:
            // the client stays queued, and accepting again at once would fail at once.
            // Pause with a timeout request, so that the thread keeps serving the others.
            ++accept_failures_;
            report("accept", -result);
            io_uring_sqe* sqe = get_sqe();
            if (sqe == nullptr) {  // no entry for the pause either: accept again after the next submit
                accept_retry_ = true;
                return;
            }
            accept_io_.op = Op::kAcceptPause;
            io_uring_prep_timeout(sqe, &accept_pause_, 0, 0);
            io_uring_sqe_set_data(sqe, &accept_io_);
            accept_pending_ = true;
            return;
        }
        accept_clients();  // the next client
        return;
    case Op::kAcceptPause:
        accept_pending_ = false;
        if (!draining_) accept_clients();
        return;
    case Op::kWake:  // stop()'s exit packet: the eventfd became readable
        wake_pending_ = false;
        if (result < 0) report("poll(eventfd)", -result);
        draining_ = true;
        close_all();
        return;
    case Op::kCancel:  // a cancel request's own completion; its target completes on its own
        --cancels_in_flight_;
        // -ENOENT: the target had finished already; -EALREADY: it was running and has
        // been told to stop. Both are normal: the target's completion still comes.
        if (result < 0 && result != -ENOENT && result != -EALREADY) report("cancel", -result);
        return;
    }
}
//! [dispatch]

//! [reap]
// Takes every completion that is ready, not one per wake-up, and returns how many.
// Each batch is copied out and its slots given back before any is handled: handling
// submits new requests, and their completions need room in the queue.
std::size_t EchoServer::take_completions() {
    std::size_t handled = 0;
    for (;;) {
        if (io_uring_cq_has_overflow(&ring_)) ++cq_overflows_;  // never, with the queue sized in start()
        io_uring_cqe* cqes[64];
        const unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, 64);
        if (n == 0) return handled;
        // A completion is user_data, given back untouched (our IoContext*, the key and
        // the OVERLAPPED in one), and res: a byte count or -errno, never both.
        std::pair<IoContext*, int> done[64];
        for (unsigned i = 0; i < n; ++i) done[i] = {static_cast<IoContext*>(io_uring_cqe_get_data(cqes[i])), cqes[i]->res};
        io_uring_cq_advance(&ring_, n);  // the slots are the kernel's again: read them first
        for (unsigned i = 0; i < n; ++i) on_completion(*done[i].first, done[i].second);
        handled += n;
    }
}
//! [reap]

//! [worker]
void EchoServer::worker_loop() {
    // The mailbox for stop()'s exit packet: a poll on the eventfd, pending until it is
    // written (a poll only waits: it never takes one of the kernel's worker threads).
    io_uring_sqe* sqe = get_sqe();
    if (sqe == nullptr) fatal("io_uring_get_sqe(eventfd)", EBUSY);  // cannot be: the ring is empty
    wake_io_.op = Op::kWake;
    io_uring_prep_poll_add(sqe, wake_.get(), POLLIN);
    io_uring_sqe_set_data(sqe, &wake_io_);
    wake_pending_ = true;
    accept_clients();
    for (;;) {
        // An accept that found no free entry last round (the kernel refused requests):
        // the submit in get_sqe may get through now. If it still does not, poll rather
        // than sleep until a completion, since none may come while every client is idle.
        if (accept_retry_ && !draining_) accept_clients();
        const bool polling = accept_retry_ && !draining_;
        // Hand the kernel every request prepared since the last round, and sleep until
        // at least one completion is queued: GetQueuedCompletionStatus, in one call.
        const int rc = io_uring_submit_and_wait(&ring_, polling ? 0 : 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) fatal("io_uring_submit_and_wait", -rc);
        const std::size_t handled = take_completions();
        // Leave only when every request has come home: each context is free by then.
        if (draining_ && in_flight_ == 0 && !accept_pending_ && !wake_pending_ && cancels_in_flight_ == 0) return;
        if (polling && handled == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}
//! [worker]

//! [close]
void EchoServer::close_connection(Connection& c) {
    if (c.closing) return;
    c.closing = true;
    // close() would cancel nothing here: a request in the ring holds its own reference
    // to the socket. So the pending operation is cancelled by name; it still completes
    // (-ECANCELED, or its real result if it finished first), and that completion is how
    // we learn the kernel is done with c.io and c.buffer. The socket closes with c.
    if (c.pending) cancel(c.io, c.socket.get());
    if (!c.pending) free_connection(c);
}

void EchoServer::free_connection(Connection& c) {
    connections_.erase(c.self);  // closes the socket: the client sees FIN (a reset if bytes were left unread)
    --live_;
    ++served_;
}

// IORING_OP_ASYNC_CANCEL finds the request by its user_data. During the drain no new
// request is made, so no other request can carry the same address (chapter 9 adds
// generation tags for the general case).
void EchoServer::cancel(IoContext& io, iocp::socket_t fd) {
    io_uring_sqe* sqe = get_sqe();
    if (sqe == nullptr) {
        // The kernel takes no more requests right now: wake the operation the blunt way.
        // A pending recv then returns 0, a send EPIPE, an accept EINVAL.
        ::shutdown(fd, SHUT_RDWR);
        return;
    }
    io_uring_prep_cancel(sqe, &io, 0);
    io_uring_sqe_set_data(sqe, &cancel_io_);  // every cancel request shares this context
    ++cancels_in_flight_;
}
//! [close]

//! [close-all]
// Runs on the worker, like everything that touches the ring or connections_.
void EchoServer::close_all() {
    if (accept_pending_) cancel(accept_io_, listener_.get());
    for (auto it = connections_.begin(); it != connections_.end();) {
        Connection& c = *it++;  // close_connection may erase c
        close_connection(c);
    }
}
//! [close-all]

//! [stop]
void EchoServer::stop() {
    if (worker_.joinable()) {
        stopping_ = true;
        // 1. Stop accepting: nothing to do; the worker cancels the accept with the rest.
        // 2. The exit packet: eight bytes on the eventfd complete the ring's poll on it.
        // 3. Wait for the worker thread to end; the drain is the worker's, as on Windows.
        const std::uint64_t one = 1;
        while (::write(wake_.get(), &one, sizeof one) < 0)
            if (errno != EINTR) fatal("write(eventfd)", errno);
        worker_.join();
    }
    listener_.reset();
    wake_.reset();
    if (ring_ready_) {
        io_uring_queue_exit(&ring_);
        ring_ready_ = false;
    }
}
//! [stop]

}  // namespace ch07
