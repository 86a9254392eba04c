// Chapter 12 tests: timeouts. The echo contract with 200 clients and both timeouts on
// (long enough that no contract client meets them); an idle client closed on time, not
// before its timeout and not long after; a client that echoes at an interval shorter
// than the timeout, for several timeouts, never closed; a client that never reads
// dropped by the send timeout while another is served; no timer acts on a connection
// already closed; 1,000 connections with armed timers, then stop(), every count at 0.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "contract/echo_contract.h"
#include "echo_server.h"
#include "iocp/net.h"
#include "iocp/test_client.h"
#include "support/load.h"
#include "support/test_support.h"
#include "support/twin_support.h"

using iocp::TestClient;
using std::chrono::milliseconds;
using testsupport::eventually;
using testsupport::make_payload;

namespace {

ch12::Limits with_timeouts(milliseconds idle, milliseconds send) {
    ch12::Limits limits;
    limits.threads = 2;
    limits.idle_timeout = idle;
    limits.send_timeout = send;
    return limits;
}

contract::Target chapter_target() {
#ifdef _WIN32
    const char* name = "iocp_timeouts";
#else
    const char* name = "io_uring_timeouts";
#endif
    // Timeouts far above anything a contract test waits: they are armed on every
    // operation, and must never fire on a client that is being served.
    return testsupport::or_skip_without_io_uring(contract::make_target<ch12::EchoServer>(
        name, {200}, with_timeouts(milliseconds(60000), milliseconds(60000))));
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(ch12, EchoContract, ::testing::Values(chapter_target()), contract::target_name);

namespace {

#define CH12_START_SERVER(var, limits) START_TWIN_SERVER(var, ch12::EchoServer, limits)

std::string timers(const ch12::EchoServer& s) {
    return "idle timeouts " + std::to_string(s.idle_timeouts()) + ", send timeouts " +
           std::to_string(s.send_timeouts()) + ", timers after close " + std::to_string(s.timers_after_close()) +
           ", live " + std::to_string(s.live_connections()) + ", in flight " + std::to_string(s.operations_in_flight()) +
           ", buffers lent " + std::to_string(s.buffers_lent());
}

long long ms_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

//! [idle-on-time]
// An idle client is closed after its timeout: never before (a firm rule), and not long
// after (a bound of the timeout plus one tick plus a generous 2 s for a loaded machine:
// a watchdog on a lost timer, not a claim about speed).
TEST(Ch12Idle, AnIdleClientIsClosedOnTime) {
    constexpr milliseconds kIdle{400};
    CH12_START_SERVER(server, with_timeouts(kIdle, milliseconds(0)));
    auto client = TestClient::connect({"127.0.0.1", server->port()});
    ASSERT_EQ("hello", client.echo("hello"));
    const auto last_byte = std::chrono::steady_clock::now();  // the server's receive is posted about now
    EXPECT_EQ(TestClient::Closed::kEof, client.wait_closed(milliseconds(10000)));
    const long long waited = ms_since(last_byte);
    std::cout << "[ info     ] closed " << waited << " ms after the last echo (timeout " << kIdle.count()
              << " ms, tick " << server->timeout_tick().count() << " ms)\n";
    EXPECT_GE(waited, kIdle.count() - 5) << "closed before its timeout";  // 5 ms: the clocks of two threads
    EXPECT_LE(waited, kIdle.count() + server->timeout_tick().count() + 2000) << timers(*server);
    EXPECT_TRUE(eventually([&] { return server->idle_timeouts() == 1 && server->live_connections() == 0; }))
        << timers(*server);
}
//! [idle-on-time]

//! [busy-client]
// A client that echoes every 100 ms under a 400 ms idle timeout, for five timeouts'
// worth: each byte it sends restarts the clock, so it is never closed.
TEST(Ch12Idle, AClientThatKeepsTalkingIsNeverClosed) {
    CH12_START_SERVER(server, with_timeouts(milliseconds(400), milliseconds(0)));
    auto client = TestClient::connect({"127.0.0.1", server->port()});
    const auto began = std::chrono::steady_clock::now();
    int rounds = 0;
    while (ms_since(began) < 2000) {
        const std::string msg = "tick " + std::to_string(rounds++);
        ASSERT_EQ(msg, client.echo(msg)) << timers(*server);
        std::this_thread::sleep_for(milliseconds(100));
    }
    EXPECT_EQ(0u, server->idle_timeouts()) << timers(*server);
    EXPECT_EQ(1u, server->live_connections());
    std::cout << "[ info     ] " << rounds << " echoes over " << ms_since(began) << " ms, never closed\n";
}
//! [busy-client]

//! [send-timeout]
// A client that sends and never reads: its echo backs up, the server pauses it at its
// budget, and its last send makes no progress: the send timeout closes it. Meanwhile
// another client is served as usual.
TEST(Ch12Send, AClientThatNeverReadsIsDroppedByTheSendTimeoutWhileAnotherIsServed) {
    CH12_START_SERVER(server, with_timeouts(milliseconds(0), milliseconds(500)));
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto hog = TestClient::connect(at);
    auto other = TestClient::connect(at);
    const std::string chunk = make_payload(1u << 20, 21);
    const auto began = std::chrono::steady_clock::now();
    bool dropped = false;
    while (!dropped && ms_since(began) < 20000) {  // push until the server drops us
        try {
            if (hog.send_some(chunk) == 0) std::this_thread::sleep_for(milliseconds(50));
        } catch (const iocp::SystemError&) {
            dropped = true;  // reset by the server's close, with our unread echo pending
        }
        if (server->send_timeouts() == 1) dropped = true;
        ASSERT_EQ("ping", other.echo("ping")) << timers(*server);
    }
    EXPECT_TRUE(dropped) << "never dropped: " << timers(*server);
    EXPECT_TRUE(eventually([&] { return server->send_timeouts() == 1 && server->live_connections() == 1; }))
        << timers(*server);
    std::cout << "[ info     ] the client that never reads was dropped after " << ms_since(began) << " ms\n";
    EXPECT_EQ("still served", other.echo("still served"));
    EXPECT_EQ(0u, server->idle_timeouts());
    hog.reset();
}
//! [send-timeout]

//! [no-timer-after-close]
// 200 clients echo and leave, each with its timers armed while it was served. Once the
// idle timeout has passed twice over, no timeout has closed anything: a timer never
// acts on a connection already closed (Linux counts the link timeouts that came home
// after our close; Windows, the deadlines the sweep found on a closing connection).
TEST(Ch12Timers, NoTimerActsOnAConnectionAlreadyClosed) {
    constexpr milliseconds kIdle{300};
    CH12_START_SERVER(server, with_timeouts(kIdle, kIdle));
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    for (int i = 0; i < 200; ++i) {
        auto c = TestClient::connect(at);
        ASSERT_EQ("bye", c.echo("bye"));
        c.shutdown_send();
        ASSERT_EQ(TestClient::Closed::kEof, c.wait_closed());
    }
    ASSERT_TRUE(eventually([&] { return server->live_connections() == 0; })) << timers(*server);
    std::this_thread::sleep_for(2 * kIdle);
    EXPECT_EQ(0u, server->idle_timeouts()) << timers(*server);
    EXPECT_EQ(0u, server->send_timeouts()) << timers(*server);
    EXPECT_EQ(200u, server->peer_closes()) << timers(*server);
    EXPECT_EQ(0u, server->operations_in_flight()) << "a timer outlived its connection: " << timers(*server);
    std::cout << "[ info     ] " << timers(*server) << "\n";
}
//! [no-timer-after-close]

//! [thousand-armed]
// 1,000 connections, each with a receive and its timer waiting, then stop(): every
// timer goes with its operation, and every count returns to zero.
TEST(Ch12Stop, AThousandConnectionsWithArmedTimersStopCleanly) {
    CH12_START_SERVER(server, with_timeouts(milliseconds(60000), milliseconds(60000)));
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    testsupport::IdleConnections idle(at, 1000);
    ASSERT_TRUE(eventually([&] { return server->live_connections() == 1000; }, std::chrono::seconds(60)))
        << timers(*server);
    std::cout << "[ info     ] before stop(): " << timers(*server) << "\n";
    testsupport::finishes_within(milliseconds(60000), "stop() with 1,000 armed timers", [&] { server->stop(); });
    EXPECT_EQ(0u, server->live_connections()) << timers(*server);
    EXPECT_EQ(0u, server->operations_in_flight()) << timers(*server);
    EXPECT_EQ(0u, server->buffers_lent()) << timers(*server);
    EXPECT_EQ(0u, server->idle_timeouts()) << timers(*server);
    EXPECT_EQ(1000u, server->closed_by_us()) << timers(*server);
    EXPECT_EQ(0u, server->operations_abandoned());
}
//! [thousand-armed]
