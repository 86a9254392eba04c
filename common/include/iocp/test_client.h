// common/test_client.h - a client for tests and tools that can never hang.
//
// Every call takes a timeout and throws TimeoutError when it runs out, so a server
// that stops answering fails a test instead of freezing it. Under the hood the socket
// is non-blocking and each call waits with poll() (select() on Windows, where the set
// holds one socket and FD_SETSIZE is a count, not a descriptor bound).
//
// exchange() sends and receives at the same time. That matters for large messages:
// a client that first sends 8 MiB and only then reads would deadlock against an echo
// server whose send buffer fills up while nobody reads it.
#pragma once

#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

#include "iocp/net.h"

namespace iocp {

using Millis = std::chrono::milliseconds;
inline constexpr Millis kDefaultTimeout{20000};

class TimeoutError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// The peer closed (EOF) before the bytes a call waited for had all arrived.
class PeerClosedError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class TestClient {
public:
    /// Connects to `to`, waiting at most `timeout`.
    static TestClient connect(const Endpoint& to, Millis timeout = kDefaultTimeout);

    /// Sends every byte of `data`.
    void send(std::string_view data, Millis timeout = kDefaultTimeout);

    /// Sends what the socket buffers take right now, without waiting; returns the count.
    std::size_t send_some(std::string_view data);

    /// Receives exactly `n` bytes.
    std::string recv_exact(std::size_t n, Millis timeout = kDefaultTimeout);

    enum class HalfClose { kNo, kAfterSending };
    /// Sends `out` while receiving `expect` bytes, both at once. With kAfterSending the
    /// sending side is shut down (FIN) as soon as the last byte of `out` is sent.
    std::string exchange(std::string_view out, std::size_t expect, Millis timeout = kDefaultTimeout,
                         HalfClose half_close = HalfClose::kNo);

    /// exchange(data, data.size()): one echo round trip, however large.
    std::string echo(std::string_view data, Millis timeout = kDefaultTimeout) {
        return exchange(data, data.size(), timeout);
    }

    enum class Closed { kEof, kReset };
    /// Waits for the server to close the connection. Any byte arriving first is an
    /// error (the server was not supposed to send more).
    Closed wait_closed(Millis timeout = kDefaultTimeout);

    /// Half-close: no more bytes from us (FIN), but we keep receiving.
    void shutdown_send();

    /// Abortive close: SO_LINGER 0, then close, so the server sees RST, not FIN.
    void reset();

    void close() { s_.reset(); }
    socket_t native() const { return s_.get(); }

private:
    explicit TestClient(UniqueSocket s) : s_(std::move(s)) {}
    UniqueSocket s_;
};

}  // namespace iocp
