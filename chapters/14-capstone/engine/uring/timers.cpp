// Chapter 14, Linux side: deadlines - chapter 13's sweep, every tick, of each worker's
// own connections (idle, send, and now the linger of a close after sends), and the
// application's tick, from worker 0.
#include "internal.h"

namespace ch14 {

// One timeout request on w's ring per tick: the ring's own request, like the doorbell.
void Engine::arm_tick(Worker& w) {
    if (w.tick_pending || w.draining) return;
    io_uring_sqe* sqe = get_sqe(w);
    if (sqe == nullptr) return;  // the next round tries again
    w.tick_io.op = Op::kTick;
    io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
    io_uring_sqe_set_data64(sqe, kTickTag);
    w.tick_pending = true;
}

//! [tick]
void Engine::on_tick(Worker& w, int result) {
    w.tick_pending = false;
    if (result != -ETIME && result != -ECANCELED)
        std::cerr << "engine: timeout request: " << -result << " " << iocp::error_text(-result) << "\n";
    if (w.draining) return;
    const Clock::time_point now = Clock::now();
    w.now = now;
    for (Slot& s : w.slots) {
        Connection* c = s.connection.get();
        if (c != nullptr && expire(*c, now) && idle(*c)) w.to_free.push_back(id_of(*c));
    }
    if (w.index == 0) handler_.on_tick(now);  // the application's deadlines: once per tick
    arm_tick(w);
}
//! [tick]

//! [expire]
// Closes c if one of its deadlines has passed. True if it did.
bool Engine::expire(Connection& c, Clock::time_point now) {
    if (c.closing) return false;
    const bool lingered = c.fin_sent && now >= c.linger_deadline;
    const bool idle_too_long = !c.paused && !c.fin_sent && c.recv_deadline != Clock::time_point{} && now >= c.recv_deadline;
    const bool stuck = c.send_deadline != Clock::time_point{} && now >= c.send_deadline;
    if (!lingered && !idle_too_long && !stuck) return false;
    if (lingered) {
        ++linger_timeouts_;  // the peer never sent its FIN after ours: closed all the same
    } else if (stuck) {
        ++send_timeouts_;
        std::cerr << "engine: closing " << iocp::peer_address(c.socket.get()) << ": no send progress for "
                  << options_.send_timeout.count() << " ms\n";
    } else {
        ++idle_timeouts_;
    }
    close_connection(c, Why::kByUs);
    return true;
}
//! [expire]

}  // namespace ch14
