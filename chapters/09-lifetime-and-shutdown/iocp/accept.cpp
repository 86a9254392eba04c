// Chapter 9, Windows side: how a client becomes a connection - the accept thread, the
// hand-over to the workers, a slot in the table. Its twin is uring/accept.cpp: the same
// functions in the same order.
#include "internal.h"

#include <memory>
#include <thread>
#include <utility>

namespace ch09 {

//! [accept]
// The accept thread, as in the original article: a blocking accept() in a loop. It
// only admits clients; the workers do all the I/O.
void EchoServer::accept_clients() {
    while (!stopping_) {
        iocp::UniqueSocket client(::accept(listener_.get(), nullptr, nullptr));
        if (stopping_) break;  // woken by stop(): its own connection, or a cancelled accept
        if (!client) {
            const int err = iocp::last_socket_error();
            if (iocp::is_disconnect_error(err)) continue;  // that client gave up while queued
            // Out of sockets or memory (WSAEMFILE, WSAENOBUFS), or anything else: pause,
            // since trying again at once would fail again at once.
            ++accept_failures_;
            std::cerr << "ch09: accept failed: " << err << " " << iocp::error_text(err) << "\n";
            std::this_thread::sleep_for(kAcceptBackoff);
            continue;
        }
        admit(std::move(client));
    }
}
//! [accept]

//! [hand-over]
// On the accept thread, with c.mutex held and c's socket associated with the port: c
// goes to the workers as a packet of our own, and this thread starts no I/O on it.
// Microsoft's WSARecv page (Remarks): "All I/O initiated by a given thread is canceled
// when that thread exits." This thread exits in stop() while c lives on until
// close_all(), so a first receive started here could come home cancelled (995) on a
// connection we had not closed: an error no peer caused. Chapter 7 hands over for a
// second reason, closesocket's rule (never close a socket "concurrently with another
// Winsock function call"); here c's lock keeps that rule either way. The packet carries
// c's key and the OVERLAPPED of its receive context, lent to it: until a worker takes
// it (complete()), it is one of c's outstanding operations, like a receive.
void EchoServer::hand_over(Connection& c) {
    c.recv.op = Op::kAdmit;
    c.recv.overlapped = OVERLAPPED{};
    ++c.outstanding;
    ++in_flight_;
    if (!PostQueuedCompletionStatus(completion_port_.get(), 0, make_tag(c.slot, c.generation), &c.recv.overlapped)) {
        const DWORD err = GetLastError();
        --in_flight_;
        --c.outstanding;
        c.recv.op = Op::kRecv;
        std::cerr << "ch09: PostQueuedCompletionStatus(admit) failed: " << err << " "
                  << iocp::error_text(static_cast<int>(err)) << "\n";
        close_connection(c, Why::kByUs);  // no packet will come: admit() frees c
    }
}
//! [hand-over]

// A connection for `client`, with its two contexts, in an entry of the table, which
// owns it from here on.
EchoServer::Connection* EchoServer::take_slot(iocp::UniqueSocket client) {
    auto owned = std::make_unique<Connection>();
    Connection* c = owned.get();
    c->socket = std::move(client);
    c->recv.op = Op::kRecv;
    c->recv.connection = c;
    c->recv.buffer.resize(limits_.buffer_size);
    c->send.op = Op::kSend;
    c->send.connection = c;
    c->send.buffer.resize(limits_.buffer_size);
    live_contexts_ += 2;  // its receive and its send
    std::lock_guard<std::mutex> lock(mutex_);
    //! [take-slot]
    // The slot freed last is taken first, so slots, like socket values and freed
    // memory, are reused at once. The generation tells this occupant from the last.
    if (!free_slots_.empty()) {
        c->slot = free_slots_.back();
        free_slots_.pop_back();
    } else {
        c->slot = static_cast<std::uint32_t>(slots_used_++);  // below slot_count_: live_ < max_clients
    }
    Slot& s = slots_[c->slot];
    c->generation = s.generation.load();
    s.connection.store(owned.release());  // the table owns it now
    //! [take-slot]
    return c;
}

//! [admit]
// On the accept thread, for each client accepted.
void EchoServer::admit(iocp::UniqueSocket client) {
    if (live_ >= limits_.max_clients) {  // only this thread adds connections: no race
        ++refused_;
        std::cerr << "ch09: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << limits_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF, or a reset if it had already sent bytes
    }
    try {
        // An echo split over two sends would wait ~40 ms for the peer's delayed ACK
        // under Nagle's algorithm; a request/response server turns Nagle off.
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "ch09: " << e.what() << "\n";
        return;
    }
    Connection* c = take_slot(std::move(client));
    ++live_;
    bool free_now = false;
    {
        // From the hand-over on, any worker may take c's packets: they wait here.
        std::lock_guard<std::mutex> lock(c->mutex);
        //! [associate]
        // Associate the socket with the port. From now on every completion of an
        // operation on this socket is queued to the port, carrying this key: the
        // connection's tag, (slot, generation), not its address. The socket's value may
        // be the one a closed connection had a moment ago (closesocket's page: a value
        // "may immediately be reused"), and the connection may sit at its address; the
        // generation in the key still tells the two apart.
        if (CreateIoCompletionPort(reinterpret_cast<HANDLE>(c->socket.get()), completion_port_.get(),
                                   make_tag(c->slot, c->generation), 0) == nullptr) {
            const DWORD err = GetLastError();
            std::cerr << "ch09: CreateIoCompletionPort(socket) failed: " << err << " "
                      << iocp::error_text(static_cast<int>(err)) << "\n";
            close_connection(*c, Why::kByUs);
        } else {
            hand_over(*c);
            // The test hook: an operation that no completion will ever take back.
            if (!c->closing && hold_next_.exchange(false)) {
                ++c->outstanding;
                ++in_flight_;
            }
        }
        //! [associate]
        free_now = c->closing && idle(*c);  // no packet could even be posted
    }
    if (free_now) free_connection(*c);
    // From here on c may be gone: a worker may have taken its packet, closed it, freed it.
}
//! [admit]

}  // namespace ch09
