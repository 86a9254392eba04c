// Chapter 14, Linux side: send() and close() from any thread. A connection belongs to
// one worker, and only that worker's thread may touch it or submit to its ring; so a
// command goes to the worker's inbox, and the worker carries it out. The caller never
// waits for a client, and never finds itself called back: the room's lock cannot be
// taken twice.
#include "internal.h"

#include <utility>

namespace ch14 {

//! [send]
bool Engine::send(ConnectionId id, std::string bytes) {
    if (stopping_ || worker_of_id(id) >= workers_.size()) return false;
    push(*workers_[worker_of_id(id)], Command{Command::kSend, id, std::move(bytes)});
    return true;
}

void Engine::close(ConnectionId id, bool after_sends) {
    if (stopping_ || worker_of_id(id) >= workers_.size()) return;
    push(*workers_[worker_of_id(id)], Command{after_sends ? Command::kCloseAfterSends : Command::kClose, id, {}});
}
//! [send]

//! [push]
// One inbox per worker, under its lock, for every thread, the worker's own included:
// the commands for a connection are carried out in the order they were pushed, from
// whichever threads (the room pushes a broadcast's copies under its own lock, so every
// member's queue gets them in the room's order; two lists, one per kind of thread,
// would let a later broadcast overtake an earlier one). The doorbell rings only when
// the inbox was empty, and never for the worker's own thread, which empties it once
// the callback returns: a command added to a non-empty inbox is in the batch a ring
// already announced.
thread_local const void* tl_worker = nullptr;

void Engine::push(Worker& w, Command cmd) {
    ++commands_pending_;
    bool was_empty = false;
    {
        std::lock_guard<std::mutex> lock(w.inbox_mutex);
        was_empty = w.commands.empty();
        w.commands.push_back(std::move(cmd));
    }
    if (was_empty && tl_worker != &w) ring_doorbell(w.doorbell.get());
}
//! [push]

Engine::Connection* Engine::lookup(Worker& w, ConnectionId id) {
    const std::uint32_t slot = slot_of_id(id);
    if (slot >= w.slots.size()) return nullptr;
    Slot& s = w.slots[slot];
    if (s.generation != generation_of_id(id) || !s.connection) return nullptr;
    return s.connection.get();
}

//! [run-commands]
// On w's thread: the inbox, in order. Carrying a command out may call the handler (a
// close), which may push more: the loop runs until the inbox is empty.
void Engine::run_commands(Worker& w) {
    for (;;) {
        std::vector<Command> batch;
        {
            std::lock_guard<std::mutex> lock(w.inbox_mutex);
            batch.swap(w.commands);
        }
        if (batch.empty()) return;
        for (Command& cmd : batch) {
            --commands_pending_;
            Connection* c = lookup(w, cmd.id);
            if (c == nullptr || c->closing || c->told) {
                if (cmd.kind == Command::kSend) ++sends_dropped_;
                continue;
            }
            if (cmd.kind == Command::kSend) {
                enqueue(*c, std::move(cmd.bytes));
            } else if (cmd.kind == Command::kClose) {
                close_connection(*c, Why::kByUs);
            } else {
                c->finishing = true;
                c->told = true;
                handler_.on_close(cmd.id);
                if (c->out.empty()) finish(*c);
            }
            if (c->closing && idle(*c)) w.to_free.push_back(cmd.id);
        }
    }
}
//! [run-commands]

//! [enqueue]
// The application's bytes join c's queue (a small string joins the last one, if that
// one is not already being sent). Past the hard limit the client goes: a reader too
// slow for what it is sent. At the high watermark c stops reading (the peer's own
// sends wait in its socket buffers), as in chapter 11.
void Engine::enqueue(Connection& c, std::string bytes) {
    if (bytes.empty()) return;
    // Not while the pause's cancel is on its way: a multishot receive reads whatever
    // arrives until the cancel lands (a batch can bring dozens of buffers, chapter 13),
    // and an echo of bytes already read must not cost a well-behaved client its place.
    // The worker's share of the pool bounds that; after it, the limit again.
    if (c.queued + bytes.size() > options_.output_limit && !c.cancelling) {
        ++over_limit_;
        ++sends_dropped_;
        std::cerr << "engine: dropping " << iocp::peer_address(c.socket.get()) << ": " << c.queued + bytes.size()
                  << " bytes queued, over the limit of " << options_.output_limit << "\n";
        close_connection(c, Why::kByUs);
        return;
    }
    c.queued += bytes.size();
    queued_total_ += bytes.size();
    raise_to(most_queued_, c.queued);
    const bool tail_is_free = c.out.size() > 1 || (c.out.size() == 1 && c.sending == 0);
    if (tail_is_free && c.out.back().size() + bytes.size() <= options_.buffer_size) {
        c.out.back() += bytes;
    } else {
        c.out.push_back(std::move(bytes));
    }
    if (c.sending == 0) post_send(c);
    if (c.closing) return;
    if (c.queued >= options_.output_high && !c.paused) {
        ++pauses_;
        c.paused = true;
        if (c.receiving && !c.cancelling) {
            c.cancelling = true;
            cancel(*c.worker, make_tag(c.slot, c.generation, Kind::kRecv), c.socket.get());
        }
    }
}
//! [enqueue]

//! [finish]
// A close after sends, once the queue is empty: our FIN goes out, and the connection
// reads (and drops) until the peer's FIN, for at most the linger time (timers.cpp).
void Engine::finish(Connection& c) {
    if (c.fin_sent || c.closing) return;
    if (c.peer_done) {  // their FIN came first: nothing left to wait for
        close_connection(c, Why::kPeerFin);
        return;
    }
    c.fin_sent = true;
    ::shutdown(c.socket.get(), SHUT_WR);
    c.linger_deadline = c.worker->now + options_.linger;
    c.paused = false;
    rearm(c);
}
//! [finish]

}  // namespace ch14
