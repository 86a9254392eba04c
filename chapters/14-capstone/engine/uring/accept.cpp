// Chapter 14, Linux side: how a client becomes a connection - chapter 13's multishot
// accept on worker 0's ring, the hand-over to the next worker in turn, a slot in that
// worker's table; then the application hears of it (on_connect).
#include "internal.h"

#include <memory>
#include <mutex>
#include <utility>

namespace ch14 {

//! [accept]
// One request for every client: a multishot accept stays in the ring and completes once
// per connection, each completion flagged IORING_CQE_F_MORE while it stays armed. The
// kernel ends it (a completion without the flag) on an error, on a cancel, or when it
// cannot post a completion; on_accept then arms it again.
void Engine::accept_clients(Worker& w) {
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) {  // the kernel takes no more requests right now: worker_loop tries again
        w.accept_retry = true;
        return;
    }
    w.accept_retry = false;
    w.accept_io.op = Op::kAccept;
    // No address buffer: one buffer would serve every completion of the request, and
    // the next client could overwrite it before this one is read (the man page says
    // so). The peer's address comes from getpeername() in admit().
    if (w.multishot)
        io_uring_prep_multishot_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    else
        io_uring_prep_accept(sqe, listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, kAcceptTag);
    w.accept_pending = true;
    ++accepts_pending_;
}
//! [accept]

//! [on-accept]
// A completion of the accept, on worker 0: a client to hand over, or a failure. Without
// IORING_CQE_F_MORE the request is over, and is armed again here (after a pause if it
// failed for want of descriptors or memory).
void Engine::on_accept(Worker& w, int result, unsigned flags) {
    const bool ended = (flags & IORING_CQE_F_MORE) == 0;
    if (ended) {
        w.accept_pending = false;
        --accepts_pending_;
    }
    if (w.draining) {
        if (result >= 0) {
            iocp::close_socket(result);  // arrived as we stopped
        } else if (result == -ECANCELED) {
            // cancelled by stop()
        }
        return;
    }
    if (result >= 0) {
        ++accepted_;
        hand_over(iocp::UniqueSocket(result));
    } else if (result == -EINVAL && w.multishot && ended) {
        // A kernel older than 5.19 has no multishot accept: one accept per client, then.
        std::cerr << "engine: multishot accept refused (Linux 5.19 or later has it); accepting one at a time\n";
        w.multishot = false;
    } else if (iocp::is_disconnect_error(-result) || -result == EINTR) {
        // ECONNABORTED: a client that left while queued. The next may come at once.
    } else {
        // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS), or anything else: the
        // client stays queued, and accepting again at once would fail at once. Pause
        // with a timeout request, so that the thread keeps serving the others.
        ++accept_failures_;
        std::cerr << "engine: accept failed: " << -result << " " << iocp::error_text(-result) << "\n";
        if (!ended) return;  // still armed: the kernel carries on by itself
        io_uring_sqe* sqe = get_sqe(w);
        if (sqe == nullptr) {  // no entry for the pause either: accept again after the next submit
            w.accept_retry = true;
            return;
        }
        w.accept_io.op = Op::kAcceptPause;
        io_uring_prep_timeout(sqe, &accept_pause_, 0, 0);
        io_uring_sqe_set_data64(sqe, kAcceptTag);
        w.accept_pending = true;
        return;
    }
    if (ended) accept_clients(w);  // armed again, for the next client
}
//! [on-accept]

//! [hand-over]
// On worker 0, for each accepted client: the next worker in turn gets it. Another
// worker's ring is not ours to submit to, so the client goes into that worker's inbox
// (under its lock: the one piece of data two workers share) and its doorbell rings.
void Engine::hand_over(iocp::UniqueSocket client) {
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

// A connection for `client`, with its two contexts and no buffer, in an entry of w's table, which
// owns it from here on.
Engine::Connection* Engine::take_slot(Worker& w, iocp::UniqueSocket client) {
    auto owned = std::make_unique<Connection>();
    Connection* c = owned.get();
    c->worker = &w;
    c->socket = std::move(client);
    c->recv.op = Op::kRecv;
    c->recv.connection = c;
    c->send.op = Op::kSend;
    c->send.connection = c;
    // The slot freed last is taken first, so slots, like descriptors and freed memory,
    // are reused at once. The generation tells this occupant from the last. Only w's
    // thread touches w's table: no lock.
    if (!w.free_slots.empty()) {
        c->slot = w.free_slots.back();
        w.free_slots.pop_back();
    } else {
        c->slot = static_cast<std::uint32_t>(w.slots.size());
        w.slots.emplace_back();
    }
    Slot& s = w.slots[c->slot];
    c->generation = s.generation;
    s.connection = std::move(owned);  // the table owns it now
    return c;
}

//! [register-socket]
// The socket into slot c.slot of the ring's table of registered files (one system call
// per connection, saved many times over: one lookup and one reference count per request).
// Where the table is too small, or the kernel says no, c keeps going by descriptor.
void Engine::register_socket(Connection& c) {
    Worker& w = *c.worker;
    if (c.slot >= w.file_slots) return;
    int fd = c.socket.get();
    c.fixed = io_uring_register_files_update(&w.ring, c.slot, &fd, 1) == 1;
}
//! [register-socket]

//! [admit]
// On the worker that will own the connection.
void Engine::admit(Worker& w, iocp::UniqueSocket client) {
    if (live_.fetch_add(1) >= options_.max_clients || w.slots.size() >= kMaxSlots) {
        --live_;
        ++refused_;
        std::cerr << "engine: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << options_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF
    }
    try {
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "engine: " << e.what() << "\n";
        --live_;
        return;
    }
    const std::string peer = iocp::peer_address(client.get());
    Connection* c = take_slot(w, std::move(client));
    register_socket(*c);
    // The application first, then the first receive: its on_connect comes before any
    // on_data. What it sends from there waits in the worker's commands until it returns.
    handler_.on_connect(id_of(*c), peer);
    post_recv(*c);
    if (c->closing && idle(*c)) free_connection(*c);  // the receive could not even start
}
//! [admit]

}  // namespace ch14
