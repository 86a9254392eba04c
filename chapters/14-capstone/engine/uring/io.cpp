// Chapter 14, Linux side: one connection's I/O - chapter 13's multishot receive, whose
// bytes now go to the application (on_data) instead of an output queue, and one send
// at a time from the application's queue. The budget between them is the same.
#include "internal.h"

#include <string_view>
#include <utility>

namespace ch14 {

//! [post-recv]
// One multishot receive, armed once: each arrival completes it again with
// IORING_CQE_F_MORE and a buffer the kernel took from the worker's ring.
void Engine::post_recv(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "engine: no submission queue entry for a receive; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    io_uring_prep_recv_multishot(sqe, file_of(c), nullptr, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT | (c.fixed ? IOSQE_FIXED_FILE : 0);
    sqe->buf_group = kBufferGroup;
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, Kind::kRecv));
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    ++c.worker->in_flight;
    if (options_.idle_timeout.count() > 0) c.recv_deadline = c.worker->now + options_.idle_timeout;
}
//! [post-recv]

// Arms c's receive if c should be receiving and is not (chapter 13's rule: every path
// that may start receiving again comes through here, so no two are ever armed).
bool Engine::rearm(Connection& c) {
    if (c.receiving || c.waiting || c.paused || c.peer_done || c.closing) return false;
    post_recv(c);
    return true;
}

//! [post-send]
// The oldest queued string, from where its last send stopped. One send at a time.
void Engine::post_send(Connection& c) {
    io_uring_sqe* sqe = get_sqe(*c.worker);
    if (sqe == nullptr) {
        std::cerr << "engine: no submission queue entry for a send; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    const std::string& head = c.out.front();
    io_uring_prep_send(sqe, file_of(c), head.data() + c.head_sent, head.size() - c.head_sent, MSG_NOSIGNAL);
    if (c.fixed) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, Kind::kSend));
    ++c.sending;
    ++c.outstanding;
    ++in_flight_;
    ++c.worker->in_flight;
    if (options_.send_timeout.count() > 0) c.send_deadline = c.worker->now + options_.send_timeout;
}
//! [post-send]

//! [sent]
// A send moved `bytes` of the head string: the rest goes out next, or the next string;
// at the low watermark a paused connection reads again; a finishing one, empty, ends.
void Engine::sent(Connection& c, std::size_t bytes) {
    c.head_sent += bytes;
    c.queued -= bytes;
    queued_total_ -= bytes;
    if (c.head_sent == c.out.front().size()) {
        c.out.pop_front();
        c.head_sent = 0;
    }
    if (!c.out.empty()) {
        post_send(c);
        return;
    }
    if (c.closing) return;
    if (c.paused && c.queued <= options_.output_low) {
        c.paused = false;
        rearm(c);
    }
    if (c.finishing) finish(c);
}
//! [sent]

//! [received]
// Bytes from the peer, in the buffer the kernel picked: handed to the application,
// then the buffer goes straight back to the ring. (Finishing, they are dropped: the
// application has closed, and reading only waits for the peer's FIN.)
void Engine::received(Connection& c, std::size_t bytes) {
    Buffer* b = std::exchange(c.recv_buffer, nullptr);
    if (b == nullptr) {
        std::cerr << "engine: a receive brought bytes but no buffer; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    if (options_.idle_timeout.count() > 0) c.recv_deadline = c.worker->now + options_.idle_timeout;
    if (!c.finishing) handler_.on_data(id_of(c), std::string_view(b->data, bytes));
    give_back(*c.worker, b);
    run_commands(*c.worker);  // what on_data sent joins the queues now, before the next arrival
}
//! [received]

//! [advance]
// One finished operation of c, on c's worker, c not closing.
void Engine::advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    if (outcome == Outcome::kFailed && io.op == Op::kRecv && error == ENOBUFS) {
        // The ring was empty: c waits in line, unless a buffer came back meanwhile
        // (chapter 11), or it is paused (its sends re-arm it).
        if (c.paused) return;
        if (c.worker->buffers_out < c.worker->ring_buffers) {
            rearm(c);
            return;
        }
        c.waiting = true;
        c.worker->waiting.push_back(make_tag(c.slot, c.generation, Kind::kRecv));
        return;
    }
    if (outcome == Outcome::kFailed && io.op == Op::kRecv && error == ECANCELED) {
        rearm(c);  // the pause's cancel landed: armed again if the queue drained meanwhile
        return;
    }
    if (outcome == Outcome::kFailed) {
        if (!is_peer_reset(error))
            std::cerr << "engine: " << (io.op == Op::kRecv ? "recv" : "send") << " completed with error " << error
                      << " " << iocp::error_text(error) << "\n";
        close_connection(c, is_peer_reset(error) ? Why::kPeerReset : Why::kByUs);
        return;
    }
    if (io.op == Op::kSend) {
        if (bytes == 0) {
            std::cerr << "engine: send completed with 0 bytes; closing\n";
            close_connection(c, Why::kByUs);
            return;
        }
        sent(c, bytes);
        return;
    }
    if (outcome == Outcome::kPeerClosed) {  // FIN
        if (c.recv_buffer != nullptr) give_back(*c.worker, std::exchange(c.recv_buffer, nullptr));
        c.peer_done = true;
        if (c.fin_sent) {  // the close after sends is complete: both FINs exchanged
            close_connection(c, Why::kByUs);
            return;
        }
        //! [peer-fin]
        // The peer has said all it will: the application hears it once (on_close), what
        // is queued still goes out, then the connection ends.
        if (!c.finishing) {
            c.finishing = true;
            c.told = true;
            handler_.on_close(id_of(c));
            run_commands(*c.worker);
        }
        if (!c.closing && c.out.empty()) close_connection(c, Why::kPeerFin);
        //! [peer-fin]
        return;
    }
    received(c, bytes);
    if (!c.closing && !c.receiving) rearm(c);  // a completion without F_MORE ended it
}
//! [advance]

//! [complete]
// One finished operation of c, always on c's own worker. `more`: a multishot receive's
// completion that leaves it armed.
void Engine::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error, bool more) {
    Worker& w = *c.worker;
    const bool left_buffer = io.op == Op::kRecv && !more && c.recv_buffer == nullptr && error != ENOBUFS;
    if (!more) {
        --c.outstanding;
        --in_flight_;
        --w.in_flight;
        if (io.op == Op::kRecv) {
            c.receiving = false;
            c.cancelling = false;
            c.recv_deadline = {};
        } else {
            --c.sending;
            c.send_deadline = {};
        }
    }
    if (c.closing) {
        if (c.recv_buffer != nullptr) give_back(w, std::exchange(c.recv_buffer, nullptr));
    } else {
        advance(c, io, outcome, bytes, error);
    }
    if (c.closing && idle(c)) free_connection(c);
    if (left_buffer) serve_line(w);
}
//! [complete]

}  // namespace ch14
