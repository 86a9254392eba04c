// Chapter 13, Windows side: how connections end - one closed, one freed, all closed at
// stop(), and what is left when the drain runs out of time - and stop() itself, in its
// fixed order. Its twin is uring/shutdown.cpp: the same functions in the same order.
#include "internal.h"

#include <memory>
#include <thread>
#include <utility>
#include <vector>

namespace ch13 {

//! [close]
// With c.mutex held. Cancels what is in flight and closes the socket; the connection is
// freed by whoever sees it closing with nothing outstanding (complete, admit, close_all).
void EchoServer::close_connection(Connection& c, Why why) {
    if (c.closing) return;
    // The flag first, then the cancel: every packet of c handled from here on, whatever
    // error it brings (995, or 64 just like a reset), is the echo of this close. A
    // worker that has dequeued one already is waiting for c.mutex, and will see the flag.
    c.closing = true;
    c.why = why;
    // Each cancelled operation still completes, with an error, and its packet is how we
    // learn the kernel is done with that context and its buffer. On Windows
    // closesocket() alone cancels pending operations (closesocket, Remarks). Wine 8
    // leaves a send that waits for the peer to read pending after closesocket(), so the
    // drain in stop() would wait forever; CancelIoEx completes it there too (995,
    // ERROR_OPERATION_ABORTED). A cancel is not harmless in itself: Microsoft's
    // "Overlapped I/O and Event Objects" page says a socket whose operations were
    // cancelled is undefined to use any further, and is to be closed; and a send
    // cancelled part-way has sent some of its bytes, leaving the stream cut there. It is
    // fine here only because the socket is closed on the next line and never used again.
    // Holding c.mutex keeps every other Winsock call on this socket away: "never issue
    // closesocket on s concurrently with another Winsock function call" (closesocket,
    // Remarks). A wait for a pool buffer is no I/O: it leaves the pool's line here, or,
    // if the pool has granted it already, ends with the grant packet on its way.
    if (c.waiting) cancel_wait(c);
    if (!idle(c)) CancelIoEx(reinterpret_cast<HANDLE>(c.socket.get()), nullptr);
    c.socket.reset();
}
//! [close]

//! [free]
// Nobody can reach c any more: it is closing (nothing new is posted), nothing of it is
// outstanding (no packet will name it), and it leaves the table here (close_all will
// not find it). Its mutex is not held: it is destroyed with c.
void EchoServer::free_connection(Connection& c) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        //! [retire]
        // Retire the tag before the slot can be taken again: from now on a packet that
        // names (slot, this generation) is stale, whoever occupies the slot.
        Slot& s = slots_[c.slot];
        s.generation.store(next_generation(c.generation));
        s.connection.store(nullptr);
        free_slots_.push_back(c.slot);
        //! [retire]
    }
    switch (c.why) {
    case Why::kPeerFin: ++peer_closes_; break;
    case Why::kPeerReset: ++resets_; break;
    case Why::kByUs: ++closed_by_us_; break;
    }
    ++served_;
    release_buffers(c);
    delete &c;  // the table owned it (take_slot released it there)
    --live_;    // last: once live_connections() says 0, nothing of any connection is left
}
//! [free]

//! [release-buffers]
// Freeing c: the buffers it still holds go back to the pool, its queue and the one its
// last receive brought (or a grant). Nothing of c is in flight: the kernel is done with
// them. No lock of c is needed: nobody else can reach c any more.
void EchoServer::release_buffers(Connection& c) {
    while (c.head != nullptr) give_back(std::exchange(c.head, c.head->next));
    c.tail = nullptr;
    c.queued = 0;
    if (c.recv_buffer != nullptr) give_back(std::exchange(c.recv_buffer, nullptr));
}
//! [release-buffers]

//! [close-all]
// Runs on stop()'s thread, after every accept has come home, while the workers go on
// taking packets: every connection is locked in turn and closed.
void EchoServer::close_all() {
    std::vector<Connection*> ours;
    {
        std::lock_guard<std::mutex> lock(mutex_);  // nobody frees a connection while we walk
        for (std::size_t i = 0; i < slots_used_; ++i) {
            Connection* c = slots_[i].connection.load();
            if (c == nullptr) continue;
            std::lock_guard<std::mutex> connection_lock(c->mutex);
            const bool was_closing = c->closing;
            close_connection(*c, Why::kByUs);
            // A connection always has an operation in flight unless a worker holds its
            // lock, so this stays false; if it were not, the connection would be ours,
            // to free once the table's lock is let go.
            if (!was_closing && idle(*c)) ours.push_back(c);
        }
    }
    for (Connection* c : ours) free_connection(*c);
}
//! [close-all]

//! [abandon]
// After a drain that ran out of time, with every worker joined: the connections still
// in the table have operations the kernel has not given back, and may yet write to.
// They are parked for the life of the process, on purpose: memory the log names,
// never handed back to the heap while the kernel may own it.
void EchoServer::abandon() {
    std::size_t connections = 0;
    for (std::size_t i = 0; i < slots_used_; ++i) {
        Connection* c = slots_[i].connection.exchange(nullptr);
        if (c == nullptr) continue;
        ++connections;
        abandoned_ += static_cast<std::size_t>(c->outstanding);
        park(std::unique_ptr<Connection>(c));
    }
    if (connections > 0) {
        // Their buffers may still be the kernel's too: the pool's memory stays as well.
        for (auto& b : pool_) static_cast<void>(b.release());
        for (auto& m : pool_memory_) static_cast<void>(m.release());
    }
    if (connections > 0)
        std::cerr << "ch13: stop: " << abandoned_ << " operation(s) of " << connections
                  << " connection(s) never came home; their memory is left allocated\n";
}

// A list that lives as long as the process and is never destroyed: what it holds is
// never freed, and stays reachable, so a leak checker does not report it either.
void EchoServer::park(std::unique_ptr<Connection> c) {
    static std::mutex mutex;
    static auto* const parked = new std::vector<std::unique_ptr<Connection>>;
    std::lock_guard<std::mutex> lock(mutex);
    parked->push_back(std::move(c));
}
//! [abandon]

// One exit packet on the port; retried, since a worker would otherwise wait for ever.
void EchoServer::post_exit() {
    while (!PostQueuedCompletionStatus(completion_port_.get(), 0, kExitKey, nullptr)) {
        const DWORD err = GetLastError();
        std::cerr << "ch13: PostQueuedCompletionStatus failed: " << err << " "
                  << iocp::error_text(static_cast<int>(err)) << "; retrying\n";
        std::this_thread::sleep_for(kAcceptBackoff);
    }
}

//! [stop]
void EchoServer::stop() {
    if (workers_.empty() || stopped_) return;  // never started, or stopped already
    stopping_ = true;
    //! [stop-accepting]
    // 1. Stop accepting: no AcceptEx is posted from here on (post_accept looks at the
    // flag under the same lock), and every pending one is cancelled. Each comes home
    // as a packet, 995 (ERROR_OPERATION_ABORTED), or with a client if it had one
    // already; its worker closes its socket and posts nothing. Parked ones just stay.
    {
        std::lock_guard<std::mutex> lock(accept_mutex_);
        accepting_ = false;
        parked_.clear();
        parked_count_ = 0;
        CancelIoEx(reinterpret_cast<HANDLE>(listener_.get()), nullptr);
    }
    // Bounded, like the drain below. A client admitted by an accept that beat the
    // cancel is in the table once its accept's count is down (on_accept's last step).
    bool accepts_home = false;
    {
        std::unique_lock<std::mutex> lock(accept_mutex_);
        accepts_home = accepts_done_.wait_for(lock, limits_.drain_timeout, [this] { return accepts_pending_ == 0; });
    }
    if (!accepts_home)
        std::cerr << "ch13: stop: " << accepts_pending_ << " accept(s) still pending after "
                  << limits_.drain_timeout.count() << " ms\n";
    else
        listener_.reset();  // no AcceptEx uses it any more: safe to close
    //! [stop-accepting]
    // 2. Close every connection: the closing flag, then CancelIoEx and closesocket. The
    // workers handle each cancelled operation as it comes home, and the one that takes
    // a connection's count to zero frees it.
    close_all();
    // 3. Wait for the drain: nothing is posted any more, so the count only goes down.
    // Bounded: an operation the kernel never gives back must not hang stop() for ever.
    bool drained = false;
    {
        std::unique_lock<std::mutex> lock(mutex_);
        drained = drained_.wait_for(lock, limits_.drain_timeout, [this] { return in_flight_ == 0; });
    }
    if (!drained)
        std::cerr << "ch13: stop: " << in_flight_ << " operation(s) still outstanding after "
                  << limits_.drain_timeout.count() << " ms\n";
    // 4. One exit packet per worker. A worker that takes one leaves after its batch,
    // handing back any second one it took, so each packet ends a different worker.
    // Posted after the drain: a worker gone early would leave the packets of cancelled
    // operations, and their connections, to nobody.
    for (std::size_t i = 0; i < workers_.size(); ++i) post_exit();
    // 5. Join them all: from here on no thread of ours touches a connection.
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    // 6. Close the port, last: nobody waits on it any more, and a packet still to come
    // for an abandoned operation is dropped with it.
    completion_port_.reset();
    if (!drained) abandon();
    if (!accepts_home) {
        // Accepts the kernel never gave back: their contexts and the listener stay
        // allocated and open for the life of the process, like abandon()'s connections.
        for (auto& a : accepts_) static_cast<void>(a.release());
        static_cast<void>(listener_.release());
    }
    stopped_ = true;  // the Worker records stay: their counts remain readable
}
//! [stop]

}  // namespace ch13
