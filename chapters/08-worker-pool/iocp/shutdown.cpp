// Chapter 8, Windows side: closing. One connection, every connection, and the server:
// stop accepting, close, drain, end the workers. Its twin is uring/shutdown.cpp, the
// same file name on the Linux side.
#include "internal.h"

namespace ch08 {

//! [close]
// With c.mutex held. Cancels what is in flight and closes the socket; the connection is
// freed by whoever sees it closing with nothing in flight (complete, admit, close_all).
void EchoServer::close_connection(Connection& c) {
    if (c.closing) return;
    c.closing = true;
    // Each cancelled operation still completes, with an error, and its packet is how we
    // learn the kernel is done with that context and its buffer. On Windows
    // closesocket() alone cancels pending operations (closesocket, Remarks). Wine 8
    // leaves a send that waits for the peer to read pending after closesocket(), so the
    // drain in stop() would wait forever; CancelIoEx completes it there too (995,
    // ERROR_OPERATION_ABORTED). Cancelling is not harmless in itself: Microsoft's
    // "Overlapped I/O and Event Objects" says "the behavior is undefined for continued
    // use of a socket that has had outstanding operations canceled" and to call
    // closesocket after a cancel, and a send cancelled part-way has cut the stream at a
    // byte we cannot know. It is right here only because the socket is closed at once,
    // on the next line. (An admit packet is no I/O: CancelIoEx finds nothing, and the
    // packet comes anyway.) Holding c.mutex keeps every other Winsock call on this
    // socket away: "never issue closesocket on s concurrently with another Winsock
    // function call" (closesocket, Remarks).
    if (!idle(c)) CancelIoEx(reinterpret_cast<HANDLE>(c.socket.get()), nullptr);
    c.socket.reset();
}

// Nobody can reach c any more: it is closing (nothing new is posted), nothing of it is
// in flight (no packet will name it), and it leaves the list here (close_all will not
// find it). Its mutex is not held: it is destroyed with c.
void EchoServer::free_connection(Connection& c) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        connections_.erase(c.self);
    }
    --live_;
    ++served_;
}
//! [close]

//! [close-all]
// Runs on stop()'s thread, after the accept thread has ended, while the workers go on
// taking packets: every connection is locked in turn and closed.
void EchoServer::close_all() {
    std::lock_guard<std::mutex> lock(mutex_);  // nobody frees a connection while we walk
    for (auto it = connections_.begin(); it != connections_.end();) {
        Connection& c = *it++;
        bool free_now = false;
        {
            std::lock_guard<std::mutex> connection_lock(c.mutex);
            const bool was_closing = c.closing;
            close_connection(c);
            // A connection always has an operation in flight unless a worker holds its
            // lock, so this stays false; if it were not, the connection would be ours.
            free_now = !was_closing && idle(c);
        }
        if (free_now) {
            connections_.erase(c.self);
            --live_;
            ++served_;
        }
    }
}
//! [close-all]

//! [stop]
void EchoServer::stop() {
    if (workers_.empty() || stopped_) return;  // never started, or stopped already
    stopping_ = true;
    // 1. Stop accepting. A connection of our own wakes a blocked accept() without a race
    // (an accept() about to start finds it waiting). CancelIoEx covers a connect that
    // could not get through; neither shutdown() nor closesocket() on the listener wakes
    // a blocked accept() under Wine 8, CancelIoEx does (error 995).
    if (accept_thread_.joinable()) {
        iocp::poke_listener(listener_.get());
        CancelIoEx(reinterpret_cast<HANDLE>(listener_.get()), nullptr);
        accept_thread_.join();
    }
    listener_.reset();
    // 2. Close every connection. The workers handle each cancelled operation as it comes
    // home and free its connection after the last one. An admit packet still queued
    // comes home the same way: its connection is closing, so no receive is started.
    close_all();
    // 3. Wait for the drain: nothing is posted any more, so the count only goes down.
    {
        std::unique_lock<std::mutex> lock(mutex_);
        drained_.wait(lock, [this] { return in_flight_ == 0; });
    }
    // 4. One exit packet per worker. A worker that takes one leaves at once, so each
    // packet ends a different worker; then nothing the kernel could write to is left.
    for (std::size_t i = 0; i < workers_.size(); ++i) {
        while (!PostQueuedCompletionStatus(completion_port_.get(), 0, kExitKey, nullptr)) {
            const DWORD err = GetLastError();
            std::cerr << "ch08: PostQueuedCompletionStatus failed: " << err << " "
                      << iocp::error_text(static_cast<int>(err)) << "; retrying\n";
            std::this_thread::sleep_for(kAcceptBackoff);
        }
    }
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    completion_port_.reset();
    stopped_ = true;  // the Worker records stay: their counts remain readable
}
//! [stop]

}  // namespace ch08
