// Chapter 8, Linux side: accepting. Worker 0's ring accepts each client and deals it to
// the next worker in turn, which admits it. Its twin is iocp/accept.cpp, the same file
// name on the Windows side.
#include "internal.h"

#include <iterator>
#include <utility>

namespace ch08 {

//! [accept]
// No accept thread: the accept is one more request in worker 0's ring, posted again
// each time it completes (see on_accept).
void EchoServer::accept_clients(Worker& w) {
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) {  // the kernel takes no more requests right now: worker_loop tries again
        w.accept_retry = true;
        return;
    }
    w.accept_retry = false;
    w.accept_io.op = Op::kAccept;
    io_uring_prep_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &w.accept_io);
    w.accept_pending = true;
}
//! [accept]

//! [hand-over]
// On worker 0, for each accepted client: the next worker in turn gets it. Another
// worker's ring is not ours to submit to, so the client goes into that worker's inbox
// (under its lock: the one piece of data two workers share) and its doorbell rings.
void EchoServer::hand_over(iocp::UniqueSocket client) {
    Worker& to = *workers_[next_worker_++ % workers_.size()];
    if (&to == workers_.front().get()) {
        admit(to, std::move(client));
        return;
    }
    {
        std::lock_guard<std::mutex> lock(to.inbox_mutex);
        to.inbox.push_back(std::move(client));
    }
    ring_doorbell(to.doorbell.get());
}
//! [hand-over]

//! [admit]
// On the worker that will own the connection.
void EchoServer::admit(Worker& w, iocp::UniqueSocket client) {
    // Several workers admit at once: take a place first, then check it.
    if (live_.fetch_add(1) >= limits_.max_clients) {
        --live_;
        ++refused_;
        std::cerr << "ch08: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << limits_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF
    }
    try {
        // An echo split over two sends would wait ~40 ms for the peer's delayed ACK
        // under Nagle's algorithm; a request/response server turns Nagle off.
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "ch08: " << e.what() << "\n";
        --live_;
        return;
    }
    Connection* c = &w.connections.emplace_back();  // w's thread is the only one here
    c->self = std::prev(w.connections.end());
    c->worker = &w;
    c->socket = std::move(client);
    c->recv.op = Op::kRecv;
    c->recv.connection = c;
    c->recv.buffer.resize(limits_.buffer_size);
    c->send.op = Op::kSend;
    c->send.connection = c;
    c->send.buffer.resize(limits_.buffer_size);
    //! [associate]
    // Nothing to associate: a ring takes requests on any descriptor, and each request
    // carries its own context (user_data). There is no per-handle key: the per-I/O
    // context points to its connection, the per-handle data.
    post_recv(*c);
    //! [associate]
    if (c->closing && idle(*c)) free_connection(*c);  // the receive could not even start
}
//! [admit]

}  // namespace ch08
