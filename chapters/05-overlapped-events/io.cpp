// Chapter 5 - one operation's life, the subject of the chapter: start it (the buffer and
// the OVERLAPPED become the kernel's), collect it (they are ours again), or cancel it and
// WAIT for it before anything is freed. All of it runs on the group's thread.
#include "group.h"

namespace ch05 {

//! [post]
// Hands op to the kernel. From the call until on_completion() or close_connection()
// collects it, the OVERLAPPED, the WSABUF, the flags and the buffer are the kernel's:
// nothing may write them, move them or free them. (WSASend's page: "once the WSASend
// function is called, the system owns these buffers and the application may not access
// them"; WSARecv's: lpOverlapped "must be valid for the duration of the overlapped
// operation", and each outstanding operation needs "a separate WSAOVERLAPPED".)
void EchoServer::Group::begin(Operation& op, Operation::Kind kind, char* data, std::size_t len) {
    // The event is manual-reset and still signalled by the last completion. Reset it
    // before the call, never after: the operation may complete before the call returns.
    WSAResetEvent(op.event.get());
    op.overlapped = WSAOVERLAPPED{};  // a clean OVERLAPPED for every operation
    op.overlapped.hEvent = op.event.get();
    op.wsabuf.buf = data;
    op.wsabuf.len = static_cast<ULONG>(len);
    op.kind = kind;
    op.in_flight = true;
    ++server_.in_flight_;  // before the call, for the same reason
}

bool EchoServer::Group::post_recv(Connection& c) {
    Operation& op = c.op;
    begin(op, Operation::Kind::kRecv, op.buffer.get(), op.capacity);
    op.flags = 0;
    // lpNumberOfBytesRecvd is NULL, as WSARecv's page asks when lpOverlapped is not
    // ("to avoid potentially erroneous results"): the count comes from
    // WSAGetOverlappedResult, for an immediate completion as for a later one.
    const int rc = WSARecv(c.socket.get(), &op.wsabuf, 1, nullptr, &op.flags, &op.overlapped, nullptr);
    return started(op, rc, "WSARecv");
}

bool EchoServer::Group::post_send(Connection& c) {
    Operation& op = c.op;
    begin(op, Operation::Kind::kSend, op.buffer.get() + c.sent, c.filled - c.sent);
    const int rc = WSASend(c.socket.get(), &op.wsabuf, 1, nullptr, 0, &op.overlapped, nullptr);
    return started(op, rc, "WSASend");
}

// What the call returned (WSARecv's and WSASend's pages, "Return value"):
//   0               completed already. Its event is signalled all the same, and it is
//                   collected like any other: one path for both cases.
//   WSA_IO_PENDING  started, completes later: success, not an error.
//   anything else   never started, and "no completion indication will occur": the
//                   operation is ours again at once, and this connection is finished.
bool EchoServer::Group::started(Operation& op, int rc, const char* call) {
    if (rc == 0) {
        ++server_.at_once_;
        return true;
    }
    const int err = WSAGetLastError();
    if (err == WSA_IO_PENDING) return true;
    finish(op);
    if (!iocp::is_disconnect_error(err)) log_error(call, err);
    return false;
}

// begin()'s mirror: the operation has been collected (or never started), and the
// buffer and the OVERLAPPED are ours again.
void EchoServer::Group::finish(Operation& op) {
    op.in_flight = false;
    --server_.in_flight_;
}
//! [post]

//! [complete]
// op's event is signalled: collect the result, and with it the buffer and the OVERLAPPED.
bool EchoServer::Group::on_completion(Connection& c) {
    Operation& op = c.op;
    DWORD bytes = 0, flags = 0;
    // fWait FALSE: the event says it is done; WSA_IO_INCOMPLETE would say it is not.
    const BOOL ok = WSAGetOverlappedResult(c.socket.get(), &op.overlapped, &bytes, FALSE, &flags);
    const int err = ok ? 0 : WSAGetLastError();
    if (err == WSA_IO_INCOMPLETE) {
        // Signalled yet not complete: never seen, but nothing promises it cannot be.
        // The operation is still the kernel's, so close_connection() cancels and waits.
        log_error("WSAGetOverlappedResult after its event was signalled", err);
        return false;
    }
    finish(op);  // from here on, the buffer and the OVERLAPPED are ours again
    const bool recv = op.kind == Operation::Kind::kRecv;
    if (!ok) {  // a reset (10054) or an abort: this connection only
        if (!iocp::is_disconnect_error(err)) log_error(recv ? "WSARecv (completion)" : "WSASend (completion)", err);
        return false;
    }
    if (recv) {
        if (bytes == 0) return false;  // the client's FIN: everything before it is echoed already
        c.filled = bytes;
        c.sent = 0;
        return post_send(c);
    }
    if (bytes == 0) {  // a send that moved nothing would loop forever
        std::cerr << "ch05: WSASend completed with 0 bytes; closing\n";
        return false;
    }
    c.sent += bytes;
    if (c.sent < c.filled) return post_send(c);  // a partial send: post the rest
    return post_recv(c);
}
//! [complete]

//! [close]
// Closing with an operation in flight: cancel it, then WAIT until the kernel is done
// with it. CancelIoEx's page: it "does not wait for all canceled operations to
// complete", and the OVERLAPPED must not be freed or reused until they have. (Closing
// the socket cancels pending operations too, but closesocket's page warns not to assume
// they have completed when it returns.) Returns false if c must NOT be freed.
bool EchoServer::Group::close_connection(Connection& c) {
    Operation& op = c.op;
    if (op.in_flight) {
        if (CancelIoEx(reinterpret_cast<HANDLE>(c.socket.get()), &op.overlapped) ||
            GetLastError() == ERROR_NOT_FOUND) {  // ERROR_NOT_FOUND: it had completed already
            // fWait TRUE, allowed because the operation has an event (WSAGetOverlappedResult's
            // page). The result no longer matters: usually 995, ERROR_OPERATION_ABORTED.
            DWORD bytes = 0, flags = 0;
            WSAGetOverlappedResult(c.socket.get(), &op.overlapped, &bytes, TRUE, &flags);
        } else {
            log_error("CancelIoEx", static_cast<int>(GetLastError()));
            // closesocket cancels the socket's pending operations and still signals their
            // events (closesocket's page): close first, then wait on the event itself.
            c.socket.reset();
            WSAEVENT event = op.event.get();
            WSAWaitForMultipleEvents(1, &event, FALSE, WSA_INFINITE, FALSE);
        }
        // The kernel's own word, not ours: Internal leaves STATUS_PENDING only when the
        // operation is complete. If a wait above failed to wait, the kernel may still
        // write into op: leak the connection, loudly, rather than free what it owns.
        if (!HasOverlappedIoCompleted(&op.overlapped)) {
            std::cerr << "ch05: an operation is still pending after cancel and wait; "
                         "leaking its connection rather than freeing memory the kernel owns\n";
            c.socket.reset();
            return false;  // and it stays counted in operations_in_flight()
        }
        finish(op);
    }
    c.socket.reset();  // closesocket: the client sees FIN (RST if it sent bytes we never read)
    --load_;
    server_.close_connection();
    return true;
}
//! [close]

}  // namespace ch05
