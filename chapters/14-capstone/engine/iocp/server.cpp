// Chapter 14, Windows side: the engine as a whole - how many workers, the port, the
// connection table, the listener and the accepts start() makes, and a connection's id.
// Its twin is uring/server.cpp.
#include "internal.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

namespace ch14 {

Engine::Engine(iocp::Endpoint where, Handler& handler, EngineOptions options)
    : where_(std::move(where)), handler_(handler), options_(options) {
    if (options_.buffer_size == 0) options_.buffer_size = 1;
    if (options_.max_clients == 0) options_.max_clients = 1;
    if (options_.pool_buffers == 0) options_.pool_buffers = 1;
    if (options_.accepts == 0) options_.accepts = 1;
    options_.output_low = std::min(options_.output_low, options_.output_high);
    options_.output_limit = std::max(options_.output_limit, options_.output_high);
    if (options_.tick.count() <= 0) options_.tick = std::chrono::milliseconds(100);
    // Chapter 8's pool: two workers per CPU. The port lets one per CPU run at once; the
    // second of each pair runs when one blocks - here also on a connection's mutex,
    // held while the application's callback for that connection runs.
    const std::size_t cpus = std::max(1u, std::thread::hardware_concurrency());
    threads_ = options_.threads != 0 ? options_.threads : 2 * cpus;
}

Engine::~Engine() { stop(); }

// The application's name for a connection is its completion key (internal.h).
ConnectionId Engine::id_of(const Connection& c) const { return make_tag(c.slot, c.generation); }

//! [start]
void Engine::start() {
    // A port with no file handle yet; 0 concurrency: as many running workers as CPUs
    // (CreateIoCompletionPort). Wine 8 ignores the value: there every worker with a
    // packet runs.
    completion_port_ = iocp::UniqueHandle(CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 0));
    if (!completion_port_) iocp::throw_last_error("CreateIoCompletionPort");
    listener_ = iocp::listen_tcp(where_);
    port_ = iocp::local_port(listener_.get());
    family_ = iocp::resolve(where_).family();
    // The connection table: one entry per client the engine may hold. Workers, and
    // send() on any thread, read it without the table's lock, so it is sized once,
    // here, and never moves.
    slot_count_ = std::min<std::size_t>(options_.max_clients, std::numeric_limits<std::uint32_t>::max());
    slots_ = std::make_unique<Slot[]>(slot_count_);
    if (CreateIoCompletionPort(reinterpret_cast<HANDLE>(listener_.get()), completion_port_.get(), kListenerKey, 0) ==
        nullptr)
        iocp::throw_last_error("CreateIoCompletionPort(listener)");
    load_extensions();
    skip_on_success_ = providers_are_ifs(family_);
    next_tick_ = (Clock::now() + options_.tick).time_since_epoch().count();
    {
        std::lock_guard<std::mutex> lock(accept_mutex_);
        accepting_ = true;
        for (std::size_t i = 0; i < options_.accepts; ++i) {
            accepts_.push_back(std::make_unique<AcceptContext>());
            post_accept(*accepts_.back());
        }
    }
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        w.thread = std::thread([this, &w] { worker_loop(w); });
    }
}
//! [start]

// Chapter 13's test for FILE_SKIP_COMPLETION_PORT_ON_SUCCESS: it is safe only when every
// TCP provider of our family returns IFS handles (SetFileCompletionNotificationModes,
// Remarks: WSAEnumProtocols and the XP1_IFS_HANDLES bit of dwServiceFlags1).
bool Engine::providers_are_ifs(int family) {
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

}  // namespace ch14
