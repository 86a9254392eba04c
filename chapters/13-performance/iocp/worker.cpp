// Chapter 13, Windows side: the workers - a packet's key looked up in the connection
// table, and the loop every worker runs on the port, accepts included. Its twin is uring/worker.cpp: the
// same functions in the same order, and the ring's own requests besides.
#include "internal.h"

#include <winternl.h>  // RtlNtStatusToDosError (ntdll)

namespace ch13 {

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

//! [dispatch]
// One packet, dequeued by either call. Returns false for the exit packet.
bool EchoServer::dispatch(Worker& w, BOOL ok, DWORD error, DWORD bytes, ULONG_PTR key, OVERLAPPED* overlapped) {
    if (overlapped == nullptr) {
        // A packet we posted ourselves. The exit packet: this worker leaves (stop()
        // posts one per worker).
        if (key == kExitKey) return false;
        std::cerr << "ch13: ignoring a posted packet with unknown key " << key << "\n";
        return true;
    }
    // With an OVERLAPPED and the listener's key: an AcceptEx came home.
    if (key == kListenerKey) {
        on_accept(*CONTAINING_RECORD(overlapped, AcceptContext, overlapped), ok != FALSE, error);
        return true;
    }
    //! [stale]
    // The key (the per-handle data: which connection) is looked up first, and the
    // OVERLAPPED (the per-I/O data: which operation) not even looked at unless the
    // key's connection still lives: a late packet's OVERLAPPED may point into memory
    // that now belongs to another connection, and to the kernel.
    Connection* c = find(key);
    if (c == nullptr) {
        ++stale_;
        std::cerr << "ch13: dropped a completion for a connection that is gone (slot " << slot_of(key)
                  << ", generation " << generation_of(key) << ")\n";
        return true;
    }
    //! [stale]
    IoContext* io = CONTAINING_RECORD(overlapped, IoContext, overlapped);
    if (io->connection != c) fatal("a packet whose key and OVERLAPPED disagree", ERROR_INVALID_DATA);
    ++w.completions;
    //! [matrix]
    if (!ok) {
        // That I/O failed: 64 (ERROR_NETNAME_DELETED) for a reset, and after our own
        // closesocket too; 995 (ERROR_OPERATION_ABORTED) after CancelIoEx; Wine 8 adds
        // 676 for a receive whose socket we closed. complete() sorts ours from the peer's.
        complete(*c, *io, Outcome::kFailed, bytes, static_cast<int>(error));
    } else if (bytes == 0 && io->op == Op::kRecv) {
        // Success, 0 bytes, a receive: the peer sent FIN. (Or our own close: complete()
        // looks at the closing flag first.)
        complete(*c, *io, Outcome::kPeerClosed, 0, 0);
    } else {
        // Success with bytes (a send may move fewer than asked: the rest is posted again).
        complete(*c, *io, Outcome::kBytes, bytes, 0);
    }
    //! [matrix]
    return true;
}
//! [dispatch]

//! [worker]
void EchoServer::worker_loop(Worker& w) {
    for (;;) {
        //! [timed-wait]
        // While an accept is parked, the wait is bounded by the backoff, so that some
        // worker tries it again even if no packet ever comes; else a worker sleeps
        // until there is work. After every batch, too, parked accepts get their try.
        if (parked_count_ > 0) retry_parked_accepts();
        DWORD wait = parked_count_ > 0 ? static_cast<DWORD>(kAcceptBackoff.count()) : INFINITE;
        // And no later than the next sweep of the timeouts, which this worker may run.
        wait = wait_for_sweep(wait);
        //! [timed-wait]
        if (!features_.batch_dequeue) {  // --without batch: chapter 12's loop, one packet per call
            DWORD bytes = 0;
            ULONG_PTR key = 0;
            OVERLAPPED* overlapped = nullptr;
            const BOOL ok = GetQueuedCompletionStatus(completion_port_.get(), &bytes, &key, &overlapped, wait);
            ++waits_;
            const DWORD error = ok ? ERROR_SUCCESS : GetLastError();
            // FALSE with no OVERLAPPED: nothing was dequeued (WAIT_TIMEOUT: our bounded
            // wait ran out), or the port itself failed.
            if (overlapped == nullptr && !ok && error == WAIT_TIMEOUT) continue;
            if (overlapped == nullptr && !ok) fatal("GetQueuedCompletionStatus", error);
            if (!dispatch(w, ok, error, bytes, key, overlapped)) return;
            continue;
        }
        //! [batch]
        // Up to 64 packets per call. Each entry carries the key, the OVERLAPPED and the
        // byte count, but no success flag: the operation's status is in its
        // OVERLAPPED's Internal member (an NTSTATUS; OVERLAPPED, Remarks), and the error
        // GetQueuedCompletionStatus would have reported is that status as a Win32 code
        // (RtlNtStatusToDosError, which GQCS itself applies). Not alertable (FALSE):
        // no APC runs in here.
        OVERLAPPED_ENTRY entries[kBatch];
        ULONG n = 0;
        const BOOL got = GetQueuedCompletionStatusEx(completion_port_.get(), entries, kBatch, &n, wait, FALSE);
        ++waits_;
        if (!got) {
            const DWORD error = GetLastError();
            if (error == WAIT_TIMEOUT) continue;
            fatal("GetQueuedCompletionStatusEx", error);
        }
        bool leaving = false;
        for (ULONG i = 0; i < n; ++i) {
            const OVERLAPPED_ENTRY& e = entries[i];
            const auto status = e.lpOverlapped != nullptr ? static_cast<LONG>(e.lpOverlapped->Internal) : 0;
            const DWORD error = status == 0 ? ERROR_SUCCESS : RtlNtStatusToDosError(status);
            if (dispatch(w, status == 0, error, e.dwNumberOfBytesTransferred, e.lpCompletionKey, e.lpOverlapped))
                continue;
            // An exit packet. The packets after it in this batch are real work and are
            // handled first; a second exit packet was meant for another worker, and goes
            // back to the port for it.
            if (leaving) post_exit();
            leaving = true;
        }
        if (leaving) return;
        //! [batch]
    }
}
//! [worker]

}  // namespace ch13
