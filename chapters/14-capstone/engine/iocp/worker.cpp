// Chapter 14, Windows side: the workers - chapter 13's loop on the one port, every
// worker alike, which now also takes the packets that announce a connection's commands.
// Its twin is uring/worker.cpp, where each worker has a ring of its own.
#include "internal.h"

#include <winternl.h>  // RtlNtStatusToDosError (ntdll)

namespace ch14 {

//! [find]
// The connection a packet's key names, or nullptr if that connection is gone: its slot
// has moved on to another generation (or lies empty). No lock: the table never moves,
// and a packet that is not stale keeps its connection from being retired (an
// operation counted in `outstanding`, or the inbox's packet), so it cannot be freed
// while we look.
Engine::Connection* Engine::find(ULONG_PTR key) {
    const std::uint32_t slot = slot_of(key);
    if (slot >= slot_count_) return nullptr;
    const Slot& s = slots_[slot];
    if (s.generation.load() != generation_of(key)) return nullptr;
    return s.connection.load();
}
//! [find]

//! [dispatch]
// One packet. Returns false for the exit packet.
bool Engine::dispatch(Worker& w, BOOL ok, DWORD error, DWORD bytes, ULONG_PTR key, OVERLAPPED* overlapped) {
    if (overlapped == nullptr) {
        if (key == kExitKey) return false;  // stop() posts one per worker
        std::cerr << "engine: ignoring a posted packet with unknown key " << key << "\n";
        return true;
    }
    if (key == kListenerKey) {
        on_accept(*CONTAINING_RECORD(overlapped, AcceptContext, overlapped), ok != FALSE, error);
        return true;
    }
    // The key first, and the OVERLAPPED not even looked at unless the key's connection
    // still lives (chapter 9).
    Connection* c = find(key);
    if (c == nullptr) {
        ++stale_;
        std::cerr << "engine: dropped a completion for a connection that is gone (slot " << slot_of(key)
                  << ", generation " << generation_of(key) << ")\n";
        return true;
    }
    IoContext* io = CONTAINING_RECORD(overlapped, IoContext, overlapped);
    if (io->connection != c) fatal("a packet whose key and OVERLAPPED disagree", ERROR_INVALID_DATA);
    ++w.completions;
    //! [matrix]
    if (io->op == Op::kCommand) {
        on_command(*c);  // our own packet: the inbox has commands
    } else if (!ok) {
        // 64 (ERROR_NETNAME_DELETED) for a reset, and after our own closesocket too;
        // 995 (ERROR_OPERATION_ABORTED) after CancelIoEx. settle() looks at the closing
        // flag first, and sorts ours from the peer's.
        complete(*c, *io, Outcome::kFailed, bytes, static_cast<int>(error));
    } else if (bytes == 0 && io->op == Op::kRecv) {
        complete(*c, *io, Outcome::kPeerClosed, 0, 0);  // the peer's FIN
    } else {
        complete(*c, *io, Outcome::kBytes, bytes, 0);  // a zero-byte receive's success has 0 too
    }
    //! [matrix]
    return true;
}
//! [dispatch]

//! [worker]
void Engine::worker_loop(Worker& w) {
    for (;;) {
        // While an accept is parked, the wait is bounded by the backoff, so that some
        // worker tries it again even if no packet comes; and always by the next tick.
        if (parked_count_ > 0) retry_parked_accepts();
        DWORD wait = parked_count_ > 0 ? static_cast<DWORD>(kAcceptBackoff.count()) : INFINITE;
        wait = wait_for_tick(wait);
        // Up to 64 packets per call (chapter 13). Each entry has no success flag: the
        // status is the NTSTATUS in its OVERLAPPED's Internal, turned into the Win32
        // code GetQueuedCompletionStatus would report by RtlNtStatusToDosError.
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
            // An exit packet: the packets after it in this batch are handled first; a
            // second one was meant for another worker, and goes back to the port.
            if (leaving) post_exit();
            leaving = true;
        }
        if (leaving) return;
    }
}
//! [worker]

}  // namespace ch14
