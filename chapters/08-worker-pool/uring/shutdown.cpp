// Chapter 8, Linux side: closing. One connection, every connection of a worker, and the
// server: ring every doorbell, let each worker drain its own ring, end the workers. Its
// twin is iocp/shutdown.cpp, the same file name on the Windows side.
#include "internal.h"

namespace ch08 {

//! [close]
// On c's worker. Cancels what is in flight; the connection is freed by whoever sees it
// closing with nothing in flight (complete, admit, close_all), and its socket with it.
void EchoServer::close_connection(Connection& c) {
    if (c.closing) return;
    c.closing = true;
    // close() would cancel nothing here: a request in the ring holds its own reference
    // to the socket. So each pending operation is cancelled by name; it still completes
    // (-ECANCELED, or its real result if it finished first), and that completion is how
    // we learn the kernel is done with its context and its buffer.
    if (c.receiving) cancel(*c.worker, c.recv, c.socket.get());
    if (c.sending > 0) cancel(*c.worker, c.send, c.socket.get());
}

void EchoServer::free_connection(Connection& c) {
    c.worker->connections.erase(c.self);  // closes the socket: the client sees FIN
    --live_;
    ++served_;
}

// IORING_OP_ASYNC_CANCEL finds the request by its user_data, here the context's address,
// and addresses are reused. Once both its operations have completed, the connection is
// freed, perhaps before this cancel has even reached the kernel, and a new connection
// at the same address may prepare a receive with the same user_data. The cancel still
// cannot find it: the cancel entered the submission queue first, the kernel takes
// entries in queue order, and a cancel does its work while it is submitted (liburing's
// io_uring_prep_cancel(3), NOTES). Safe by that order alone; chapter 9 names requests
// by generation tags instead, which do not depend on it.
void EchoServer::cancel(Worker& w, IoContext& io, iocp::socket_t fd) {
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) {
        // The kernel takes no more requests right now: wake the operation the blunt way.
        // A pending recv then returns 0, a send EPIPE, an accept EINVAL.
        ::shutdown(fd, SHUT_RDWR);
        return;
    }
    io_uring_prep_cancel(sqe, &io, 0);
    io_uring_sqe_set_data(sqe, nullptr);
    ++w.cancels_in_flight;
}
//! [close]

//! [close-all]
// Runs on worker w, for w's connections only: each worker drains its own ring.
void EchoServer::close_all(Worker& w) {
    if (w.accept_pending) cancel(w, w.accept_io, listener_.get());
    for (auto it = w.connections.begin(); it != w.connections.end();) {
        Connection& c = *it++;  // free_connection may erase c
        const bool was_closing = c.closing;
        close_connection(c);
        // A connection always has an operation in flight between two completions, so
        // this stays false; if it were not, the connection would be ours to free.
        if (!was_closing && idle(c)) free_connection(c);
    }
}
//! [close-all]

//! [stop]
void EchoServer::stop() {
    if (workers_.empty() || stopped_) return;  // never started, or stopped already
    stopping_ = true;
    // 1. Stop accepting: nothing to do here. The accept is a request in worker 0's ring,
    // and worker 0 cancels it with everything else.
    // 2. The exit packets: every worker's doorbell rings, and each worker cancels every
    // request of its own ring, handles each one as it comes home (freeing its
    // connections), and returns once none is left in flight.
    for (auto& w : workers_) {
        if (w->doorbell) ring_doorbell(w->doorbell.get());
    }
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    // 3. A client handed to a worker after it had stopped was never admitted: close it.
    // Then no request is left in any ring, and the rings can go.
    for (auto& w : workers_) {
        std::lock_guard<std::mutex> lock(w->inbox_mutex);
        w->inbox.clear();
    }
    for (auto& w : workers_) {
        if (w->ring_ready) {
            io_uring_queue_exit(&w->ring);
            w->ring_ready = false;
        }
    }
    listener_.reset();
    stopped_ = true;  // the Worker records stay: their counts remain readable
}
//! [stop]

}  // namespace ch08
