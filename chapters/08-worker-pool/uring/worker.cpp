// Chapter 8, Linux side: the workers. Each one submits to its own ring, waits for its
// completions, and sorts them by the request they name. Its twin is iocp/worker.cpp,
// the same file name on the Windows side.
#include "internal.h"

#include <chrono>
#include <utility>

#include <poll.h>

namespace ch08 {

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
        on_accept(w, result);
        return;
    case Op::kAcceptPause:
        w.accept_pending = false;
        if (!w.draining) accept_clients(w);
        return;
    case Op::kWake:
        on_doorbell(w, result);
        return;
    }
}

// Worker 0's accept completed: a client to hand over, or a reason to pause.
void EchoServer::on_accept(Worker& w, int result) {
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
}

// The doorbell rang: clients in the inbox, or stop().
void EchoServer::on_doorbell(Worker& w, int result) {
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
// Hands the kernel every request prepared since the last round, and sleeps until at
// least one completion is queued: GetQueuedCompletionStatus, in one call. Returns
// whether this round only polled (see worker_loop).
bool EchoServer::wait_for_completions(Worker& w) {
    // A request that found no free entry last round (the kernel refused requests):
    // the submit in get_sqe may get through now. If it still does not, poll rather
    // than sleep until a completion, since none may come while every client is idle.
    if (w.doorbell_retry && !w.draining) listen_for_doorbell(w);
    if (w.accept_retry && !w.draining) accept_clients(w);
    const bool polling = (w.doorbell_retry || w.accept_retry) && !w.draining;
    // Only this thread ever submits to or reaps from w.ring: no lock.
    const int rc = io_uring_submit_and_wait(&w.ring, polling ? 0 : 1);
    // A failed wait is the ring's "FALSE with no OVERLAPPED": nothing was dequeued.
    // Nobody can close a worker's ring under it (stop() does so after the join), so
    // this is a broken ring, and leaving would strand buffers the kernel owns.
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) fatal("io_uring_submit_and_wait", -rc);
    return polling;
}

// Takes up to 64 completions that are ready and handles them; returns how many. The
// batch is copied out and its slots given back before any is handled: handling submits
// new requests, and their completions need room in the queue.
unsigned EchoServer::reap_batch(Worker& w) {
    if (io_uring_cq_has_overflow(&w.ring)) ++cq_overflows_;  // never, with the queue sized in start()
    io_uring_cqe* cqes[64];
    const unsigned n = io_uring_peek_batch_cqe(&w.ring, cqes, 64);
    // A completion is user_data, given back untouched (our IoContext*, the key and the
    // OVERLAPPED in one), and res: a byte count or -errno, never both.
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
    return n;
}

void EchoServer::worker_loop(Worker& w) {
    listen_for_doorbell(w);
    if (&w == workers_.front().get()) accept_clients(w);
    for (;;) {
        const bool polling = wait_for_completions(w);
        // Take every completion that is ready, not one per wake-up.
        std::size_t handled = 0;
        while (const unsigned n = reap_batch(w)) handled += n;
        // Leave only when every request of this ring has come home: each context is
        // free by then. The other workers drain their own rings.
        if (w.draining && w.in_flight == 0 && !w.accept_pending && !w.doorbell_pending && w.cancels_in_flight == 0)
            return;
        if (polling && handled == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}
//! [worker]

}  // namespace ch08
