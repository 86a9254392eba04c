// Chapter 11 - Flow control: memory a client cannot grow. Chapter 10's server with two
// budgets. An idle connection holds no buffer: on Windows a zero-byte WSARecv waits for
// data, and only then does a real receive borrow a buffer from a shared pool; on Linux
// the receive selects a buffer from a provided buffer ring when data arrives. Reads
// and writes are decoupled: received buffers queue for sending while the next receive
// runs, up to a per-connection output budget; past its high watermark the connection
// stops receiving (backpressure) until its queue drains below the low watermark, and
// past a hard limit it is dropped. A pool with no buffer free makes a connection wait
// for one, never fail. The same seven files on each side, with pool.cpp new.
// Left out on purpose: timeouts (chapter 12): a client that never reads holds its
// budget until it leaves.
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

namespace ch11 {

//! [limits]
struct Limits {
    // Each connection's memory is a Connection object (connection_size(), 100-200
    // bytes) and the buffers it has borrowed, at most its output budget: idle, none.
    std::size_t max_clients = 10000;
    // The size of every pool buffer: one receive reads at most this much.
    std::size_t buffer_size = 16 * 1024;
    // Buffers in the pool, shared by every connection: its whole size is the most the
    // server ever lends at once (Linux: split between the workers' buffer rings, each a
    // power of two). A connection that finds none free waits for one.
    std::size_t pool_buffers = 1024;
    // The output budget of a connection: the memory of the buffers it holds, received
    // and not yet echoed, counted in whole buffers. At or above the high watermark it
    // posts no receive (the peer's sends back up into its own socket buffers); it
    // starts again at or below the low one. Past output_limit it is dropped: a limit
    // below output_high drops an echo client that a higher one would only pause.
    std::size_t output_low = 16 * 1024;
    std::size_t output_high = 64 * 1024;
    std::size_t output_limit = 1024 * 1024;
    std::size_t threads = 0;  // 0: two per CPU on Windows, one per CPU on Linux
    std::chrono::milliseconds drain_timeout{10000};  // how long stop() waits for cancelled I/O
    std::size_t accepts = 64;  // Windows: AcceptEx calls pending at once
    std::function<void(const std::string& peer)> on_accepted;  // told each accepted client
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
    /// Bytes the server holds for its connections right now, by its own count: every
    /// Connection object, and every pool buffer lent out (bytes waiting to be echoed;
    /// Windows: a real receive's, granted or in flight). Idle: connection_size().
    std::size_t memory_held() const {
        return live_.load() * connection_size() + buffers_lent() * limits_.buffer_size;
    }
    static constexpr std::size_t connection_size() { return sizeof(Connection); }
    /// Pool buffers out of the pool now (Linux: taken by the kernel for a receive, or
    /// queued for sending), and the most ever out at once.
    std::size_t buffers_lent() const { return lent_.load(); }
    std::size_t most_buffers_lent() const { return most_lent_.load(); }
    /// Buffers the pool holds in all (Windows: made as first needed, up to pool_buffers).
    std::size_t pool_size() const { return pool_size_.load(); }
    /// Times a connection with data to receive found the pool empty and waited.
    std::uint64_t buffer_waits() const { return buffer_waits_.load(); }
    /// A buffer lent while still lent, or given back twice: 0, or the pool is broken.
    std::uint64_t pool_errors() const { return pool_errors_.load(); }
    /// Times a connection reached its high watermark and stopped receiving.
    std::uint64_t backpressure_pauses() const { return pauses_.load(); }
    /// Connections dropped for going past output_limit.
    std::uint64_t clients_over_limit() const { return over_limit_.load(); }
    /// The most buffer memory ever queued for sending on one connection.
    std::size_t most_bytes_queued() const { return most_queued_.load(); }
    //! [memory-counters]

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
    enum class Op { kRecv, kSend, kAccept, kAcceptPause, kWake };
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
    io_uring_sqe* get_sqe(Worker& w);
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
    std::size_t next_worker_ = 0;       // round robin; the accepting worker's thread only
#endif
};
//! [server-class]

}  // namespace ch11
