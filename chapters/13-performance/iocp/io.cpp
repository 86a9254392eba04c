// Chapter 13, Windows side: one connection's echo with both budgets - a zero-byte
// receive while idle, a real one into a pool buffer once data is there, an output queue
// that a send drains while receives go on, and the watermarks between them. Its twin
// is uring/io.cpp: the same functions in the same order, post_peek aside.
#include "internal.h"

#include <utility>

namespace ch13 {

//! [started]
// After a WSARecv or WSASend with an OVERLAPPED: 0, it finished at once; SOCKET_ERROR
// with WSA_IO_PENDING, it is under way; any other error, it never started. Finished at
// once, it still queues a packet, unless its socket skips the port on success: then no
// packet will ever come, and the caller's complete() (or admit()) finishes it in
// run_inline, after the current step, never inside it. Its byte count is in its
// OVERLAPPED, which WSAGetOverlappedResult reads without waiting. False if it failed.
bool EchoServer::started(Connection& c, IoContext& io, int rc, const char* call) {
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
    // It never started: no packet either way, and the counts go back.
    --in_flight_;
    --c.outstanding;
    if (io.op == Op::kSend) --c.sending; else c.receiving = false;
    if (!is_peer_reset(err)) std::cerr << "ch13: " << call << " failed: " << err << " " << iocp::error_text(err) << "\n";
    close_connection(c, is_peer_reset(err) ? Why::kPeerReset : Why::kByUs);
    return false;
}
//! [started]

//! [post-peek]
// Called with c.mutex held, like everything that touches a connection. A receive of
// zero bytes: it completes when data arrives (or the peer closes, or resets), having
// read nothing, and it holds no buffer while it waits. An idle connection costs its
// Connection object and the kernel's socket, nothing else: no buffer of ours locked in
// memory for the kernel, and no pages of the non-paged pool pinned for it while the
// client thinks. (Every pending overlapped receive locks its buffer's pages.)
void EchoServer::post_peek(Connection& c) {
    c.recv_deadline = deadline_after(limits_.idle_timeout);  // the idle timeout starts now
    c.recv.op = Op::kPeek;
    c.recv.overlapped = OVERLAPPED{};
    static char nothing = 0;  // a valid address for a buffer of length 0
    WSABUF buf{0, &nothing};
    DWORD flags = 0;
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    started(c, c.recv, WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.recv.overlapped, nullptr), "WSARecv(0 bytes)");
}
//! [post-peek]

//! [post-recv]
// The real receive, into c.recv_buffer (from the pool), right after the zero-byte one
// said data is there: it completes at once, as a packet, or (skip on success) inline.
void EchoServer::post_recv(Connection& c) {
    c.recv.op = Op::kRecv;
    c.recv.overlapped = OVERLAPPED{};
    WSABUF buf{static_cast<ULONG>(limits_.buffer_size), c.recv_buffer->data};
    DWORD flags = 0;
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    started(c, c.recv, WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.recv.overlapped, nullptr), "WSARecv");
}
//! [post-recv]

//! [post-send]
// The oldest queued buffer, from where its last send stopped. One send at a time.
void EchoServer::post_send(Connection& c) {
    c.send.overlapped = OVERLAPPED{};
    c.send_deadline = deadline_after(limits_.send_timeout);  // this send must move by then
    Buffer* b = c.head;
    WSABUF buf{b->length - b->sent, b->data + b->sent};
    raise_to(max_sends_, ++c.sending);  // 1, always
    ++c.outstanding;
    ++in_flight_;
    started(c, c.send, WSASend(c.socket.get(), &buf, 1, nullptr, 0, &c.send.overlapped, nullptr), "WSASend");
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
        std::cerr << "ch13: dropping " << iocp::peer_address(c.socket.get()) << ": " << c.queued
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
        post_peek(c);
    }
}
//! [queue-output]

//! [sent]
// A send moved `bytes` of the oldest buffer: a finished buffer goes back to the pool,
// the next one goes out, and a paused connection reads again at the low watermark.
void EchoServer::sent(Connection& c, std::size_t bytes) {
    Buffer* b = c.head;
    b->sent += static_cast<std::uint32_t>(bytes);
    if (b->sent < b->length) {
        ++reposted_;  // partial send: the rest, and only the rest
    } else {
        c.head = b->next;
        if (c.head == nullptr) c.tail = nullptr;
        c.queued -= limits_.buffer_size;
        give_back(b);
    }
    if (c.head != nullptr) post_send(c);
    if (c.closing) return;
    if (c.paused && c.queued <= limits_.output_low && !c.peer_done) {
        c.paused = false;
        post_peek(c);
    } else if (c.head == nullptr && c.peer_done) {
        close_connection(c, Why::kPeerFin);  // all echoed: our FIN
    }
}
//! [sent]

//! [advance]
// One finished operation of c, with c.mutex held and c not closing.
void EchoServer::advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    if (outcome == Outcome::kFailed) {
        ++failed_;
        if (!is_peer_reset(error))
            std::cerr << "ch13: " << (io.op == Op::kSend ? "WSASend" : "WSARecv") << " completed with error "
                      << error << " " << iocp::error_text(error) << "\n";
        close_connection(c, is_peer_reset(error) ? Why::kPeerReset : Why::kByUs);
        return;
    }
    switch (io.op) {
    case Op::kPeek:  // data (or a FIN) is there: a buffer for the real receive, or a wait
        c.recv_buffer = take_buffer(c);
        if (c.recv_buffer != nullptr) post_recv(c);
        return;
    case Op::kGrant:  // the wait is over: the pool handed us c.recv_buffer
        c.waiting = false;
        post_recv(c);
        return;
    case Op::kRecv: {
        Buffer* b = std::exchange(c.recv_buffer, nullptr);
        if (outcome == Outcome::kPeerClosed) {  // FIN: nothing more will come
            give_back(b);
            c.peer_done = true;
            if (c.head == nullptr) close_connection(c, Why::kPeerFin);  // else once the queue is out
            return;
        }
        queue_output(c, b, bytes);
        return;
    }
    case Op::kSend:
        if (bytes == 0) {  // a send that moved nothing and reported no error: never expected
            std::cerr << "ch13: WSASend completed with 0 bytes; closing\n";
            close_connection(c, Why::kByUs);
            return;
        }
        sent(c, bytes);
        return;
    }
}
//! [advance]

//! [complete]
// One finished operation of connection c, with c.mutex held: the counts, then (unless
// c is closing) what comes next.
void EchoServer::settle(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    --c.outstanding;
    --in_flight_;
    if (io.op == Op::kSend) {
        --c.sending;
        c.send_deadline = Clock::time_point{};  // it moved (or failed): its timer is done
    } else {
        c.receiving = false;
        c.recv_deadline = Clock::time_point{};
    }
    // The closing flag first, as in chapter 9: whatever it says, it is ours. (A
    // buffer it brought stays in c.recv_buffer, and goes back when c is freed.)
    if (c.closing) {
        ++after_close_;
        if (io.op == Op::kGrant) c.waiting = false;
    } else {
        advance(c, io, outcome, bytes, error);
    }
}

//! [run-inline]
// With c.mutex held: the operations that finished at once, with no packet, settled one
// after another, in a loop rather than by recursion: a client that keeps its socket
// full could otherwise make each settle start the next inline one, ever deeper.
void EchoServer::run_inline(Connection& c) {
    for (;;) {
        IoContext* io = c.send.done_inline ? &c.send : c.recv.done_inline ? &c.recv : nullptr;
        if (io == nullptr) return;
        io->done_inline = false;
        ++inline_;
        const bool fin = io->inline_bytes == 0 && io->op == Op::kRecv;
        settle(c, *io, fin ? Outcome::kPeerClosed : Outcome::kBytes, io->inline_bytes, 0);
    }
}
//! [run-inline]

// A packet of connection c, from whichever worker dequeued it.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error, bool) {
    bool free_now = false;
    {
        std::lock_guard<std::mutex> lock(c.mutex);
        settle(c, io, outcome, bytes, error);
        run_inline(c);
        free_now = c.closing && idle(c);
    }
    if (free_now) free_connection(c);
    if (stopping_ && in_flight_ == 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        drained_.notify_all();
    }
}
//! [complete]

}  // namespace ch13
