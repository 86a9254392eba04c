// Chapter 8, Windows side: accepting. The accept thread takes each client, admits it and
// hands it to the workers, and starts no I/O itself. Its twin is uring/accept.cpp, the
// same file name on the Linux side.
#include "internal.h"

#include <list>
#include <utility>

namespace ch08 {

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
            std::cerr << "ch08: accept failed: " << err << " " << iocp::error_text(err) << "\n";
            std::this_thread::sleep_for(kAcceptBackoff);
            continue;
        }
        admit(std::move(client));
    }
}
//! [accept]

//! [hand-over]
// On the accept thread, with c.mutex held and c's socket associated with the port: c
// goes to the workers in a packet of our own, and this thread starts no I/O, as in
// chapter 7. Microsoft's WSARecv page (Remarks) warns: "All I/O initiated by a given
// thread is canceled when that thread exits." This thread exits in stop(), so a first
// receive started here could be cancelled under a connection that is still open. The
// workers live until the last operation has come home: only they start I/O. Chapter 7's
// rule holds too: once the packet is posted this thread makes no Winsock call on the
// socket, so none can run while a worker closes it ("never issue closesocket on s
// concurrently with another Winsock function call", closesocket, Remarks).
// Until a worker takes it, the packet holds the place of c's receive: c.recv is the
// port's, `receiving` is set and in_flight_ counts it, so c is not freed before it comes
// home, and stop()'s drain waits for it as for any operation. The worker that takes it
// starts the first receive (complete, under c's lock), unless c was closed meanwhile.
void EchoServer::hand_over(Connection& c) {
    c.recv.op = Op::kAdmit;
    c.recv.overlapped = OVERLAPPED{};
    c.receiving = true;
    ++in_flight_;  // before the call, as for a receive: a worker may take the packet first
    // The key and the OVERLAPPED of a completion of c.recv: the worker finds c as usual.
    if (!PostQueuedCompletionStatus(completion_port_.get(), 0, reinterpret_cast<ULONG_PTR>(&c), &c.recv.overlapped)) {
        const DWORD err = GetLastError();
        --in_flight_;
        c.receiving = false;
        std::cerr << "ch08: PostQueuedCompletionStatus(admit) failed: " << err << " "
                  << iocp::error_text(static_cast<int>(err)) << "\n";
        close_connection(c);  // no packet will come: no worker ever sees c's socket
    }
}
//! [hand-over]

//! [admit]
// On the accept thread, for each client accepted.
void EchoServer::admit(iocp::UniqueSocket client) {
    if (live_ >= limits_.max_clients) {  // only this thread adds connections: no race
        ++refused_;
        std::cerr << "ch08: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << limits_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF, or a reset if it had already sent bytes
    }
    try {
        // An echo split over two sends would wait ~40 ms for the peer's delayed ACK
        // under Nagle's algorithm; a request/response server turns Nagle off.
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "ch08: " << e.what() << "\n";
        return;
    }
    // Filled in while no other thread can see it, then spliced into the list (the node
    // itself moves: c and c->self stay valid), so close_all never meets one half made.
    std::list<Connection> fresh;
    Connection* c = &fresh.emplace_back();
    c->self = fresh.begin();
    c->socket = std::move(client);
    c->recv.connection = c;  // its op is set by whoever posts it: hand_over, post_recv
    c->recv.buffer.resize(limits_.buffer_size);
    c->send.op = Op::kSend;
    c->send.connection = c;
    c->send.buffer.resize(limits_.buffer_size);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        connections_.splice(connections_.end(), fresh);
    }
    ++live_;
    bool free_now = false;
    {
        std::lock_guard<std::mutex> lock(c->mutex);  // the worker that takes c's packet waits here
        //! [associate]
        // Associate the socket with the port: from now on every completion of an operation
        // on it is queued to the port with this key, the connection's address (its
        // per-handle data). A ULONG_PTR, as wide as a pointer: a DWORD would cut it in half.
        if (CreateIoCompletionPort(reinterpret_cast<HANDLE>(c->socket.get()), completion_port_.get(),
                                   reinterpret_cast<ULONG_PTR>(c), 0) == nullptr) {
            const DWORD err = GetLastError();
            std::cerr << "ch08: CreateIoCompletionPort(socket) failed: " << err << " "
                      << iocp::error_text(static_cast<int>(err)) << "\n";
            close_connection(*c);  // no other thread knows c's socket yet
        } else {
            hand_over(*c);
        }
        //! [associate]
        free_now = c->closing && idle(*c);  // not even the hand-over got through
    }
    if (free_now) free_connection(*c);  // else c is the workers' now, and may be gone already
}
//! [admit]

}  // namespace ch08
