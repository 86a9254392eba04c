// ch08_echo_server - runs chapter 8's echo server until Ctrl+C: a pool of workers on one
// completion port on Windows, one io_uring per worker on Linux.
#include <iostream>

#include "echo_server.h"
#include "iocp/cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
#ifdef _WIN32
    iocp::CommandLine cli("ch08_echo_server", "Chapter 8: a pool of worker threads on one I/O completion port.");
    const char* threads_default = "two per CPU";
#else
    iocp::CommandLine cli("ch08_echo_server", "Chapter 8: a pool of workers, one io_uring each (the completion port's Linux twin).");
    const char* threads_default = "one per CPU";
#endif
    cli.add_endpoint(where);
    ch08::Limits limits;
    long long max_clients = static_cast<long long>(limits.max_clients);
    cli.add_int("--max-clients", max_clients, 1, 1000000,
                "refuse clients beyond this many (default " + std::to_string(limits.max_clients) + ")");
    long long threads = 0;
    cli.add_int("--threads", threads, 0, 1024,
                std::string("worker threads (default 0: ") + threads_default + ")");
    if (const auto code = cli.parse(argc, argv)) return *code;
    limits.max_clients = static_cast<std::size_t>(max_clients);
    limits.threads = static_cast<std::size_t>(threads);

    //! [main]
    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;  // before any thread starts
        ch08::EchoServer server(where, limits);
        server.start();
        std::cout << server.threads() << " worker threads" << std::endl;
        std::cout << "listening on " << iocp::to_string({where.host, server.port()}) << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": stopping after " << server.connections_served() << " connection(s)" << std::endl;
        server.stop();
    } catch (const std::exception& e) {
        std::cerr << "ch08_echo_server: " << e.what() << "\n";
        return 1;
    }
    //! [main]
    return 0;
}
