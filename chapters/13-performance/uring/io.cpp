// Chapter 13, Linux side: one connection's echo with both budgets - a multishot
// receive that takes a buffer from the ring each time data arrives, an output queue that
// a send drains while receives go on, and the watermarks between them. Its twin is
// iocp/io.cpp: the same functions in the same order (it has post_peek too).
#include "internal.h"

#include <utility>

namespace ch13 {

//! [post-recv]
// On c's worker, like everything that touches a connection: no lock needed. One
// multishot receive for the connection's life (Linux 6.0): armed once, it stays armed,
// and each arrival of data completes it again with IORING_CQE_F_MORE and a buffer the
// kernel took from the worker's ring. No request per message, no poll armed and torn
// down per message. It ends (a completion without F_MORE) on FIN, an error, an empty
// buffer ring (-ENOBUFS), or our cancel (-ECANCELED: backpressure or close), and is
// armed again only where chapter 11 posted a receive again.
void EchoServer::post_recv(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch13: no submission queue entry for a receive; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    if (features_.multishot_recv) {
        io_uring_prep_recv_multishot(sqe, file_of(c), nullptr, 0, 0);  // length 0: the buffer's
    } else {
        io_uring_prep_recv(sqe, file_of(c), nullptr, limits_.buffer_size, 0);  // chapter 12's: once
    }
    sqe->flags |= IOSQE_BUFFER_SELECT | (c.fixed ? IOSQE_FIXED_FILE : 0);
    sqe->buf_group = kBufferGroup;
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, Kind::kRecv));
    //! [count-up]
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    ++c.worker->in_flight;
    //! [count-up]
    ++armed_;
    // The idle deadline runs from here and moves with every arrival (see advance).
    if (limits_.idle_timeout.count() > 0) c.recv_deadline = c.worker->now + limits_.idle_timeout;
}
//! [post-recv]

//! [rearm]
// Arms c's receive if c should be receiving and is not: not paused at its budget, not
// in line for a buffer (the line re-arms it), not past the peer's FIN, not closing, and
// not armed already (a receive whose pause-cancel is on its way is still armed: its
// -ECANCELED comes here). Every path that may start receiving again comes through here,
// so no two receives are ever armed on one connection. True if it armed one.
bool EchoServer::rearm(Connection& c) {
    if (c.receiving || c.waiting || c.paused || c.peer_done || c.closing) return false;
    post_recv(c);
    return true;
}
//! [rearm]

//! [post-send]
// The oldest queued buffer, from where its last send stopped. One send at a time.
void EchoServer::post_send(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch13: no submission queue entry for a send; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    Buffer* b = c.head;
    // MSG_NOSIGNAL: a peer that has gone makes this send fail with EPIPE instead of
    // raising SIGPIPE, whose default action ends the process.
    io_uring_prep_send(sqe, file_of(c), b->data + b->sent, b->length - b->sent, MSG_NOSIGNAL);
    if (c.fixed) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, Kind::kSend));
    raise_to(max_sends_, ++c.sending);  // 1, always
    ++c.outstanding;
    ++in_flight_;
    ++c.worker->in_flight;
    // A short send is posted again: progress, so the deadline starts over.
    if (limits_.send_timeout.count() > 0) c.send_deadline = c.worker->now + limits_.send_timeout;
}
//! [post-send]

//! [queue-output]
// `bytes` arrived in b: it joins the output queue, and the next receive goes out at
// once unless the queue has reached the high watermark. Reading no longer waits for
// the echo: only the budget stops it.
void EchoServer::queue_output(Connection& c, Buffer* b, std::size_t bytes) {
    b->length = static_cast<std::uint32_t>(bytes);
    b->sent = 0;
    if (c.tail != nullptr) c.tail->next = b; else c.head = b;
    c.tail = b;
    //! [charge]
    // The budget counts the memory held, whole buffers, not the bytes in them: a client
    // that sends one byte per packet and never reads would otherwise hold a buffer per
    // byte, the pool's every buffer in the end.
    c.queued += limits_.buffer_size;
    //! [charge]
    raise_to(most_queued_, c.queued);
    //! [in-transit]
    // The hard limit: this client goes. Unless the bytes are in transit: a multishot
    // receive, once armed, reads whatever arrives until our cancel lands, and within
    // one wait for completions that can be dozens of buffers (a test measured 65 of
    // 16 KiB from a client pushing at full speed). They are read already; dropping a
    // client that will read them later would lose what a well-behaved client sent. So
    // while the pause's cancel is on its way, the worker's share of the pool, not the
    // budget, bounds what one connection holds; after it, the budget again.
    if (c.queued > limits_.output_limit && !c.cancelling) {
    //! [in-transit]
        ++over_limit_;
        std::cerr << "ch13: dropping " << iocp::peer_address(c.socket.get()) << ": " << c.queued
                  << " bytes queued, over the limit of " << limits_.output_limit << "\n";
        close_connection(c, Why::kByUs);
        return;
    }
    if (c.sending == 0) post_send(c);
    if (c.closing) return;
    //! [pause]
    if (c.queued >= limits_.output_high) {
        if (!c.paused) ++pauses_;
        c.paused = true;  // backpressure: the peer's bytes wait in its socket buffers
        // The multishot receive would go on taking buffers: cancel it. Arrivals already
        // under way still complete, each with its buffer, and are queued: the hard limit
        // still holds. Its last completion, -ECANCELED, ends it (advance).
        if (c.receiving && !c.cancelling) {
            c.cancelling = true;
            cancel(*c.worker, make_tag(c.slot, c.generation, Kind::kRecv), c.socket.get());
        }
    } else {
        rearm(c);  // if it had ended (no F_MORE): armed again
    }
    //! [pause]
}
//! [queue-output]

//! [sent]
// A send moved `bytes` of the oldest buffer: a finished buffer goes back to the ring,
// the next one goes out, and a paused connection reads again at the low watermark.
void EchoServer::sent(Connection& c, std::size_t bytes) {
    Buffer* b = c.head;
    b->sent += static_cast<std::uint32_t>(bytes);
    if (b->sent < b->length) {
        ++reposted_;  // short send: the rest, and only the rest
    } else {
        c.head = b->next;
        if (c.head == nullptr) c.tail = nullptr;
        c.queued -= limits_.buffer_size;
        give_back(*c.worker, b);
    }
    if (c.head != nullptr) post_send(c);
    if (c.closing) return;
    if (c.paused && c.queued <= limits_.output_low && !c.peer_done) {
        c.paused = false;
        rearm(c);  // unless its cancel is still on the way: then its -ECANCELED re-arms it
    } else if (c.head == nullptr && c.peer_done) {
        close_connection(c, Why::kPeerFin);  // all echoed: our FIN
    }
}
//! [sent]

//! [advance]
// One finished operation of c, on c's worker, c not closing.
void EchoServer::advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    if (outcome == Outcome::kFailed && io.op == Op::kRecv && error == ENOBUFS) {
        //! [wait-for-buffer]
        // The ring was empty when data arrived: the data stays in the socket, and c
        // waits in line. The next buffer given back starts its receive again. Unless one
        // came back already, between the kernel's answer and this line, with nobody in
        // line to hand it to: then waiting would be for ever, and c tries again now.
        // (Paused at its budget, c waits for its sends instead, which re-arm it.)
        if (c.paused) return;
        if (c.worker->buffers_out < c.worker->ring_buffers) {
            rearm(c);
            return;
        }
        c.waiting = true;
        c.worker->waiting.push_back(make_tag(c.slot, c.generation, Kind::kRecv));
        ++buffer_waits_;
        //! [wait-for-buffer]
        return;
    }
    if (outcome == Outcome::kFailed && io.op == Op::kRecv && error == ECANCELED) {
        //! [unpaused]
        // Our cancel at the high watermark took effect, on a connection still open
        // (a close sets the flag first, and never gets here). If the queue has drained
        // below the low watermark meanwhile, the receive is armed again at once.
        rearm(c);
        return;
        //! [unpaused]
    }
    if (outcome == Outcome::kFailed) {
        ++failed_;
        if (!is_peer_reset(error))
            std::cerr << "ch13: " << (io.op == Op::kRecv ? "recv" : "send") << " completed with error " << error
                      << " " << iocp::error_text(error) << "\n";
        close_connection(c, is_peer_reset(error) ? Why::kPeerReset : Why::kByUs);
        return;
    }
    if (io.op == Op::kRecv) {
        Buffer* b = std::exchange(c.recv_buffer, nullptr);
        if (outcome == Outcome::kPeerClosed) {  // FIN: nothing more will come
            if (b != nullptr) give_back(*c.worker, b);
            c.peer_done = true;
            if (c.head == nullptr) close_connection(c, Why::kPeerFin);  // else once the queue is out
            return;
        }
        if (b == nullptr) {  // bytes with no buffer: never expected
            std::cerr << "ch13: a receive brought bytes but no buffer; closing\n";
            close_connection(c, Why::kByUs);
            return;
        }
        // Data: the client is not idle. Its deadline moves (one clock read per batch).
        if (limits_.idle_timeout.count() > 0) c.recv_deadline = c.worker->now + limits_.idle_timeout;
        queue_output(c, b, bytes);
        return;
    }
    if (bytes == 0) {  // a send that moved nothing and reported no error: never expected
        std::cerr << "ch13: send completed with 0 bytes; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    sent(c, bytes);
}
//! [advance]

//! [complete]
// One finished operation of connection c, always on c's own worker. `more`: a
// multishot receive's completion that leaves it armed (IORING_CQE_F_MORE): still
// outstanding, still receiving.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error, bool more) {
    Worker& w = *c.worker;  // c may be freed below
    // A receive that ended with no bytes (FIN, an error, a cancel) took no buffer: one
    // the line may have woken it for is still in the ring, for the next in line.
    const bool left_buffer = io.op == Op::kRecv && !more && c.recv_buffer == nullptr && error != ENOBUFS;
    if (!more) {
        --c.outstanding;
        --in_flight_;
        --c.worker->in_flight;
        if (io.op == Op::kRecv) {
            c.receiving = false;
            c.cancelling = false;  // whatever ended it, no pause-cancel is pending on it now
            c.recv_deadline = {};
        } else {
            --c.sending;
            c.send_deadline = {};
        }
    }
    // The closing flag first, as in chapter 9: whatever it says, it is ours. A buffer
    // it brought goes straight back: an armed receive may bring more before its cancel lands.
    if (c.closing) {
        ++after_close_;
        if (c.recv_buffer != nullptr) give_back(*c.worker, std::exchange(c.recv_buffer, nullptr));
    } else {
        advance(c, io, outcome, bytes, error);
    }
    if (c.closing && idle(c)) free_connection(c);
    if (left_buffer) serve_line(w);
}
//! [complete]

}  // namespace ch13
