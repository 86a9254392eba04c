// ch14_echo_server - the engine as an echo server, until Ctrl+C: the same options and
// the same echo as every chapter's server, written as an application of ten lines.
#include <exception>
#include <iostream>

#include "echo_service.h"
#include "engine_cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
    iocp::CommandLine cli("ch14_echo_server", "Chapter 14: the engine as an echo server.");
    ch14::EngineCli engine_cli(cli, where);
    if (const auto code = cli.parse(argc, argv)) return *code;
    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;  // before any thread starts
        ch14::EchoService echo(where, engine_cli.options());
        echo.start();
        std::cout << echo.engine().threads() << " worker threads" << std::endl;
        std::cout << "listening on " << iocp::to_string({where.host, echo.port()}) << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": stopping with " << echo.live_connections() << " connection(s) open" << std::endl;
        echo.stop();
        const ch14::Engine& e = echo.engine();
        std::cout << "served " << e.connections_served() << " connection(s); " << e.clients_over_limit()
                  << " dropped over the limit; " << e.operations_in_flight() << " operation(s) and "
                  << e.buffers_lent() << " buffer(s) outstanding" << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "ch14_echo_server: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
