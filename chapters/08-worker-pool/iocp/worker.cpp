// Chapter 8, Windows side: the workers. Each one takes the next packet from the one port
// and sorts it by the GetQueuedCompletionStatus result matrix. Its twin is
// uring/worker.cpp, the same file name on the Linux side.
#include "internal.h"

namespace ch08 {

//! [worker]
void EchoServer::worker_loop(Worker& w) {
    for (;;) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        OVERLAPPED* overlapped = nullptr;
        const BOOL ok = GetQueuedCompletionStatus(completion_port_.get(), &bytes, &key, &overlapped, INFINITE);
        const DWORD error = ok ? ERROR_SUCCESS : GetLastError();
        //! [matrix]
        if (overlapped == nullptr) {
            // FALSE, no OVERLAPPED: nothing was dequeued, and bytes and key are not to be
            // read ("their values are indeterminate", GetQueuedCompletionStatus, Remarks).
            // With INFINITE this is not a timeout: the port itself failed
            // (ERROR_ABANDONED_WAIT_0: closed under us; Wine 8 does not even wake us then).
            // As in chapter 7, the process stops loudly: a worker that quietly left would
            // leave its share of the completions, and stop()'s drain, waiting.
            if (!ok) fatal("GetQueuedCompletionStatus", error);
            // TRUE, no OVERLAPPED: a packet we posted ourselves. The exit packet: this
            // worker leaves, and takes no other packet (stop() posts one per worker).
            if (key == kExitKey) return;
            std::cerr << "ch08: ignoring a posted packet with unknown key " << key << "\n";
            continue;
        }
        // With an OVERLAPPED, the packet is one of our operations, whether it succeeded
        // or not; key and bytes are valid either way. The key is the per-handle data
        // (the connection), the OVERLAPPED leads to the per-I/O data (the operation).
        IoContext* io = CONTAINING_RECORD(overlapped, IoContext, overlapped);
        Connection* c = reinterpret_cast<Connection*>(key);
        if (io->connection != c) fatal("a packet whose key and OVERLAPPED disagree", ERROR_INVALID_DATA);
        if (io->op == Op::kAdmit) {  // TRUE, and no I/O behind it: the accept thread's packet
            complete(*c, *io, Outcome::kBytes, 0, 0);  // see hand_over
            continue;
        }
        ++w.completions;  // receives and sends only
        if (!ok) {
            // FALSE with an OVERLAPPED: that I/O failed. GetLastError() says why: 64
            // (ERROR_NETNAME_DELETED) for a reset, 995 (ERROR_OPERATION_ABORTED) after
            // CancelIoEx; Wine 8 adds 676 for a receive whose socket we closed. Close
            // that connection, and only that one.
            complete(*c, *io, Outcome::kFailed, bytes, static_cast<int>(error));
        } else if (bytes == 0 && io->op == Op::kRecv) {
            // TRUE, 0 bytes, a receive: the peer sent FIN. An orderly end, not an error.
            // (Or our own close: complete() looks at the closing flag first.)
            complete(*c, *io, Outcome::kPeerClosed, 0, 0);
        } else {
            // TRUE with bytes: the operation moved `bytes` (a send may move fewer than
            // asked: the rest is posted again).
            complete(*c, *io, Outcome::kBytes, bytes, 0);
        }
        //! [matrix]
    }
}
//! [worker]

}  // namespace ch08
