// ch03_echo_server - runs chapter 3's select() echo server until Ctrl+C.
#include <iostream>

#include "echo_server.h"
#include "iocp/cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
    iocp::CommandLine cli("ch03_echo_server", "Chapter 3: one thread serving many clients with select().");
    cli.add_endpoint(where);
    ch03::Limits limits;
    long long max_clients = static_cast<long long>(limits.max_clients);
    cli.add_int("--max-clients", max_clients, 1, static_cast<long long>(ch03::kSelectCapacity), "refuse clients beyond this many (default: as many as FD_SETSIZE allows, at most " + std::to_string(ch03::kSelectCapacity) + ")");
    if (const auto code = cli.parse(argc, argv)) return *code;
    limits.max_clients = static_cast<std::size_t>(max_clients);

    //! [main]
    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;  // before any thread starts
        ch03::EchoServer server(where, limits);
        server.start();
        std::cout << "listening on " << iocp::to_string({where.host, server.port()}) << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": stopping after " << server.connections_served() << " connection(s)" << std::endl;
        server.stop();
    } catch (const std::exception& e) {
        std::cerr << "ch03_echo_server: " << e.what() << "\n";
        return 1;
    }
    //! [main]
    return 0;
}
