// Chapter 14, Windows side: one connection's I/O - chapter 13's zero-byte receive while
// idle and a real one into a pool buffer once data is there, whose bytes now go to the
// application (on_data) instead of an output queue; one send at a time from the
// application's queue; the budget between them. Its twin is uring/io.cpp.
#include "internal.h"

#include <algorithm>
#include <string_view>
#include <utility>

namespace ch14 {

//! [started]
// After a WSARecv or WSASend with an OVERLAPPED (chapter 13): 0, it finished at once;
// SOCKET_ERROR with WSA_IO_PENDING, it is under way; any other error, it never
// started. Finished at once on a socket that skips the port on success, no packet
// will come: run_inline finishes it, after the current step. False if it failed.
bool Engine::started(Connection& c, IoContext& io, int rc, const char* call) {
    if (rc == 0) {
        if (c.skip) {
            DWORD bytes = 0, flags = 0;
            WSAGetOverlappedResult(c.socket.get(), &io.overlapped, &bytes, FALSE, &flags);
            io.done_inline = true;
            io.inline_bytes = bytes;
        }
        return true;
    }
    const int err = WSAGetLastError();
    if (err == WSA_IO_PENDING) return true;
    --in_flight_;
    --c.outstanding;
    if (io.op == Op::kSend) --c.sending; else c.receiving = false;
    if (!is_peer_reset(err)) std::cerr << "engine: " << call << " failed: " << err << " " << iocp::error_text(err) << "\n";
    close_connection(c, is_peer_reset(err) ? Why::kPeerReset : Why::kByUs);
    return false;
}
//! [started]

//! [post-peek]
// With c.mutex held, like everything that touches a connection: a receive of zero
// bytes, which completes when data arrives (or a FIN, or a reset) and holds no buffer
// while it waits (chapter 11).
void Engine::post_peek(Connection& c) {
    c.recv_deadline = deadline_after(options_.idle_timeout);
    c.recv.op = Op::kPeek;
    c.recv.overlapped = OVERLAPPED{};
    static char nothing = 0;  // a valid address for a buffer of length 0
    WSABUF buf{0, &nothing};
    DWORD flags = 0;
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    started(c, c.recv, WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.recv.overlapped, nullptr),
            "WSARecv(0 bytes)");
}
//! [post-peek]

//! [post-recv]
// The real receive, into c.recv_buffer (from the pool), once the zero-byte one said
// data is there.
void Engine::post_recv(Connection& c) {
    c.recv.op = Op::kRecv;
    c.recv.overlapped = OVERLAPPED{};
    WSABUF buf{static_cast<ULONG>(options_.buffer_size), c.recv_buffer->data};
    DWORD flags = 0;
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    started(c, c.recv, WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.recv.overlapped, nullptr), "WSARecv");
}
//! [post-recv]

// Posts c's receive if c should be receiving and is not: every path that may start
// receiving again comes through here, so no two are ever out.
bool Engine::rearm(Connection& c) {
    if (c.receiving || c.waiting || c.paused || c.peer_done || c.closing) return false;
    post_peek(c);
    return true;
}

//! [post-send]
// The oldest queued string, from where its last send stopped. One send at a time: the
// string stays where it is (a deque never moves its elements) until its packet comes.
void Engine::post_send(Connection& c) {
    c.send.overlapped = OVERLAPPED{};
    c.send_deadline = deadline_after(options_.send_timeout);
    std::string& head = c.out.front();
    const std::size_t left = std::min<std::size_t>(head.size() - c.head_sent, 1u << 30);
    WSABUF buf{static_cast<ULONG>(left), head.data() + c.head_sent};
    ++c.sending;
    ++c.outstanding;
    ++in_flight_;
    started(c, c.send, WSASend(c.socket.get(), &buf, 1, nullptr, 0, &c.send.overlapped, nullptr), "WSASend");
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
// Bytes from the peer, in a pool buffer: handed to the application, the buffer straight
// back to the pool, then what on_data sent joins the queues before the next receive is
// posted. (Finishing, they are dropped: reading only waits for the peer's FIN.)
void Engine::received(Connection& c, std::size_t bytes) {
    Buffer* b = std::exchange(c.recv_buffer, nullptr);
    if (!c.finishing) {
        const void* before = std::exchange(tl_calling, &c);
        handler_.on_data(id_of(c), std::string_view(b->data, bytes));
        tl_calling = before;
    }
    give_back(b);
    run_commands(c, false);
    rearm(c);
}
//! [received]

//! [advance]
// One finished operation of c, with c.mutex held and c not closing.
void Engine::advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    if (outcome == Outcome::kFailed) {
        if (!is_peer_reset(error))
            std::cerr << "engine: " << (io.op == Op::kSend ? "WSASend" : "WSARecv") << " completed with error "
                      << error << " " << iocp::error_text(error) << "\n";
        close_connection(c, is_peer_reset(error) ? Why::kPeerReset : Why::kByUs);
        return;
    }
    switch (io.op) {
    case Op::kPeek:
        // Data (or a FIN) is there. Paused meanwhile: it waits in the socket, and the
        // zero-byte receive posted when the queue drains finds it at once.
        if (c.paused) return;
        c.recv_buffer = take_buffer(c);
        if (c.recv_buffer != nullptr) post_recv(c);
        return;
    case Op::kGrant:  // the wait is over: the pool handed us c.recv_buffer
        c.waiting = false;
        post_recv(c);
        return;
    case Op::kRecv:
        if (outcome == Outcome::kPeerClosed) {  // FIN
            give_back(std::exchange(c.recv_buffer, nullptr));
            c.peer_done = true;
            if (c.fin_sent) {  // the close after sends is complete: both FINs exchanged
                close_connection(c, Why::kByUs);
                return;
            }
            //! [peer-fin]
            // The peer has said all it will: the application hears it once (on_close),
            // what is queued still goes out, then the connection ends.
            if (!c.finishing) {
                c.finishing = true;
                tell_close(c);
                run_commands(c, false);
            }
            if (!c.closing && c.out.empty()) close_connection(c, Why::kPeerFin);
            //! [peer-fin]
            return;
        }
        received(c, bytes);
        return;
    case Op::kSend:
        if (bytes == 0) {
            std::cerr << "engine: WSASend completed with 0 bytes; closing\n";
            close_connection(c, Why::kByUs);
            return;
        }
        sent(c, bytes);
        return;
    case Op::kCommand:  // never here: dispatch hands it to on_command
        return;
    }
}
//! [advance]

//! [complete]
// One finished operation of c, with c.mutex held: the counts, then (unless c is
// closing) what comes next. A buffer a receive brought to a closing c stays in
// c.recv_buffer, and goes back when c is freed.
void Engine::settle(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    --c.outstanding;
    --in_flight_;
    if (io.op == Op::kSend) {
        --c.sending;
        c.send_deadline = Clock::time_point{};
    } else {
        c.receiving = false;
        c.recv_deadline = Clock::time_point{};
    }
    if (c.closing) {
        if (io.op == Op::kGrant) c.waiting = false;
    } else {
        advance(c, io, outcome, bytes, error);
    }
}

//! [run-inline]
// With c.mutex held, before it is let go: the inbox (what c's own callbacks sent, which
// posted no packet), and the operations that finished at once, with no packet, one
// after another in a loop rather than by recursion (chapter 13).
void Engine::run_inline(Connection& c) {
    for (;;) {
        run_commands(c, false);
        IoContext* io = c.send.done_inline ? &c.send : c.recv.done_inline ? &c.recv : nullptr;
        if (io == nullptr) return;
        io->done_inline = false;
        const bool fin = io->inline_bytes == 0 && io->op == Op::kRecv;
        settle(c, *io, fin ? Outcome::kPeerClosed : Outcome::kBytes, io->inline_bytes, 0);
    }
}
//! [run-inline]

// A packet of connection c, from whichever worker dequeued it.
void Engine::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    bool free_now = false;
    {
        std::lock_guard<std::mutex> lock(c.mutex);
        settle(c, io, outcome, bytes, error);
        run_inline(c);
        free_now = retire(c);
    }
    if (free_now) free_connection(c);
    notify_if_drained();
}
//! [complete]

}  // namespace ch14
