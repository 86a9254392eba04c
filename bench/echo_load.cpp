// echo_load - drives any chapter's echo server (or any echo server) and checks every byte.
//
// C connections, each in its own closed loop: send a message of S bytes, wait for the
// whole echo, check it, send the next (bench/load/engine.h). Two ways to run:
//
//   echo_load --port 6000 --clients 100 --rounds 200 --size 64     (a fixed count per client)
//   echo_load --port 6000 --clients 100 --duration 5 --warmup 1     (a timed window)
//   echo_load --port 6000 --clients 1 --rounds 20000 --idle 900     (900 idle connections held open)
//
// A timed run prints progress on stderr every second, and a summary: messages/s, MB/s
// (payload one way), latency p50/p99/max, errors; --json prints the summary as JSON.
// --server-cpu N (Linux) adds how busy core N was during the window, from /proc/stat,
// softirq included and a hypervisor's steal left out: with the server pinned to that
// core, the server's CPU per message.
// It connects only to loopback addresses unless --allow-remote, and always stops by
// itself: at the end of its rounds or window, or when no echo comes for --stall seconds.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#ifndef _WIN32
#include <sys/resource.h>
#endif

#include "iocp/cli.h"
#include "iocp/net.h"
#include "load/engine.h"

namespace {

// Core `core`'s busy and total time from /proc/stat, in clock ticks (Linux only).
struct CoreTime {
    double busy = 0, total = 0, steal = 0;
};
bool read_core(long long core, CoreTime& out) {
    std::ifstream stat("/proc/stat");
    const std::string name = "cpu" + std::to_string(core);
    std::string line;
    while (std::getline(stat, line)) {
        std::istringstream in(line);
        std::string label;
        in >> label;
        if (label != name) continue;
        double user, nice, system, idle, iowait, irq, softirq, steal = 0;
        if (!(in >> user >> nice >> system >> idle >> iowait >> irq >> softirq)) return false;
        in >> steal;
        // Steal is time the hypervisor gave this virtual CPU to someone else: not the
        // server's work, so not busy; reported apart, as a sign of a noisy machine.
        out.busy = user + nice + system + irq + softirq;
        out.steal = steal;
        out.total = out.busy + idle + iowait + steal;
        return true;
    }
    return false;
}

// Enough descriptors for 10,000 connections, where the hard limit allows.
void raise_descriptor_limit() {
#ifndef _WIN32
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
#endif
}

}  // namespace

int main(int argc, char** argv) {
    load::Config config;
    long long clients = 10, threads = 1, rounds = 100, size = 64, idle = 0, duration = 0, warmup = 0, stall = 10,
              core = -1;
    bool json = false, quiet = false, allow_remote = false;
    iocp::CommandLine cli("echo_load", "Drives an echo server with closed-loop clients and checks every echoed byte.");
    cli.add_server_address(config.server);
    cli.add_int("--clients", clients, 1, 20000, "concurrent connections (default 10)");
    cli.add_int("--threads", threads, 1, 64, "load threads sharing the connections (default 1)");
    cli.add_int("--size", size, 1, 64 << 20, "bytes per message (default 64)");
    cli.add_int("--rounds", rounds, 1, 1'000'000'000, "messages per client, when no --duration (default 100)");
    cli.add_int("--duration", duration, 0, 3600, "seconds to measure; replaces --rounds (default 0: rounds)");
    cli.add_int("--warmup", warmup, 0, 600, "seconds of echoes before the measured window (default 0)");
    cli.add_int("--idle", idle, 0, 20000, "extra connections opened first and held open, silent (default 0)");
    cli.add_int("--stall", stall, 1, 600, "stop with an error when no echo completes for this long (default 10 s)");
    cli.add_int("--server-cpu", core, -1, 4095, "Linux: report how busy this core was in the window (default off)");
    cli.add_flag("--json", json, "print the summary as one JSON object");
    cli.add_flag("--quiet", quiet, "no progress lines on stderr");
    cli.add_flag("--allow-remote", allow_remote, "allow a server address outside 127.0.0.0/8 and ::1");
    if (const auto code = cli.parse(argc, argv)) return *code;
    config.clients = static_cast<std::size_t>(clients);
    config.threads = static_cast<std::size_t>(threads);
    config.size = static_cast<std::size_t>(size);
    config.rounds = duration > 0 ? 0 : static_cast<std::uint64_t>(rounds);
    config.duration_s = static_cast<double>(duration);
    config.warmup_s = static_cast<double>(warmup);
    config.stall_s = static_cast<double>(stall);

    try {
        iocp::WinsockGuard winsock;
        if (!allow_remote && !load::is_loopback(iocp::resolve(config.server))) {
            std::cerr << "echo_load: " << iocp::to_string(config.server)
                      << " is not a loopback address; a load test leaves this machine only with --allow-remote\n";
            return 2;
        }
        raise_descriptor_limit();
        std::vector<iocp::UniqueSocket> silent;  // connected, never used: what most of a server's clients are
        for (long long i = 0; i < idle; ++i) silent.push_back(iocp::connect_tcp(config.server));
        load::Run run(config);
        run.connect_all();

        using Clock = std::chrono::steady_clock;
        Clock::time_point window_start, window_end;
        CoreTime cpu_start, cpu_end;
        bool cpu_ok = core >= 0;
        std::uint64_t last = 0;
        const auto progress = [&](double elapsed) {
            if (quiet || duration == 0) return;
            const std::uint64_t now = run.completed();
            std::fprintf(stderr, "echo_load: %3.0f s  %8llu echoes/s%s\n", elapsed,
                         static_cast<unsigned long long>(now - last),
                         run.phase() == load::Phase::kWarmup ? "  (warm-up)" : "");
            last = now;
        };
        const auto phase = [&](load::Phase p) {
            if (p == load::Phase::kMeasure) {
                window_start = Clock::now();
                if (cpu_ok) cpu_ok = read_core(core, cpu_start);
            } else if (p == load::Phase::kStop) {
                window_end = Clock::now();
                if (cpu_ok) cpu_ok = read_core(core, cpu_end);
            }
        };
        load::Tally t = run.run(progress, phase);

        const double secs = std::chrono::duration<double>(window_end - window_start).count();
        const double rate = secs > 0 ? static_cast<double>(t.messages) / secs : 0;
        const double mbps = rate * static_cast<double>(size) / 1e6;
        const double p50 = load::quantile_us(t.latencies_ns, 0.50), p99 = load::quantile_us(t.latencies_ns, 0.99),
                     max = load::quantile_us(t.latencies_ns, 1.0);
        // /proc/stat counts in ticks of 1/100 s (USER_HZ): over a window of seconds, the
        // busy time is good to about 1%.
        const double busy_s = cpu_ok ? (cpu_end.busy - cpu_start.busy) / 100.0 : 0;
        const double busy_share = cpu_ok && cpu_end.total > cpu_start.total
                                      ? (cpu_end.busy - cpu_start.busy) / (cpu_end.total - cpu_start.total)
                                      : 0;
        const double us_per_msg = cpu_ok && t.messages > 0 ? busy_s * 1e6 / static_cast<double>(t.messages) : 0;
        const double steal_share = cpu_ok && cpu_end.total > cpu_start.total
                                       ? (cpu_end.steal - cpu_start.steal) / (cpu_end.total - cpu_start.total)
                                       : 0;
        const bool clean = t.errors == 0 && t.mismatches == 0 && t.messages > 0;

        char line[512];
        if (json) {
            std::snprintf(line, sizeof line,
                          "{\"clients\": %lld, \"threads\": %zu, \"size\": %lld, \"idle\": %lld, \"seconds\": %.3f, "
                          "\"messages\": %llu, \"messages_per_s\": %.1f, \"mb_per_s\": %.3f, \"p50_us\": %.1f, "
                          "\"p99_us\": %.1f, \"max_us\": %.1f, \"errors\": %llu, \"mismatches\": %llu, "
                          "\"server_core\": %lld, \"server_core_busy_s\": %.2f, \"server_core_busy_share\": %.3f, "
                          "\"server_cpu_us_per_msg\": %.3f, \"server_core_steal_share\": %.3f}",
                          clients, run.config().threads, size, idle, secs, static_cast<unsigned long long>(t.messages),
                          rate, mbps, p50, p99, max, static_cast<unsigned long long>(t.errors),
                          static_cast<unsigned long long>(t.mismatches), cpu_ok ? core : -1, busy_s, busy_share,
                          us_per_msg, steal_share);
        } else if (duration == 0 && clean) {  // the line the chapter pages quote
            std::snprintf(line, sizeof line,
                          "%lld clients x %lld rounds x %lld bytes%s: all echoed byte-exact in %.3f s (%.0f round trips/s)",
                          clients, rounds, size, idle ? (" (+" + std::to_string(idle) + " idle)").c_str() : "", secs,
                          rate);
        } else {
            std::snprintf(line, sizeof line,
                          "%lld clients x %lld bytes, %.1f s: %.0f msg/s, %.2f MB/s, latency p50 %.0f us, p99 %.0f us, "
                          "max %.0f us, %llu errors, %llu mismatches",
                          clients, size, secs, rate, mbps, p50, p99, max, static_cast<unsigned long long>(t.errors),
                          static_cast<unsigned long long>(t.mismatches));
        }
        std::cout << line;
        if (!json && cpu_ok) {
            std::snprintf(line, sizeof line, ", server core %lld busy %.0f%% = %.2f us/msg (steal %.0f%%)", core,
                          busy_share * 100, us_per_msg, steal_share * 100);
            std::cout << line;
        }
        std::cout << std::endl;
        if (!t.first_error.empty()) std::cerr << "echo_load: " << t.first_error << "\n";
        if (core >= 0 && !cpu_ok) std::cerr << "echo_load: no figures for core " << core << " in /proc/stat\n";
        return clean ? 0 : 1;
    } catch (const std::exception& e) {
        std::cerr << "echo_load: " << e.what() << "\n";
        return 1;
    }
}
