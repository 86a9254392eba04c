// Chapter 13, Windows side: the timeouts - each connection keeps two deadlines, and the
// workers sweep the connection table for passed ones every tick, between packets or
// when their timed wait on the port runs out. No timer object exists, so none can
// outlive its connection. Its twin is uring/timers.cpp, where the kernel keeps time.
#include "internal.h"

#include <algorithm>
#include <vector>

namespace ch13 {

// The deadline of an operation started now, or {} (none) when that timeout is off.
EchoServer::Clock::time_point EchoServer::deadline_after(std::chrono::milliseconds timeout) const {
    return timeout.count() > 0 ? Clock::now() + timeout : Clock::time_point{};
}

//! [wait-for-sweep]
// How long a worker may wait on the port: no longer than until the next sweep is due.
// Whoever finds it due first (a compare-and-swap on next_sweep_) runs it; the others go
// on with their packets.
DWORD EchoServer::wait_for_sweep(DWORD wait) {
    if (tick_.count() == 0) return wait;  // no timeouts: nothing to sweep
    const Clock::rep now = Clock::now().time_since_epoch().count();
    Clock::rep due = next_sweep_.load();
    if (now >= due) {
        const Clock::rep next = now + std::chrono::duration_cast<Clock::duration>(tick_).count();
        if (next_sweep_.compare_exchange_strong(due, next)) sweep_timeouts();
        due = next_sweep_.load();
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::duration(due - now)).count();
    return std::min<DWORD>(wait, static_cast<DWORD>(std::max<long long>(left, 1)));
}
//! [wait-for-sweep]

//! [sweep]
// One pass over the table, like close_all's: the table's lock, then each connection's
// (the same order everywhere). A passed deadline closes its connection with chapter
// 9's close: the flag, then CancelIoEx; the cancelled operation comes home 995 and is
// counted as ours. A completion that beat the sweep to the connection's lock cleared
// or moved the deadline, so it does not expire; a completion that lost finds the flag.
void EchoServer::sweep_timeouts() {
    const Clock::time_point now = Clock::now();
    std::lock_guard<std::mutex> lock(mutex_);
    for (std::size_t i = 0; i < slots_used_; ++i) {
        Connection* c = slots_[i].connection.load();
        if (c == nullptr) continue;
        std::lock_guard<std::mutex> connection_lock(c->mutex);
        expire(*c, now);
        // Never freed here: a connection with a deadline has an operation in flight (or a
        // wait for a buffer), whose completion frees it, outside the table's lock.
    }
}
//! [sweep]

//! [expire]
// With c.mutex held: closes c if one of its deadlines has passed. True if it did.
bool EchoServer::expire(Connection& c, Clock::time_point now) {
    const bool idle = c.recv_deadline != Clock::time_point{} && now >= c.recv_deadline;
    const bool stuck = c.send_deadline != Clock::time_point{} && now >= c.send_deadline;
    if (!idle && !stuck) return false;
    c.recv_deadline = c.send_deadline = Clock::time_point{};
    if (c.closing) {  // closed already: the timer has nothing to do, and does nothing
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
