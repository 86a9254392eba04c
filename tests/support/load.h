// tests/support/load.h - client loads that several chapters' tests drive against a
// server: a burst of clients arriving at once, clients that push and never read until
// the server stops taking their bytes, and a background echo load that a test stops
// the server under.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "iocp/net.h"
#include "iocp/test_client.h"

namespace testsupport {

/// `count` clients connect from `threads` threads, each sending its own payload (1 to
/// 6000 bytes) the moment it is connected; then each reads its echo back, byte-checked.
/// A wrong or missing echo is a test failure. Returns the clients, still connected;
/// `echoed` says how many came back right. Bounded by a 120 s watchdog.
std::vector<iocp::TestClient> connect_burst(const iocp::Endpoint& at, int count, int threads, int& echoed);

/// Closes every client with a reset (SO_LINGER 0), for tests that do not care how a
/// client leaves. A client that closes first with a FIN keeps its port in TIME_WAIT,
/// and Windows keeps it there for minutes out of 16,384 ephemeral ports by default: the
/// thousands of clients of a full ctest run would exhaust them. A reset leaves nothing.
void reset_all(std::vector<iocp::TestClient>& clients);

/// `count` connections to `at` that say nothing, held until destruction, then reset.
/// On Linux they live in a child process (fork), so this process spends descriptors
/// on the server's side alone: 10,000 connections cost it 10,000, not 20,000 (the
/// hard limit may be 20,000, and only a privileged process may raise it), and its
/// resident memory is the server's. Elsewhere they are TestClients of this process.
class IdleConnections {
public:
    IdleConnections(const iocp::Endpoint& at, std::size_t count);
    ~IdleConnections();
    IdleConnections(const IdleConnections&) = delete;
    IdleConnections& operator=(const IdleConnections&) = delete;

private:
#ifdef _WIN32
    std::vector<iocp::TestClient> clients_;
#else
    int child_ = -1;
    int hold_ = -1;  // the child exits when this pipe closes
#endif
};

/// `count` clients that each echo "hi" once, then push megabytes and never read, until
/// none has taken a byte for 300 ms: the server's send to each is stuck, with the next
/// chunk waiting behind it. Throws if a client took 64 MiB without stalling.
std::vector<iocp::TestClient> stalled_hogs(const iocp::Endpoint& at, int count);

/// `clients` clients on `threads` threads: each connects and echoes "x", then they echo
/// payloads of 1 to 4000 bytes round-robin until finish(). Every echo is byte-checked.
/// The server closing a connection is a failure until server_stopping() is called.
/// The clients outlive their threads: none closes before the server closes it.
class EchoLoad {
public:
    EchoLoad(const iocp::Endpoint& at, int clients, int threads);
    ~EchoLoad() { finish(); }
    EchoLoad(const EchoLoad&) = delete;
    EchoLoad& operator=(const EchoLoad&) = delete;

    /// Waits (at most 60 s) until every client is connected and `echoes` round trips
    /// are done; false if the load never got there.
    bool wait_until_running(std::uint64_t echoes);
    /// From now on a closed connection is expected.
    void server_stopping() { stopping_ = true; }
    /// Stops the threads and joins them.
    void finish();

    int connected() const { return connected_; }
    std::uint64_t echoes() const { return echoes_; }

private:
    int clients_;
    std::vector<std::vector<iocp::TestClient>> per_thread_;
    std::atomic<int> connected_{0};
    std::atomic<std::uint64_t> echoes_{0};
    std::atomic<bool> done_{false};
    std::atomic<bool> stopping_{false};
    std::vector<std::thread> threads_;
};

#ifndef _WIN32
/// The descriptor-shortage check of the completion chapters. The process runs out of
/// descriptors while `late` connects and sends "late"; every client in `connected`
/// must still get its echo, `accept_failures()` must show a server that pauses 100 ms
/// between tries (at most one failure per 100 ms, plus the first) rather than one that
/// spins, and `late` must be served once descriptors are back. `lower`: see
/// DescriptorShortage (false for a multishot accept, under a DescriptorLimit).
void expect_accept_to_pause_through_a_shortage(const iocp::Endpoint& at,
                                               const std::vector<iocp::TestClient*>& connected,
                                               const std::function<std::uint64_t()>& accept_failures,
                                               bool lower = true);
#endif

/// `clients` threads, each with its own connection, echoing `rounds` labelled messages
/// of `size` bytes (a different one each time, named by client and round); every echo
/// checked, each wrong one reported as a test failure. Returns how many came back right.
int echo_labelled_rounds(const iocp::Endpoint& at, int clients, int rounds, std::size_t size);

/// Pushes `total` bytes at the server on `c` without reading, until the server takes
/// no more for 500 ms, or drops the connection; returns how many it took. (Chapters 11
/// on: a client that never reads, against the output budget.)
std::size_t push_without_reading(iocp::TestClient& c, std::size_t total);

/// The pool's line moving on (chapters 11-13, a server with one worker and one buffer):
/// a client that never reads holds the buffer; behind it in line a client that then
/// leaves, and one with bytes. When the buffer comes back the first in line wakes to its
/// FIN and takes no buffer, and the turn must pass to the next. Returns what the last
/// client got back: "my turn" if it did. `waits` reads the server's buffer_waits().
std::string turn_after_a_leaver(const iocp::Endpoint& at, const std::function<std::uint64_t()>& waits);

}  // namespace testsupport
