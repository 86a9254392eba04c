// Chapter 14 - the options every program on the engine takes, in one place: the ones
// every chapter's server takes (--port, --bind, --threads, --max-clients) and the
// engine's budgets and timeouts.
#pragma once

#include <chrono>
#include <string>

#include "engine/options.h"
#include "iocp/cli.h"

namespace ch14 {

class EngineCli {
public:
    EngineCli(iocp::CommandLine& cli, iocp::Endpoint& where) {
        cli.add_endpoint(where);
        cli.add_int("--threads", threads_, 0, 256, "worker threads (default 0: one per CPU on Linux, two on Windows)");
        cli.add_int("--max-clients", max_clients_, 1, 1000000, "the most clients at once (default 10000)");
        cli.add_int("--output-limit", limit_, 1024, 1 << 30,
                    "bytes queued for one client past which it is dropped (default 1048576)");
        cli.add_int("--idle-timeout-ms", idle_ms_, 0, 86400000, "close a client silent this long (default 0: never)");
        cli.add_int("--send-timeout-ms", send_ms_, 0, 86400000,
                    "close a client whose send moves nothing this long (default 0: never)");
    }
    EngineOptions options() const {
        EngineOptions o;
        o.threads = static_cast<std::size_t>(threads_);
        o.max_clients = static_cast<std::size_t>(max_clients_);
        o.output_limit = static_cast<std::size_t>(limit_);
        o.output_high = std::min(o.output_high, o.output_limit);
        o.output_low = std::min(o.output_low, o.output_high);
        o.idle_timeout = std::chrono::milliseconds(idle_ms_);
        o.send_timeout = std::chrono::milliseconds(send_ms_);
        return o;
    }
    long long max_clients() const { return max_clients_; }

private:
    long long threads_ = 0;
    long long max_clients_ = 10000;
    long long limit_ = 1 << 20;
    long long idle_ms_ = 0;
    long long send_ms_ = 0;
};

}  // namespace ch14
