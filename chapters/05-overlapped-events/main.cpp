// ch05_echo_server - runs chapter 5's overlapped echo server until Ctrl+C.
#include <iostream>
#include <string>

#include "echo_server.h"
#include "iocp/cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
    iocp::CommandLine cli("ch05_echo_server",
                          "Chapter 5: overlapped WSARecv/WSASend, an event per operation, "
                          "one waiting thread per " + std::to_string(ch05::kSocketsPerGroup) + " clients.");
    cli.add_endpoint(where);
    ch05::Limits limits;
    long long max_clients = static_cast<long long>(limits.max_clients);
    long long buffer_size = static_cast<long long>(limits.buffer_size);
    cli.add_int("--max-clients", max_clients, 1, 1000000, "refuse clients beyond this many (default " + std::to_string(limits.max_clients) + ")");
    cli.add_int("--buffer-size", buffer_size, 1, 1 << 30, "bytes in each connection's buffer (default " + std::to_string(limits.buffer_size) + ")");
    if (const auto code = cli.parse(argc, argv)) return *code;
    limits.max_clients = static_cast<std::size_t>(max_clients);
    limits.buffer_size = static_cast<std::size_t>(buffer_size);

    //! [main]
    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;  // before any thread starts
        ch05::EchoServer server(where, limits);
        server.start();
        std::cout << "listening on " << iocp::to_string({where.host, server.port()}) << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": stopping after " << server.connections_served() << " connection(s), "
                  << server.waiting_threads() << " waiting thread(s)" << std::endl;
        server.stop();
        std::cout << "operations in flight after stop: " << server.operations_in_flight() << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "ch05_echo_server: " << e.what() << "\n";
        return 1;
    }
    //! [main]
    return 0;
}
