// Chapter 10, Windows side: one connection's echo - starting receives and sends, what
// each completed operation means, and the count that says when the connection is done.
// Its twin is uring/io.cpp: the same functions in the same order.
#include "internal.h"

#include <utility>

namespace ch10 {

//! [post-recv]
// Called with c.mutex held, like everything that touches a connection.
void EchoServer::post_recv(Connection& c) {
    c.recv.overlapped = OVERLAPPED{};  // a fresh OVERLAPPED for every operation
    // WSARecv copies the WSABUF array before it returns, so it may live on the stack;
    // the bytes it points to are the kernel's until the completion.
    WSABUF buf{static_cast<ULONG>(c.recv.buffer.size()), c.recv.buffer.data()};
    DWORD flags = 0;
    //! [count-up]
    // Both counts go up before the call. Another worker may take the packet before
    // WSARecv has returned here, but it waits for c.mutex, which we hold, so it finds
    // c.outstanding right either way. in_flight_ is read without c's lock (stop()'s
    // drain, the tests): counted first, it never shows fewer operations than the
    // kernel holds.
    ++c.outstanding;
    c.receiving = true;
    ++in_flight_;
    //! [count-up]
    // lpNumberOfBytesRecvd is nullptr: with an OVERLAPPED, Microsoft's WSARecv page
    // says to pass NULL "to avoid potentially erroneous results"; the count comes with
    // the completion. Returning 0 (done at once) still queues a completion packet.
    if (WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.recv.overlapped, nullptr) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {  // failed to start: no packet will come for it
            --in_flight_;
            c.receiving = false;
            --c.outstanding;
            if (!is_peer_reset(err))
                std::cerr << "ch10: WSARecv failed: " << err << " " << iocp::error_text(err) << "\n";
            close_connection(c, is_peer_reset(err) ? Why::kPeerReset : Why::kByUs);
        }
    }
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    c.send.overlapped = OVERLAPPED{};
    WSABUF buf{static_cast<ULONG>(c.to_send - c.sent), c.send.buffer.data() + c.sent};
    raise_to(max_sends_, ++c.sending);  // 1, always: see start_echo and advance
    ++c.outstanding;
    ++in_flight_;
    if (WSASend(c.socket.get(), &buf, 1, nullptr, 0, &c.send.overlapped, nullptr) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            --in_flight_;
            --c.sending;
            --c.outstanding;
            if (!is_peer_reset(err))
                std::cerr << "ch10: WSASend failed: " << err << " " << iocp::error_text(err) << "\n";
            close_connection(c, is_peer_reset(err) ? Why::kPeerReset : Why::kByUs);
        }
    }
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
// One finished operation of c, with c.mutex held and c not closing: what it means for
// the echo.
void EchoServer::advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    switch (outcome) {
    case Outcome::kFailed:
        ++failed_;
        //! [reset-or-not]
        // We had not closed c (complete() checked), so this error is news: the peer
        // reset or vanished (64, 10054; counted, not logged), or something unexpected
        // (logged). 995 here would be a cancel we never made: unexpected too.
        if (is_peer_reset(error)) {
            close_connection(c, Why::kPeerReset);  // that connection only; the others never notice
            return;
        }
        std::cerr << "ch10: " << (io.op == Op::kRecv ? "WSARecv" : "WSASend") << " completed with error " << error
                  << " " << iocp::error_text(error) << "\n";
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
        std::cerr << "ch10: WSASend completed with 0 bytes; closing\n";
        close_connection(c, Why::kByUs);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.to_send) {  // partial send: post the rest, and only the rest
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
// One finished operation of connection c, from whichever worker dequeued its packet:
// a receive or a send.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    bool free_now = false;
    bool drained = false;
    {
        // c's other operation may be completing on another worker right now.
        std::lock_guard<std::mutex> lock(c.mutex);
        --c.outstanding;
        drained = --in_flight_ == 0;
        if (io.op == Op::kRecv) {
            c.receiving = false;
        } else {
            --c.sending;
        }
        // The closing flag first, before the outcome: an operation of a socket we closed
        // fails (995, or 64 exactly as for a reset; Wine 8: 676), or, says Microsoft's
        // GetQueuedCompletionStatus page, comes back TRUE with 0 bytes, just like a FIN,
        // or even succeeds, if it finished before the cancel reached it (CancelIoEx's
        // page). Only our flag tells, and it was set before anything was cancelled.
        if (c.closing) {
            note_after_close(outcome == Outcome::kFailed ? error : 0);
        } else {
            advance(c, io, outcome, bytes, error);
        }
        // Closing, and this was its last operation: no packet will name c again, and
        // whoever took the count to zero frees it. Outside its own lock (the table's
        // lock comes first, see close_all).
        free_now = c.closing && idle(c);
    }
    if (free_now) free_connection(c);
    if (drained && stopping_) {  // stop() waits for this
        std::lock_guard<std::mutex> lock(mutex_);
        drained_.notify_all();
    }
}
//! [complete]

}  // namespace ch10
