// Chapter 14, Windows side: how a client becomes a connection - chapter 13's AcceptEx,
// posted N times on the listener and again from each of its completions; a failure
// parked and retried later; a slot in the table; then the application hears of it
// (on_connect), and the connection's first receive, a zero-byte one, goes out.
// Its twin is uring/accept.cpp.
#include "internal.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ch14 {

//! [load-extensions]
// AcceptEx and GetAcceptExSockaddrs are Microsoft extensions, not part of Winsock's
// exported functions proper: a program asks the provider behind its socket for them by
// GUID. (Linking mswsock.lib and calling AcceptEx directly works too, but goes through
// a stub that looks the function up on every call; Microsoft's AcceptEx page says to
// ask once with SIO_GET_EXTENSION_FUNCTION_POINTER.)
void Engine::load_extensions() {
    struct Wanted {
        GUID guid;
        void* pointer;
        const char* name;
    };
    Wanted wanted[] = {{WSAID_ACCEPTEX, &accept_ex_, "AcceptEx"},
                       {WSAID_GETACCEPTEXSOCKADDRS, &get_accept_ex_sockaddrs_, "GetAcceptExSockaddrs"}};
    for (Wanted& w : wanted) {
        DWORD bytes = 0;
        if (WSAIoctl(listener_.get(), SIO_GET_EXTENSION_FUNCTION_POINTER, &w.guid, sizeof w.guid, w.pointer,
                     sizeof(void*), &bytes, nullptr, nullptr) == SOCKET_ERROR)
            iocp::throw_socket_error(w.name);
    }
}
//! [load-extensions]

//! [post-accept]
// With accept_mutex_ held. AcceptEx wants a socket made in advance, of the listener's
// family, unbound and unconnected: the connection will arrive on it. Its buffer has
// room for two addresses, each the largest address (sockaddr_storage) plus the 16 bytes
// the AcceptEx page demands, and none for first bytes (chapter 10 says why).
void Engine::post_accept(AcceptContext& a) {
    if (!accepting_) return;  // stop() has begun: this accept stays home
    a.buffer.assign(2 * kAddressSlot, 0);
    a.overlapped = OVERLAPPED{};
    a.socket = iocp::UniqueSocket(WSASocketW(family_, SOCK_STREAM, IPPROTO_TCP, nullptr, 0, WSA_FLAG_OVERLAPPED));
    if (!a.socket) {
        park_accept(a, "cannot make an accept socket", WSAGetLastError());
        return;
    }
    a.pending = true;
    ++accepts_pending_;
    // TRUE (a client was already waiting) or ERROR_IO_PENDING: either way the listener
    // is associated with the port, so the result comes as a packet. lpdwBytesReceived is
    // only filled in for the TRUE case; the packet has the count anyway.
    DWORD bytes = 0;
    if (!accept_ex_(listener_.get(), a.socket.get(), a.buffer.data(), 0, kAddressSlot, kAddressSlot, &bytes,
                    &a.overlapped)) {
        const int err = WSAGetLastError();
        if (err != ERROR_IO_PENDING) {  // no packet will come
            a.pending = false;
            --accepts_pending_;
            a.socket.reset();
            park_accept(a, "cannot post AcceptEx", err);
        }
    }
}
//! [post-accept]

//! [park]
// With accept_mutex_ held: an accept that could not be posted waits kAcceptBackoff,
// then a worker tries again (retry_parked_accepts). Trying again at once would fail at
// once, and a worker doing only that would spin. Clients meanwhile wait in the listen
// backlog, and the other accepts keep serving.
void Engine::park_accept(AcceptContext& a, const char* what, int error) {
    ++accept_failures_;
    std::cerr << "engine: " << what << ": " << error << " " << iocp::error_text(error) << "; retrying in "
              << kAcceptBackoff.count() << " ms\n";
    a.retry_at = std::chrono::steady_clock::now() + kAcceptBackoff;
    parked_.push_back(&a);
    ++parked_count_;
}

// On a worker, whenever parked_count_ is not 0: after each packet, and when its timed
// wait on the port runs out (see worker_loop). Accepts whose time has come are posted.
void Engine::retry_parked_accepts() {
    std::lock_guard<std::mutex> lock(accept_mutex_);
    const auto now = std::chrono::steady_clock::now();
    std::vector<AcceptContext*> due;
    for (auto it = parked_.begin(); it != parked_.end();) {
        if ((*it)->retry_at <= now) {
            due.push_back(*it);
            it = parked_.erase(it);
            --parked_count_;
        } else {
            ++it;
        }
    }
    for (AcceptContext* a : due) post_accept(*a);  // may park it again
}
//! [park]

//! [on-accept]
// On a worker: the packet of one AcceptEx (the listener's key). Whatever it says, the
// accept is posted again from here, unless stop() has begun.
void Engine::on_accept(AcceptContext& a, bool ok, DWORD error) {
    iocp::UniqueSocket client;
    {
        std::lock_guard<std::mutex> lock(accept_mutex_);
        a.pending = false;
        client = std::move(a.socket);  // this thread's alone from here
    }
    const int err = static_cast<int>(error);
    // "WSAECONNRESET ... an incoming connection was indicated, but was subsequently
    // terminated by the remote peer prior to accepting the call" (AcceptEx page). Wine
    // 8 says 59 (ERROR_UNEXP_NET_ERR) for the same, and 64 (ERROR_NETNAME_DELETED)
    // may come too. Not a failure of ours: the next client may come at once, and each
    // such completion took a client, so posting again at once cannot spin. (995 is no
    // peer's: see is_peer_reset.)
    const bool gone = !ok && (is_peer_reset(err) || err == ERROR_UNEXP_NET_ERR);
    if (ok && accepting_ && update_accept_context(client.get(), a)) {
        ++accepted_;
        admit(std::move(client));
    }  // else: cancelled by stop(), a client gone before its accept, or a failure below
    client.reset();  // unless admit() took it: a socket whose accept failed is not reused
    {
        std::lock_guard<std::mutex> lock(accept_mutex_);
        if (ok || gone) {
            post_accept(a);  // at once: the next client needs nothing that failed
        } else if (accepting_) {
            park_accept(a, "AcceptEx failed", err);  // ours: counted, logged, tried again later
        }
    }
    // Last: stop() waits for this count before it closes the connections, so a client
    // admitted above is in the table by then.
    if (--accepts_pending_ == 0 && !accepting_) {
        std::lock_guard<std::mutex> lock(accept_mutex_);
        accepts_done_.notify_all();
    }
}
//! [on-accept]

//! [update-accept-context]
// The socket AcceptEx filled is connected, but does not yet know its listener: until
// SO_UPDATE_ACCEPT_CONTEXT, "getpeername, getsockname, getsockopt, setsockopt, and
// shutdown" fail on it (AcceptEx page, Remarks). Then the two addresses, which AcceptEx
// wrote after the first bytes, come from GetAcceptExSockaddrs, and getpeername() must
// agree with them.
bool Engine::update_accept_context(SOCKET accepted, const AcceptContext& a) {
    const SOCKET listener = listener_.get();
    if (setsockopt(accepted, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, reinterpret_cast<const char*>(&listener),
                   sizeof listener) == SOCKET_ERROR) {
        const int err = WSAGetLastError();
        ++accept_failures_;
        std::cerr << "engine: SO_UPDATE_ACCEPT_CONTEXT failed: " << err << " " << iocp::error_text(err) << "\n";
        return false;
    }
    sockaddr* local = nullptr;
    sockaddr* remote = nullptr;
    int local_len = 0;
    int remote_len = 0;
    get_accept_ex_sockaddrs_(const_cast<char*>(a.buffer.data()), 0, kAddressSlot, kAddressSlot, &local, &local_len,
                             &remote, &remote_len);
    const std::string peer = iocp::address_text(remote, remote_len);
    if (iocp::peer_address(accepted) != peer) {
        ++accept_failures_;
        std::cerr << "engine: getpeername says " << iocp::peer_address(accepted) << ", AcceptEx said " << peer << "\n";
        return false;
    }
    return true;
}
//! [update-accept-context]

// A connection for `client` in an entry of the table, which owns it from here on.
// Returned with its mutex held: the moment it is in the table, stop()'s close_all or
// the sweep may find it, and they must not close it before admit() has told the
// application it exists. (Locking it before the table's lock breaks no order: nobody
// can wait for a mutex of a connection they cannot yet find.)
Engine::Connection* Engine::take_slot(iocp::UniqueSocket client) {
    auto owned = std::make_unique<Connection>();
    Connection* c = owned.get();
    c->mutex.lock();
    c->socket = std::move(client);
    c->recv.op = Op::kPeek;
    c->recv.connection = c;
    c->send.op = Op::kSend;
    c->send.connection = c;
    c->command.op = Op::kCommand;
    c->command.connection = c;
    std::lock_guard<std::mutex> lock(mutex_);
    // The slot freed last is taken first; the generation tells this occupant from the last.
    if (!free_slots_.empty()) {
        c->slot = free_slots_.back();
        free_slots_.pop_back();
    } else {
        c->slot = static_cast<std::uint32_t>(slots_used_++);  // below slot_count_: live_ < max_clients
    }
    Slot& s = slots_[c->slot];
    std::lock_guard<std::mutex> slot_lock(s.lock);
    c->generation = s.generation.load();
    s.connection.store(owned.release());  // the table owns it now
    return c;
}

//! [admit]
// On the worker that took the accept's packet.
void Engine::admit(iocp::UniqueSocket client) {
    if (live_.fetch_add(1) >= options_.max_clients) {
        --live_;
        ++refused_;
        std::cerr << "engine: refusing " << iocp::peer_address(client.get()) << ": at the cap of "
                  << options_.max_clients << " clients\n";
        return;  // closed here: the client sees EOF
    }
    try {
        iocp::set_nodelay(client.get(), true);
    } catch (const iocp::SystemError& e) {
        std::cerr << "engine: " << e.what() << "\n";
        --live_;
        return;
    }
    const std::string peer = iocp::peer_address(client.get());
    Connection* c = take_slot(std::move(client));
    bool free_now = false;
    {
        std::unique_lock<std::mutex> lock(c->mutex, std::adopt_lock);  // take_slot locked it
        // Its own association, with its own key: the tag, which is also its id.
        if (c->closing) {
            // stop() closed it between the table and here: the application never hears of it.
        } else if (CreateIoCompletionPort(reinterpret_cast<HANDLE>(c->socket.get()), completion_port_.get(),
                                          make_tag(c->slot, c->generation), 0) == nullptr) {
            const DWORD err = GetLastError();
            std::cerr << "engine: CreateIoCompletionPort(socket) failed: " << err << " "
                      << iocp::error_text(static_cast<int>(err)) << "\n";
            close_connection(*c, Why::kByUs);
        } else {
            if (skip_on_success_)
                c->skip = SetFileCompletionNotificationModes(
                              reinterpret_cast<HANDLE>(c->socket.get()),
                              FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE) != FALSE;
            // The application first, then the first receive: its on_connect comes
            // before any on_data. What it sends from there is carried out as it returns.
            c->connected = true;
            const void* before = std::exchange(tl_calling, c);
            handler_.on_connect(id_of(*c), peer);
            tl_calling = before;
            run_commands(*c, false);
            rearm(*c);  // a zero-byte receive: idle until the client speaks
            run_inline(*c);
        }
        free_now = retire(*c);  // nothing could even start
    }
    if (free_now) free_connection(*c);
    // From here on c may be gone: a worker may have taken its packet, closed it, freed it.
}
//! [admit]

}  // namespace ch14
