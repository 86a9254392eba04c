// Chapter 5 tests: the echo contract with 250 clients (four groups), many operations in
// flight at once, a reset while an operation is pending, immediate completions, and
// stop() under load leaving no operation, connection or thread behind.
//
// The operations-in-flight counter is how these tests see ownership: an operation is
// counted from a successful WSARecv/WSASend until its completion is collected, so a
// server that freed a connection without collecting (or waiting out) its operation
// would leave the count above zero, and one that collected twice would wrap it.
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "contract/echo_contract.h"
#include "echo_server.h"
#include "iocp/test_client.h"
#include "support/test_support.h"

using iocp::TestClient;
using std::chrono::milliseconds;
using testsupport::eventually;
using testsupport::make_payload;
using testsupport::same_bytes;

namespace {
// More than three groups' worth (3 * 63 = 189): the contract's concurrency test makes
// the server start a fourth waiting thread.
constexpr int kConcurrent = 250;
constexpr milliseconds kStopLimit{15000};

std::size_t groups_for(std::size_t clients) { return (clients + ch05::kSocketsPerGroup - 1) / ch05::kSocketsPerGroup; }
}  // namespace

INSTANTIATE_TEST_SUITE_P(ch05, EchoContract,
                         ::testing::Values(contract::make_target<ch05::EchoServer>("overlapped_events", {kConcurrent})),
                         contract::target_name);

// 250 idle clients: each has exactly one receive pending, so 250 operations are in
// flight at once, in four groups, each group's thread waiting on at most 64 events.
// Then every client sends its own payload and gets exactly that back.
TEST(Ch05Overlapped, TwoHundredFiftyReceivesPendingAtOnceThenEveryOneEchoed) {
    const auto threads_before = testsupport::thread_count();
    ch05::EchoServer server({"127.0.0.1", 0});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    std::vector<TestClient> clients;
    for (int i = 0; i < kConcurrent; ++i) {
        clients.push_back(TestClient::connect(at));
        ASSERT_EQ("hi", clients.back().echo("hi")) << "client " << i;
    }
    const auto n = static_cast<std::size_t>(kConcurrent);
    EXPECT_TRUE(eventually([&] { return server.operations_in_flight() == n; }))
        << "operations_in_flight() = " << server.operations_in_flight();
    EXPECT_EQ(n, server.live_connections());
    EXPECT_EQ(groups_for(n), server.waiting_threads());
    if (threads_before) {  // the accept thread and one thread per group
        EXPECT_EQ(*threads_before + 1 + server.waiting_threads(), *testsupport::thread_count());
    }

    std::vector<std::string> payloads;
    for (std::size_t i = 0; i < n; ++i)
        payloads.push_back(make_payload(3000 + i * 13, static_cast<std::uint32_t>(500 + i)));
    for (std::size_t i = 0; i < n; ++i) clients[i].send(payloads[i]);
    for (std::size_t i = 0; i < n; ++i)
        ASSERT_TRUE(same_bytes(payloads[i], clients[i].recv_exact(payloads[i].size()))) << "client " << i;

    clients.clear();  // every client closes: each pending receive completes with 0 bytes
    EXPECT_TRUE(eventually([&] { return server.live_connections() == 0 && server.operations_in_flight() == 0; }))
        << "live_connections() = " << server.live_connections()
        << ", operations_in_flight() = " << server.operations_in_flight();
    EXPECT_EQ(static_cast<std::uint64_t>(n), server.connections_served());
    testsupport::finishes_within(kStopLimit, "stop()", [&] { server.stop(); });
    EXPECT_EQ(0u, server.waiting_threads());
    if (threads_before) {
        EXPECT_EQ(*threads_before, *testsupport::thread_count()) << "threads left behind";
    }
}

// A client resets while the server has a receive pending for it, another while the
// server has a send pending for it (it never reads). Each costs the server that one
// connection and its one operation; the bystanders keep theirs and keep being served.
TEST(Ch05Overlapped, ResetWithAnOperationPendingCostsOnlyThatConnection) {
    ch05::EchoServer server({"127.0.0.1", 0});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    std::vector<TestClient> bystanders;
    for (int i = 0; i < 3; ++i) {
        bystanders.push_back(TestClient::connect(at));
        ASSERT_EQ("before", bystanders.back().echo("before"));
    }
    {
        auto idle = TestClient::connect(at);  // the server's receive for it stays pending
        ASSERT_EQ("x", idle.echo("x"));
        ASSERT_TRUE(eventually([&] { return server.operations_in_flight() == 4; }))
            << "operations_in_flight() = " << server.operations_in_flight();
        idle.reset();
    }
    EXPECT_TRUE(eventually([&] { return server.live_connections() == 3 && server.operations_in_flight() == 3; }))
        << "live_connections() = " << server.live_connections()
        << ", operations_in_flight() = " << server.operations_in_flight();
    {
        auto hog = TestClient::connect(at);  // sends and never reads: the server's send stalls
        const std::string chunk = make_payload(1u << 20, 3);
        for (int idle_rounds = 0, rounds = 0; idle_rounds < 3 && rounds < 64; ++rounds) {
            if (hog.send_some(chunk) == 0) {
                ++idle_rounds;
                std::this_thread::sleep_for(milliseconds(100));
            }
        }
        EXPECT_TRUE(eventually([&] { return server.operations_in_flight() == 4; }))
            << "the hog's send should be pending: operations_in_flight() = " << server.operations_in_flight();
        hog.reset();
    }
    EXPECT_TRUE(eventually([&] { return server.live_connections() == 3 && server.operations_in_flight() == 3; }))
        << "live_connections() = " << server.live_connections()
        << ", operations_in_flight() = " << server.operations_in_flight();
    for (auto& b : bystanders) EXPECT_EQ("after", b.echo("after"));
}

// A 7-byte buffer: every receive takes at most 7 bytes, so a 20 KB message becomes
// thousands of operations, most of them finding their bytes already waiting. Those
// calls complete at once (WSARecv returns 0); their completions are still signalled
// and collected, and every byte comes back in order, for four clients interleaved.
TEST(Ch05Overlapped, TinyBufferManyImmediateCompletionsEveryByteInOrder) {
    ch05::EchoServer server({"127.0.0.1", 0}, ch05::Limits{1000, 7});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    std::vector<TestClient> clients;
    std::vector<std::string> payloads;
    for (std::uint32_t i = 0; i < 4; ++i) {
        clients.push_back(TestClient::connect(at));
        payloads.push_back(make_payload(20000 + i, 60 + i));
    }
    for (std::size_t i = 0; i < clients.size(); ++i) clients[i].send(payloads[i]);
    for (std::size_t i = 0; i < clients.size(); ++i)
        EXPECT_TRUE(same_bytes(payloads[i], clients[i].recv_exact(payloads[i].size(), testsupport::kPatientTimeout))) << "client " << i;
    std::cout << "[ ch05     ] " << server.completed_at_once() << " WSARecv/WSASend calls completed at once"
              << std::endl;
    EXPECT_GT(server.completed_at_once(), 0u) << "no call completed at once: the immediate path went untested";
    // Half-close with the tiny buffer: every byte, then EOF.
    auto last = TestClient::connect(at);
    const std::string payload = make_payload(5000, 77);
    EXPECT_TRUE(same_bytes(payload, last.exchange(payload, payload.size(), testsupport::kPatientTimeout,
                                                  TestClient::HalfClose::kAfterSending)));
    EXPECT_EQ(TestClient::Closed::kEof, last.wait_closed());
    clients.clear();
    EXPECT_TRUE(eventually([&] { return server.live_connections() == 0 && server.operations_in_flight() == 0; }))
        << "live_connections() = " << server.live_connections()
        << ", operations_in_flight() = " << server.operations_in_flight();
}

// stop() while 120 clients are connected: 100 idle (a receive pending each) and 20
// that pushed megabytes without reading (a send pending each). stop() must cancel every
// operation and wait for each before freeing it: afterwards nothing is in flight, no
// connection is live, no group runs, and the thread count is back where it started.
TEST(Ch05Overlapped, StopUnderLoadCancelsAndDrainsEveryOperation) {
    const auto threads_before = testsupport::thread_count();
    ch05::EchoServer server({"127.0.0.1", 0});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    std::vector<TestClient> idle, hogs;
    for (int i = 0; i < 100; ++i) {
        idle.push_back(TestClient::connect(at));
        ASSERT_EQ("hi", idle.back().echo("hi"));
    }
    const std::string chunk = make_payload(256u << 10, 5);
    for (int i = 0; i < 20; ++i) {
        hogs.push_back(TestClient::connect(at));
        for (int round = 0; round < 16; ++round) hogs.back().send_some(chunk);
    }
    EXPECT_TRUE(eventually([&] { return server.operations_in_flight() == 120; }))
        << "operations_in_flight() = " << server.operations_in_flight();
    EXPECT_EQ(groups_for(120), server.waiting_threads());
    testsupport::finishes_within(kStopLimit, "stop() under load", [&] { server.stop(); });
    EXPECT_EQ(0u, server.operations_in_flight());
    EXPECT_EQ(0u, server.live_connections());
    EXPECT_EQ(0u, server.waiting_threads());
    EXPECT_EQ(120u, server.connections_served());
    if (threads_before) {
        EXPECT_EQ(*threads_before, *testsupport::thread_count()) << "threads left behind";
    }
    for (auto& c : idle) EXPECT_NO_THROW(c.wait_closed()) << "an idle client was not disconnected";
    server.stop();  // idempotent
    EXPECT_EQ(0u, server.operations_in_flight());
}

// The --max-clients cap: the client past it is closed at once (EOF), nobody else notices.
TEST(Ch05Overlapped, ClientBeyondMaxClientsIsClosedCleanly) {
    ch05::EchoServer server({"127.0.0.1", 0}, ch05::Limits{2, 1024});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    auto a = TestClient::connect(at);
    auto b = TestClient::connect(at);
    ASSERT_EQ("a", a.echo("a"));
    ASSERT_EQ("b", b.echo("b"));
    auto c = TestClient::connect(at);
    EXPECT_EQ(TestClient::Closed::kEof, c.wait_closed());
    EXPECT_EQ("a2", a.echo("a2"));
    EXPECT_EQ(1u, server.clients_refused());
    // Between collecting a send and posting the next receive, a connection has no
    // operation for a moment: the count settles at one per client, not instantly.
    EXPECT_TRUE(eventually([&] { return server.operations_in_flight() == 2; }))
        << "operations_in_flight() = " << server.operations_in_flight();
}
