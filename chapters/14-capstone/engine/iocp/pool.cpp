// Chapter 14, Windows side: the buffer pool - chapter 13's: one list of free buffers
// shared by every connection, made as first needed up to pool_buffers, and a line of
// the connections waiting for one. A buffer is lent from the moment a zero-byte receive
// says data is there until on_data has returned. Its twin is uring/pool.cpp.
#include "internal.h"

#include <algorithm>
#include <memory>

namespace ch14 {

//! [take-buffer]
// With c.mutex held, when c's zero-byte receive says data has arrived. A free buffer,
// or a new one if the pool is not at its size yet; else nullptr, and c waits in line:
// the wait counts as one of c's outstanding operations, because a packet will end it
// (give_back grants the buffer by posting one), unless close_connection takes it back
// first (cancel_wait).
Engine::Buffer* Engine::take_buffer(Connection& c) {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    Buffer* b = free_buffers_;
    if (b != nullptr) {
        free_buffers_ = b->next;
    } else if (pool_.size() < options_.pool_buffers) {
        pool_memory_.push_back(std::make_unique<char[]>(options_.buffer_size));
        pool_.push_back(std::make_unique<Buffer>());
        b = pool_.back().get();
        b->data = pool_memory_.back().get();
    } else {
        waiters_.push_back(&c);
        c.waiting = true;
        ++c.outstanding;
        ++in_flight_;  // the grant packet, to come: stop()'s drain waits for it too
        return nullptr;
    }
    //! [double-lend]
    // The check a test relies on: a buffer lent twice would be written by two receives,
    // or sent for one connection while another receives into it.
    if (b->lent) ++pool_errors_;
    //! [double-lend]
    b->lent = true;
    b->next = nullptr;
    ++lent_;
    return b;
}
//! [take-buffer]

//! [give-back]
// From any thread, with the mutex of the connection that held b (never the waiter's).
// The oldest waiter gets b at once, as a packet of its own: its worker starts the
// receive under the waiter's mutex, which this thread must not take (two connections'
// locks held at once, in any order, is how deadlocks start).
void Engine::give_back(Buffer* b) {
    Connection* waiter = nullptr;
    {
        std::lock_guard<std::mutex> lock(pool_mutex_);
        if (!b->lent) ++pool_errors_;  // given back twice
        if (waiters_.empty()) {
            b->lent = false;
            b->next = free_buffers_;
            free_buffers_ = b;
            --lent_;
            return;
        }
        waiter = waiters_.front();
        waiters_.erase(waiters_.begin());
        // Still lent: it goes from one connection to the other without being free.
        b->next = nullptr;
        waiter->recv_buffer = b;
        waiter->recv.op = Op::kGrant;
        // Zeroed, and this matters now: the batch loop reads each packet's status from
        // its OVERLAPPED's Internal, which PostQueuedCompletionStatus leaves as it is.
        // 0 is STATUS_SUCCESS: the grant reads as the success it is.
        waiter->recv.overlapped = OVERLAPPED{};
    }
    if (!PostQueuedCompletionStatus(completion_port_.get(), 0, make_tag(waiter->slot, waiter->generation),
                                    &waiter->recv.overlapped))
        fatal("PostQueuedCompletionStatus(grant)", GetLastError());  // a waiter would wait for ever
}
//! [give-back]

// With c.mutex held, closing c: if c is still in line, it leaves it, and its wait is
// over (true). If not, a grant packet is on its way and ends the wait when it comes.
bool Engine::cancel_wait(Connection& c) {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    const auto it = std::find(waiters_.begin(), waiters_.end(), &c);
    if (it == waiters_.end()) return false;
    waiters_.erase(it);
    c.waiting = false;
    --c.outstanding;
    --in_flight_;
    return true;
}

}  // namespace ch14
