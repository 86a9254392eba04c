// Chapter 13, Linux side: the server as a whole - how many workers, the rings and the
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
#include <sys/resource.h>
#include <sys/syscall.h>

namespace ch13 {

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
    // The sweep's tick, as on Windows: a tenth of the shorter timeout, 10 ms to 1 s.
    std::chrono::milliseconds shortest{0};
    for (const auto t : {limits_.idle_timeout, limits_.send_timeout})
        if (t.count() > 0 && (shortest.count() == 0 || t < shortest)) shortest = t;
    if (shortest.count() > 0)
        tick_ = std::clamp(shortest / 10, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
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
    tick_ts_.tv_sec = tick_.count() / 1000;
    tick_ts_.tv_nsec = (tick_.count() % 1000) * 1'000'000;
    for (std::size_t i = 0; i < threads_; ++i) {
        workers_.push_back(std::make_unique<Worker>());
        Worker& w = *workers_.back();
        //! [create-port]
        // One ring per worker: a submission queue we fill with requests, a completion
        // queue the kernel fills with results. The port's queue has no fixed size; a
        // ring's has, so each is sized for the worst case: every connection on this one
        // ring (clients are dealt in turn, but leave when they like), each with a
        // receive, a send and a cancel of each in flight (four: six kept, for room),
        // plus the accept, its cancel, the doorbell's poll and the tick, and one
        // completion per buffer of the worker's share of the pool: an armed multishot
        // receive may post one for every buffer it takes before we reap.
        // IORING_SETUP_CLAMP turns a size beyond the kernel's limit into that limit,
        // which is then checked.
        const std::size_t max_clients = std::min<std::size_t>(limits_.max_clients, UINT_MAX / 8 - 1);
        const std::size_t needed =
            std::max<std::size_t>(6 * max_clients + limits_.pool_buffers / threads_ + 8, 2 * kRingEntries);
        //! [ring-flags]
        // SINGLE_ISSUER (Linux 6.0): only the worker's thread submits, so the kernel
        // skips the locking that guards a shared ring. DEFER_TASKRUN (6.1): the work
        // that finishes a request (copying the data, posting the completion) waits until
        // the worker asks for completions, instead of interrupting it whenever data
        // arrives: it runs in batches, where the worker waits anyway. R_DISABLED: the
        // ring starts disabled and the worker enables it on its own thread (set_up_ring),
        // which makes that thread the one issuer; the registrations below come first.
        io_uring_params params{};
        params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        if (limits_.steps.single_issuer)
            params.flags |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
        params.cq_entries = static_cast<unsigned>(needed);
        int rc = io_uring_queue_init_params(kRingEntries, &w.ring, &params);
        if (rc == -EINVAL && limits_.steps.single_issuer) {  // a kernel before 6.1: the ring as chapter 12 made it
            params = io_uring_params{};
            params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
            params.cq_entries = static_cast<unsigned>(needed);
            rc = io_uring_queue_init_params(kRingEntries, &w.ring, &params);
        } else if (rc == 0) {
            features_.single_issuer = limits_.steps.single_issuer;
        }
        //! [ring-flags]
        if (rc < 0) {
            // EINVAL: a kernel older than 5.6 lacks CLAMP (5.5 added CQSIZE). ENOMEM: before Linux 5.12
            // the rings' memory counts against RLIMIT_MEMLOCK (ulimit -l).
            throw iocp::SystemError(rc == -EINVAL   ? "io_uring_queue_init_params (Linux 5.6 or later needed)"
                                    : rc == -ENOMEM ? "io_uring_queue_init_params (locked memory: see ulimit -l)"
                                                    : "io_uring_queue_init_params",
                                    -rc);
        }
        w.ring_ready = true;
        if (params.cq_entries < needed)
            throw std::runtime_error("ch13: max_clients " + std::to_string(limits_.max_clients) +
                                     " needs completion queues of " + std::to_string(needed) +
                                     " entries; this kernel allows " + std::to_string(params.cq_entries) +
                                     "; lower --max-clients");
        // Should a queue fill up all the same, a completion must never be dropped:
        // IORING_FEAT_NODROP (Linux 5.5) keeps the overflow in the kernel until there is room.
        if ((params.features & IORING_FEAT_NODROP) == 0)
            throw std::runtime_error("ch13: this kernel's io_uring may drop completions (Linux 5.5 or later needed)");
        check_kernel(w);
        make_buffer_ring(w);
        //! [fixed-files]
        // A table of registered files, empty at first: a socket registered in slot i is
        // named by i in a request (IOSQE_FIXED_FILE), and the kernel skips looking the
        // descriptor up, and counting a reference to it, on every request. One entry per
        // connection this ring may hold; the kernel allows no more than RLIMIT_NOFILE.
        // Without it (an older kernel, a low limit) the sockets go by descriptor.
        rlimit files{};
        ::getrlimit(RLIMIT_NOFILE, &files);
        w.file_slots = static_cast<unsigned>(std::min<rlim_t>(limits_.max_clients, files.rlim_cur));
        if (!limits_.steps.fixed_files || io_uring_register_files_sparse(&w.ring, w.file_slots) != 0) w.file_slots = 0;
        features_.fixed_files = w.file_slots > 0;
        features_.batch_dequeue = limits_.steps.batch;        // reap_batch, since chapter 8
        features_.multishot_recv = limits_.steps.multishot;   // Linux 6.0
        //! [fixed-files]
        //! [create-port]
        w.doorbell = iocp::UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!w.doorbell) iocp::throw_last_error("eventfd");
    }
    // Threads last: every ring exists before any worker can hand a client to another.
    // start() returns when each has enabled its ring on its own thread (set_up_ring).
    set_up_ = std::make_unique<std::latch>(static_cast<std::ptrdiff_t>(workers_.size()));
    for (auto& w : workers_) {
        Worker* worker = w.get();
        w->thread = std::thread([this, worker] { worker_loop(*worker); });
    }
    set_up_->wait();
}
//! [start]

// Every request this server makes must be one the kernel knows: IORING_OP_SEND and
// IORING_OP_RECV came in Linux 5.6, and a kernel without them would fail each receive
// with -EINVAL at run time. The opcode probe (also 5.6) answers up front.
void EchoServer::check_kernel(Worker& w) {
    io_uring_probe* probe = io_uring_get_probe_ring(&w.ring);
    if (probe == nullptr) throw std::runtime_error("ch13: this kernel has no io_uring opcode probe (Linux 5.6 or later needed)");
    struct Needed {
        int op;
        const char* name;
    };
    const Needed needed[] = {{IORING_OP_RECV, "RECV"},   {IORING_OP_SEND, "SEND"},
                             {IORING_OP_ACCEPT, "ACCEPT"}, {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
                             {IORING_OP_TIMEOUT, "TIMEOUT"}, {IORING_OP_POLL_ADD, "POLL_ADD"}};
    std::string missing;
    for (const Needed& n : needed)
        if (!io_uring_opcode_supported(probe, n.op)) missing += std::string(missing.empty() ? "" : ", ") + "IORING_OP_" + n.name;
    io_uring_free_probe(probe);
    if (!missing.empty()) throw std::runtime_error("ch13: this kernel's io_uring lacks " + missing + " (Linux 5.6 or later needed)");
}

//! [set-up-ring]
// First thing on the worker's own thread: the ring becomes this thread's (the one
// issuer), and its descriptor is registered for this thread, so that each
// io_uring_enter skips looking it up (Linux 5.18). A registration belongs to the
// thread that made it; the worker undoes it before it returns.
void EchoServer::set_up_ring(Worker& w) {
    if (features_.single_issuer) {
        // IORING_REGISTER_ENABLE_RINGS (Linux 5.10). liburing 2.3 declares
        // io_uring_enable_rings but does not export it, so the system call itself.
        if (::syscall(__NR_io_uring_register, w.ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) < 0)
            fatal("io_uring_register(IORING_REGISTER_ENABLE_RINGS)", errno);
    }
    w.ring_fd_registered = limits_.steps.registered_ring && io_uring_register_ring_fd(&w.ring) == 1;
    if (&w == workers_.front().get()) features_.registered_ring = w.ring_fd_registered;
    w.now = Clock::now();
    set_up_->count_down();  // start() reads features_ after every worker has been here
}
//! [set-up-ring]

std::uint64_t EchoServer::completions() const {
    std::uint64_t n = 0;
    for (const auto& w : workers_) n += w->completions.load();
    return n;
}

}  // namespace ch13
