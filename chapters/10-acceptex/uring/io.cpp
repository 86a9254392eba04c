// Chapter 10, Linux side: one connection's echo - starting receives and sends, what
// each completed operation means, and the count that says when the connection is done.
// Its twin is iocp/io.cpp: the same functions in the same order.
#include "internal.h"

#include <utility>

namespace ch10 {

//! [post-recv]
// On c's worker, like everything that touches a connection: no lock needed.
void EchoServer::post_recv(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "ch10: no submission queue entry for a receive; closing\n";
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
        std::cerr << "ch10: no submission queue entry for a send; closing\n";
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
        std::cerr << "ch10: " << (io.op == Op::kRecv ? "recv" : "send") << " completed with error " << error << " "
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
        std::cerr << "ch10: send completed with 0 bytes; closing\n";
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

}  // namespace ch10
