// Chapter 12, Linux side: the timeouts - a link timeout goes out with each receive and
// each send, and the kernel cancels the operation when its time is up. A timer lives
// exactly as long as its operation, so none can outlive its connection. Its twin is
// iocp/timers.cpp, where the workers sweep a table of deadlines instead.
#include "internal.h"

namespace ch12 {

//! [link-timeout]
// Right after the receive's (or the send's) entry was prepared with IOSQE_IO_LINK: an
// IORING_OP_LINK_TIMEOUT in the next entry. If the operation has not completed when it
// expires, the kernel cancels it: the operation comes back -ECANCELED (or -EINTR) and
// the timer -ETIME; else the timer comes back -ECANCELED. Either way both complete, so
// the timer counts as one more outstanding operation of the connection.
bool EchoServer::link_timeout(Connection& c, bool send) {
    io_uring_sqe* sqe = io_uring_get_sqe(&c.worker->ring);  // post_* made room for two
    if (sqe == nullptr) return false;
    io_uring_prep_link_timeout(sqe, send ? &send_ts_ : &idle_ts_, 0);
    io_uring_sqe_set_data64(sqe, make_tag(c.slot, c.generation, send ? Kind::kSendTimer : Kind::kRecvTimer));
    ++c.outstanding;
    ++in_flight_;
    ++c.worker->in_flight;
    return true;
}
//! [link-timeout]

//! [on-timer]
// A link timeout came home. It decides nothing: its operation's own completion says
// whether the time ran out (-ECANCELED on a connection we had not closed: see
// advance). It is one completion less to wait for before the connection can be freed.
void EchoServer::on_timer(Connection& c, IoContext& io, int result) {
    static_cast<void>(io);
    --c.outstanding;
    --in_flight_;
    --c.worker->in_flight;
    if (c.closing) ++timers_after_close_;  // closed already: a timer that does nothing
    else if (result != -ETIME && result != -ECANCELED && result != -EALREADY)
        std::cerr << "ch12: link timeout: " << -result << " " << iocp::error_text(-result) << "\n";
    if (c.closing && idle(c)) free_connection(c);
}
//! [on-timer]

}  // namespace ch12
