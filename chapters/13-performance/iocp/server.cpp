// Chapter 13, Windows side: the server as a whole - how many workers, the port, the
// listener and the accepts start() makes.
// Its twin is uring/server.cpp: the same functions in the same order.
#include "internal.h"

#include <vector>

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

namespace ch13 {

//! [threads]
EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    if (limits_.buffer_size == 0) limits_.buffer_size = 1;
    if (limits_.max_clients == 0) limits_.max_clients = 1;
    if (limits_.accepts == 0) limits_.accepts = 1;
    if (limits_.pool_buffers == 0) limits_.pool_buffers = 1;
    //! [tick]
    // The sweep's tick: a tenth of the shorter timeout, between 10 ms and 1 s. Expiry
    // comes at most a tick late; a shorter tick costs a pass over the table more often.
    std::chrono::milliseconds shortest{0};
    for (const auto t : {limits_.idle_timeout, limits_.send_timeout})
        if (t.count() > 0 && (shortest.count() == 0 || t < shortest)) shortest = t;
    if (shortest.count() > 0)
        tick_ = std::clamp(shortest / 10, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
    //! [tick]
    // The budget in whole buffers: room for one at least, below the limit (a limit
    // under the high watermark drops a client where a higher one would pause it).
    limits_.output_high = std::max(limits_.output_high, limits_.buffer_size);
    limits_.output_low = std::min(limits_.output_low, limits_.output_high);
    limits_.output_limit = std::max(limits_.output_limit, limits_.buffer_size);
    // The original article's pool: two workers per CPU. The port lets only one per CPU
    // run at a time (concurrency 0, see start); the second one of each pair stands by,
    // and the port lets it in when a running worker blocks (a page fault, a connection's
    // lock, a log line written to a slow console), so that the CPU does not sit idle.
    // hardware_concurrency() may be 0 when the count is unknown.
    const std::size_t cpus = std::max(1u, std::thread::hardware_concurrency());
    threads_ = limits_.threads != 0 ? limits_.threads : 2 * cpus;
}
//! [threads]

EchoServer::~EchoServer() { stop(); }

//! [start]
void EchoServer::start() {
    //! [create-port]
    // A port with no file handle yet: INVALID_HANDLE_VALUE and no existing port create
    // it. The last argument, NumberOfConcurrentThreads, is how many of the threads that
    // wait on it the port lets run at once; 0 means "as many as there are processors"
    // (learn.microsoft.com/windows/win32/api/ioapiset/nf-ioapiset-createiocompletionport).
    // Wine 8 ignores the value: there, every worker with a packet runs.
    completion_port_ = iocp::UniqueHandle(CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 0));
    if (!completion_port_) iocp::throw_last_error("CreateIoCompletionPort");
    //! [create-port]
    listener_ = iocp::listen_tcp(where_);  // socket() makes overlapped-capable sockets
    port_ = iocp::local_port(listener_.get());
    family_ = iocp::resolve(where_).family();
    // The connection table: one entry per client the server may hold. Workers read it
    // without a lock, so it is sized once, here, and never moves.
    slot_count_ = std::min<std::size_t>(limits_.max_clients, std::numeric_limits<std::uint32_t>::max());
    slots_ = std::make_unique<Slot[]>(slot_count_);
    //! [listener]
    // The listener is associated with the port like any socket, with a key of its own:
    // each AcceptEx completes there as a packet, and whichever worker is free takes it.
    // No thread blocks in accept() any more.
    if (CreateIoCompletionPort(reinterpret_cast<HANDLE>(listener_.get()), completion_port_.get(), kListenerKey, 0) ==
        nullptr)
        iocp::throw_last_error("CreateIoCompletionPort(listener)");
    load_extensions();
    //! [listener]
    features_.batch_dequeue = limits_.steps.batch;
    features_.skip_on_success = limits_.steps.skip_on_success && providers_are_ifs(family_);
    //! [pre-post]
    // N accepts wait on the listener from the start: a burst of clients finds that many
    // accepts ready, and the rest wait in the listen backlog for one to come round.
    // Posted before any worker runs, so that a worker's first wait already knows of an
    // accept parked here (it waits with a timeout then; see worker_loop).
    {
        std::lock_guard<std::mutex> lock(accept_mutex_);
        accepting_ = true;
        for (std::size_t i = 0; i < limits_.accepts; ++i) {
            accepts_.push_back(std::make_unique<AcceptContext>());
            post_accept(*accepts_.back());
        }
    }
    //! [pre-post]
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        w.thread = std::thread([this, &w] { worker_loop(w); });
    }
}
//! [start]

//! [ifs]
// On a socket, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS works only with layered service
// providers (LSPs) that return Installable File System (IFS) handles; a non-IFS LSP
// completes operations its own way, behind the I/O manager's back. The mode's entry on
// the SetFileCompletionNotificationModes page says how to tell: WSAEnumProtocols, and
// the XP1_IFS_HANDLES bit of each entry's dwServiceFlags1. Any TCP entry of our address
// family without it, and the step stays off.
bool EchoServer::providers_are_ifs(int family) {
    INT protocols[] = {IPPROTO_TCP, 0};
    DWORD size = 0;
    if (WSAEnumProtocolsW(protocols, nullptr, &size) != SOCKET_ERROR || WSAGetLastError() != WSAENOBUFS) return false;
    std::vector<char> buffer(size);
    auto* info = reinterpret_cast<WSAPROTOCOL_INFOW*>(buffer.data());
    const int count = WSAEnumProtocolsW(protocols, info, &size);
    if (count == SOCKET_ERROR) return false;
    for (int i = 0; i < count; ++i)
        if (info[i].iAddressFamily == family && (info[i].dwServiceFlags1 & XP1_IFS_HANDLES) == 0) return false;
    return count > 0;
}
//! [ifs]

std::uint64_t EchoServer::completions() const {
    std::uint64_t n = inline_.load();
    for (const auto& w : workers_) n += w->completions.load();
    return n;
}

}  // namespace ch13
