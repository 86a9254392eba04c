// ch13_echo_server - runs chapter 13's echo server until Ctrl+C: chapter 12's server
// with fewer trips into the kernel. --without turns steps off, one by one, to measure
// each; at the end it prints the costs it counted (kernel waits per completion).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <mutex>
#include <string>

#include "echo_server.h"
#include "iocp/cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
#ifdef _WIN32
    iocp::CommandLine cli("ch13_echo_server",
                          "Chapter 13: chapter 12's server made fast - GQCSEx batches, no packet for what completes at once.");
    const char* threads_default = "two per CPU";
#else
    iocp::CommandLine cli("ch13_echo_server",
                          "Chapter 13: chapter 12's server made fast - multishot receives on single-issuer io_urings.");
    const char* threads_default = "one per CPU";
#endif
    cli.add_endpoint(where);
    ch13::Limits limits;
    long long max_clients = static_cast<long long>(limits.max_clients);
    cli.add_int("--max-clients", max_clients, 1, 1000000,
                "refuse clients beyond this many (default " + std::to_string(limits.max_clients) + ")");
    long long threads = 0;
    cli.add_int("--threads", threads, 0, 1024,
                std::string("worker threads (default 0: ") + threads_default + ")");
    long long drain_ms = limits.drain_timeout.count();
    cli.add_int("--drain-ms", drain_ms, 0, 600000,
                "how long Ctrl+C waits for cancelled I/O to come home (default " + std::to_string(drain_ms) + ")");
    long long accepts = static_cast<long long>(limits.accepts);
    cli.add_int("--accepts", accepts, 1, 100000,
                "Windows: AcceptEx calls pending at once (default " + std::to_string(limits.accepts) + ")");
    long long pool = static_cast<long long>(limits.pool_buffers);
    cli.add_int("--pool-buffers", pool, 1, 1 << 20,
                "buffers of " + std::to_string(limits.buffer_size / 1024) + " KiB in the pool (default " +
                    std::to_string(limits.pool_buffers) + ")");
    long long high = static_cast<long long>(limits.output_high);
    cli.add_int("--output-high", high, 1, 1 << 30,
                "bytes queued per connection at which it stops receiving (default " + std::to_string(high) + ")");
    long long low = static_cast<long long>(limits.output_low);
    cli.add_int("--output-low", low, 0, 1 << 30,
                "bytes queued at which it receives again (default " + std::to_string(low) + ")");
    long long limit = static_cast<long long>(limits.output_limit);
    cli.add_int("--output-limit", limit, 1, 1 << 30,
                "bytes queued past which a client is dropped (default " + std::to_string(limit) + ")");
    long long idle_ms = 0;
    cli.add_int("--idle-timeout-ms", idle_ms, 0, 86400000,
                "close a connection that sends nothing for this long (default 0: never)");
    long long send_ms = 0;
    cli.add_int("--send-timeout-ms", send_ms, 0, 86400000,
                "close a connection whose send moves nothing for this long (default 0: never)");
    std::string without;
    cli.add_string("--without", without,
                   "steps to turn off, comma-separated: batch, skip-on-success (Windows); multishot, "
                   "single-issuer, registered-ring, fixed-files (Linux)");
    bool quiet = false;
    cli.add_flag("--quiet", quiet, "do not print each client's address as it is accepted");
    if (const auto code = cli.parse(argc, argv)) return *code;
    for (std::size_t at = 0; at < without.size();) {
        const std::size_t comma = std::min(without.find(',', at), without.size());
        const std::string step = without.substr(at, comma - at);
        at = comma + 1;
        auto& st = limits.steps;
        bool* flag = step == "batch" ? &st.batch : step == "skip-on-success" ? &st.skip_on_success
                   : step == "multishot" ? &st.multishot : step == "single-issuer" ? &st.single_issuer
                   : step == "registered-ring" ? &st.registered_ring : step == "fixed-files" ? &st.fixed_files
                   : nullptr;
        if (flag == nullptr) {
            std::cerr << "ch13_echo_server: --without: no step called '" << step << "'\n" << cli.usage();
            return 2;
        }
        *flag = false;
    }
    limits.accepts = static_cast<std::size_t>(accepts);
    limits.pool_buffers = static_cast<std::size_t>(pool);
    limits.output_high = static_cast<std::size_t>(high);
    limits.output_low = static_cast<std::size_t>(low);
    limits.output_limit = static_cast<std::size_t>(limit);
    limits.idle_timeout = std::chrono::milliseconds(idle_ms);
    limits.send_timeout = std::chrono::milliseconds(send_ms);
    std::mutex print_mutex;  // workers accept at once: one line at a time
    if (!quiet)
        limits.on_accepted = [&print_mutex](const std::string& peer) {
            std::lock_guard<std::mutex> lock(print_mutex);
            std::cout << "accepted " << peer << std::endl;
        };
    limits.max_clients = static_cast<std::size_t>(max_clients);
    limits.threads = static_cast<std::size_t>(threads);
    limits.drain_timeout = std::chrono::milliseconds(drain_ms);

    //! [main]
    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;  // before any thread starts
        ch13::EchoServer server(where, limits);
        server.start();
        std::cout << server.threads() << " worker threads" << std::endl;
        const auto f = server.features();
        std::cout << "steps: batch " << f.batch_dequeue << ", skip-on-success " << f.skip_on_success
                  << ", multishot " << f.multishot_recv << ", single-issuer " << f.single_issuer
                  << ", registered-ring " << f.registered_ring << ", fixed-files " << f.fixed_files << std::endl;
        std::cout << "listening on " << iocp::to_string({where.host, server.port()}) << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": stopping with " << server.live_connections() << " connection(s) open, "
                  << server.connections_served() << " closed before" << std::endl;
        server.stop();
        const double done = static_cast<double>(std::max<std::uint64_t>(server.completions(), 1));
        std::cout << "costs: " << server.completions() << " completion(s), " << server.kernel_waits()
                  << " kernel wait(s) (" << static_cast<double>(server.kernel_waits()) / done << " per completion), "
                  << server.inline_completions() << " inline, " << server.receives_armed() << " receive(s) armed"
                  << std::endl;
        std::cout << "timeouts: " << server.idle_timeouts() << " idle, " << server.send_timeouts()
                  << " send; " << server.timers_after_close() << " timer(s) after our close" << std::endl;
        std::cout << "memory: " << server.connection_size() << " bytes per idle connection, at most "
                  << server.most_buffers_lent() << " of " << server.pool_size() << " pool buffers lent at once, "
                  << server.buffer_waits() << " wait(s) for a buffer, " << server.backpressure_pauses()
                  << " pause(s) at the high watermark, " << server.clients_over_limit() << " client(s) over the limit"
                  << std::endl;
        std::cout << "connections: " << server.peer_closes() << " closed by the peer (FIN), "
                  << server.reset_by_peer() << " reset by the peer, " << server.closed_by_us() << " closed by us; "
                  << server.completions_after_close() << " completion(s) after our close, "
                  << server.stale_completions() << " stale; " << server.operations_in_flight()
                  << " operation(s) outstanding" << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "ch13_echo_server: " << e.what() << "\n";
        return 1;
    }
    //! [main]
    return 0;
}
