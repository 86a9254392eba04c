// Chapter 13 tests: the same server, cheaper. Speed itself is measured by bench/, not
// here; these tests hold the rules that every step must keep. The echo contract twice,
// with every step on and with every step off. The steps report what runs. Each step's
// own mark, counted: a multishot receive armed once per connection (Linux), operations
// finished inline with no packet (Windows). And what the steps rewrote, tested again:
// backpressure (Linux: now a cancel of the armed receive), an exhausted pool (a
// multishot receive ended by -ENOBUFS), the timeouts (Linux: now a sweep), and stop()
// with a thousand receives armed.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
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
using testsupport::labelled_payload;
using testsupport::make_payload;
using testsupport::same_bytes;

namespace {

ch13::Limits all_steps(std::size_t threads = 2) {
    ch13::Limits limits;
    limits.threads = threads;
    return limits;
}

ch13::Limits no_steps(std::size_t threads = 2) {
    ch13::Limits limits = all_steps(threads);
    limits.steps = {false, false, false, false, false, false};
    return limits;
}

contract::Target chapter_target(const char* name, const ch13::Limits& limits) {
    return testsupport::or_skip_without_io_uring(contract::make_target<ch13::EchoServer>(name, {200}, limits));
}

}  // namespace

// The server as this chapter leaves it, and as it was before the first step.
INSTANTIATE_TEST_SUITE_P(ch13, EchoContract,
                         ::testing::Values(chapter_target("all_steps", all_steps()),
                                           chapter_target("no_steps", no_steps())),
                         contract::target_name);

namespace {

#define CH13_START_SERVER(var, limits) START_TWIN_SERVER(var, ch13::EchoServer, limits)

std::string counts(const ch13::EchoServer& s) {
    return "live " + std::to_string(s.live_connections()) + ", in flight " + std::to_string(s.operations_in_flight()) +
           ", completions " + std::to_string(s.completions()) + ", kernel waits " + std::to_string(s.kernel_waits()) +
           ", inline " + std::to_string(s.inline_completions()) + ", armed " + std::to_string(s.receives_armed()) +
           ", lent " + std::to_string(s.buffers_lent()) + ", pauses " + std::to_string(s.backpressure_pauses()) +
           ", most queued " + std::to_string(s.most_bytes_queued()) + ", waits " + std::to_string(s.buffer_waits()) +
           ", pool errors " + std::to_string(s.pool_errors()) + ", idle timeouts " +
           std::to_string(s.idle_timeouts()) + ", send timeouts " + std::to_string(s.send_timeouts());
}

std::string features(const ch13::EchoServer& s) {
    const auto f = s.features();
    return std::string("batch ") + (f.batch_dequeue ? "on" : "off") + ", skip-on-success " +
           (f.skip_on_success ? "on" : "off") + ", multishot " + (f.multishot_recv ? "on" : "off") +
           ", single-issuer " + (f.single_issuer ? "on" : "off") + ", registered ring " +
           (f.registered_ring ? "on" : "off") + ", fixed files " + (f.fixed_files ? "on" : "off");
}

// The most one connection may hold: its budget, or (Linux, a multishot receive's
// bytes in transit) every buffer of its worker's ring.
std::size_t ring_share(const ch13::EchoServer& s) {
    const ch13::Limits defaults;
#ifdef _WIN32
    static_cast<void>(s);
    return defaults.output_high;
#else
    return std::max(defaults.output_high, s.pool_size() / s.threads() * defaults.buffer_size);
#endif
}

}  // namespace

//! [features]
// What runs is what was asked for, where the platform offers it; with every step off,
// nothing of this chapter runs.
TEST(Ch13Steps, TheServerSaysWhichStepsRun) {
    {
        CH13_START_SERVER(server, all_steps());
        std::cout << "[ info     ] every step asked for: " << features(*server) << "\n";
        EXPECT_TRUE(server->features().batch_dequeue);
#ifdef _WIN32
        // Off only where a layered provider that is not an IFS one is installed.
        if (!server->features().skip_on_success) std::cout << "[ info     ] a non-IFS provider: no skip on success\n";
#else
        EXPECT_TRUE(server->features().multishot_recv);
        EXPECT_TRUE(server->features().fixed_files) << "RLIMIT_NOFILE too low for a table of registered sockets?";
        // SINGLE_ISSUER and DEFER_TASKRUN need Linux 6.1; a registered ring, 5.18.
        if (!server->features().single_issuer) std::cout << "[ info     ] this kernel has no DEFER_TASKRUN (6.1)\n";
#endif
    }
    CH13_START_SERVER(server, no_steps());
    const auto f = server->features();
    EXPECT_FALSE(f.batch_dequeue || f.skip_on_success || f.multishot_recv || f.single_issuer || f.registered_ring ||
                 f.fixed_files)
        << features(*server);
}
//! [features]

//! [armed-once]
// 20 clients echo 50 messages each. Linux: one receive armed per connection for all 50
// (multishot), against one per message without it. Windows: the sends, which a
// loopback socket takes at once, finish inline, with no packet; without the step, none.
TEST(Ch13Steps, EachStepLeavesItsMarkInTheCounts) {
    for (const bool on : {true, false}) {
        CH13_START_SERVER(server, on ? all_steps() : no_steps());
        const iocp::Endpoint at{"127.0.0.1", server->port()};
        ASSERT_EQ(20 * 50, testsupport::echo_labelled_rounds(at, 20, 50, 300)) << counts(*server);
        ASSERT_TRUE(eventually([&] { return server->live_connections() == 0; })) << counts(*server);
        std::cout << "[ info     ] steps " << (on ? "on: " : "off: ") << counts(*server) << "\n";
#ifdef _WIN32
        if (on && server->features().skip_on_success) {
            EXPECT_GT(server->inline_completions(), 0u) << counts(*server);
        }
        if (!on) {
            EXPECT_EQ(0u, server->inline_completions()) << counts(*server);
        }
#else
        if (on) {
            EXPECT_EQ(20u, server->receives_armed()) << counts(*server);
        } else {
            EXPECT_GE(server->receives_armed(), 20u * 50u) << counts(*server);
        }
#endif
        EXPECT_LE(server->kernel_waits(), server->completions() + 100) << counts(*server);
    }
}
//! [armed-once]

//! [pause-resume]
// Backpressure, rewritten on Linux: at the high watermark the armed receive is
// cancelled, and armed again at the low one. A client that sends 16 MiB and reads only
// half a second later gets every byte back in order, and is paused, never dropped. The
// pause lands late by what the armed receive had taken meanwhile (see in-transit):
// bounded by the worker's share of the pool, where chapter 11 had the budget.
TEST(Ch13Budget, BackpressureThroughACancelledReceiveLosesNoByte) {
    CH13_START_SERVER(server, all_steps());
    auto client = TestClient::connect({"127.0.0.1", server->port()});
    const std::string payload = make_payload(16u << 20, 13);
    std::string echoed;
    std::thread reader([&] {
        std::this_thread::sleep_for(milliseconds(500));
        echoed = client.recv_exact(payload.size(), testsupport::kPatientTimeout);
    });
    try {
        client.send(payload, testsupport::kPatientTimeout);
    } catch (const std::exception& e) {
        ADD_FAILURE() << "the server dropped a client that reads: " << e.what() << "; " << counts(*server);
    }
    reader.join();
    EXPECT_TRUE(same_bytes(payload, echoed));
    EXPECT_GE(server->backpressure_pauses(), 1u) << counts(*server);
    EXPECT_LE(server->most_bytes_queued(), ring_share(*server)) << counts(*server);
    EXPECT_EQ(0u, server->clients_over_limit()) << counts(*server);
    EXPECT_EQ(0u, server->pool_errors()) << counts(*server);
    std::cout << "[ info     ] " << counts(*server) << "\n";
}

// And a client that never reads stays within its budget while another is served.
TEST(Ch13Budget, AClientThatNeverReadsStaysWithinItsBudget) {
    CH13_START_SERVER(server, all_steps());
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto hog = TestClient::connect(at);
    const std::size_t pushed = testsupport::push_without_reading(hog, 256u << 20);
    EXPECT_LT(pushed, 256u << 20) << counts(*server);
    EXPECT_LE(server->most_bytes_queued(), ring_share(*server)) << counts(*server);
    EXPECT_EQ(0u, server->clients_over_limit()) << "paused, not dropped: " << counts(*server);
    std::cout << "[ info     ] at most " << (server->most_bytes_queued() >> 10) << " KiB queued for the client; "
              << counts(*server) << "\n";
    auto other = TestClient::connect(at);
    const std::string payload = make_payload(1u << 20, 12);
    EXPECT_TRUE(same_bytes(payload, other.echo(payload))) << counts(*server);
    hog.reset();
}
//! [pause-resume]

//! [pool-exhaustion]
// One buffer for twenty clients echoing 40 KiB messages: on Linux each empty ring
// ends a multishot receive with -ENOBUFS, and the connection waits in line for a
// buffer; on Windows a buffer may come and go within one inline run, so one buffer,
// not two, makes sure that clients meet an empty pool. Every byte still comes back to
// its own client; no buffer is lent twice.
TEST(Ch13Pool, AnExhaustedPoolStillServesEveryClientRight) {
    ch13::Limits limits = all_steps(2);  // two workers: one may hold the buffer while the other needs it
    limits.pool_buffers = 1;
    limits.output_high = 16 * 1024;
    limits.output_low = 0;
    CH13_START_SERVER(server, limits);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    EXPECT_EQ(20 * 20, testsupport::echo_labelled_rounds(at, 20, 20, 40 * 1024)) << counts(*server);
    EXPECT_EQ(0u, server->pool_errors()) << counts(*server);
    EXPECT_GE(server->buffer_waits(), 1u) << counts(*server);
}
//! [pool-exhaustion]

// Chapter 11's line, with a multishot receive: a connection woken from the line that
// finds only a FIN takes no buffer, and the next in line gets its turn.
TEST(Ch13Pool, AConnectionThatLeavesTheLinePassesItsTurnOn) {
    ch13::Limits limits = all_steps(1);
    limits.pool_buffers = 1;
    CH13_START_SERVER(server, limits);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    EXPECT_EQ("my turn", testsupport::turn_after_a_leaver(at, [&] { return server->buffer_waits(); }))
        << counts(*server);
    EXPECT_EQ(0u, server->pool_errors()) << counts(*server);
}

//! [timeouts]
// The timeouts, rewritten on Linux as a sweep: an idle client is closed after its
// timeout, never before and at most a tick (plus 2 s of slack) after; a client that
// never reads is dropped by the send timeout while another is served.
TEST(Ch13Timeouts, AnIdleClientIsClosedOnTime) {
    constexpr milliseconds kIdle{400};
    ch13::Limits limits = all_steps();
    limits.idle_timeout = kIdle;
    CH13_START_SERVER(server, limits);
    auto client = TestClient::connect({"127.0.0.1", server->port()});
    ASSERT_EQ("hello", client.echo("hello"));
    const auto last_byte = std::chrono::steady_clock::now();
    EXPECT_EQ(TestClient::Closed::kEof, client.wait_closed(milliseconds(10000)));
    const auto waited =
        std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - last_byte).count();
    std::cout << "[ info     ] closed " << waited << " ms after the last echo (tick "
              << server->timeout_tick().count() << " ms)\n";
    EXPECT_GE(waited, kIdle.count() - 5) << "closed before its timeout";
    EXPECT_LE(waited, kIdle.count() + server->timeout_tick().count() + 2000) << counts(*server);
    EXPECT_TRUE(eventually([&] { return server->idle_timeouts() == 1 && server->live_connections() == 0; }))
        << counts(*server);
}

TEST(Ch13Timeouts, AClientThatNeverReadsIsDroppedByTheSendTimeout) {
    ch13::Limits limits = all_steps();
    limits.send_timeout = milliseconds(500);
    CH13_START_SERVER(server, limits);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto hog = TestClient::connect(at);
    auto other = TestClient::connect(at);
    testsupport::push_without_reading(hog, 64u << 20);
    EXPECT_TRUE(eventually([&] { return server->send_timeouts() == 1 && server->live_connections() == 1; },
                           std::chrono::seconds(20)))
        << counts(*server);
    EXPECT_EQ("still served", other.echo("still served"));
    EXPECT_EQ(0u, server->idle_timeouts());
    hog.reset();
}
//! [timeouts]

//! [stop]
// 1,000 connections, each with a receive armed (and both timeouts on), then stop():
// every receive comes home, every buffer goes back, every count returns to zero.
TEST(Ch13Stop, AThousandArmedReceivesStopCleanly) {
    ch13::Limits limits = all_steps();
    limits.idle_timeout = limits.send_timeout = milliseconds(60000);
    CH13_START_SERVER(server, limits);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    testsupport::IdleConnections idle(at, 1000);
    ASSERT_TRUE(eventually([&] { return server->live_connections() == 1000; }, std::chrono::seconds(60)))
        << counts(*server);
    testsupport::finishes_within(milliseconds(60000), "stop() with 1,000 armed receives", [&] { server->stop(); });
    EXPECT_EQ(0u, server->live_connections()) << counts(*server);
    EXPECT_EQ(0u, server->operations_in_flight()) << counts(*server);
    EXPECT_EQ(0u, server->buffers_lent()) << counts(*server);
    EXPECT_EQ(1000u, server->closed_by_us()) << counts(*server);
    EXPECT_EQ(0u, server->operations_abandoned());
}
//! [stop]
