// Chapter 14, Linux side: the workers - chapter 13's loop on each worker's own ring,
// which now also carries out the commands (send, close) that callbacks and other
// threads leave for it, after every batch of completions.
#include "internal.h"

#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <poll.h>

namespace ch14 {

//! [get-sqe]
// The next free submission queue entry of w's ring. It is only filled in here; the
// kernel sees it at the next io_uring_submit*. A full queue is handed to the kernel.
io_uring_sqe* Engine::get_sqe(Worker& w, unsigned room) {
    // `room`: entries the caller needs in a row (an operation and its link timeout must
    // go in the same submission, or the link would end at the first).
    if (io_uring_sq_space_left(&w.ring) < room) {
        io_uring_submit(&w.ring);
        ++waits_;  // a call into the kernel all the same
    }
    if (io_uring_sq_space_left(&w.ring) < room) return nullptr;
    return io_uring_get_sqe(&w.ring);  // nullptr only when the kernel would take nothing more right now
}
//! [get-sqe]

//! [find]
// The context a completion's tag names: one of the ring's own, or an operation of a
// live connection; nullptr if that connection is gone, its slot having moved on to
// another generation (or lying empty). Only w's thread touches w's table: no lock.
Engine::IoContext* Engine::find(Worker& w, std::uint64_t tag) {
    if (tag == kAcceptTag) return &w.accept_io;
    if (tag == kDoorbellTag) return &w.doorbell_io;
    if (tag == kTickTag) return &w.tick_io;
    const std::uint32_t slot = slot_of(tag);
    if (slot >= w.slots.size()) return nullptr;
    Slot& s = w.slots[slot];
    if (s.generation != generation_of(tag) || !s.connection) return nullptr;
    return kind_of(tag) == Kind::kRecv ? &s.connection->recv : &s.connection->send;
}
//! [find]

// The doorbell's completion: clients in the inbox, or stop().
void Engine::on_doorbell(Worker& w, int result) {
    w.doorbell_pending = false;
    if (result < 0) std::cerr << "engine: poll(eventfd) failed: " << iocp::error_text(-result) << "\n";
    // Reset the eventfd first, then empty the inbox: a client added after the reset
    // rings again, and the next poll finds it.
    std::uint64_t count = 0;
    if (::read(w.doorbell.get(), &count, sizeof count) < 0 && errno != EAGAIN)
        std::cerr << "engine: read(eventfd) failed: " << iocp::error_text(errno) << "\n";
    std::vector<iocp::UniqueSocket> arrived;
    {
        std::lock_guard<std::mutex> lock(w.inbox_mutex);
        arrived.swap(w.inbox);
    }
    if (stopping_) {  // stop()'s exit packet. Clients still in `arrived` just close.
        w.draining = true;
        w.drain_deadline = std::chrono::steady_clock::now() + options_.drain_timeout;
        close_all(w);
        return;
    }
    for (auto& client : arrived) admit(w, std::move(client));
    run_commands(w);  // and whatever other threads queued for this worker's connections
    listen_for_doorbell(w);
}

//! [dispatch]
// What the port does with its completion key, the ring does with user_data: it names
// the request. Besides the connections' receives and sends, a ring has requests of its
// own: the multishot accept and its pause (worker 0), and the poll on the worker's doorbell.
void Engine::on_completion(Worker& w, IoContext& io, int result, unsigned flags) {
    switch (io.op) {
    case Op::kRecv:
    case Op::kSend:
        // A receive that got data got a buffer from the ring with it: which one, the
        // flags say. It is the connection's until its bytes are echoed.
        if (io.op == Op::kRecv && (flags & IORING_CQE_F_BUFFER) != 0) {
            if (io.connection->recv_buffer != nullptr) ++pool_errors_;  // a second buffer before the first was handled
            io.connection->recv_buffer = take_buffer(w, flags);
        }
        //! [matrix]
        // The result matrix of a ring is one number: res. And one flag: F_MORE, the
        // multishot receive is still armed after this completion.
        {
            const bool more = io.op == Op::kRecv && (flags & IORING_CQE_F_MORE) != 0;
            if (result < 0) {
                // -errno: that I/O failed. -ECONNRESET for a reset, -EPIPE for a send to a
                // peer that has gone, -ECANCELED after our cancel (a close, or the
                // backpressure's pause), -ENOBUFS for a buffer ring found empty.
                complete(*io.connection, io, Outcome::kFailed, 0, -result, more);
            } else if (result == 0 && io.op == Op::kRecv) {
                // 0 on a receive: the peer sent FIN. An orderly end, not an error.
                complete(*io.connection, io, Outcome::kPeerClosed, 0, 0, more);
            } else {
                // A byte count (a send may move fewer than asked: the rest is posted again).
                complete(*io.connection, io, Outcome::kBytes, static_cast<std::size_t>(result), 0, more);
            }
        }
        //! [matrix]
        return;
    case Op::kTick:
        on_tick(w, result);
        return;
    case Op::kAccept:
        on_accept(w, result, flags);
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
//! [dispatch]

// A poll on the worker's eventfd, pending until someone writes it. (A poll, not a read:
// a poll request only waits, and never occupies one of the kernel's worker threads,
// whatever the kernel version.)
void Engine::listen_for_doorbell(Worker& w) {
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

// Hands the kernel every request prepared since the last round, and sleeps until at
// least one completion is queued: GetQueuedCompletionStatus, in one call. Only this
// thread ever submits to or reaps from w.ring: no lock. `polling`: a request found no
// entry last round, so do not sleep. Returns true when the drain is out of time.
bool Engine::wait_for_completions(Worker& w) {
    const bool polling = (w.doorbell_retry || w.accept_retry) && !w.draining;
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
    } else if (polling) {
        // A millisecond's wait, not none: with deferred task work, only a wait for
        // completions (IORING_ENTER_GETEVENTS) lets the kernel post them.
        __kernel_timespec ms{0, 1'000'000};
        io_uring_cqe* first = nullptr;
        rc = io_uring_submit_and_wait_timeout(&w.ring, &first, 1, &ms, nullptr);
        if (rc == -ETIME) rc = 0;
    } else {
        rc = io_uring_submit_and_wait(&w.ring, 1);
    }
    ++waits_;
    w.now = std::chrono::steady_clock::now();  // the deadlines' clock, for this batch
    // A failed wait is the ring's "FALSE with no OVERLAPPED": nothing was dequeued.
    // Nobody can close a worker's ring under it (stop() does so after the join), so
    // this is a broken ring, and leaving would strand buffers the kernel owns.
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) fatal("io_uring_submit_and_wait", -rc);
    return out_of_time;
}

// Takes up to 64 completions that are ready and handles them; returns how many (0:
// none was ready). The batch is copied out and its slots given back before any is
// handled: handling submits new requests, and their completions need room in the queue.
unsigned Engine::reap_batch(Worker& w) {
    if (io_uring_cq_has_overflow(&w.ring)) ++cq_overflows_;  // never, with the queue sized in start()
    io_uring_cqe* cqes[64];
    const unsigned n = io_uring_peek_batch_cqe(&w.ring, cqes, 64);
    if (n == 0) return 0;
    // A completion is user_data, given back untouched (our tag: the key and the
    // OVERLAPPED in one), res: a byte count or -errno, never both, and flags
    // (IORING_CQE_F_MORE: a multishot request that stays armed).
    struct Done {
        std::uint64_t tag;
        int result;
        unsigned flags;
    } done[64];
    for (unsigned i = 0; i < n; ++i) done[i] = {io_uring_cqe_get_data64(cqes[i]), cqes[i]->res, cqes[i]->flags};
    io_uring_cq_advance(&w.ring, n);  // the slots are the kernel's again: read them first
    for (unsigned i = 0; i < n; ++i) {
        const std::uint64_t tag = done[i].tag;
        if (tag == kCancelTag) {  // a cancel request's own completion; its target completes separately
            --w.cancels_in_flight;
            // -ENOENT: the target had finished already; -EALREADY: it was running and
            // has been told to stop. Both are normal: the target still completes.
            const int r = done[i].result;
            if (r < 0 && r != -ENOENT && r != -EALREADY)
                std::cerr << "engine: cancel: " << -r << " " << iocp::error_text(-r) << "\n";
        } else if (tag == LIBURING_UDATA_TIMEOUT) {
            // liburing's own timeout request, on a kernel without IORING_FEAT_EXT_ARG.
        } else if (IoContext* io = find(w, tag)) {
            on_completion(w, *io, done[i].result, done[i].flags);
        } else {
            //! [stale]
            // A tag whose connection is gone: counted and dropped, and nothing of the
            // slot's new occupant (if any) is touched.
            ++stale_;
            if (Buffer* b = take_buffer(w, done[i].flags)) give_back(w, b);  // a buffer it took goes back
            std::cerr << "engine: dropped a completion for a connection that is gone (slot " << slot_of(tag)
                      << ", generation " << generation_of(tag) << ")\n";
            //! [stale]
        }
    }
    return n;
}

//! [worker]
void Engine::worker_loop(Worker& w) {
    tl_worker = &w;  // push() knows a callback on this thread from another thread
    set_up_ring(w);
    listen_for_doorbell(w);
    arm_tick(w);
    if (&w == workers_.front().get()) accept_clients(w);
    for (;;) {
        // A request that found no free entry last round (the kernel refused requests):
        // the submit in get_sqe may get through now. If it still does not, poll rather
        // than sleep until a completion, since none may come while every client is idle.
        if (w.doorbell_retry && !w.draining) listen_for_doorbell(w);
        if (w.accept_retry && !w.draining) accept_clients(w);
        const bool out_of_time = wait_for_completions(w);
        // Take every completion that is ready, not one per wake-up.
        // (--without batch: one per wait, as a loop around io_uring_wait_cqe would.)
        while (reap_batch(w) != 0) {
        }
        //! [after-batch]
        // The commands left for this worker, then the connections a command or the sweep
        // closed while nothing of theirs was in flight: no completion will free those.
        run_commands(w);
        for (const ConnectionId id : w.to_free)
            if (Connection* c = lookup(w, id); c != nullptr && c->closing && idle(*c)) free_connection(*c);
        w.to_free.clear();
        //! [after-batch]
        // Leave only when every request of this ring has come home: each context is
        // free by then. The other workers drain their own rings.
        if (w.draining && w.in_flight == 0 && !w.accept_pending && !w.doorbell_pending && !w.tick_pending &&
            w.cancels_in_flight == 0) {
            if (w.ring_fd_registered) io_uring_unregister_ring_fd(&w.ring);
            return;
        }
        if (!w.tick_pending) arm_tick(w);  // one that found no entry
        //! [give-up]
        // Or when the drain is out of time: stop() abandons what is left, after the join.
        if (out_of_time) {
            std::cerr << "engine: stop: " << w.in_flight << " operation(s) of this ring still outstanding after "
                      << options_.drain_timeout.count() << " ms\n";
            w.gave_up = true;
            if (w.ring_fd_registered) io_uring_unregister_ring_fd(&w.ring);
            return;
        }
        //! [give-up]
    }
}
//! [worker]

}  // namespace ch14
