// Chapter 11, Linux side: one connection's echo with both budgets - a receive that
// takes a buffer from the ring only when data arrives, an output queue that a send
// drains while receives go on, and the watermarks between them. Its twin is
// iocp/io.cpp: the same functions in the same order (it has post_peek too).
#include "internal.h"

#include <utility>

namespace ch11 {

//! [post-recv]
// On c's worker, like everything that touches a connection: no lock needed. No buffer
// is named: IOSQE_BUFFER_SELECT lets the kernel take one from the worker's ring when
// data arrives, so a receive that waits on an idle connection holds none.
void EchoServer::post_recv(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch11: no submission queue entry for a receive; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    io_uring_prep_recv(sqe, c.socket.get(), nullptr, limits_.buffer_size, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = kBufferGroup;
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, false));
    //! [count-up]
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    ++c.worker->in_flight;
    //! [count-up]
}
//! [post-recv]

//! [post-send]
// The oldest queued buffer, from where its last send stopped. One send at a time.
void EchoServer::post_send(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch11: no submission queue entry for a send; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    Buffer* b = c.head;
    // MSG_NOSIGNAL: a peer that has gone makes this send fail with EPIPE instead of
    // raising SIGPIPE, whose default action ends the process.
    io_uring_prep_send(sqe, c.socket.get(), b->data + b->sent, b->length - b->sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, true));
    raise_to(max_sends_, ++c.sending);  // 1, always
    ++c.outstanding;
    ++in_flight_;
    ++c.worker->in_flight;
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
    if (c.queued > limits_.output_limit) {  // the hard limit: this client goes
        ++over_limit_;
        std::cerr << "ch11: dropping " << iocp::peer_address(c.socket.get()) << ": " << c.queued
                  << " bytes queued, over the limit of " << limits_.output_limit << "\n";
        close_connection(c, Why::kByUs);
        return;
    }
    if (c.sending == 0) post_send(c);
    if (c.closing) return;
    if (c.queued >= limits_.output_high) {
        c.paused = true;  // backpressure: the peer's bytes wait in its socket buffers
        ++pauses_;
    } else {
        post_recv(c);
    }
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
        post_recv(c);
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
        // The ring was empty when the kernel tried the receive: at once when it was
        // submitted, whether data had come or not (the kernel picks the buffer before
        // it reads), or later, when data arrived. Any data stays in the socket, and c
        // waits in line. The next buffer given back starts its receive again. Unless one
        // came back already, between the kernel's answer and this line, with nobody in
        // line to hand it to: then waiting would be for ever, and c tries again now.
        if (c.worker->buffers_out < c.worker->ring_buffers) {
            post_recv(c);
            return;
        }
        c.waiting = true;
        c.worker->waiting.push_back(make_tag(c.slot, c.generation, false));
        ++buffer_waits_;
        //! [wait-for-buffer]
        return;
    }
    if (outcome == Outcome::kFailed) {
        ++failed_;
        if (!is_peer_reset(error))
            std::cerr << "ch11: " << (io.op == Op::kRecv ? "recv" : "send") << " completed with error " << error
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
            std::cerr << "ch11: a receive brought bytes but no buffer; closing\n";
            close_connection(c, Why::kByUs);
            return;
        }
        queue_output(c, b, bytes);
        return;
    }
    if (bytes == 0) {  // a send that moved nothing and reported no error: never expected
        std::cerr << "ch11: send completed with 0 bytes; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    sent(c, bytes);
}
//! [advance]

//! [complete]
// One finished operation of connection c, always on c's own worker.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    Worker& w = *c.worker;  // c may be freed below
    // A receive that ended with no bytes (FIN, an error, a cancel) took no buffer: one
    // the line may have woken it for is still in the ring, for the next in line.
    const bool left_buffer = io.op == Op::kRecv && c.recv_buffer == nullptr && error != ENOBUFS;
    --c.outstanding;
    --in_flight_;
    --c.worker->in_flight;
    if (io.op == Op::kRecv) {
        c.receiving = false;
    } else {
        --c.sending;
    }
    // The closing flag first, as in chapter 9: whatever it says, it is ours. (A buffer
    // it brought stays in c.recv_buffer, and goes back when c is freed.)
    if (c.closing) {
        ++after_close_;
    } else {
        advance(c, io, outcome, bytes, error);
    }
    if (c.closing && idle(c)) free_connection(c);
    if (left_buffer) serve_line(w);
}
//! [complete]

}  // namespace ch11
