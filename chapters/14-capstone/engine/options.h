// Chapter 14 - the engine's options and what it calls back: everything chapters 10-13
// made a number, in one struct, and the four moments an application hears about.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ch14 {

/// Names one connection for its whole life, and never another: (worker, slot,
/// generation), as chapter 9's tags. An id whose connection is gone stays gone, even
/// when its slot has a new occupant.
using ConnectionId = std::uint64_t;

//! [options]
struct EngineOptions {
    std::size_t max_clients = 10000;   // the engine's hard cap: one more is closed at once
    std::size_t threads = 0;           // 0: one per CPU (Linux), two per CPU (Windows)
    // Chapter 11: receive buffers from a shared pool, taken only while data is handed
    // over; per connection, output queued up to a budget: receiving pauses at
    // output_high bytes, resumes at output_low, and past output_limit the client is
    // dropped (a reader too slow for the room).
    std::size_t buffer_size = 16 * 1024;
    std::size_t pool_buffers = 1024;
    std::size_t output_low = 16 * 1024;
    std::size_t output_high = 64 * 1024;
    std::size_t output_limit = 1024 * 1024;
    // Chapter 12: 0 is off. Idle: nothing received for this long closes. Send: a send
    // that moves nothing for this long closes.
    std::chrono::milliseconds idle_timeout{0};
    std::chrono::milliseconds send_timeout{0};
    // A close after sends: once the output is out, FIN, then what the client still
    // sends is read and dropped until its own FIN, for at most this long. (Closing at
    // once with its bytes unread would send a reset, which may destroy the last bytes
    // we sent before the client reads them.)
    std::chrono::milliseconds linger{2000};
    std::chrono::milliseconds tick{100};          // how often deadlines are checked, and on_tick called
    std::chrono::milliseconds drain_timeout{10000};  // how long stop() waits for cancelled I/O
    std::size_t accepts = 64;                     // Windows: AcceptEx calls pending at once
};
//! [options]

//! [handler]
/// What the application hears. For one connection, calls come one at a time, in order
/// (connect, data..., close), on one of the engine's threads; for different
/// connections, from several threads at once. A callback may call send() and close()
/// for any connection: they never call back before they return.
class Handler {
public:
    virtual ~Handler() = default;
    virtual void on_connect(ConnectionId id, const std::string& peer) = 0;
    /// Bytes as they came, in any split: the application frames them.
    virtual void on_data(ConnectionId id, std::string_view bytes) = 0;
    /// Once, when the connection can take no more sends: the peer's FIN or reset, an
    /// error, a timeout, the budget, close(), or stop(). What was queued before may
    /// still be on its way out.
    virtual void on_close(ConnectionId id) = 0;
    /// Every tick, one call at a time: for the application's own deadlines. (Linux:
    /// always worker 0's thread; Windows: whichever worker finds the tick due.)
    virtual void on_tick(std::chrono::steady_clock::time_point now) { static_cast<void>(now); }
};
//! [handler]

}  // namespace ch14
