// ch01_echo_server - runs chapter 1's blocking echo server until Ctrl+C.
#include <iostream>

#include "echo_server.h"
#include "iocp/cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
    iocp::CommandLine cli("ch01_echo_server", "Chapter 1: a blocking echo server, one client at a time.");
    cli.add_endpoint(where);
    if (const auto code = cli.parse(argc, argv)) return *code;

    //! [main]
    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;  // before any thread starts
        ch01::EchoServer server(where);
        server.start();
        std::cout << "listening on " << iocp::to_string({where.host, server.port()}) << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": stopping after " << server.connections_served() << " connection(s)" << std::endl;
        server.stop();
    } catch (const std::exception& e) {
        std::cerr << "ch01_echo_server: " << e.what() << "\n";
        return 1;
    }
    //! [main]
    return 0;
}
