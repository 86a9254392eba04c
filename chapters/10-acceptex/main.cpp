// ch10_echo_server - runs chapter 10's echo server until Ctrl+C: a pool of workers on one
// completion port that accept too (AcceptEx) on Windows, one io_uring per worker with a
// multishot accept on Linux. It prints each client's address as it is accepted, and at
// the end how the accepts and the connections ended.
#include <chrono>
#include <iostream>
#include <mutex>
#include <string>

#include "echo_server.h"
#include "iocp/cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
#ifdef _WIN32
    iocp::CommandLine cli("ch10_echo_server",
                          "Chapter 10: AcceptEx on a pool of workers on one completion port.");
    const char* threads_default = "two per CPU";
#else
    iocp::CommandLine cli("ch10_echo_server",
                          "Chapter 10: a multishot accept on a pool of workers, one io_uring each.");
    const char* threads_default = "one per CPU";
#endif
    cli.add_endpoint(where);
    ch10::Limits limits;
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
    bool quiet = false;
    cli.add_flag("--quiet", quiet, "do not print each client's address as it is accepted");
    if (const auto code = cli.parse(argc, argv)) return *code;
    limits.accepts = static_cast<std::size_t>(accepts);
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
        ch10::EchoServer server(where, limits);
        server.start();
        std::cout << server.threads() << " worker threads" << std::endl;
        std::cout << "listening on " << iocp::to_string({where.host, server.port()}) << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": stopping with " << server.live_connections() << " connection(s) open, "
                  << server.connections_served() << " closed before" << std::endl;
        server.stop();
        std::cout << "accepts: " << server.accepts_posted() << " posted, " << server.clients_accepted()
                  << " client(s) accepted, " << server.accepts_cancelled() << " cancelled at stop, "
                  << server.accepts_pending() << " pending" << std::endl;
        std::cout << "connections: " << server.peer_closes() << " closed by the peer (FIN), "
                  << server.reset_by_peer() << " reset by the peer, " << server.closed_by_us() << " closed by us; "
                  << server.completions_after_close() << " completion(s) after our close, "
                  << server.stale_completions() << " stale; " << server.operations_in_flight()
                  << " operation(s) outstanding" << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "ch10_echo_server: " << e.what() << "\n";
        return 1;
    }
    //! [main]
    return 0;
}
