// Chapter 8, Windows side: a connection's I/O. Starting its receives and sends, and what
// each one that finishes means for the echo. Its twin is uring/io.cpp, the same file name
// on the Linux side.
#include "internal.h"

#include <utility>

namespace ch08 {

//! [post-recv]
// On a worker, with c.mutex held, like everything that touches a connection.
void EchoServer::post_recv(Connection& c) {
    c.recv.op = Op::kRecv;  // c.recv carried the admit packet before the first receive
    c.recv.overlapped = OVERLAPPED{};  // a fresh OVERLAPPED for every operation
    // WSARecv copies the WSABUF array before it returns, so it may live on the stack;
    // the bytes it points to are the kernel's until the completion.
    WSABUF buf{static_cast<ULONG>(c.recv.buffer.size()), c.recv.buffer.data()};
    DWORD flags = 0;
    c.receiving = true;
    // Counted before the call, so that in_flight_, read without c's lock (stop()'s drain,
    // the tests), never shows fewer operations than the kernel holds.
    ++in_flight_;
    // lpNumberOfBytesRecvd is nullptr: with an OVERLAPPED, Microsoft's WSARecv page
    // says to pass NULL "to avoid potentially erroneous results"; the count comes with
    // the completion. Returning 0 (done at once) still queues a completion packet.
    if (WSARecv(c.socket.get(), &buf, 1, nullptr, &flags, &c.recv.overlapped, nullptr) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {  // failed to start: no packet will come for it
            --in_flight_;
            c.receiving = false;
            if (!iocp::is_disconnect_error(err))
                std::cerr << "ch08: WSARecv failed: " << err << " " << iocp::error_text(err) << "\n";
            close_connection(c);
        }
    }
}
//! [post-recv]

//! [post-send]
void EchoServer::post_send(Connection& c) {
    c.send.overlapped = OVERLAPPED{};
    WSABUF buf{static_cast<ULONG>(c.to_send - c.sent), c.send.buffer.data() + c.sent};
    raise_to(max_sends_, ++c.sending);  // 1, always: see start_echo and advance
    ++in_flight_;
    if (WSASend(c.socket.get(), &buf, 1, nullptr, 0, &c.send.overlapped, nullptr) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (err != WSA_IO_PENDING) {
            --in_flight_;
            --c.sending;
            if (!iocp::is_disconnect_error(err))
                std::cerr << "ch08: WSASend failed: " << err << " " << iocp::error_text(err) << "\n";
            close_connection(c);
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
        if (!iocp::is_disconnect_error(error))
            std::cerr << "ch08: " << (io.op == Op::kRecv ? "WSARecv" : "WSASend") << " completed with error "
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
        std::cerr << "ch08: WSASend completed with 0 bytes; closing\n";
        close_connection(c);
        return;
    }
    c.sent += bytes;
    if (c.sent < c.to_send) {  // partial send: post the rest, and only the rest
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
// One finished operation of connection c (or its admit packet), from whichever worker
// dequeued its packet.
void EchoServer::complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error) {
    bool free_now = false;
    bool drained = false;
    {
        // c's other operation may be completing on another worker right now.
        std::lock_guard<std::mutex> lock(c.mutex);
        drained = --in_flight_ == 0;
        if (io.op == Op::kSend) {
            --c.sending;
        } else {
            c.receiving = false;  // a receive, or the admit packet that held its place
        }
        // The closing flag first, before the outcome: an operation of a socket we closed
        // fails (995, or 64; Wine 8: 676), or, says Microsoft's GetQueuedCompletionStatus
        // page, comes back TRUE with 0 bytes, just like a FIN. Only our flag tells.
        if (!c.closing) {
            if (io.op == Op::kAdmit) {
                post_recv(c);  // the accept thread's hand-over (see hand_over): c's first receive
            } else {
                advance(c, io, outcome, bytes, error);
            }
        }
        // Closing, and this was its last operation (or its admit packet: stop() may close
        // c before a worker takes it): no packet will name c again. Freed outside its own
        // lock (the list's lock comes first, see close_all).
        free_now = c.closing && idle(c);
    }
    if (free_now) free_connection(c);
    if (drained && stopping_) {  // stop() waits for this
        std::lock_guard<std::mutex> lock(mutex_);
        drained_.notify_all();
    }
}
//! [complete]

}  // namespace ch08
