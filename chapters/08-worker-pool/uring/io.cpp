// Chapter 8, Linux side: a connection's I/O. Preparing its receives and sends, and what
// each one that finishes means for the echo. Its twin is iocp/io.cpp, the same file name
// on the Windows side.
#include "internal.h"

#include <utility>

namespace ch08 {

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

}  // namespace ch08
