// bench/load/engine.h - the closed loop behind echo_load.
//
// Every connection runs its own closed loop: send one message of S bytes, wait until
// the whole echo is back and checked, send the next. The connections are shared out
// over T threads; each thread waits on its connections with one poller (epoll on
// Linux, WSAPoll on Windows), so a thread's cost does not grow with idle waiting.
//
// Every message is a different slice of one pseudo-random pattern: message k of
// connection i starts at an offset of its own. An echo that carries a stale message,
// another connection's bytes, or bytes out of order does not match its slice.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "iocp/net.h"

namespace load {

struct Config {
    iocp::Endpoint server;
    std::size_t clients = 10;
    std::size_t threads = 1;
    std::size_t size = 64;
    /// Messages per connection; 0 means "until the duration ends".
    std::uint64_t rounds = 100;
    double warmup_s = 0;    // a time-bounded run: echoes first, measured after this
    double duration_s = 0;  // a time-bounded run: the measured window (0: a rounds run)
    /// A thread that sees no echo complete for this long stops with an error.
    double stall_s = 10;
};

/// What every thread adds up. The latencies are the measured messages' round trips.
struct Tally {
    std::uint64_t messages = 0;
    std::uint64_t errors = 0;      // connections lost: reset, closed early, send/recv failed
    std::uint64_t mismatches = 0;  // echoes whose bytes were not the message sent
    std::vector<std::uint32_t> latencies_ns;
    std::string first_error;
    void add(Tally&& other);
};

/// The run's clock. Phase moves warm-up -> measure -> stop; the threads read it.
enum class Phase : int { kWarmup, kMeasure, kStop };

class Run {
public:
    explicit Run(Config config);
    /// Connects every client (blocking, one by one) and makes them non-blocking.
    void connect_all();
    /// Runs the threads until the rounds are done or the window ends, and returns
    /// their sum (latencies sorted). Blocks. From the calling thread, `every_second`
    /// is called about once a second (progress lines) and `on_phase` as each phase
    /// begins (the measured window is between kMeasure and kStop).
    Tally run(const std::function<void(double elapsed_s)>& every_second, const std::function<void(Phase)>& on_phase);

    void set_phase(Phase p) { phase_.store(static_cast<int>(p)); }
    Phase phase() const { return static_cast<Phase>(phase_.load()); }
    /// Echoes completed so far, in every phase (for progress lines).
    std::uint64_t completed() const { return completed_.load(std::memory_order_relaxed); }
    bool threads_running() const { return running_.load() > 0; }
    const Config& config() const { return config_; }

private:
    void thread_main(std::size_t t, Tally& tally);

    Config config_;
    std::string pattern_;
    std::vector<iocp::UniqueSocket> sockets_;
    std::atomic<int> phase_{0};
    std::atomic<std::uint64_t> completed_{0};
    std::atomic<int> running_{0};
};

/// True when `address` is 127.0.0.0/8, ::1 or ::ffff:127.x.y.z.
bool is_loopback(const iocp::SocketAddress& address);

/// The q-quantile (0..1) of sorted latencies, in microseconds (0 if none).
double quantile_us(const std::vector<std::uint32_t>& sorted, double q);

}  // namespace load
