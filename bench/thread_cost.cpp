// ch02_thread_cost - what one thread per client costs, measured (Linux).
//
// Starts chapter 2's server in this process, connects N clients (non-blocking
// sockets driven by this one thread, so they add no threads), has every client echo
// a few rounds, and reads what the process holds from /proc and getrusage():
// threads, resident and virtual memory, and context switches during the echo rounds.
//
//   ch02_thread_cost --clients 10,100,1000 --rounds 20
//
// That command makes the table on chapter 2's appendix page (docs/pages/ch02_appendix.md).
// Both ends of every connection live in this one process, so it needs two descriptors
// per client (ulimit -n).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "echo_server.h"
#include "iocp/cli.h"
#include "iocp/test_client.h"

namespace {

long status_field(const std::string& key) {  // "Threads", "VmRSS", "VmSize" (kB)
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(key + ":", 0) == 0) return std::stol(line.substr(key.size() + 1));
    return -1;
}

long context_switches() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);  // all threads of the process, ended ones included
    return ru.ru_nvcsw + ru.ru_nivcsw;
}

struct Row {
    long clients, threads, rss_kb, vm_kb, switches;
    double seconds;
};

Row measure(long n, long rounds) {
    ch02::EchoServer server({"127.0.0.1", 0}, ch02::Limits{static_cast<std::size_t>(n) + 1});
    server.start();
    const long rss0 = status_field("VmRSS"), vm0 = status_field("VmSize");
    std::vector<iocp::TestClient> clients;
    for (long i = 0; i < n; ++i) clients.push_back(iocp::TestClient::connect({"127.0.0.1", server.port()}));
    const std::string message(64, 'x');
    for (auto& c : clients) c.echo(message);  // every session thread is up and has run
    const long switches0 = context_switches();
    const auto t0 = std::chrono::steady_clock::now();
    for (long r = 0; r < rounds; ++r) {
        for (auto& c : clients) c.send(message);
        for (auto& c : clients)
            if (c.recv_exact(message.size()) != message) throw std::runtime_error("bad echo");
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Row row{n, status_field("Threads"), status_field("VmRSS") - rss0, status_field("VmSize") - vm0,
            context_switches() - switches0, secs};
    clients.clear();
    server.stop();
    return row;
}

}  // namespace

int main(int argc, char** argv) {
    std::string counts = "10,100,1000";
    long long rounds = 20;
    iocp::CommandLine cli("ch02_thread_cost", "Measures threads, memory and context switches of chapter 2's server.");
    cli.add_string("--clients", counts, "comma-separated client counts (default 10,100,1000)");
    cli.add_int("--rounds", rounds, 1, 100000, "echo rounds per client while counting switches (default 20)");
    if (const auto code = cli.parse(argc, argv)) return *code;

    std::printf("| clients | threads | resident memory added | virtual memory added | context switches per round trip | time for %lld rounds |\n", rounds);
    std::printf("|--------:|--------:|----------------------:|---------------------:|--------------------------------:|------:|\n");
    std::stringstream list(counts);
    for (std::string item; std::getline(list, item, ',');) {
        const long n = std::stol(item);
        const Row r = measure(n, static_cast<long>(rounds));
        std::printf("| %ld | %ld | %.1f MiB | %.0f MiB | %.1f | %.3f s |\n", r.clients, r.threads, static_cast<double>(r.rss_kb) / 1024.0,
                    static_cast<double>(r.vm_kb) / 1024.0,
                    static_cast<double>(r.switches) / static_cast<double>(r.clients * rounds), r.seconds);
        std::fflush(stdout);
    }
    return 0;
}
