// Chapter 14, Windows side: how connections end - chapter 13's close, free, close-all,
// abandon and stop, with the application told (on_close) once per connection, whatever
// ends it; and, new, a connection retired from its slot before it is freed, since
// send() on any thread may be looking for it. Its twin is uring/shutdown.cpp.
#include "internal.h"

#include <memory>
#include <thread>
#include <utility>
#include <vector>

namespace ch14 {

// With c.mutex held: the application hears that c has ended, once, and only if it
// heard that c began.
void Engine::tell_close(Connection& c) {
    if (!c.connected || c.told) return;
    c.told = true;
    const void* before = std::exchange(tl_calling, &c);
    handler_.on_close(id_of(c));
    tl_calling = before;
}

//! [close]
// With c.mutex held. Chapter 13's close: the flag first, then the cancel, and the
// socket closed; the connection is retired and freed by whoever sees it closing with
// nothing outstanding (retire). Every packet of c handled from here on, whatever
// error it brings, is the echo of this close. CancelIoEx as well as closesocket:
// Wine 8 leaves a send that waits for the peer to read pending after closesocket.
void Engine::close_connection(Connection& c, Why why) {
    if (c.closing) return;
    c.closing = true;
    c.why = why;
    tell_close(c);
    if (c.waiting) cancel_wait(c);
    if (!idle(c)) CancelIoEx(reinterpret_cast<HANDLE>(c.socket.get()), nullptr);
    c.socket.reset();
}
//! [close]

//! [retire]
// With c.mutex held: if c is closing and nothing of it is outstanding, it leaves its
// slot here (true), and the caller frees it once it has let go of c.mutex. Under the
// slot's lock, the one send() takes: from here on send() finds the slot empty, or a
// later generation in it, and drops the bytes. Not while the inbox's packet is on its
// way: that packet names c, and its worker retires c instead, after it. Exactly one
// thread retires c: the flag and the slot change under the same lock.
bool Engine::retire(Connection& c) {
    if (!c.closing || !idle(c) || c.retired) return false;
    Slot& s = slots_[c.slot];
    std::lock_guard<std::mutex> lock(s.lock);
    if (c.inbox_posted) return false;
    for (const Command& cmd : c.inbox) {  // none in practice: run_inline emptied it
        --commands_pending_;
        if (cmd.kind == Command::kSend) ++sends_dropped_;
    }
    c.inbox.clear();
    s.generation.store(next_generation(c.generation));
    s.connection.store(nullptr);
    c.retired = true;
    return true;
}
//! [retire]

//! [free]
// c is retired: no packet names it, send() cannot find it, and only a sweep that
// looked it up before it was retired may still be about to touch it. Such a sweep
// holds the table's lock, so taking it here waits for it to be done.
void Engine::free_connection(Connection& c) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        free_slots_.push_back(c.slot);
    }
    ++served_;
    if (c.recv_buffer != nullptr) give_back(std::exchange(c.recv_buffer, nullptr));
    queued_total_ -= c.queued;  // what it never sent: gone with it
    delete &c;  // the table owned it (take_slot released it there)
    --live_;    // last: once live_connections() says 0, nothing of any connection is left
}
//! [free]

//! [close-all]
// On stop()'s thread, after every accept has come home, while the workers go on taking
// packets: every connection is locked in turn and closed.
void Engine::close_all() {
    std::vector<Connection*> ours;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (std::size_t i = 0; i < slots_used_; ++i) {
            Connection* c = slots_[i].connection.load();
            if (c == nullptr) continue;
            std::lock_guard<std::mutex> connection_lock(c->mutex);
            close_connection(*c, Why::kByUs);
            run_inline(*c);  // what its on_close sent: dropped
            // A connection has an operation in flight unless a worker holds its mutex,
            // so this is false; if it were not, it would be ours to free.
            if (retire(*c)) ours.push_back(c);
        }
    }
    for (Connection* c : ours) free_connection(*c);
}
//! [close-all]

// After each packet handled while stop() waits: wakes it once nothing is in flight.
void Engine::notify_if_drained() {
    if (!stopping_ || in_flight_ != 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    drained_.notify_all();
}

//! [abandon]
// After a drain that ran out of time, with every worker joined: the connections still
// in the table have operations the kernel has not given back, and may yet write to.
// They are parked for the life of the process, on purpose (chapter 9).
void Engine::abandon() {
    std::size_t connections = 0;
    for (std::size_t i = 0; i < slots_used_; ++i) {
        Connection* c = slots_[i].connection.exchange(nullptr);
        if (c == nullptr) continue;
        ++connections;
        abandoned_ += static_cast<std::size_t>(c->outstanding);
        park(std::unique_ptr<Connection>(c));
    }
    if (connections > 0) {
        // Their buffers may still be the kernel's too: the pool's memory stays as well.
        for (auto& b : pool_) static_cast<void>(b.release());
        for (auto& m : pool_memory_) static_cast<void>(m.release());
        std::cerr << "engine: stop: " << abandoned_ << " operation(s) of " << connections
                  << " connection(s) never came home; their memory is left allocated\n";
    }
}

// A list that lives as long as the process and is never destroyed.
void Engine::park(std::unique_ptr<Connection> c) {
    static std::mutex mutex;
    static auto* const parked = new std::vector<std::unique_ptr<Connection>>;
    std::lock_guard<std::mutex> lock(mutex);
    parked->push_back(std::move(c));
}
//! [abandon]

// One exit packet on the port; retried, since a worker would otherwise wait for ever.
void Engine::post_exit() {
    while (!PostQueuedCompletionStatus(completion_port_.get(), 0, kExitKey, nullptr)) {
        const DWORD err = GetLastError();
        std::cerr << "engine: PostQueuedCompletionStatus failed: " << err << " "
                  << iocp::error_text(static_cast<int>(err)) << "; retrying\n";
        std::this_thread::sleep_for(kAcceptBackoff);
    }
}

//! [stop]
void Engine::stop() {
    if (workers_.empty() || stopped_) return;  // never started, or stopped already
    stopping_ = true;
    // 0. No command from here on: a push that read stopping_ as false before it was
    // set holds its slot's lock until its packet is posted, so once every slot's lock
    // has been taken once, every packet the drain must wait for is counted.
    for (std::size_t i = 0; i < slots_used_; ++i) std::lock_guard<std::mutex> barrier(slots_[i].lock);
    // 1. Stop accepting (chapter 13): no AcceptEx is posted from here on, and every
    // pending one is cancelled; bounded, like the drain.
    {
        std::lock_guard<std::mutex> lock(accept_mutex_);
        accepting_ = false;
        parked_.clear();
        parked_count_ = 0;
        CancelIoEx(reinterpret_cast<HANDLE>(listener_.get()), nullptr);
    }
    bool accepts_home = false;
    {
        std::unique_lock<std::mutex> lock(accept_mutex_);
        accepts_home = accepts_done_.wait_for(lock, options_.drain_timeout, [this] { return accepts_pending_ == 0; });
    }
    if (!accepts_home)
        std::cerr << "engine: stop: " << accepts_pending_ << " accept(s) still pending after "
                  << options_.drain_timeout.count() << " ms\n";
    else
        listener_.reset();
    // 2. Close every connection, the application told of each it has not heard end.
    close_all();
    // 3. Wait for the drain: nothing is posted any more, so the count only goes down.
    bool drained = false;
    {
        std::unique_lock<std::mutex> lock(mutex_);
        drained = drained_.wait_for(lock, options_.drain_timeout, [this] { return in_flight_ == 0; });
    }
    if (!drained)
        std::cerr << "engine: stop: " << in_flight_ << " operation(s) still outstanding after "
                  << options_.drain_timeout.count() << " ms\n";
    // 4. One exit packet per worker, after the drain; 5. join them all.
    for (std::size_t i = 0; i < workers_.size(); ++i) post_exit();
    for (auto& w : workers_) {
        if (w->thread.joinable()) w->thread.join();
    }
    // 6. Close the port, last: a packet still to come for an abandoned operation is
    // dropped with it.
    completion_port_.reset();
    if (!drained) abandon();
    if (!accepts_home) {
        for (auto& a : accepts_) static_cast<void>(a.release());
        static_cast<void>(listener_.release());
    }
    stopped_ = true;  // the Worker records stay: their counts remain readable
}
//! [stop]

}  // namespace ch14
