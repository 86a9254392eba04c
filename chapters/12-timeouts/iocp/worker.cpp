// Chapter 12, Windows side: the workers - a packet's key looked up in the connection
// table, and the loop every worker runs on the port, accepts included. Its twin is uring/worker.cpp: the
// same functions in the same order, and the ring's own requests besides.
#include "internal.h"

namespace ch12 {

//! [find]
// The connection a packet's key names, or nullptr if that connection is gone: its slot
// has moved on to another generation (or lies empty). No lock: the table never moves,
// and a packet that is not stale holds one of its connection's outstanding operations,
// so that connection cannot be freed, nor its slot change, while we look.
EchoServer::Connection* EchoServer::find(ULONG_PTR key) {
    const std::uint32_t slot = slot_of(key);
    if (slot >= slot_count_) return nullptr;
    const Slot& s = slots_[slot];
    if (s.generation.load() != generation_of(key)) return nullptr;
    return s.connection.load();
}
//! [find]

//! [worker]
void EchoServer::worker_loop(Worker& w) {
    for (;;) {
        //! [timed-wait]
        // While an accept is parked, the wait is bounded by the backoff, so that some
        // worker tries it again even if no packet ever comes; else a worker sleeps
        // until there is work. After every packet, too, parked accepts get their try.
        if (parked_count_ > 0) retry_parked_accepts();
        DWORD wait = parked_count_ > 0 ? static_cast<DWORD>(kAcceptBackoff.count()) : INFINITE;
        // And no later than the next sweep of the timeouts, which this worker may run.
        wait = wait_for_sweep(wait);
        //! [timed-wait]
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        OVERLAPPED* overlapped = nullptr;
        const BOOL ok = GetQueuedCompletionStatus(completion_port_.get(), &bytes, &key, &overlapped, wait);
        const DWORD error = ok ? ERROR_SUCCESS : GetLastError();
        //! [matrix]
        if (overlapped == nullptr) {
            // FALSE, no OVERLAPPED: nothing was dequeued, and bytes and key are not to be
            // read ("their values are indeterminate", GetQueuedCompletionStatus, Remarks).
            // WAIT_TIMEOUT: our bounded wait ran out, and the loop's top retries the
            // parked accepts and sweeps the timeouts. Anything else: the port itself failed
            // (ERROR_ABANDONED_WAIT_0: closed under us; Wine 8 does not even wake us then).
            if (!ok && error == WAIT_TIMEOUT) continue;
            // As in chapter 7, the process stops loudly: a worker that quietly left would
            // leave its share of the completions, and stop()'s drain, waiting.
            if (!ok) fatal("GetQueuedCompletionStatus", error);
            // TRUE, no OVERLAPPED: a packet we posted ourselves. The exit packet: this
            // worker leaves, and takes no other packet (stop() posts one per worker).
            if (key == kExitKey) return;
            std::cerr << "ch12: ignoring a posted packet with unknown key " << key << "\n";
            continue;
        }
        // With an OVERLAPPED and the listener's key: an AcceptEx came home.
        if (key == kListenerKey) {
            on_accept(*CONTAINING_RECORD(overlapped, AcceptContext, overlapped), ok != FALSE, error);
            continue;
        }
        // With an OVERLAPPED and a connection's key: one of its operations, failed or not.
        //! [stale]
        // The key (the per-handle data: which connection) is looked up first, and the
        // OVERLAPPED (the per-I/O data: which operation) not even looked at unless the
        // key's connection still lives: a late packet's OVERLAPPED may point into memory
        // that now belongs to another connection, and to the kernel.
        Connection* c = find(key);
        if (c == nullptr) {
            ++stale_;
            std::cerr << "ch12: dropped a completion for a connection that is gone (slot " << slot_of(key)
                      << ", generation " << generation_of(key) << ")\n";
            continue;
        }
        //! [stale]
        IoContext* io = CONTAINING_RECORD(overlapped, IoContext, overlapped);
        if (io->connection != c) fatal("a packet whose key and OVERLAPPED disagree", ERROR_INVALID_DATA);
        ++w.completions;
        if (!ok) {
            // FALSE with an OVERLAPPED: that I/O failed. GetLastError() says why: 64
            // (ERROR_NETNAME_DELETED) for a reset, and after our own closesocket too; 995
            // (ERROR_OPERATION_ABORTED) after CancelIoEx; Wine 8 adds 676 for a receive
            // whose socket we closed. complete() sorts ours from the peer's.
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

}  // namespace ch12
