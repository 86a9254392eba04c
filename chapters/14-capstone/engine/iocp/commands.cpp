// Chapter 14, Windows side: send() and close() from any thread. No worker owns a
// connection here: any worker may take any packet. So a command goes into the
// connection's own inbox, under its slot's lock, and one packet on the port says the
// inbox has something; whichever worker takes it carries the commands out, in order,
// under the connection's mutex. The caller never waits for a client, and never finds
// itself called back: the room's lock cannot be taken twice. Its twin is
// uring/commands.cpp, where each worker has one inbox for all its connections.
#include "internal.h"

#include <utility>
#include <vector>

namespace ch14 {

//! [send]
bool Engine::send(ConnectionId id, std::string bytes) {
    if (stopping_ || slot_of(id) >= slot_count_) return false;
    push(Command{Command::kSend, id, std::move(bytes)});
    return true;
}

void Engine::close(ConnectionId id, bool after_sends) {
    if (stopping_ || slot_of(id) >= slot_count_) return;
    push(Command{after_sends ? Command::kCloseAfterSends : Command::kClose, id, {}});
}
//! [send]

//! [push]
// Under the slot's lock, the one lock send() takes: it keeps the occupant from being
// retired (shutdown.cpp) between the lookup and the append, and it is never held while
// anything else is taken, so a callback that holds its own connection's mutex may
// send to any id, its own included. One inbox per connection, for every thread: the
// room pushes a broadcast's copies under its own lock, so every member's inbox gets
// them in the room's order, and the worker takes them in that order.
//
// One packet at a time announces the inbox (inbox_posted): a command added while one
// is on its way is in the batch that packet's worker takes. None at all when this
// thread is inside a callback for the same connection: it holds the connection's
// mutex, and carries its inbox out before it lets go (run_inline), as on Linux a
// worker's own callbacks ring no doorbell.
thread_local const void* tl_calling = nullptr;

void Engine::push(Command cmd) {
    Slot& s = slots_[slot_of(cmd.id)];
    std::lock_guard<std::mutex> lock(s.lock);
    Connection* c = s.connection.load();
    // stopping_ is read again under the lock: stop() takes every slot's lock once after
    // setting it, and from then on no packet is posted (the drain can count on that).
    if (c == nullptr || s.generation.load() != generation_of(cmd.id) || stopping_) {
        if (cmd.kind == Command::kSend) ++sends_dropped_;  // gone, even if the slot has a new occupant
        return;
    }
    ++commands_pending_;
    c->inbox.push_back(std::move(cmd));
    if (c->inbox_posted || tl_calling == c) return;
    c->inbox_posted = true;
    ++in_flight_;  // the packet, to come: stop()'s drain waits for it too
    // Zeroed: the batch loop reads the packet's status from Internal (0: success).
    c->command.overlapped = OVERLAPPED{};
    if (!PostQueuedCompletionStatus(completion_port_.get(), 0, make_tag(c->slot, c->generation),
                                    &c->command.overlapped))
        fatal("PostQueuedCompletionStatus(command)", GetLastError());  // the commands would wait for ever
}
//! [push]

//! [run-commands]
// With c.mutex held: c's inbox, in order. Carrying a command out may call the handler
// (a close), which may push more: the loop runs until the inbox is empty. `packet`:
// called for the inbox's packet, which is home once the inbox is found empty (under
// the slot's lock, so that a push after that posts a new one).
void Engine::run_commands(Connection& c, bool packet) {
    Slot& s = slots_[c.slot];
    std::vector<Command> batch;
    for (;;) {
        {
            std::lock_guard<std::mutex> lock(s.lock);
            batch.swap(c.inbox);
            if (batch.empty()) {
                if (packet) c.inbox_posted = false;
                return;
            }
        }
        for (Command& cmd : batch) {
            --commands_pending_;
            if (c.closing || c.told) {
                if (cmd.kind == Command::kSend) ++sends_dropped_;
                continue;
            }
            if (cmd.kind == Command::kSend) {
                enqueue(c, std::move(cmd.bytes));
            } else if (cmd.kind == Command::kClose) {
                close_connection(c, Why::kByUs);
            } else {
                c.finishing = true;
                tell_close(c);
                if (c.out.empty()) finish(c);
            }
        }
        batch.clear();
    }
}
//! [run-commands]

// The inbox's packet, on whichever worker took it. c cannot have been freed: a
// connection whose packet is on its way is never retired.
void Engine::on_command(Connection& c) {
    bool free_now = false;
    {
        std::lock_guard<std::mutex> lock(c.mutex);
        --in_flight_;
        run_commands(c, true);
        run_inline(c);
        free_now = retire(c);
    }
    if (free_now) free_connection(c);
    notify_if_drained();
}

//! [enqueue]
// With c.mutex held: the application's bytes join c's queue (a small string joins the
// last one, if that one is not being sent: WSASend reads it until its packet comes).
// Past the hard limit the client goes: a reader too slow for what it is sent. At the
// high watermark c stops reading, as in chapter 11. Unlike Linux's multishot receive,
// one receive at a time needs no cancel for that: the next one is simply not posted.
void Engine::enqueue(Connection& c, std::string bytes) {
    if (bytes.empty()) return;
    if (c.queued + bytes.size() > options_.output_limit) {
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
    }
}
//! [enqueue]

//! [finish]
// With c.mutex held, on a close after sends, once the queue is empty: our FIN goes
// out, and the connection reads and drops until the peer's FIN, for at most the linger
// time. shutdown(SD_SEND) ends the send side only; "for TCP sockets, a FIN will be sent
// after all data is sent and acknowledged by the receiver" (shutdown, Remarks), so the
// bytes our last WSASend left in the socket's buffer still go first.
void Engine::finish(Connection& c) {
    if (c.fin_sent || c.closing) return;
    if (c.peer_done) {  // their FIN came first: nothing left to wait for
        close_connection(c, Why::kPeerFin);
        return;
    }
    c.fin_sent = true;
    if (::shutdown(c.socket.get(), SD_SEND) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        if (!is_peer_reset(err)) std::cerr << "engine: shutdown failed: " << err << " " << iocp::error_text(err) << "\n";
        close_connection(c, is_peer_reset(err) ? Why::kPeerReset : Why::kByUs);
        return;
    }
    c.linger_deadline = Clock::now() + options_.linger;
    c.paused = false;
    rearm(c);
}
//! [finish]

}  // namespace ch14
