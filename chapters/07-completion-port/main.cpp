// ch07_echo_server - runs chapter 7's echo server until Ctrl+C: a completion port and
// one worker on Windows, one io_uring and one thread on Linux.
#include <iostream>

#include "echo_server.h"
#include "iocp/cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
#ifdef _WIN32
    iocp::CommandLine cli("ch07_echo_server", "Chapter 7: an I/O completion port with one worker thread.");
#else
    iocp::CommandLine cli("ch07_echo_server", "Chapter 7: one io_uring and one thread (the completion port's Linux twin).");
#endif
    cli.add_endpoint(where);
    ch07::Limits limits;
    long long max_clients = static_cast<long long>(limits.max_clients);
    cli.add_int("--max-clients", max_clients, 1, 1000000,
                "refuse clients beyond this many (default " + std::to_string(limits.max_clients) + ")");
    if (const auto code = cli.parse(argc, argv)) return *code;
    limits.max_clients = static_cast<std::size_t>(max_clients);

    //! [main]
    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;  // before any thread starts
        ch07::EchoServer server(where, limits);
        server.start();
        std::cout << "listening on " << iocp::to_string({where.host, server.port()})
                  << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": stopping after " << server.connections_served()
                  << " connection(s)" << std::endl;
        server.stop();
    } catch (const std::exception& e) {
        std::cerr << "ch07_echo_server: " << e.what() << "\n";
        return 1;
    }
    //! [main]
    return 0;
}
