// Chapter 13 - Performance: chapter 12's server, doing the same work with fewer trips
// into the kernel, each step counted. Windows: GetQueuedCompletionStatusEx takes up to
// 64 packets per call, and FILE_SKIP_COMPLETION_PORT_ON_SUCCESS lets an operation that
// finishes at once be handled where it was started, with no packet at all (only where
// every network provider is an IFS one). Linux: a multishot receive stays armed for the
// connection's life and brings a provided buffer with each arrival; the rings are single
// issuer with deferred task work, their descriptor and each socket registered with the
// kernel; and the timeouts, no longer linked to each operation, are a sweep of
// deadlines as on Windows. What stays: every rule of chapters 9-12.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"
#include "options.h"
#include "state.h"

#ifdef _WIN32
#include <mswsock.h>  // AcceptEx's and GetAcceptExSockaddrs' types and GUIDs
#else
#include <liburing.h>
#endif

namespace ch13 {


//! [server-class]
class EchoServer {
public:
    explicit EchoServer(iocp::Endpoint where, Limits limits = {});
    ~EchoServer();
    EchoServer(const EchoServer&) = delete;
    EchoServer& operator=(const EchoServer&) = delete;

    void start();
    void stop();  // stop accepting, close every connection, drain (bounded), end every worker
    std::uint16_t port() const { return port_; }
    std::size_t threads() const { return threads_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }
    std::uint64_t clients_accepted() const { return accepted_.load(); }
    std::uint64_t accept_failures() const { return accept_failures_.load(); }
    std::size_t accepts_pending() const { return accepts_pending_.load(); }

    //! [memory-counters]
    /// Chapter 11's memory counts: what the server holds (Connection objects and lent
    /// buffers), the pool's use and waits, the budget's pauses and drops.
    std::size_t memory_held() const {
        return live_.load() * connection_size() + buffers_lent() * limits_.buffer_size;
    }
    static constexpr std::size_t connection_size() { return sizeof(Connection); }
    std::size_t buffers_lent() const { return lent_.load(); }
    std::size_t most_buffers_lent() const { return most_lent_.load(); }
    std::size_t pool_size() const { return pool_size_.load(); }
    std::uint64_t buffer_waits() const { return buffer_waits_.load(); }
    std::uint64_t pool_errors() const { return pool_errors_.load(); }
    std::uint64_t backpressure_pauses() const { return pauses_.load(); }
    std::uint64_t clients_over_limit() const { return over_limit_.load(); }
    std::size_t most_bytes_queued() const { return most_queued_.load(); }
    //! [memory-counters]
    //! [timeout-counters]
    /// Connections closed by the idle timeout, and by the send timeout.
    std::uint64_t idle_timeouts() const { return idle_timeouts_.load(); }
    std::uint64_t send_timeouts() const { return send_timeouts_.load(); }
    /// Deadlines the sweep found passed on a connection already closing: never acted on.
    std::uint64_t timers_after_close() const { return timers_after_close_.load(); }
    /// How often the sweep runs (ms); 0 with both timeouts off.
    std::chrono::milliseconds timeout_tick() const { return tick_; }
    //! [timeout-counters]

    //! [cost-counters]
    /// What a step of this chapter saves, counted where Wine and a VM blur the clock:
    /// completions handled (every packet or CQE of a receive or send, and each
    /// operation finished inline), the calls that waited for them (GQCS/GQCSEx, or
    /// io_uring_enter), and (Windows) the operations that finished inline, with no
    /// packet, thanks to FILE_SKIP_COMPLETION_PORT_ON_SUCCESS.
    std::uint64_t completions() const;
    std::uint64_t kernel_waits() const { return waits_.load(); }
    std::uint64_t inline_completions() const { return inline_.load(); }
    /// Linux: receives armed (a multishot receive is armed once and stays).
    std::uint64_t receives_armed() const { return armed_.load(); }
    Features features() const { return features_; }
    //! [cost-counters]

    /// Receives and sends the kernel holds (Windows: and buffer grants in the port).
    std::size_t operations_in_flight() const { return in_flight_.load(); }
    std::uint64_t sends_reposted() const { return reposted_.load(); }
    std::uint64_t operations_failed() const { return failed_.load(); }
    int max_sends_in_flight_per_connection() const { return max_sends_.load(); }
    /// How connections ended: the three add up to connections_served().
    std::uint64_t peer_closes() const { return peer_closes_.load(); }
    std::uint64_t reset_by_peer() const { return resets_.load(); }
    std::uint64_t closed_by_us() const { return closed_by_us_.load(); }
    std::uint64_t completions_after_close() const { return after_close_.load(); }
    std::uint64_t stale_completions() const { return stale_.load(); }
    std::size_t operations_abandoned() const { return abandoned_.load(); }
#ifndef _WIN32
    std::uint64_t completion_queue_overflows() const { return cq_overflows_.load(); }
#endif

private:
    // The server's inside, defined in state.h.
    using Clock = detail::Clock;
    using Buffer = detail::Buffer;
    using Op = detail::Op;
    using IoContext = detail::IoContext;
    using Outcome = detail::Outcome;
    using Why = detail::Why;
    using Connection = detail::Connection;
    using Slot = detail::Slot;
    using Worker = detail::Worker;
#ifdef _WIN32
    using AcceptContext = detail::AcceptContext;
#endif

    // In the order of the files that define them (see the top of this header).
#ifdef _WIN32
    // accept.cpp
    void load_extensions();
    void post_accept(AcceptContext& a);
    void park_accept(AcceptContext& a, const char* what, int error);
    void retry_parked_accepts();
    void on_accept(AcceptContext& a, bool ok, DWORD error);
    bool update_accept_context(SOCKET accepted, const AcceptContext& a);
    Connection* take_slot(iocp::UniqueSocket client);
    void admit(iocp::UniqueSocket client);
    // pool.cpp
    Buffer* take_buffer(Connection& c);
    void give_back(Buffer* b);
    bool cancel_wait(Connection& c);
#else
    // server.cpp
    void check_kernel(Worker& w);
    // accept.cpp
    void accept_clients(Worker& w);
    void on_accept(Worker& w, int result, unsigned flags);
    void hand_over(iocp::UniqueSocket client);
    Connection* take_slot(Worker& w, iocp::UniqueSocket client);
    void admit(Worker& w, iocp::UniqueSocket client);
    // pool.cpp
    void make_buffer_ring(Worker& w);
    Buffer* take_buffer(Worker& w, unsigned flags);
    void give_back(Worker& w, Buffer* b);
    void serve_line(Worker& w);
    void free_buffer_ring(Worker& w);
#endif
    void count_lent(std::ptrdiff_t n);
    // timers.cpp
#ifdef _WIN32
    Clock::time_point deadline_after(std::chrono::milliseconds timeout) const;
    DWORD wait_for_sweep(DWORD wait);
    void sweep_timeouts();
    bool expire(Connection& c, Clock::time_point now);
#else
    // A request's file: the slot in the ring's table of registered sockets, or the descriptor.
    static int file_of(const Connection& c) { return c.fixed ? static_cast<int>(c.slot) : c.socket.get(); }
    bool rearm(Connection& c);
    void arm_tick(Worker& w);
    void on_tick(Worker& w, int result);
    void sweep_timeouts(Worker& w);
    bool expire(Connection& c, Clock::time_point now);
    void set_up_ring(Worker& w);
    void register_socket(Connection& c);
#endif
    // io.cpp
#ifdef _WIN32
    void post_peek(Connection& c);
    bool started(Connection& c, IoContext& io, int rc, const char* call);
    void settle(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    void run_inline(Connection& c);
    static bool providers_are_ifs(int family);
#endif
    void post_recv(Connection& c);
    void post_send(Connection& c);
    void queue_output(Connection& c, Buffer* b, std::size_t bytes);
    void sent(Connection& c, std::size_t bytes);
    void advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    void complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error, bool more = false);
    // worker.cpp
#ifdef _WIN32
    Connection* find(ULONG_PTR key);
    bool dispatch(Worker& w, BOOL ok, DWORD error, DWORD bytes, ULONG_PTR key, OVERLAPPED* overlapped);
#else
    io_uring_sqe* get_sqe(Worker& w, unsigned room = 1);
    IoContext* find(Worker& w, std::uint64_t tag);
    void on_doorbell(Worker& w, int result);
    void on_completion(Worker& w, IoContext& io, int result, unsigned flags);
    void listen_for_doorbell(Worker& w);
    bool wait_for_completions(Worker& w, bool polling);
    unsigned reap_batch(Worker& w);
#endif
    void worker_loop(Worker& w);
    // shutdown.cpp
    void close_connection(Connection& c, Why why);  // cancels what is in flight; never frees
    void free_connection(Connection& c);
    void release_buffers(Connection& c);
#ifdef _WIN32
    void close_all();
    void post_exit();
#else
    void cancel(Worker& w, std::uint64_t tag, iocp::socket_t fd);
    void close_all(Worker& w);
#endif
    void abandon();
    static void park(std::unique_ptr<Connection> c);

    // A connection is freed when it is closing and nothing of it is outstanding.
    static bool idle(const Connection& c) { return c.outstanding == 0; }

    iocp::Endpoint where_;
    Limits limits_;
    std::size_t threads_ = 1;
    iocp::UniqueSocket listener_;
    std::uint16_t port_ = 0;
    std::vector<std::unique_ptr<Worker>> workers_;  // built by start(), kept until destruction
    bool stopped_ = false;
    std::atomic<bool> stopping_{false};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::uint64_t> served_{0};
    std::atomic<std::uint64_t> refused_{0};
    std::atomic<std::size_t> in_flight_{0};
    std::atomic<std::uint64_t> reposted_{0};
    std::atomic<std::size_t> accepts_pending_{0};
    std::atomic<std::uint64_t> accepted_{0};
    std::atomic<std::uint64_t> accept_failures_{0};
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> peer_closes_{0};
    std::atomic<std::uint64_t> resets_{0};
    std::atomic<std::uint64_t> closed_by_us_{0};
    std::atomic<std::uint64_t> after_close_{0};
    std::atomic<std::uint64_t> stale_{0};
    std::atomic<std::size_t> abandoned_{0};
    std::atomic<std::size_t> slots_used_{0};
    std::atomic<int> max_sends_{0};
    std::atomic<std::size_t> lent_{0};
    std::atomic<std::size_t> most_lent_{0};
    std::atomic<std::size_t> pool_size_{0};
    std::atomic<std::uint64_t> buffer_waits_{0};
    std::atomic<std::uint64_t> pool_errors_{0};
    std::atomic<std::uint64_t> pauses_{0};
    std::atomic<std::uint64_t> over_limit_{0};
    std::atomic<std::size_t> most_queued_{0};
    std::atomic<std::uint64_t> idle_timeouts_{0};
    std::atomic<std::uint64_t> send_timeouts_{0};
    std::atomic<std::uint64_t> timers_after_close_{0};
    std::chrono::milliseconds tick_{0};
    std::atomic<std::uint64_t> waits_{0};
    std::atomic<std::uint64_t> inline_{0};
    std::atomic<std::uint64_t> armed_{0};
    Features features_;
#ifdef _WIN32
    iocp::UniqueHandle completion_port_;  // the port: ONE queue of finished I/O for every worker
    LPFN_ACCEPTEX accept_ex_ = nullptr;
    LPFN_GETACCEPTEXSOCKADDRS get_accept_ex_sockaddrs_ = nullptr;
    std::vector<std::unique_ptr<AcceptContext>> accepts_;
    mutable std::mutex accept_mutex_;        // guards accepting_, parked_, and each context's pending and socket
    std::condition_variable accepts_done_;   // stop() waits on it for accepts_pending_ to reach 0
    std::atomic<bool> accepting_{false};     // false from stop() on (set under accept_mutex_)
    int family_ = AF_INET;
    std::vector<AcceptContext*> parked_;
    std::atomic<std::size_t> parked_count_{0};
    std::mutex mutex_;                // guards changes to the table; taken before any connection's mutex
    std::condition_variable drained_; // stop() waits on it for in_flight_ to reach 0
    std::unique_ptr<Slot[]> slots_;   // the connection table: max_clients entries
    std::size_t slot_count_ = 0;
    std::vector<std::uint32_t> free_slots_;
    std::atomic<Clock::rep> next_sweep_{0};  // when the next sweep is due (a Clock count)
    //! [pool-state]
    // The pool: taken after a connection's mutex, never before, and nothing else is
    // locked while it is held.
    std::mutex pool_mutex_;
    Buffer* free_buffers_ = nullptr;             // a list through Buffer::next
    std::vector<std::unique_ptr<Buffer>> pool_;  // every buffer made, with its memory below
    std::vector<std::unique_ptr<char[]>> pool_memory_;
    std::vector<Connection*> waiters_;           // oldest first; each counts one outstanding
    //! [pool-state]
#else
    std::atomic<std::uint64_t> cq_overflows_{0};
    __kernel_timespec accept_pause_{};  // how long accepting pauses after EMFILE
    __kernel_timespec tick_ts_{};       // the sweep's period, as IORING_OP_TIMEOUT takes it
    std::size_t next_worker_ = 0;       // round robin; the accepting worker's thread only
    std::unique_ptr<std::latch> set_up_;  // start() returns once every worker has set its ring up
#endif
};
//! [server-class]

}  // namespace ch13
