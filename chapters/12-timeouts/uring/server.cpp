// Chapter 12, Linux side: the server as a whole - how many workers, the rings and the
// threads start() makes, and the counters' accessors. Its twin is iocp/server.cpp: the same functions in the same order, with
// check_kernel() beside start().
//
// The choice: a port is one queue that any number of threads may wait on, and the
// kernel spreads the packets over them. A ring has one submitter and one reaper; sharing
// it means a lock around every submission and every reaping. So each worker owns a
// ring, and each connection belongs to one worker for its whole life: worker 0 accepts
// (one multishot request) and hands clients out in turn through each worker's inbox and doorbell. No lock
// guards a connection, since only its worker ever touches it; the price is that a
// busy worker cannot pass its connections to an idle one, as the port would.
#include "internal.h"

#include <algorithm>
#include <climits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include <sys/eventfd.h>

namespace ch12 {

//! [threads]
EchoServer::EchoServer(iocp::Endpoint where, Limits limits) : where_(std::move(where)), limits_(limits) {
    if (limits_.buffer_size == 0) limits_.buffer_size = 1;
    if (limits_.max_clients == 0) limits_.max_clients = 1;
    if (limits_.pool_buffers == 0) limits_.pool_buffers = 1;
    // The budget in whole buffers: room for one at least, below the limit (a limit
    // under the high watermark drops a client where a higher one would pause it).
    limits_.output_high = std::max(limits_.output_high, limits_.buffer_size);
    limits_.output_low = std::min(limits_.output_low, limits_.output_high);
    limits_.output_limit = std::max(limits_.output_limit, limits_.buffer_size);
    // One ring per CPU. A ring's loop makes no blocking call but its wait for
    // completions, so a ring more than the CPUs only adds wake-ups. (If the handling
    // blocked, more rings would help, as more workers help a port; what no ring count
    // fixes is that a connection cannot leave a blocked worker for an idle one.)
    // hardware_concurrency() may be 0 when the count is unknown.
    const std::size_t cpus = std::max(1u, std::thread::hardware_concurrency());
    threads_ = limits_.threads != 0 ? limits_.threads : cpus;
}
//! [threads]

EchoServer::~EchoServer() { stop(); }

//! [start]
void EchoServer::start() {
    listener_ = iocp::listen_tcp(where_);
    port_ = iocp::local_port(listener_.get());
    accept_pause_.tv_nsec = kAcceptBackoffNs;
    for (auto [timeout, ts] : {std::pair{limits_.idle_timeout, &idle_ts_}, std::pair{limits_.send_timeout, &send_ts_}}) {
        ts->tv_sec = timeout.count() / 1000;
        ts->tv_nsec = (timeout.count() % 1000) * 1'000'000;
    }
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        //! [create-port]
        // One ring per worker: a submission queue we fill with requests, a completion
        // queue the kernel fills with results. The port's queue has no fixed size; a
        // ring's has, so each is sized for the worst case: every connection on this one
        // ring (clients are dealt in turn, but leave when they like), each with a
        // receive, a send, the link timeout of each and a cancel of each in flight (six),
        // plus the accept, its cancel and
        // the doorbell's poll (and one spare). IORING_SETUP_CLAMP turns a size beyond the
        // kernel's limit into that limit, which is then checked.
        const std::size_t max_clients = std::min<std::size_t>(limits_.max_clients, UINT_MAX / 6 - 1);
        const std::size_t needed = std::max<std::size_t>(6 * max_clients + 4, 2 * kRingEntries);
        io_uring_params params{};
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        params.cq_entries = static_cast<unsigned>(needed);
        if (const int rc = io_uring_queue_init_params(kRingEntries, &w.ring, &params); rc < 0) {
            // EINVAL: a kernel older than 5.6 lacks CLAMP (5.5 added CQSIZE). ENOMEM: before Linux 5.12
            // the rings' memory counts against RLIMIT_MEMLOCK (ulimit -l).
            throw iocp::SystemError(rc == -EINVAL   ? "io_uring_queue_init_params (Linux 5.6 or later needed)"
                                    : rc == -ENOMEM ? "io_uring_queue_init_params (locked memory: see ulimit -l)"
                                                    : "io_uring_queue_init_params",
                                    -rc);
        }
        w.ring_ready = true;
        if (const std::size_t most = (params.cq_entries - 4) / 6; limits_.max_clients > most)
            throw std::runtime_error("ch12: max_clients " + std::to_string(limits_.max_clients) +
                                     " needs completion queues of " + std::to_string(6 * max_clients + 4) +
                                     " entries; this kernel allows " + std::to_string(params.cq_entries) +
                                     ", enough for at most " + std::to_string(most) + " clients");
        // Should a queue fill up all the same, a completion must never be dropped:
        // IORING_FEAT_NODROP (Linux 5.5) keeps the overflow in the kernel until there is room.
        if ((params.features & IORING_FEAT_NODROP) == 0)
            throw std::runtime_error("ch12: this kernel's io_uring may drop completions (Linux 5.5 or later needed)");
        check_kernel(w);
        make_buffer_ring(w);
        //! [create-port]
        w.doorbell = iocp::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!w.doorbell) iocp::throw_last_error("eventfd");
    }
    // Threads last: every ring exists before any worker can hand a client to another.
    for (auto& w : workers_) {
        Worker* worker = w.get();
        w->thread = std::thread([this, worker] { worker_loop(*worker); });
    }
}
//! [start]

// Every request this server makes must be one the kernel knows: IORING_OP_SEND and
// IORING_OP_RECV came in Linux 5.6, and a kernel without them would fail each receive
// with -EINVAL at run time. The opcode probe (also 5.6) answers up front.
void EchoServer::check_kernel(Worker& w) {
    io_uring_probe* probe = io_uring_get_probe_ring(&w.ring);
    if (probe == nullptr) throw std::runtime_error("ch12: this kernel has no io_uring opcode probe (Linux 5.6 or later needed)");
    struct Needed {
        int op;
        const char* name;
    };
    const Needed needed[] = {{IORING_OP_RECV, "RECV"},   {IORING_OP_SEND, "SEND"},
                             {IORING_OP_ACCEPT, "ACCEPT"}, {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
                             {IORING_OP_TIMEOUT, "TIMEOUT"}, {IORING_OP_POLL_ADD, "POLL_ADD"},
                             {IORING_OP_LINK_TIMEOUT, "LINK_TIMEOUT"}};
    std::string missing;
    for (const Needed& n : needed)
        if (!io_uring_opcode_supported(probe, n.op)) missing += std::string(missing.empty() ? "" : ", ") + "IORING_OP_" + n.name;
    io_uring_free_probe(probe);
    if (!missing.empty()) throw std::runtime_error("ch12: this kernel's io_uring lacks " + missing + " (Linux 5.6 or later needed)");
}


}  // namespace ch12
