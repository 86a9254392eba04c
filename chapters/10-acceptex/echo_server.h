// Chapter 10 - AcceptEx: no accept thread. Chapter 9's server, whose workers now accept
// too. On Windows, N AcceptEx calls wait on the listener, which is associated with the
// port like any socket: a client's arrival is one more completion packet, taken by
// whichever worker is free, and each accept is posted again from its own completion.
// Each AcceptEx gets a socket made in advance, a receive length of 0 (a client that
// connects and says nothing must not hold an accept), and room for both addresses;
// SO_UPDATE_ACCEPT_CONTEXT makes the accepted socket a full one. A socket that cannot
// be made (out of descriptors) parks its accept, retried 100 ms later by a worker's
// timed wait: never a spin, never a stop. On Linux one multishot accept request on
// worker 0's ring produces a completion per client, and is armed again when one
// arrives without IORING_CQE_F_MORE.
// Everything else is chapter 9's: the outstanding count, the closing flag, the
// generation tags, stop() in order (now: accepts first, every one coming home
// cancelled). The same six files on each side: iocp/ (Windows) and uring/ (Linux).
// Left out on purpose: bounded memory per connection (chapter 11), timeouts (chapter 12).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
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

namespace ch10 {

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
    // Windows: AcceptEx calls waiting on the listener at once. A larger burst waits in
    // the listen backlog until the accepts come round again. Linux: unused, one
    // multishot accept serves every client.
    std::size_t accepts = 64;
    // Windows: bytes each AcceptEx also waits for. 0 completes on the connection alone;
    // more lets silent clients hold every accept (the page shows it). At most
    // buffer_size. Linux: unused, io_uring's accept receives nothing.
    std::size_t accept_receive_bytes = 0;
    // Told each accepted client's address, on a worker thread (several at once).
    std::function<void(const std::string& peer)> on_accepted;
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

    /// Receives and sends started whose completion has not been handled yet: the sum of
    /// every connection's outstanding count. The kernel holds that many contexts.
    std::size_t operations_in_flight() const { return in_flight_.load(); }
    /// Per-I/O contexts in existence: two per connection object (its receive and its
    /// send), from the object's creation to its destruction. 0 once stop() has returned.
    std::size_t live_contexts() const { return live_contexts_.load(); }
    /// Sends the kernel completed with fewer bytes than asked, whose rest was posted again.
    std::uint64_t sends_reposted() const { return reposted_.load(); }
    //! [accept-counters]
    /// Accept requests handed to the kernel so far. Windows: every AcceptEx call.
    /// Linux: every multishot accept armed (1, unless the kernel ended one).
    std::uint64_t accepts_posted() const { return accepts_posted_.load(); }
    /// Accept requests the kernel holds right now. 0 once stop() has returned.
    std::size_t accepts_pending() const { return accepts_pending_.load(); }
    /// Clients accepted (then admitted or refused at the cap).
    std::uint64_t clients_accepted() const { return accepted_.load(); }
    /// Clients that connected and went away (a reset) before their accept completed:
    /// Windows' WSAECONNRESET or 64 from AcceptEx. The accept is posted again at once.
    std::uint64_t clients_gone_before_accept() const { return gone_before_accept_.load(); }
    /// Accepts that came home cancelled: stop() cancels every one still pending.
    std::uint64_t accepts_cancelled() const { return accepts_cancelled_.load(); }
    /// Accepts that failed, or (Windows) could not be posted, for a reason other than a
    /// client giving up. Each one is followed by a pause, never by a retry at once.
    std::uint64_t accept_failures() const { return accept_failures_.load(); }
#ifdef _WIN32
    /// Sockets made for AcceptEx that are neither closed nor a connection's yet: one
    /// per pending accept. 0 once stop() has returned: none leaked.
    std::size_t accept_sockets_open() const { return accept_sockets_.load(); }
    /// Asks SO_CONNECT_TIME of each pending accept's socket: how many have a client
    /// connected already, whose AcceptEx waits for its first bytes. -1 if the option is
    /// not supported. Always 0 with accept_receive_bytes 0: the accept completes first.
    int pending_accepts_connected() const;
    /// Test hook: while on, an accept's socket cannot be made (WSAEMFILE), since Wine
    /// gives no way to run short of sockets.
    void simulate_socket_shortage(bool on) { shortage_ = on; }
#endif
    //! [accept-counters]
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
    /// dropped without touching any connection. 0 unless something is wrong.
    std::uint64_t stale_completions() const { return stale_.load(); }
    /// Operations still outstanding when stop()'s drain_timeout ran out. Their
    /// connections were left allocated on purpose. 0 unless the kernel never answered.
    std::size_t operations_abandoned() const { return abandoned_.load(); }

    /// Test hook: the next connection admitted counts one operation more than it starts,
    /// as if the kernel held a request it never gives back. stop()'s drain then runs out
    /// of drain_timeout, and that connection is abandoned: operations_abandoned() is 1.
    void hold_next_operation() { hold_next_ = true; }

private:
    struct Connection;
    struct Worker;

    //! [io-context]
#ifdef _WIN32
    enum class Op { kRecv, kSend };
#else
    enum class Op { kRecv, kSend, kAccept, kAcceptPause, kWake };
#endif

    // Per-I/O data: one per operation a connection can have in flight. A connection has
    // two, since a receive and a send may be pending at once.
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

#ifdef _WIN32
    //! [accept-context]
    // Per-accept data: one per AcceptEx the listener may have pending. Its packets carry
    // the listener's completion key, and CONTAINING_RECORD finds it from the OVERLAPPED.
    struct AcceptContext {
        OVERLAPPED overlapped;      // first, as in IoContext
        iocp::UniqueSocket socket;  // made before the AcceptEx; the connection's once accepted
        std::vector<char> buffer;   // the first bytes (accept_receive_bytes), then both addresses
        bool pending = false;       // an AcceptEx is in flight with it (guarded by accept_mutex_)
        std::chrono::steady_clock::time_point retry_at{};  // parked: when a worker tries again
    };
    //! [accept-context]
#endif

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
        // Touched by this worker's thread only:
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
    void on_accept(AcceptContext& a, bool ok, DWORD bytes, DWORD error);
    bool update_accept_context(SOCKET accepted, const AcceptContext& a);
    Connection* take_slot(iocp::UniqueSocket client);
    void admit(iocp::UniqueSocket client, const char* first_bytes, std::size_t n);
#else
    // server.cpp
    void check_kernel(Worker& w);
    // accept.cpp
    void accept_clients(Worker& w);
    void on_accept(Worker& w, int result, unsigned flags);
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
    std::atomic<std::uint64_t> accepts_posted_{0};
    std::atomic<std::size_t> accepts_pending_{0};
    std::atomic<std::uint64_t> accepted_{0};
    std::atomic<std::uint64_t> gone_before_accept_{0};
    std::atomic<std::uint64_t> accepts_cancelled_{0};
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
    LPFN_ACCEPTEX accept_ex_ = nullptr;  // AcceptEx and GetAcceptExSockaddrs, from the provider
    LPFN_GETACCEPTEXSOCKADDRS get_accept_ex_sockaddrs_ = nullptr;
    std::vector<std::unique_ptr<AcceptContext>> accepts_;  // Limits::accepts of them, built by start()
    mutable std::mutex accept_mutex_;        // guards accepting_, parked_, and each context's pending and socket
    std::condition_variable accepts_done_;   // stop() waits on it for accepts_pending_ to reach 0
    std::atomic<bool> accepting_{false};     // false from stop() on (set under accept_mutex_)
    int family_ = AF_INET;                   // the listener's: every accept socket's
    std::vector<AcceptContext*> parked_;     // accepts waiting out a failure, each until its retry_at
    std::atomic<std::size_t> parked_count_{0};  // parked_.size(), read by workers to pick their wait
    std::atomic<std::size_t> accept_sockets_{0};
    std::atomic<bool> shortage_{false};      // the test hook simulate_socket_shortage()
    std::mutex mutex_;                // guards changes to the table; taken before any connection's mutex
    std::condition_variable drained_; // stop() waits on it for in_flight_ to reach 0
    std::unique_ptr<Slot[]> slots_;   // the connection table: max_clients entries
    std::size_t slot_count_ = 0;
    std::vector<std::uint32_t> free_slots_;
#else
    std::atomic<std::uint64_t> cq_overflows_{0};
    __kernel_timespec accept_pause_{};  // how long accepting pauses after EMFILE
    std::size_t next_worker_ = 0;       // round robin; the accepting worker's thread only
#endif
};
//! [server-class]

}  // namespace ch10
