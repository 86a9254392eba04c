// The load generator's own tests: a benchmark that miscounts or misses a wrong byte
// measures nothing. Each test runs bench/load's closed loop against a tiny blocking
// server written here, one that echoes faithfully or one that breaks a rule on purpose.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "iocp/net.h"
#include "load/engine.h"

namespace {

// How the test server treats the bytes of one connection: given the connection's
// index and how many bytes it has echoed so far, it may change a chunk before it goes
// back, or return false to stop echoing (and hold the connection open, silent).
using Twist = std::function<bool(std::size_t conn, std::size_t echoed, std::string& chunk)>;

class TwistedEcho {
public:
    explicit TwistedEcho(Twist twist) : twist_(std::move(twist)), listener_(iocp::listen_tcp({"127.0.0.1", 0})) {
        port_ = iocp::local_port(listener_.get());
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    ~TwistedEcho() {
        stopping_ = true;
        iocp::interrupt_blocking_io(listener_.get());
        acceptor_.join();
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto& s : conns_) iocp::interrupt_blocking_io(s.get());
        }
        for (auto& t : workers_) t.join();
    }
    std::uint16_t port() const { return port_; }

private:
    void accept_loop() {
        for (std::size_t n = 0; !stopping_; ++n) {
            iocp::UniqueSocket s(::accept(listener_.get(), nullptr, nullptr));
            if (!s) return;
            std::lock_guard<std::mutex> lock(mutex_);
            const iocp::socket_t raw = s.get();
            conns_.push_back(std::move(s));
            workers_.emplace_back([this, raw, n] { serve(raw, n); });
        }
    }
    void serve(iocp::socket_t s, std::size_t conn) {
        std::vector<char> buf(64 * 1024);
        std::size_t echoed = 0;
        for (;;) {
            const auto got = ::recv(s, buf.data(), static_cast<iocp::io_size_t>(buf.size()), 0);
            if (got <= 0) return;
            std::string chunk(buf.data(), static_cast<std::size_t>(got));
            if (!twist_(conn, echoed, chunk)) {
                while (::recv(s, buf.data(), static_cast<iocp::io_size_t>(buf.size()), 0) > 0) {
                }
                return;
            }
            try {
                if (iocp::send_all(s, chunk.data(), chunk.size()) != iocp::SendResult::kSent) return;
            } catch (const iocp::SystemError&) {
                return;  // interrupted by the destructor
            }
            echoed += chunk.size();
        }
    }

    Twist twist_;
    iocp::UniqueSocket listener_;
    std::uint16_t port_ = 0;
    std::atomic<bool> stopping_{false};
    std::mutex mutex_;
    std::vector<iocp::UniqueSocket> conns_;
    std::vector<std::thread> workers_;
    std::thread acceptor_;
};

load::Config rounds_config(std::uint16_t port, std::size_t clients, std::size_t size, std::uint64_t rounds) {
    load::Config c;
    c.server = {"127.0.0.1", port};
    c.clients = clients;
    c.threads = 2;
    c.size = size;
    c.rounds = rounds;
    c.stall_s = 2;
    return c;
}

load::Tally run(const load::Config& config) {
    load::Run r(config);
    r.connect_all();
    return r.run(nullptr, nullptr);
}

const Twist kFaithful = [](std::size_t, std::size_t, std::string&) { return true; };

}  // namespace

TEST(BenchLoad, CountsEveryEchoOfAFaithfulServer) {
    iocp::WinsockGuard winsock;
    TwistedEcho server(kFaithful);
    // 20 KiB messages: several reads and sends per echo on either side.
    const load::Tally t = run(rounds_config(server.port(), 8, 20000, 25));
    EXPECT_EQ("", t.first_error);
    EXPECT_EQ(8u * 25u, t.messages);
    EXPECT_EQ(t.messages, t.latencies_ns.size());
    EXPECT_EQ(0u, t.errors);
    EXPECT_EQ(0u, t.mismatches);
    EXPECT_TRUE(std::is_sorted(t.latencies_ns.begin(), t.latencies_ns.end()));
}

TEST(BenchLoad, CatchesOneChangedByte) {
    iocp::WinsockGuard winsock;
    // Connection 3 flips one bit of the 1000th byte it echoes; everything else is faithful.
    TwistedEcho server([](std::size_t conn, std::size_t echoed, std::string& chunk) {
        if (conn == 3 && echoed <= 999 && echoed + chunk.size() > 999) chunk[999 - echoed] ^= 0x01;
        return true;
    });
    const load::Tally t = run(rounds_config(server.port(), 6, 100, 50));
    EXPECT_EQ(1u, t.mismatches);
    EXPECT_EQ(0u, t.errors);
    EXPECT_EQ(5u * 50u + 9u, t.messages) << "the other five finish; connection 3 got 9 echoes right first";
    EXPECT_NE(std::string::npos, t.first_error.find("differ"));
}

TEST(BenchLoad, CatchesAStaleMessageEchoedAgain) {
    iocp::WinsockGuard winsock;
    // From its third message on, connection 0 sends back its first message again: the
    // right length, the wrong bytes. Only a pattern that differs per message sees it.
    std::string first;
    TwistedEcho server([&first](std::size_t conn, std::size_t echoed, std::string& chunk) {
        if (conn != 0) return true;
        if (echoed < 64) first += chunk;
        if (echoed >= 128) chunk = first.substr(0, chunk.size());
        return true;
    });
    const load::Tally t = run(rounds_config(server.port(), 1, 64, 10));
    EXPECT_EQ(1u, t.mismatches);
    EXPECT_EQ(2u, t.messages);
}

TEST(BenchLoad, ASilentServerEndsTheRunWithAnError) {
    iocp::WinsockGuard winsock;
    TwistedEcho server([](std::size_t, std::size_t echoed, std::string&) { return echoed < 64 * 3; });
    load::Config c = rounds_config(server.port(), 2, 64, 100);
    c.stall_s = 1;  // the run must end by itself: after about a second with no echo
    const load::Tally t = run(c);
    EXPECT_EQ(2u, t.errors);
    EXPECT_EQ(6u, t.messages);
    EXPECT_NE(std::string::npos, t.first_error.find("no echo"));
}

TEST(BenchLoad, ATimedRunCountsOnlyItsWindow) {
    iocp::WinsockGuard winsock;
    TwistedEcho server(kFaithful);
    load::Config c = rounds_config(server.port(), 4, 256, 0);
    c.warmup_s = 0.3;
    c.duration_s = 0.5;
    load::Run r(c);
    r.connect_all();
    std::vector<load::Phase> phases;
    const load::Tally t = r.run(nullptr, [&](load::Phase p) { phases.push_back(p); });
    EXPECT_EQ((std::vector<load::Phase>{load::Phase::kWarmup, load::Phase::kMeasure, load::Phase::kStop}), phases);
    EXPECT_EQ(0u, t.errors);
    EXPECT_GT(t.messages, 0u);
    EXPECT_LT(t.messages, r.completed()) << "the warm-up's echoes are not counted";
}

TEST(BenchLoad, ATimedRunCountsAConnectionNeverServedAsAnError) {
    iocp::WinsockGuard winsock;
    // Only the first connection is echoed; the others wait in silence, as chapter 1's
    // clients do behind the one it serves. The run ends on the clock, before the stall
    // watchdog, and still reports the three it never served.
    TwistedEcho server([](std::size_t conn, std::size_t, std::string&) { return conn == 0; });
    load::Config c = rounds_config(server.port(), 4, 64, 0);
    c.duration_s = 0.5;
    c.stall_s = 30;
    const load::Tally t = run(c);
    EXPECT_EQ(3u, t.errors);
    EXPECT_GT(t.messages, 0u);
    EXPECT_NE(std::string::npos, t.first_error.find("no echo in the whole run"));
}

TEST(BenchLoad, KnowsALoopbackAddressFromAnotherOne) {
    iocp::WinsockGuard winsock;
    EXPECT_TRUE(load::is_loopback(iocp::resolve({"127.0.0.1", 1})));
    EXPECT_TRUE(load::is_loopback(iocp::resolve({"127.45.6.7", 1})));
    EXPECT_TRUE(load::is_loopback(iocp::resolve({"::1", 1})));
    EXPECT_TRUE(load::is_loopback(iocp::resolve({"::ffff:127.0.0.1", 1})));
    EXPECT_FALSE(load::is_loopback(iocp::resolve({"10.0.0.1", 1})));
    EXPECT_FALSE(load::is_loopback(iocp::resolve({"128.0.0.1", 1})));
    EXPECT_FALSE(load::is_loopback(iocp::resolve({"::2", 1})));
    EXPECT_FALSE(load::is_loopback(iocp::resolve({"0.0.0.0", 1})));
}
