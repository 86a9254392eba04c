// Chapter 5 - a group: up to 63 connections and the one thread that waits for their
// operations. The shape is chapter 4's group; what changed is what an event means. In
// chapter 4 it said "this socket is ready, you may call recv() now". Here it says "the
// receive you started earlier is DONE: the bytes are already in your buffer".
#include "group.h"

#include <new>
#include <utility>

namespace ch05 {

namespace {

// The index of the first signalled event at or after `from`, or events.size().
// WSAWaitForMultipleEvents reports only the LOWEST signalled index (its Remarks: it
// checks the handles in order from index 0); a server that served only that one would
// let a busy connection in slot 1 starve the rest. Microsoft's page stops there; the
// remedy is ours: wait again, with a zero timeout, on the events after the one
// reported. (The same helper as chapter 4's.)
//! [next-signalled]
std::size_t next_signalled(const std::vector<WSAEVENT>& events, std::size_t from) {
    if (from >= events.size()) return events.size();
    const auto count = static_cast<DWORD>(events.size() - from);
    const DWORD rc = WSAWaitForMultipleEvents(count, events.data() + from, FALSE, 0, FALSE);
    const DWORD index = rc - WSA_WAIT_EVENT_0;  // WSA_WAIT_TIMEOUT/FAILED land past count
    return index < count ? from + index : events.size();
}
//! [next-signalled]

}  // namespace

EchoServer::Group::Group(EchoServer& server) : server_(server), wake_(WSACreateEvent()) {
    if (!wake_) iocp::throw_socket_error("WSACreateEvent");
    inbox_.reserve(kSocketsPerGroup);  // adopt() never allocates while holding the lock
    connections_.reserve(kSocketsPerGroup);
    thread_ = std::thread([this] { run(); });
}

bool EchoServer::Group::adopt(iocp::UniqueSocket& client) {
    {
        std::lock_guard<std::mutex> lock(inbox_mutex_);
        if (closed_) return false;
        inbox_.push_back(std::move(client));
        ++load_;
    }
    WSASetEvent(wake_.get());  // the group's thread posts the first receive itself
    return true;
}

// The group's own flag, not the server's stopping_: a group destroyed on its own (in
// hand_over(), when storing it throws) must make its thread leave too, or join for ever.
void EchoServer::Group::stop() {
    if (!thread_.joinable()) return;
    leaving_ = true;
    WSASetEvent(wake_.get());  // the thread sees leaving_, drains and leaves
    thread_.join();
}

//! [group-loop]
void EchoServer::Group::run() {
    std::vector<WSAEVENT> events;
    std::vector<iocp::UniqueSocket> adopted;
    adopted.reserve(kSocketsPerGroup);  // swapped with inbox_: both keep room for a full group
    while (!leaving_) {
        // Slot 0 is the wake-up event; slot i + 1 is connections_[i]'s operation's event.
        events.assign(1, wake_.get());
        for (const auto& c : connections_) events.push_back(c->op.event.get());
        const DWORD rc = WSAWaitForMultipleEvents(static_cast<DWORD>(events.size()), events.data(), FALSE,
                                                  WSA_INFINITE, FALSE);
        if (rc == WSA_WAIT_FAILED) {
            log_error("WSAWaitForMultipleEvents", WSAGetLastError());
            break;
        }
        serve_signalled(events, rc - WSA_WAIT_EVENT_0);
        WSAResetEvent(wake_.get());  // manual-reset: reset before looking, so no hand-over is missed
        {
            std::lock_guard<std::mutex> lock(inbox_mutex_);
            adopted.swap(inbox_);
        }
        for (auto& s : adopted) start_connection(std::move(s));
        adopted.clear();
    }
    leave(adopted);  // stopping, or the wait failed: no operation may outlive this thread
}

// Collects every signalled operation, lowest slot first, then drops the connections
// that are finished. Slot 0, the wake-up event, is looked at by run() afterwards.
void EchoServer::Group::serve_signalled(const std::vector<WSAEVENT>& events, std::size_t first) {
    closing_.assign(connections_.size(), false);
    for (std::size_t i = first; i < events.size(); i = next_signalled(events, i + 1))
        if (i > 0) closing_[i - 1] = !on_completion(*connections_[i - 1]);
    for (std::size_t i = connections_.size(); i-- > 0;)
        if (closing_[i]) drop(i);
}
//! [group-loop]

//! [start-connection]
// On the group's thread: a handed-over socket gets its Connection, buffer and event,
// and its first receive. Whatever is missing, the client is closed at once.
void EchoServer::Group::start_connection(iocp::UniqueSocket socket) {
    std::unique_ptr<Connection> c;
    try {
        c = std::make_unique<Connection>();
        c->op.buffer = std::make_unique<char[]>(server_.limits_.buffer_size);
    } catch (const std::bad_alloc&) {
        std::cerr << "ch05: out of memory for a new connection; closing it\n";
        socket.reset();
        --load_;
        server_.close_connection();
        return;
    }
    c->socket = std::move(socket);
    c->op.capacity = server_.limits_.buffer_size;
    c->op.event.reset(WSACreateEvent());  // manual-reset, not signalled
    if (!c->op.event) {
        log_error("WSACreateEvent", WSAGetLastError());
        close_connection(*c);
        return;
    }
    connections_.push_back(std::move(c));  // reserved: never reallocates, never throws
    if (!post_recv(*connections_.back())) drop(connections_.size() - 1);
}
//! [start-connection]

//! [group-leave]
// Closes connections_[i] and removes it by swapping pointers: no Connection moves.
void EchoServer::Group::drop(std::size_t i) {
    if (!close_connection(*connections_[i])) (void)connections_[i].release();  // leaked on purpose: see there
    std::swap(connections_[i], connections_.back());
    connections_.pop_back();
}

// On the way out: adopt() refuses from here on, every connection is cancelled, waited
// for and closed, and the sockets still in the inbox (never started) are closed.
void EchoServer::Group::leave(std::vector<iocp::UniqueSocket>& adopted) {
    {
        std::lock_guard<std::mutex> lock(inbox_mutex_);
        closed_ = true;
        adopted.swap(inbox_);
    }
    while (!connections_.empty()) drop(connections_.size() - 1);
    for (auto& s : adopted) {
        s.reset();
        --load_;
        server_.close_connection();
    }
}
//! [group-leave]

}  // namespace ch05
