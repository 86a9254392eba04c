// echo_load - drives any chapter's echo server with N concurrent clients.
//
// One thread, N non-blocking connections: each round every client sends one
// message, then every client reads its echo back and checks every byte. So the
// server holds N busy connections at once while the load generator stays one
// thread, and its own cost does not depend on N.
//
//   echo_load --port 6000 --clients 100 --rounds 200 --size 64
//   echo_load --port 6000 --clients 1 --rounds 20000 --idle 900   (900 idle connections held open)
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "iocp/cli.h"
#include "iocp/net.h"
#include "iocp/test_client.h"

int main(int argc, char** argv) {
    iocp::Endpoint server;
    long long clients = 10, rounds = 100, size = 64, idle = 0;
    iocp::CommandLine cli("echo_load", "Sends rounds of messages from N clients at once and checks every echoed byte.");
    cli.add_server_address(server);
    cli.add_int("--clients", clients, 1, 5000, "concurrent connections (default 10)");
    cli.add_int("--rounds", rounds, 1, 10'000'000, "messages per client (default 100)");
    cli.add_int("--size", size, 1, 64 << 20, "bytes per message (default 64)");
    cli.add_int("--idle", idle, 0, 20000, "extra connections opened first and held open, silent, for the whole run (default 0)");
    if (const auto code = cli.parse(argc, argv)) return *code;

    try {
        iocp::WinsockGuard winsock;
        std::vector<iocp::UniqueSocket> silent;  // connected, never used: what most of a server's clients are
        for (long long i = 0; i < idle; ++i) silent.push_back(iocp::connect_tcp(server));
        std::vector<iocp::TestClient> conns;
        std::vector<std::string> messages;
        for (long long i = 0; i < clients; ++i) {
            conns.push_back(iocp::TestClient::connect(server));
            std::string m(static_cast<std::size_t>(size), '\0');
            for (std::size_t j = 0; j < m.size(); ++j) m[j] = static_cast<char>((static_cast<std::size_t>(i) * 31 + j * 7) & 0xFF);
            messages.push_back(std::move(m));
        }
        const auto t0 = std::chrono::steady_clock::now();
        for (long long r = 0; r < rounds; ++r) {
            for (std::size_t i = 0; i < conns.size(); ++i) conns[i].send(messages[i]);
            for (std::size_t i = 0; i < conns.size(); ++i) {
                if (conns[i].recv_exact(messages[i].size()) != messages[i]) {
                    std::cerr << "echo_load: client " << i << " got bytes that differ from what it sent\n";
                    return 1;
                }
            }
        }
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double total = static_cast<double>(clients) * static_cast<double>(rounds);
        char line[256];
        std::snprintf(line, sizeof line, "%lld clients x %lld rounds x %lld bytes%s: all echoed byte-exact in %.3f s (%.0f round trips/s)",
                      clients, rounds, size, idle ? (" (+" + std::to_string(idle) + " idle)").c_str() : "", secs, total / secs);
        std::cout << line << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "echo_load: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
