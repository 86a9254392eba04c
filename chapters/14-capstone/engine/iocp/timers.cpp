// Chapter 14, Windows side: deadlines - chapter 13's sweep of the connection table,
// now every tick whatever the options (a close after sends has its linger deadline),
// and the application's tick after it. No timer object exists, so none can outlive
// its connection. Its twin is uring/timers.cpp, where the kernel keeps time.
#include "internal.h"

#include <algorithm>
#include <vector>

namespace ch14 {

// The deadline of an operation started now, or {} (none) when that timeout is off.
Engine::Clock::time_point Engine::deadline_after(std::chrono::milliseconds timeout) const {
    return timeout.count() > 0 ? Clock::now() + timeout : Clock::time_point{};
}

//! [wait-for-tick]
// How long a worker may wait on the port: no longer than until the next tick is due.
// Whoever finds it due first (a compare-and-swap on next_tick_) runs it; the others go
// on with their packets.
DWORD Engine::wait_for_tick(DWORD wait) {
    Clock::rep due = next_tick_.load();
    if (Clock::now().time_since_epoch().count() >= due) {
        const Clock::rep next = (Clock::now() + options_.tick).time_since_epoch().count();
        if (next_tick_.compare_exchange_strong(due, next)) tick();
        due = next_tick_.load();
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          Clock::duration(due - Clock::now().time_since_epoch().count()))
                          .count();
    return std::min<DWORD>(wait, static_cast<DWORD>(std::max<long long>(left, 1)));
}
//! [wait-for-tick]

//! [tick]
// One pass over the table, then the application's tick. One at a time: a tick that
// finds the last one still running (a slow on_tick) is skipped, so on_tick is never
// called twice at once. The pass takes the table's lock, then each connection's; a
// connection whose mutex is held is busy on a worker right now (its callback may be
// waiting for the application's own lock) and is looked at next tick, rather than
// holding up the table, and with it every admit and free, behind it.
void Engine::tick() {
    std::unique_lock<std::mutex> ticking(tick_mutex_, std::try_to_lock);
    if (!ticking.owns_lock()) return;
    const Clock::time_point now = Clock::now();
    std::vector<Connection*> ours;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (std::size_t i = 0; i < slots_used_; ++i) {
            Connection* c = slots_[i].connection.load();
            if (c == nullptr) continue;
            std::unique_lock<std::mutex> connection_lock(c->mutex, std::try_to_lock);
            if (!connection_lock.owns_lock()) continue;
            if (expire(*c, now)) run_inline(*c);
            if (retire(*c)) ours.push_back(c);  // never, in practice: see close_all
        }
    }
    for (Connection* c : ours) free_connection(*c);
    if (!stopping_) handler_.on_tick(now);  // the application's deadlines: once per tick
}
//! [tick]

//! [expire]
// With c.mutex held: closes c if one of its deadlines has passed. True if it did.
bool Engine::expire(Connection& c, Clock::time_point now) {
    if (c.closing) return false;
    const bool lingered = c.fin_sent && now >= c.linger_deadline;
    const bool idle_too_long =
        !c.paused && !c.fin_sent && c.recv_deadline != Clock::time_point{} && now >= c.recv_deadline;
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
