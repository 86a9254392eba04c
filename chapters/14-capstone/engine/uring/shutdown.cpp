// Chapter 14, Linux side: how connections end - chapter 13's close, free, cancel,
// close-all, abandon and stop, with the application told (on_close) once per
// connection, whatever ends it.
#include "internal.h"

#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace ch14 {

//! [close]
// On c's worker. Cancels what is in flight; the connection is freed by whoever sees it
// closing with nothing outstanding (complete, admit, close_all), and its socket with it.
void Engine::close_connection(Connection& c, Why why) {
    if (c.closing) return;
    // The flag first, then the cancels: every completion of c from here on, whatever
    // it says, is the echo of this close.
    c.closing = true;
    c.why = why;
    if (!c.told) {  // the application hears it once, whatever ended the connection
        c.told = true;
        handler_.on_close(id_of(c));
    }
    // close() would cancel nothing here: a request in the ring holds its own reference
    // to the socket. So each pending operation is cancelled by its tag; it still
    // completes (-ECANCELED, or its real result if it finished first), and that
    // completion is how we learn the kernel is done with its context and its buffer.
    // (A receive whose pause-cancel is on its way is cancelled again: harmless, -ENOENT
    // or -EALREADY at worst.)
    if (c.receiving) cancel(*c.worker, make_tag(c.slot, c.generation, Kind::kRecv), c.socket.get());
    if (c.sending > 0) cancel(*c.worker, make_tag(c.slot, c.generation, Kind::kSend), c.socket.get());
}
//! [close]

//! [free]
// Nobody can reach c any more: it is closing (nothing new is posted), nothing of it is
// outstanding (no completion will name it), and it leaves the table here.
void Engine::free_connection(Connection& c) {
    Worker& w = *c.worker;
    //! [retire]
    // Retire the tag before the slot can be taken again: from now on a completion that
    // names (slot, this generation) is stale, whoever occupies the slot.
    Slot& s = w.slots[c.slot];
    s.generation = next_generation(c.generation);
    w.free_slots.push_back(c.slot);
    //! [retire]
    ++served_;
    if (c.recv_buffer != nullptr) give_back(w, std::exchange(c.recv_buffer, nullptr));
    queued_total_ -= c.queued;  // what it never sent: gone with it
    c.queued = 0;
    // Out of the ring's table first: the table holds a reference to the socket, and
    // while it does, closing our descriptor would send no FIN.
    if (c.fixed) {
        int none = -1;
        io_uring_register_files_update(&w.ring, c.slot, &none, 1);
    }
    s.connection.reset();  // destroys c and closes its socket: the client sees FIN
    --live_;  // last: once live_connections() says 0, nothing of any connection is left
}
//! [free]


//! [cancel]
// IORING_OP_ASYNC_CANCEL finds the request by its user_data: here a tag that names one
// generation of one slot, so the cancel can never find a later connection's request,
// even if it reaches the kernel after that connection has taken the slot.
void Engine::cancel(Worker& w, std::uint64_t tag, iocp::socket_t fd) {
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) {
        // The kernel takes no more requests right now: wake the operation the blunt way.
        // A pending recv then returns 0, a send EPIPE, an accept EINVAL.
        ::shutdown(fd, SHUT_RDWR);
        return;
    }
    io_uring_prep_cancel64(sqe, tag, 0);
    io_uring_sqe_set_data64(sqe, kCancelTag);
    ++w.cancels_in_flight;
}
//! [cancel]

//! [close-all]
// Runs on worker w, for w's connections only: each worker drains its own ring.
void Engine::close_all(Worker& w) {
    if (w.accept_pending) cancel(w, kAcceptTag, listener_.get());
    if (w.tick_pending) cancel(w, kTickTag, -1);
    for (std::size_t i = 0; i < w.slots.size(); ++i) {
        Connection* c = w.slots[i].connection.get();
        if (c == nullptr) continue;
        const bool was_closing = c->closing;
        close_connection(*c, Why::kByUs);
        // A connection has a request in flight between two completions, unless it
        // waits for a buffer with nothing queued (its wait is no request): then it is
        // idle here, and ours to free.
        if (!was_closing && idle(*c)) free_connection(*c);
    }
}
//! [close-all]

//! [abandon]
// After a drain that ran out of time, with every worker joined: the connections still
// in a table have requests the kernel has not given back, and may yet write to. They
// are parked for the life of the process, on purpose: memory the log names, never
// handed back to the heap while the kernel may own it.
void Engine::abandon() {
    std::size_t connections = 0;
    for (auto& w : workers_) {
        if (!w->gave_up) continue;
        for (Slot& s : w->slots) {
            if (!s.connection) continue;
            ++connections;
            abandoned_ += static_cast<std::size_t>(s.connection->outstanding);
            park(std::move(s.connection));
        }
    }
    if (connections > 0)
        std::cerr << "engine: stop: " << abandoned_ << " operation(s) of " << connections
                  << " connection(s) never came home; their memory is left allocated\n";
}

// A list that lives as long as the process and is never destroyed: what it holds is
// never freed, and stays reachable, so a leak checker does not report it either.
void Engine::park(std::unique_ptr<Connection> c) {
    static std::mutex mutex;
    static auto* const parked = new std::vector<std::unique_ptr<Connection>>;
    std::lock_guard<std::mutex> lock(mutex);
    parked->push_back(std::move(c));
}
//! [abandon]

//! [stop]
void Engine::stop() {
    if (workers_.empty() || stopped_) return;  // never started, or stopped already
    stopping_ = true;
    // 1-4 happen on each worker, in its own ring, once its doorbell rings: stop()'s
    // thread cannot submit to a ring it does not own. Each worker then
    //   1. stops accepting (worker 0: it cancels its accept first),
    //   2. closes its connections: the closing flag, then a cancel by tag for each
    //      pending request,
    //   3. drains: handles each request as it comes home, and the completion that takes
    //      a connection's count to zero frees it; bounded by drain_timeout,
    //   4. and returns, its ring empty: the exit packet and the drain in one.
    for (auto& w : workers_) {
        if (w->doorbell) ring_doorbell(w->doorbell.get());
    }
    // 5. Join them all: from here on no thread of ours touches a ring or a connection.
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    // A client handed to a worker after it had stopped was never admitted: close it.
    for (auto& w : workers_) {
        std::lock_guard<std::mutex> lock(w->inbox_mutex);
        w->inbox.clear();
        // Commands for connections that are gone: none will be carried out.
        commands_pending_ -= w->commands.size();
        w->commands.clear();
    }
    // 6. Close the rings, last. A ring whose drain ran out of time still has requests;
    // closing it cancels them in the kernel, in the background, so what they point to
    // is abandoned, never freed.
    abandon();
    for (auto& w : workers_) {
        if (w->ring_ready) {
            io_uring_queue_exit(&w->ring);
            w->ring_ready = false;
        }
        // A ring whose drain ran out of time may leave buffers the kernel still writes.
        if (!w->gave_up) free_buffer_ring(*w);
    }
    listener_.reset();
    stopped_ = true;  // the Worker records stay: their counts remain readable
}
//! [stop]

}  // namespace ch14
