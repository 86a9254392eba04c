// Chapter 9, Windows side: the server as a whole - how many workers, the port and the
// threads start() makes, the counters' accessors, and the test hook that fakes a late
// completion. Its twin is uring/server.cpp: the same functions in the same order.
#include "internal.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

namespace ch09 {

//! [threads]
EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    if (limits_.buffer_size == 0) limits_.buffer_size = 1;
    if (limits_.max_clients == 0) limits_.max_clients = 1;
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

std::vector<std::uint64_t> EchoServer::completions_per_worker() const {
    std::vector<std::uint64_t> counts;
    for (const auto& w : workers_) counts.push_back(w->completions.load());
    return counts;
}

std::map<int, std::uint64_t> EchoServer::results_after_close() const {
    std::lock_guard<std::mutex> lock(results_mutex_);
    return results_after_close_;
}

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
    // The connection table: one entry per client the server may hold. Workers read it
    // without a lock, so it is sized once, here, and never moves.
    slot_count_ = std::min<std::size_t>(limits_.max_clients, std::numeric_limits<std::uint32_t>::max());
    slots_ = std::make_unique<Slot[]>(slot_count_);
    // Workers first: a client's hand-over packet may come as soon as it is admitted.
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        w.thread = std::thread([this, &w] { worker_loop(w); });
    }
    accept_thread_ = std::thread([this] { accept_clients(); });
}
//! [start]

//! [inject]
// The test hook. A packet with the key of the connection freed last, as a late packet
// for it would carry; its OVERLAPPED points at the receive context of whichever
// connection holds that slot now, as a late packet's would if that connection sat at
// the old one's address. Only the generation stands between it and that connection.
void EchoServer::inject_stale_completion() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (last_freed_ == 0 || !completion_port_) return;
    Connection* now = slots_[slot_of(last_freed_)].connection.load();
    OVERLAPPED* overlapped = now != nullptr ? &now->recv.overlapped : &probe_.overlapped;
    if (!PostQueuedCompletionStatus(completion_port_.get(), 0, last_freed_, overlapped)) {
        const DWORD err = GetLastError();
        std::cerr << "ch09: PostQueuedCompletionStatus(stale) failed: " << err << " "
                  << iocp::error_text(static_cast<int>(err)) << "\n";
    }
}
//! [inject]

}  // namespace ch09
