// Chapter 9 - Connection lifetime and shutdown, on chapter 8's worker pool.
// New here: a count of outstanding operations per connection, and the connection freed
// by whoever takes it to zero once it is closing; our own close told apart from the
// peer's reset by a closing flag set before anything is cancelled (CancelIoEx, or
// IORING_OP_ASYNC_CANCEL), whatever the cancelled operations bring back (995, or 64 just
// like a reset, or even success; -ECANCELED, -ECONNRESET, a byte count), with each kind
// of ending counted and only the unexpected logged; a table of connection slots with a
// generation per slot, so that every completion names (slot, generation) and one that
// outlived its connection is counted and dropped instead of reaching the next connection
// in the same slot, at the same address or on the same socket value; stop() in a fixed
// order with a bounded drain.
// On Windows only workers start I/O: the accept thread hands each connection over with a
// packet of its own. The code is split by concern, the same six files on each side:
// iocp/ (Windows) and uring/ (Linux, one io_uring per worker, the tag in user_data),
// each with internal.h, server.cpp, accept.cpp, io.cpp, worker.cpp and shutdown.cpp,
// the same function names in the same order.
// Left out on purpose: AcceptEx (chapter 10), idle timeouts (chapter 12).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"

#ifndef _WIN32
#include <liburing.h>
#endif

namespace ch09 {

//! [limits]
struct Limits {
    // Two buffers per connection (one being received into, one being sent from), both
    // lent to the kernel at times, so the cap is about memory.
    std::size_t max_clients = 10000;
    // Bytes one receive asks for, and the size of each of the two buffers. A connection
    // holds at most two buffers' worth: flow control without a queue.
    std::size_t buffer_size = 16 * 1024;
    // Worker threads. 0: from the CPU count, two per CPU on Windows as in the original
    // article (the port runs one per CPU; the others stand by), one per CPU on Linux.
    std::size_t threads = 0;
    // How long stop() waits for the operations it cancelled to come home. Past it,
    // stop() logs and leaves those connections allocated for good (the kernel may still
    // write to their buffers) rather than free memory that is not ours yet.
    std::chrono::milliseconds drain_timeout{10000};
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

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }

    /// Receives and sends started whose completion has not been handled yet, and on
    /// Windows the hand-over packets no worker has taken yet: the sum of every
    /// connection's outstanding count. The kernel (or the port) holds that many contexts.
    std::size_t operations_in_flight() const { return in_flight_.load(); }
    /// Per-I/O contexts in existence: two per connection object (its receive and its
    /// send), from the object's creation to its destruction. 0 once stop() has returned.
    std::size_t live_contexts() const { return live_contexts_.load(); }
    /// Sends the kernel completed with fewer bytes than asked, whose rest was posted again.
    std::uint64_t sends_reposted() const { return reposted_.load(); }
    /// Accepts that failed for a reason other than a client giving up (out of
    /// descriptors, for instance). Each one is followed by a pause, never by a retry at once.
    std::uint64_t accept_failures() const { return accept_failures_.load(); }
#ifndef _WIN32
    /// Times a worker found completions its ring's queue had no room for, waiting in
    /// the kernel. Each queue is sized so that this stays 0 (a port's queue has no size).
    std::uint64_t completion_queue_overflows() const { return cq_overflows_.load(); }
#endif

    /// How many worker threads the server runs (Limits::threads, or the CPU-based default).
    std::size_t threads() const { return threads_; }
    /// Completions of receives and sends handled by each worker, in worker order.
    std::vector<std::uint64_t> completions_per_worker() const;
    /// Operations that completed with an error on a connection we had not closed
    /// ourselves: GetQueuedCompletionStatus FALSE with an OVERLAPPED, or a negative res.
    std::uint64_t operations_failed() const { return failed_.load(); }
    /// Received chunks that had to wait because the previous echo was still being sent.
    std::uint64_t sends_deferred() const { return deferred_.load(); }
    /// The most sends ever in flight at once on one connection. The rule is 1.
    int max_sends_in_flight_per_connection() const { return max_sends_.load(); }

    /// How connections ended. Each freed connection is counted under exactly one, so the
    /// three add up to connections_served(). peer_closes: the peer sent FIN (and had its
    /// echo). reset_by_peer: an operation failed because the peer reset or vanished,
    /// while we had not closed. closed_by_us: we closed first (stop(), or an unexpected
    /// error, which is logged).
    std::uint64_t peer_closes() const { return peer_closes_.load(); }
    std::uint64_t reset_by_peer() const { return resets_.load(); }
    std::uint64_t closed_by_us() const { return closed_by_us_.load(); }
    /// Operations that came home after we had closed their connection, whatever they
    /// reported (995, 64, 676, TRUE with 0 bytes; -ECANCELED, a byte count): ours, so
    /// never counted as a reset and never logged.
    std::uint64_t completions_after_close() const { return after_close_.load(); }
    /// What those completions reported: 0 for success, else the error number
    /// (Windows: GetLastError() of the packet; Linux: -res), with how often.
    std::map<int, std::uint64_t> results_after_close() const;
    /// Completions whose tag named a connection that no longer exists: counted and
    /// dropped without touching any connection. 0 unless something is wrong (or the
    /// test hook below made one).
    std::uint64_t stale_completions() const { return stale_.load(); }
    /// Operations still outstanding when stop()'s drain_timeout ran out. Their
    /// connections were left allocated on purpose. 0 unless the kernel never answered.
    std::size_t operations_abandoned() const { return abandoned_.load(); }
    /// Connection slots ever used. Slots are reused (the one freed last first), so this
    /// stays near the most clients ever connected at once, however many came and went.
    std::size_t connection_slots() const { return slots_used_.load(); }

    /// Test hook: makes a completion that names the connection freed most recently (on
    /// Linux, the one each worker freed last), as a late completion for it would. If a
    /// new connection has taken its slot, that is exactly the completion a generation
    /// tag exists to stop: it must be counted in stale_completions() and change nothing.
    void inject_stale_completion();

    /// Test hook: the next connection admitted counts one operation more than it starts,
    /// as if the kernel held a request it never gives back. stop()'s drain then runs out
    /// of drain_timeout, and that connection is abandoned: operations_abandoned() is 1.
    void hold_next_operation() { hold_next_ = true; }

private:
    struct Connection;
    struct Worker;

    //! [io-context]
#ifdef _WIN32
    enum class Op { kRecv, kSend, kAdmit };  // kAdmit: the hand-over packet, in the receive's context
#else
    enum class Op { kRecv, kSend, kAccept, kAcceptPause, kWake };
#endif

    // Per-I/O data: one per operation a connection can have in flight. A connection has
    // two, since a receive and a send may be pending at once. (On Windows the receive's
    // is lent to the hand-over packet first, before any receive is started.)
    struct IoContext {
#ifdef _WIN32
        OVERLAPPED overlapped;  // first: GQCS hands back &overlapped; CONTAINING_RECORD finds us
#endif
        Op op;
        Connection* connection;    // nullptr for a ring's own operations (Linux)
        std::vector<char> buffer;  // the kernel's while this operation is in flight
    };

    // What a completed operation reports, whatever the platform says it with.
    enum class Outcome {
        kBytes,       // it moved `bytes` bytes (a send may move fewer than asked)
        kPeerClosed,  // a receive of 0 bytes: the peer sent FIN
        kFailed,      // it failed; `error` says why
    };

    // Why a connection is closing, decided once, when `closing` is set.
    enum class Why { kPeerFin, kPeerReset, kByUs };
    //! [io-context]

    //! [connection]
    // Per-handle data: one per socket. Its tag (slot, generation) is the completion key
    // of all its packets on Windows, and the user_data of all its requests on Linux.
    struct Connection {
#ifdef _WIN32
        std::mutex mutex;  // guards all below: two workers may hold its two packets at once
#else
        Worker* worker = nullptr;  // the worker whose ring runs all its I/O; no other thread touches it
#endif
        IoContext recv{};          // per-I/O data of its receive
        IoContext send{};          // per-I/O data of its send
        iocp::UniqueSocket socket;
        std::uint32_t slot = 0;        // its entry in the connection table
        std::uint32_t generation = 0;  // which occupant of that entry it is
        int outstanding = 0;       // operations started and not yet come home: freed only at 0
        bool receiving = false;    // recv is in flight
        int sending = 0;           // sends in flight: the rule is never more than 1
        std::size_t to_send = 0;   // bytes in send.buffer to echo
        std::size_t sent = 0;      // of those, bytes sent so far
        std::size_t held = 0;      // bytes in recv.buffer that wait for the send to finish
        bool peer_done = false;    // the peer sent FIN: close once the echo is out
        bool closing = false;      // set before anything is cancelled: every later completion is ours
        Why why = Why::kByUs;      // set with `closing`: how the connection will be counted
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
        std::atomic<bool> probe{false};  // inject_stale_completion() asked for a late completion
        // Touched by this worker's thread only:
        std::vector<Slot> slots;    // its connection table
        std::vector<std::uint32_t> free_slots;
        std::uint64_t last_freed = 0;  // the tag of the connection it freed last
        std::size_t in_flight = 0;  // this ring's receives and sends
        std::size_t cancels_in_flight = 0;
        bool accept_pending = false;
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
    void accept_clients();
    void hand_over(Connection& c);
    Connection* take_slot(iocp::UniqueSocket client);
    void admit(iocp::UniqueSocket client);
#else
    // server.cpp
    void check_kernel(Worker& w);
    // accept.cpp
    void accept_clients(Worker& w);
    void hand_over(iocp::UniqueSocket client);
    Connection* take_slot(Worker& w, iocp::UniqueSocket client);
    void admit(Worker& w, iocp::UniqueSocket client);
#endif
    // io.cpp
    void post_recv(Connection& c);
    void post_send(Connection& c);
    void start_echo(Connection& c, std::size_t bytes);
    void advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    void note_after_close(int result);
    void complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    // worker.cpp
#ifdef _WIN32
    Connection* find(ULONG_PTR key);
#else
    io_uring_sqe* get_sqe(Worker& w);
    IoContext* find(Worker& w, std::uint64_t tag);
    void on_accept(Worker& w, int result);
    void on_doorbell(Worker& w, int result);
    void on_completion(Worker& w, IoContext& io, int result);
    void listen_for_doorbell(Worker& w);
    bool wait_for_completions(Worker& w, bool polling);
    unsigned reap_batch(Worker& w);
#endif
    void worker_loop(Worker& w);
    // shutdown.cpp
    void close_connection(Connection& c, Why why);  // cancels what is in flight; never frees
    void free_connection(Connection& c);
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
    std::atomic<std::size_t> live_contexts_{0};
    std::atomic<std::uint64_t> reposted_{0};
    std::atomic<std::uint64_t> accept_failures_{0};
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> peer_closes_{0};
    std::atomic<std::uint64_t> resets_{0};
    std::atomic<std::uint64_t> closed_by_us_{0};
    std::atomic<std::uint64_t> after_close_{0};
    std::atomic<std::uint64_t> stale_{0};
    std::atomic<std::size_t> abandoned_{0};
    std::atomic<bool> hold_next_{false};  // the test hook hold_next_operation()
    std::atomic<std::size_t> slots_used_{0};
    std::atomic<std::uint64_t> deferred_{0};
    std::atomic<int> max_sends_{0};
    mutable std::mutex results_mutex_;  // guards results_after_close_
    std::map<int, std::uint64_t> results_after_close_;
#ifdef _WIN32
    iocp::UniqueHandle completion_port_;  // the port: ONE queue of finished I/O for every worker
    std::thread accept_thread_;       // blocking accept(), as in the original article; starts no I/O
    std::mutex mutex_;                // guards changes to the table; taken before any connection's mutex
    std::condition_variable drained_; // stop() waits on it for in_flight_ to reach 0
    std::unique_ptr<Slot[]> slots_;   // the connection table: max_clients entries
    std::size_t slot_count_ = 0;
    std::vector<std::uint32_t> free_slots_;
    ULONG_PTR last_freed_ = 0;        // the tag of the connection freed last (for the test hook)
    IoContext probe_{};               // the test hook's OVERLAPPED when that slot is empty
#else
    std::atomic<std::uint64_t> cq_overflows_{0};
    __kernel_timespec accept_pause_{};  // how long accepting pauses after EMFILE
    std::size_t next_worker_ = 0;       // round robin; the accepting worker's thread only
#endif
};
//! [server-class]

}  // namespace ch09
