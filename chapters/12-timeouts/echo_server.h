// Chapter 12 - Timeouts: a server that stops waiting for its clients. Chapter 11's
// server with two deadlines per connection: an idle timeout (no byte received for N
// ms) and a send timeout (a send that makes no progress for N ms: the client that
// never reads). On Windows each connection keeps its deadlines, and a worker whose
// timed wait on the port runs out sweeps the table, closing what has expired with
// chapter 9's close (the flag, then CancelIoEx): the expiry racing a completion is
// settled by the connection's lock, the loser's completion counted as ours. On Linux
// every receive and send goes out linked to an IORING_OP_LINK_TIMEOUT: the kernel
// cancels the operation when its time is up, and the timer goes with the operation.
// Both timeouts are off unless set. What no timeout here can tell apart, a client
// trickling one byte at a time from a slow typist, needs framing (chapter 14).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"

#ifdef _WIN32
#include <mswsock.h>  // AcceptEx's and GetAcceptExSockaddrs' types and GUIDs
#else
#include <liburing.h>
#endif

namespace ch12 {

//! [limits]
struct Limits {
    std::size_t max_clients = 10000;
    // Chapter 11's budgets: pool buffers of buffer_size, shared (Linux: split between
    // the workers' rings); per connection, receives pause at output_high bytes of
    // buffers queued, resume at output_low, and past output_limit the client is dropped.
    std::size_t buffer_size = 16 * 1024;
    std::size_t pool_buffers = 1024;
    std::size_t output_low = 16 * 1024;
    std::size_t output_high = 64 * 1024;
    std::size_t output_limit = 1024 * 1024;
    std::size_t threads = 0;  // 0: two per CPU on Windows, one per CPU on Linux
    std::chrono::milliseconds drain_timeout{10000};  // how long stop() waits for cancelled I/O
    std::size_t accepts = 64;  // Windows: AcceptEx calls pending at once
    std::function<void(const std::string& peer)> on_accepted;  // told each accepted client
    //! [timeouts]
    // 0: off. Idle: a connection that receives nothing for this long is closed (while
    // it is paused at its output budget it is not waiting to receive, and the send
    // timeout watches it instead). Send: a send that moves no byte for this long closes
    // its connection. Windows checks every timeout_tick() ms, so expiry comes up to one
    // tick late; Linux's kernel timers need no tick.
    std::chrono::milliseconds idle_timeout{0};
    std::chrono::milliseconds send_timeout{0};
    //! [timeouts]
};
//! [limits]

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
    /// Timers that expired (Windows: found by the sweep) or came home (Linux) on a
    /// connection already closing: never acted on.
    std::uint64_t timers_after_close() const { return timers_after_close_.load(); }
    /// Windows: how often the sweep runs (ms). Linux: 0, the kernel keeps the time.
    std::chrono::milliseconds timeout_tick() const { return tick_; }
    //! [timeout-counters]

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
    struct Connection;
    struct Worker;

    using Clock = std::chrono::steady_clock;

    //! [buffer]
    // One buffer of the pool. Lent, it holds received bytes until they are echoed:
    // queued in its connection's output list, oldest first.
    struct Buffer {
        char* data = nullptr;      // buffer_size bytes
        Buffer* next = nullptr;    // the next in an output queue (Windows: or the free list)
        std::uint32_t length = 0;  // bytes received into it
        std::uint32_t sent = 0;    // of those, bytes sent
        std::uint16_t id = 0;      // Linux: its buffer id in the worker's buffer ring
        bool lent = false;         // out of the pool: what the double-lend check looks at
    };
    //! [buffer]

    //! [io-context]
#ifdef _WIN32
    // kPeek: a zero-byte receive, waiting for data with no buffer. kRecv: the real one.
    // kGrant: the pool's packet handing a waiting connection the buffer it waited for.
    enum class Op { kPeek, kRecv, kSend, kGrant };
#else
    // kRecvTimer, kSendTimer: the link timeouts that go out with each receive and send.
    enum class Op { kRecv, kSend, kRecvTimer, kSendTimer, kAccept, kAcceptPause, kWake };
#endif
    // Per-I/O data: a connection has two, since a receive and a send may be pending at
    // once. No buffer of its own any more: the receive's comes from the pool.
    struct IoContext {
#ifdef _WIN32
        OVERLAPPED overlapped;  // first: GQCS hands back &overlapped; CONTAINING_RECORD finds us
#endif
        Op op;
        Connection* connection;  // nullptr for a ring's own operations (Linux)
    };
    enum class Outcome { kBytes, kPeerClosed, kFailed };
    enum class Why { kPeerFin, kPeerReset, kByUs };  // decided once, when `closing` is set
    //! [io-context]

#ifdef _WIN32
    // Per-accept data: one per AcceptEx the listener may have pending (chapter 10).
    struct AcceptContext {
        OVERLAPPED overlapped;
        iocp::UniqueSocket socket;
        std::vector<char> buffer;   // both addresses
        bool pending = false;       // guarded by accept_mutex_
        std::chrono::steady_clock::time_point retry_at{};
    };
#endif

    //! [connection]
    // Per-handle data. Idle, it is all a connection costs: no buffer, no container
    // that allocates (the output queue is a list threaded through the buffers).
    struct Connection {
#ifdef _WIN32
        std::mutex mutex;  // guards all below: two workers may hold its two packets at once
#else
        Worker* worker = nullptr;  // the worker whose ring runs all its I/O
#endif
        IoContext recv{};
        IoContext send{};
#ifdef _WIN32
        Clock::time_point recv_deadline{};  // a receive is waiting, and must end by then (or {}: none)
        Clock::time_point send_deadline{};  // a send is in flight, and must move by then (or {})
#else
        IoContext recv_timer{};    // the link timeout of the receive in flight
        IoContext send_timer{};    // the link timeout of the send in flight
#endif
        iocp::UniqueSocket socket;
        std::uint32_t slot = 0;
        std::uint32_t generation = 0;
        int outstanding = 0;       // operations (and, Windows, a wait for a buffer) not yet home
        bool receiving = false;    // a receive (or a zero-byte one, or a wait for a buffer) is out
        bool waiting = false;      // it waits for a pool buffer
        bool paused = false;       // at the high watermark: no receive until the low one
        int sending = 0;           // sends in flight: the rule is never more than 1
        Buffer* recv_buffer = nullptr;  // Windows: the buffer of the real receive in flight
        Buffer* head = nullptr;    // the output queue: oldest first
        Buffer* tail = nullptr;
        std::size_t queued = 0;    // the memory of the queued buffers: the budget's count
        bool peer_done = false;    // the peer sent FIN: close once the queue is empty
        bool closing = false;
        Why why = Why::kByUs;
    };
    //! [connection]

    //! [slot]
#ifdef _WIN32
    // One entry of the connection table. Any worker may take any packet and reads the
    // entry without a lock, so both fields are atomics, and the table never grows
    // (start() sizes it for max_clients). The entry owns the connection it points to.
    struct Slot {
        std::atomic<std::uint32_t> generation{1};  // the current occupant's; moves on when it is freed
        std::atomic<Connection*> connection{nullptr};
    };
#else
    // One entry of a worker's connection table, touched by that worker only.
    struct Slot {
        std::uint32_t generation = 1;  // the current occupant's; moves on when it is freed
        std::unique_ptr<Connection> connection;
    };
#endif
    //! [slot]

    //! [worker-state]
#ifdef _WIN32
    // Every worker runs the same loop on the same port: a worker has no state of its own.
    struct Worker {
        std::thread thread;
        std::atomic<std::uint64_t> completions{0};
    };
#else
    // One ring per worker. A connection belongs to one worker for its whole life.
    struct Worker {
        std::thread thread;
        std::atomic<std::uint64_t> completions{0};
        io_uring ring{};
        bool ring_ready = false;
        iocp::UniqueFd doorbell;    // eventfd: a new client in the inbox, or stop()
        IoContext doorbell_io{};    // the pending poll on it
        IoContext accept_io{};      // worker 0 only: the pending accept (or its pause)
        std::mutex inbox_mutex;     // guards inbox: the accepting worker adds, this one takes
        std::vector<iocp::UniqueSocket> inbox;
        // Touched by this worker's thread only:
        io_uring_buf_ring* buffer_ring = nullptr;  // the provided buffers, in memory shared with the kernel
        std::size_t ring_bytes = 0;
        char* buffer_memory = nullptr;  // ring_buffers * buffer_size bytes, mapped
        std::size_t ring_buffers = 0;   // a power of two
        std::size_t buffers_out = 0;    // of those, taken (take_buffer) and not given back
        std::vector<Buffer> buffers;    // by buffer id
        std::vector<std::uint64_t> waiting;  // tags of connections that found the ring empty
        std::vector<Slot> slots;    // its connection table
        std::vector<std::uint32_t> free_slots;
        std::size_t in_flight = 0;  // this ring's receives and sends
        std::size_t cancels_in_flight = 0;
        bool accept_pending = false;  // worker 0: the accept (or its pause) is in the ring
        bool multishot = true;        // false on a kernel without multishot accept (before 5.19)
        bool accept_retry = false;    // the accept found no free entry: post it after the next submit
        bool doorbell_pending = false;
        bool doorbell_retry = false;  // the same for the doorbell's poll
        bool draining = false;
        std::chrono::steady_clock::time_point drain_deadline{};
        bool gave_up = false;         // the drain ran out of time: stop() abandons what is left
    };
#endif
    //! [worker-state]

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
    bool link_timeout(Connection& c, bool send);
    void on_timer(Connection& c, IoContext& io, int result);
#endif
    // io.cpp
#ifdef _WIN32
    void post_peek(Connection& c);
#endif
    void post_recv(Connection& c);
    void post_send(Connection& c);
    void queue_output(Connection& c, Buffer* b, std::size_t bytes);
    void sent(Connection& c, std::size_t bytes);
    void advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    void complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    // worker.cpp
#ifdef _WIN32
    Connection* find(ULONG_PTR key);
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
    __kernel_timespec idle_ts_{};       // the timeouts, as link timeouts take them
    __kernel_timespec send_ts_{};
    std::size_t next_worker_ = 0;       // round robin; the accepting worker's thread only
#endif
};
//! [server-class]

}  // namespace ch12
