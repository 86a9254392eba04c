// Chapter 13, Linux side: the timeouts - each connection keeps two deadlines, as on
// Windows, and its worker sweeps its own table for passed ones every tick, woken by one
// IORING_OP_TIMEOUT per ring. Chapter 12 linked a timeout to every receive and send:
// two more requests, and a kernel timer armed and disarmed, per message. A multishot
// receive cannot carry a linked timeout, and a sweep costs nothing per message but a
// deadline stored. Its twin is iocp/timers.cpp.
#include "internal.h"

namespace ch13 {

//! [tick]
// One timeout request on w's ring, every tick while a timeout is set. It is the ring's
// own request, like the doorbell's poll: it names no connection.
void EchoServer::arm_tick(Worker& w) {
    if (tick_.count() == 0 || w.tick_pending || w.draining) return;
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) return;  // the next completion tries again (on_tick runs after any batch)
    w.tick_io.op = Op::kTick;
    io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
    io_uring_sqe_set_data64(sqe, kTickTag);
    w.tick_pending = true;
}

// The tick came home: -ETIME when its time ran out, -ECANCELED when stop() cancelled it.
void EchoServer::on_tick(Worker& w, int result) {
    w.tick_pending = false;
    if (result != -ETIME && result != -ECANCELED)
        std::cerr << "ch13: timeout request: " << -result << " " << iocp::error_text(-result) << "\n";
    if (w.draining) return;
    sweep_timeouts(w);
    arm_tick(w);
}
//! [tick]

//! [sweep]
// One pass over w's table, on w's thread: no lock, since only w touches its
// connections. A passed deadline closes its connection with the usual close (the flag,
// then a cancel by tag); the cancelled request comes home -ECANCELED, counted as ours.
void EchoServer::sweep_timeouts(Worker& w) {
    const Clock::time_point now = Clock::now();
    w.now = now;
    for (Slot& s : w.slots) {
        if (s.connection) expire(*s.connection, now);
        // Never freed here: a connection with a deadline has a request in flight, whose
        // completion frees it.
    }
}
//! [sweep]

//! [expire]
// Closes c if one of its deadlines has passed. True if it did. A paused connection is
// not waiting to receive: only its send deadline counts.
bool EchoServer::expire(Connection& c, Clock::time_point now) {
    const bool idle = !c.paused && c.recv_deadline != Clock::time_point{} && now >= c.recv_deadline;
    const bool stuck = c.send_deadline != Clock::time_point{} && now >= c.send_deadline;
    if (!idle && !stuck) return false;
    c.recv_deadline = c.send_deadline = Clock::time_point{};
    if (c.closing) {  // closed already: nothing to do
        ++timers_after_close_;
        return false;
    }
    if (stuck) {
        ++send_timeouts_;
        std::cerr << "ch13: closing " << iocp::peer_address(c.socket.get()) << ": no send progress for "
                  << limits_.send_timeout.count() << " ms\n";
    } else {
        ++idle_timeouts_;
    }
    close_connection(c, Why::kByUs);
    return true;
}
//! [expire]

}  // namespace ch13
