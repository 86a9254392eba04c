// Chapter 14, Linux side: the engine as a whole - its workers, one ring each (chapter
// 13's: single issuer, deferred task work, a buffer ring, a table of registered
// sockets), the threads start() makes, and a connection's id.
#include "internal.h"

#include <algorithm>
#include <climits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>

namespace ch14 {

Engine::Engine(iocp::Endpoint where, Handler& handler, EngineOptions options)
    : where_(std::move(where)), handler_(handler), options_(options) {
    if (options_.buffer_size == 0) options_.buffer_size = 1;
    if (options_.max_clients == 0) options_.max_clients = 1;
    options_.max_clients = std::min(options_.max_clients, kMaxSlots);
    if (options_.pool_buffers == 0) options_.pool_buffers = 1;
    options_.output_low = std::min(options_.output_low, options_.output_high);
    options_.output_limit = std::max(options_.output_limit, options_.output_high);
    if (options_.tick.count() <= 0) options_.tick = std::chrono::milliseconds(100);
    const std::size_t cpus = std::max(1u, std::thread::hardware_concurrency());
    threads_ = std::min(options_.threads != 0 ? options_.threads : cpus, kMaxWorkers);
}

Engine::~Engine() { stop(); }

ConnectionId Engine::id_of(const Connection& c) const { return make_id(c.worker->index, c.slot, c.generation); }

//! [start]
void Engine::start() {
    listener_ = iocp::listen_tcp(where_);
    port_ = iocp::local_port(listener_.get());
    accept_pause_.tv_nsec = kAcceptBackoffNs;
    tick_ts_.tv_sec = options_.tick.count() / 1000;
    tick_ts_.tv_nsec = (options_.tick.count() % 1000) * 1'000'000;
    const std::size_t per_worker = (options_.max_clients + threads_ - 1) / threads_;
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        w.index = i;
        // Sized as chapter 13's: room for every connection's receive, send and their
        // cancels, the ring's own requests, and a completion per buffer of the ring.
        // (Clients are dealt in turn, but a worker may hold more than its share: the
        // cap applies to all of them together, so each ring is sized for all.)
        const std::size_t max_clients = std::min<std::size_t>(options_.max_clients, UINT_MAX / 8 - 1);
        const std::size_t needed =
            std::max<std::size_t>(6 * max_clients + options_.pool_buffers / threads_ + 8, 2 * kRingEntries);
        io_uring_params params{};
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_SINGLE_ISSUER |
                       IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
        params.cq_entries = static_cast<unsigned>(needed);
        int rc = io_uring_queue_init_params(kRingEntries, &w.ring, &params);
        if (rc == -EINVAL) {  // before Linux 6.1: a ring without the single-issuer flags
            params = io_uring_params{};
            params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
            params.cq_entries = static_cast<unsigned>(needed);
            rc = io_uring_queue_init_params(kRingEntries, &w.ring, &params);
        } else if (rc == 0) {
            single_issuer_ = true;
        }
        if (rc < 0) throw iocp::SystemError("io_uring_queue_init_params (Linux 6.0 or later needed)", -rc);
        w.ring_ready = true;
        if (params.cq_entries < needed)
            throw std::runtime_error("engine: max_clients " + std::to_string(options_.max_clients) +
                                     " needs completion queues of " + std::to_string(needed) +
                                     " entries; this kernel allows " + std::to_string(params.cq_entries));
        if ((params.features & IORING_FEAT_NODROP) == 0)
            throw std::runtime_error("engine: this kernel's io_uring may drop completions (Linux 5.5 or later needed)");
        make_buffer_ring(w);
        rlimit files{};
        ::getrlimit(RLIMIT_NOFILE, &files);
        w.file_slots = static_cast<unsigned>(std::min<rlim_t>(options_.max_clients, files.rlim_cur));
        if (io_uring_register_files_sparse(&w.ring, w.file_slots) != 0) w.file_slots = 0;
        w.slots.reserve(std::min<std::size_t>(per_worker, 4096));
        w.doorbell = iocp::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!w.doorbell) iocp::throw_last_error("eventfd");
    }
    set_up_ = std::make_unique<std::latch>(static_cast<std::ptrdiff_t>(workers_.size()));
    for (auto& w : workers_) {
        Worker* worker = w.get();
        w->thread = std::thread([this, worker] { worker_loop(*worker); });
    }
    set_up_->wait();
}
//! [start]

// On the worker's own thread: the ring becomes this thread's (its one issuer), and its
// descriptor is registered for this thread.
void Engine::set_up_ring(Worker& w) {
    if (single_issuer_ &&
        ::syscall(__NR_io_uring_register, w.ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0)
        fatal("io_uring_register(IORING_REGISTER_ENABLE_RINGS)", errno);
    w.ring_fd_registered = io_uring_register_ring_fd(&w.ring) == 1;
    w.now = Clock::now();
    set_up_->count_down();
}

}  // namespace ch14
