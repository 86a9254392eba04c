// Chapter 14 - the engine: chapter 13's server with the echo taken out and an
// application put in. It accepts, receives into pooled buffers, keeps each connection's
// output within its budget, times out the idle and the stuck, and drains on stop; the
// application sees connections by id and bytes, and may send to any connection from
// any thread. One header; the build picks the implementation for the platform.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#ifdef _WIN32
#include <condition_variable>
#endif

#include "engine/options.h"
#include "engine/state.h"
#include "iocp/handle.h"
#include "iocp/net.h"

namespace ch14 {

//! [engine-class]
class Engine {
public:
    Engine(iocp::Endpoint where, Handler& handler, EngineOptions options = {});
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    void start();
    /// Stops accepting, tells the handler each connection closes, sends what is queued
    /// where it can within the drain, closes everything, ends every worker.
    void stop();
    std::uint16_t port() const { return port_; }
    std::size_t threads() const { return threads_; }

    //! [send]
    /// Queues `bytes` for `id`, from any thread, without waiting: an engine thread
    /// sends them, in the order they were queued. False if the engine is stopping or
    /// the id cannot be one of its connections (it names no worker, or on Windows no
    /// slot); an id whose connection has gone is found out, and the bytes dropped
    /// (sends_dropped()).
    bool send(ConnectionId id, std::string bytes);
    /// Ends `id`: after what is queued has gone out (then FIN, then what the client
    /// still sends is dropped until its FIN or the linger time), or at once.
    void close(ConnectionId id, bool after_sends);
    //! [send]

    // The engine's own counts: every one returns to zero when the work is done.
    std::size_t live_connections() const { return live_.load(); }
    std::size_t operations_in_flight() const { return in_flight_.load(); }
    std::size_t buffers_lent() const { return lent_.load(); }
    std::size_t bytes_queued() const { return queued_total_.load(); }
    std::size_t commands_pending() const { return commands_pending_.load(); }
    std::size_t accepts_pending() const { return accepts_pending_.load(); }
    // What happened.
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_accepted() const { return accepted_.load(); }
    std::uint64_t accept_failures() const { return accept_failures_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }
    std::uint64_t clients_over_limit() const { return over_limit_.load(); }
    std::uint64_t idle_timeouts() const { return idle_timeouts_.load(); }
    std::uint64_t send_timeouts() const { return send_timeouts_.load(); }
    std::uint64_t linger_timeouts() const { return linger_timeouts_.load(); }
    std::uint64_t sends_dropped() const { return sends_dropped_.load(); }
    std::uint64_t backpressure_pauses() const { return pauses_.load(); }
    std::uint64_t stale_completions() const { return stale_.load(); }
    std::uint64_t pool_errors() const { return pool_errors_.load(); }
    std::size_t operations_abandoned() const { return abandoned_.load(); }
    std::size_t most_bytes_queued() const { return most_queued_.load(); }
    /// Calls that waited for completions: GetQueuedCompletionStatusEx, or io_uring_enter.
    std::uint64_t kernel_waits() const { return waits_.load(); }
    /// Linux: the ring's completion queue overflowed (never, as sized). Windows: always 0.
    std::uint64_t completion_queue_overflows() const { return cq_overflows_.load(); }

private:
    using Clock = detail::Clock;
    using Buffer = detail::Buffer;
    using Op = detail::Op;
    using IoContext = detail::IoContext;
    using Outcome = detail::Outcome;
    using Why = detail::Why;
    using Command = detail::Command;
    using Connection = detail::Connection;
    using Slot = detail::Slot;
    using Worker = detail::Worker;
#ifdef _WIN32
    using AcceptContext = detail::AcceptContext;

    // In the order of the files that define them.
    // server.cpp
    static bool providers_are_ifs(int family);
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
    // commands.cpp
    void push(Command cmd);
    void run_commands(Connection& c, bool packet);
    void on_command(Connection& c);
    void enqueue(Connection& c, std::string bytes);
    void finish(Connection& c);
    // timers.cpp
    Clock::time_point deadline_after(std::chrono::milliseconds timeout) const;
    DWORD wait_for_tick(DWORD wait);
    void tick();
    bool expire(Connection& c, Clock::time_point now);
    // io.cpp
    bool started(Connection& c, IoContext& io, int rc, const char* call);
    void post_peek(Connection& c);
    void post_recv(Connection& c);
    bool rearm(Connection& c);
    void post_send(Connection& c);
    void sent(Connection& c, std::size_t bytes);
    void received(Connection& c, std::size_t bytes);
    void advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    void settle(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    void run_inline(Connection& c);
    void complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    // worker.cpp
    Connection* find(ULONG_PTR key);
    bool dispatch(Worker& w, BOOL ok, DWORD error, DWORD bytes, ULONG_PTR key, OVERLAPPED* overlapped);
    void worker_loop(Worker& w);
    // shutdown.cpp
    void tell_close(Connection& c);
    void close_connection(Connection& c, Why why);
    bool retire(Connection& c);
    void free_connection(Connection& c);
    void close_all();
    void post_exit();
    void notify_if_drained();
    void abandon();
    static void park(std::unique_ptr<Connection> c);
#else

    // In the order of the files that define them.
    // server.cpp
    void set_up_ring(Worker& w);
    // accept.cpp
    void accept_clients(Worker& w);
    void on_accept(Worker& w, int result, unsigned flags);
    void hand_over(iocp::UniqueSocket client);
    Connection* take_slot(Worker& w, iocp::UniqueSocket client);
    void register_socket(Connection& c);
    void admit(Worker& w, iocp::UniqueSocket client);
    // pool.cpp
    void make_buffer_ring(Worker& w);
    Buffer* take_buffer(Worker& w, unsigned flags);
    void give_back(Worker& w, Buffer* b);
    void serve_line(Worker& w);
    void free_buffer_ring(Worker& w);
    // commands.cpp
    void push(Worker& w, Command cmd);
    void run_commands(Worker& w);
    void enqueue(Connection& c, std::string bytes);
    void finish(Connection& c);
    Connection* lookup(Worker& w, ConnectionId id);
    // timers.cpp
    void arm_tick(Worker& w);
    void on_tick(Worker& w, int result);
    bool expire(Connection& c, Clock::time_point now);
    // io.cpp
    static int file_of(const Connection& c) { return c.fixed ? static_cast<int>(c.slot) : c.socket.get(); }
    void post_recv(Connection& c);
    bool rearm(Connection& c);
    void post_send(Connection& c);
    void sent(Connection& c, std::size_t bytes);
    void received(Connection& c, std::size_t bytes);
    void advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    void complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error, bool more);
    // worker.cpp
    io_uring_sqe* get_sqe(Worker& w, unsigned room = 1);
    IoContext* find(Worker& w, std::uint64_t tag);
    void on_doorbell(Worker& w, int result);
    void on_completion(Worker& w, IoContext& io, int result, unsigned flags);
    void listen_for_doorbell(Worker& w);
    bool wait_for_completions(Worker& w);
    unsigned reap_batch(Worker& w);
    void worker_loop(Worker& w);
    // shutdown.cpp
    void close_connection(Connection& c, Why why);
    void free_connection(Connection& c);
    void cancel(Worker& w, std::uint64_t tag, iocp::socket_t fd);
    void close_all(Worker& w);
    void abandon();
    static void park(std::unique_ptr<Connection> c);
#endif

    static bool idle(const Connection& c) { return c.outstanding == 0; }
    ConnectionId id_of(const Connection& c) const;

    iocp::Endpoint where_;
    Handler& handler_;
    EngineOptions options_;
    std::size_t threads_ = 1;
    iocp::UniqueSocket listener_;
    std::uint16_t port_ = 0;
    std::vector<std::unique_ptr<Worker>> workers_;
    bool stopped_ = false;
    std::atomic<bool> stopping_{false};
    std::atomic<std::size_t> live_{0};
    std::atomic<std::size_t> in_flight_{0};
    std::atomic<std::size_t> lent_{0};
    std::atomic<std::size_t> queued_total_{0};
    std::atomic<std::size_t> commands_pending_{0};
    std::atomic<std::uint64_t> served_{0};
    std::atomic<std::uint64_t> refused_{0};
    std::atomic<std::size_t> accepts_pending_{0};
    std::atomic<std::uint64_t> accepted_{0};
    std::atomic<std::uint64_t> accept_failures_{0};
    std::atomic<std::uint64_t> over_limit_{0};
    std::atomic<std::uint64_t> idle_timeouts_{0};
    std::atomic<std::uint64_t> send_timeouts_{0};
    std::atomic<std::uint64_t> linger_timeouts_{0};
    std::atomic<std::uint64_t> sends_dropped_{0};
    std::atomic<std::uint64_t> pauses_{0};
    std::atomic<std::uint64_t> stale_{0};
    std::atomic<std::uint64_t> pool_errors_{0};
    std::atomic<std::size_t> abandoned_{0};
    std::atomic<std::size_t> most_queued_{0};
    std::atomic<std::uint64_t> waits_{0};
    std::atomic<std::uint64_t> cq_overflows_{0};
#ifdef _WIN32
    iocp::UniqueHandle completion_port_;  // the port: ONE queue of finished I/O for every worker
    LPFN_ACCEPTEX accept_ex_ = nullptr;
    LPFN_GETACCEPTEXSOCKADDRS get_accept_ex_sockaddrs_ = nullptr;
    std::vector<std::unique_ptr<AcceptContext>> accepts_;
    mutable std::mutex accept_mutex_;        // guards accepting_, parked_, and each context's pending and socket
    std::condition_variable accepts_done_;   // stop() waits on it for accepts_pending_ to reach 0
    std::atomic<bool> accepting_{false};
    int family_ = AF_INET;
    bool skip_on_success_ = false;
    std::vector<AcceptContext*> parked_;
    std::atomic<std::size_t> parked_count_{0};
    // The locks, in the order they may be taken: mutex_ (the table), a connection's
    // mutex, then a slot's lock or pool_mutex_, which nothing is taken inside.
    std::mutex mutex_;                // guards taking and freeing slots; the sweeps walk under it
    std::condition_variable drained_; // stop() waits on it for in_flight_ to reach 0
    std::unique_ptr<Slot[]> slots_;   // the connection table: max_clients entries
    std::size_t slot_count_ = 0;
    std::atomic<std::size_t> slots_used_{0};
    std::vector<std::uint32_t> free_slots_;
    std::atomic<Clock::rep> next_tick_{0};  // when the next tick is due (a Clock count)
    std::mutex tick_mutex_;           // one tick at a time: on_tick is never called twice at once
    std::mutex pool_mutex_;
    Buffer* free_buffers_ = nullptr;
    std::vector<std::unique_ptr<Buffer>> pool_;
    std::vector<std::unique_ptr<char[]>> pool_memory_;
    std::vector<Connection*> waiters_;
#else
    bool single_issuer_ = false;
    __kernel_timespec accept_pause_{};
    __kernel_timespec tick_ts_{};
    std::size_t next_worker_ = 0;  // round robin; the accepting worker's thread only
    std::unique_ptr<std::latch> set_up_;
#endif
};
//! [engine-class]

}  // namespace ch14
