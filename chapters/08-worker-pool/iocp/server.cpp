// Chapter 8, Windows side: the server as a whole. The pool's size, the port, the
// threads, and the counters. See echo_server.h and docs/pages/ch08.md. Its twin is
// uring/server.cpp: the same functions in the same order, so that `diff -r iocp uring`
// shows only what the OS changes.
#include "internal.h"

#include <algorithm>
#include <memory>
#include <utility>

namespace ch08 {

//! [threads]
EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    if (limits_.buffer_size == 0) limits_.buffer_size = 1;
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
    // Workers first: a client's admit packet may come as soon as it is accepted.
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        w.thread = std::thread([this, &w] { worker_loop(w); });
    }
    accept_thread_ = std::thread([this] { accept_clients(); });
}
//! [start]

}  // namespace ch08
