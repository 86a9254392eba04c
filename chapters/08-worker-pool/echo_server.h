// Chapter 8 - A worker pool on one completion port.
// New here: per-handle data (the connection, the completion key) and per-I/O data (one
// context per operation, each starting with its OVERLAPPED, each with its own buffer);
// a pool of workers sized from the CPU count, all waiting on ONE port created with a
// concurrency value of 0 (= the number of CPUs); the whole GetQueuedCompletionStatus
// result matrix in one place; a receive and a send in flight at once on a connection,
// but never two sends; a lock per connection, since two workers may now hold packets of
// the same connection at the same time; stop() by a drain and one exit packet per worker.
// The Windows code is in iocp/, split by concern (server, accept, io, worker, shutdown);
// its Linux twin in uring/ runs one io_uring per worker instead of one shared queue:
// same header, same file names, same function names in the same order.
// Left out on purpose: outstanding-I/O counts that outlive a close, generation tags and
// a general shutdown sequence (chapter 9), AcceptEx (chapter 10).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "iocp/handle.h"
#include "iocp/net.h"

#ifndef _WIN32
#include <liburing.h>
#endif

namespace ch08 {

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
    void stop();  // stop accepting, close every connection, drain, end every worker
    std::uint16_t port() const { return port_; }

    std::size_t live_connections() const { return live_.load(); }
    std::uint64_t connections_served() const { return served_.load(); }
    std::uint64_t clients_refused() const { return refused_.load(); }

    /// Receives and sends started whose completion has not been handled yet, and on
    /// Windows the accept thread's admit packets no worker has taken yet. Each one pins
    /// its connection: the kernel (or the port) owns that context and that buffer until then.
    std::size_t operations_in_flight() const { return in_flight_.load(); }
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
    /// Receives that completed with 0 bytes: the peer's FIN.
    std::uint64_t peer_closes() const { return peer_closes_.load(); }
    /// Received chunks that had to wait because the previous echo was still being sent.
    std::uint64_t sends_deferred() const { return deferred_.load(); }
    /// The most sends ever in flight at once on one connection. The rule is 1.
    int max_sends_in_flight_per_connection() const { return max_sends_.load(); }

private:
    struct Connection;
    struct Worker;

    //! [io-context]
#ifdef _WIN32
    enum class Op { kRecv, kSend, kAdmit };  // kAdmit: the accept thread hands a connection to the workers
#else
    enum class Op { kRecv, kSend, kAccept, kAcceptPause, kWake };
#endif

    // Per-I/O data: one per operation a connection can have in flight. A connection has
    // two, since a receive and a send may be pending at once. (On Windows the receive's
    // context first carries the admit packet that hands the connection to the workers.)
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
    //! [io-context]

    //! [connection]
    // Per-handle data: one per socket, the completion key of all its packets.
    struct Connection {
#ifdef _WIN32
        std::mutex mutex;  // guards all below: two workers may hold its two packets at once
#else
        Worker* worker = nullptr;  // the worker whose ring runs all its I/O; no other thread touches it
#endif
        IoContext recv{};          // per-I/O data of its receive
        IoContext send{};          // per-I/O data of its send
        iocp::UniqueSocket socket;
        bool receiving = false;    // recv is in flight (on Windows: or its admit packet)
        int sending = 0;           // sends in flight: the rule is never more than 1
        std::size_t to_send = 0;   // bytes in send.buffer to echo
        std::size_t sent = 0;      // of those, bytes sent so far
        std::size_t held = 0;      // bytes in recv.buffer that wait for the send to finish
        bool peer_done = false;    // the peer sent FIN: close once the echo is out
        bool closing = false;      // we decided to close; freed once nothing is in flight
        std::list<Connection>::iterator self;  // where it lives, to erase it
    };
    //! [connection]

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
        std::list<Connection> connections;
        std::size_t in_flight = 0;  // this ring's receives and sends
        std::size_t cancels_in_flight = 0;
        bool accept_pending = false;
        bool accept_retry = false;    // the accept found no free entry: post it after the next submit
        bool doorbell_pending = false;
        bool doorbell_retry = false;  // the same for the doorbell's poll
        bool draining = false;
    };
#endif
    //! [worker-state]

    // In the order of the files: server.cpp, accept.cpp, io.cpp, worker.cpp, shutdown.cpp.
#ifdef _WIN32
    void accept_clients();
    void hand_over(Connection& c);  // to the workers, by a packet on the port
    void admit(iocp::UniqueSocket client);
#else
    void check_kernel(Worker& w);
    void accept_clients(Worker& w);
    void hand_over(iocp::UniqueSocket client);  // to the next worker, by its inbox
    void admit(Worker& w, iocp::UniqueSocket client);
#endif
    void post_recv(Connection& c);
    void post_send(Connection& c);
    void start_echo(Connection& c, std::size_t bytes);
    void advance(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
    void complete(Connection& c, IoContext& io, Outcome outcome, std::size_t bytes, int error);
#ifndef _WIN32
    io_uring_sqe* get_sqe(Worker& w);
    void on_completion(Worker& w, IoContext& io, int result);
    void on_accept(Worker& w, int result);
    void on_doorbell(Worker& w, int result);
    void listen_for_doorbell(Worker& w);
    bool wait_for_completions(Worker& w);
    unsigned reap_batch(Worker& w);
#endif
    void worker_loop(Worker& w);
    void close_connection(Connection& c);  // cancels what is in flight; never frees
    void free_connection(Connection& c);
#ifdef _WIN32
    void close_all();
#else
    void cancel(Worker& w, IoContext& io, iocp::socket_t fd);
    void close_all(Worker& w);
#endif

    //! [idle]
    // A connection is freed when it is closing and nothing of it is in flight.
    static bool idle(const Connection& c) { return !c.receiving && c.sending == 0; }
    //! [idle]

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
    std::atomic<std::uint64_t> accept_failures_{0};
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> peer_closes_{0};
    std::atomic<std::uint64_t> deferred_{0};
    std::atomic<int> max_sends_{0};
#ifdef _WIN32
    iocp::UniqueHandle completion_port_;  // the port: ONE queue of finished I/O for every worker
    std::thread accept_thread_;       // blocking accept(), as in the original article
    std::mutex mutex_;                // guards connections_; taken before any connection's mutex
    std::condition_variable drained_; // stop() waits on it for in_flight_ to reach 0
    std::list<Connection> connections_;
#else
    std::atomic<std::uint64_t> cq_overflows_{0};
    __kernel_timespec accept_pause_{};  // how long accepting pauses after EMFILE
    std::size_t next_worker_ = 0;       // round robin; the accepting worker's thread only
#endif
};
//! [server-class]

}  // namespace ch08
