// Chapter 2 tests: the echo contract with 200 clients at once, and the thread cap.
#include <gtest/gtest.h>

#include <vector>

#include "contract/echo_contract.h"
#include "echo_server.h"
#include "iocp/test_client.h"
#include "support/test_support.h"

using iocp::TestClient;

//! [instantiate]
INSTANTIATE_TEST_SUITE_P(ch02, EchoContract,
                         ::testing::Values(contract::make_target<ch02::EchoServer>("thread_per_client", {200})),
                         contract::target_name);
//! [instantiate]

// What chapter 1 could not do: the second client is served while the first stays.
TEST(Ch02ThreadPerClient, SecondClientIsServedWhileTheFirstStays) {
    ch02::EchoServer server({"127.0.0.1", 0});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    auto first = TestClient::connect(at);
    ASSERT_EQ("first", first.echo("first"));
    auto second = TestClient::connect(at);
    EXPECT_EQ("second", second.echo("second"));
    EXPECT_EQ(2u, server.live_connections());
}

// Each live client costs exactly one thread, and the threads go away with the clients.
TEST(Ch02ThreadPerClient, EachClientCostsOneThreadUntilItLeaves) {
    const auto threads_before = testsupport::thread_count();
    if (!threads_before) GTEST_SKIP() << "no per-process thread count on this platform";
    ch02::EchoServer server({"127.0.0.1", 0});
    server.start();  // + the accept thread
    std::vector<TestClient> clients;
    for (int i = 0; i < 50; ++i) {
        clients.push_back(TestClient::connect({"127.0.0.1", server.port()}));
        ASSERT_EQ("x", clients.back().echo("x"));
    }
    EXPECT_EQ(*threads_before + 1 + 50, *testsupport::thread_count());
    clients.clear();
    EXPECT_TRUE(testsupport::eventually([&] { return server.live_connections() == 0; }));
    // An ended thread leaves /proc/self/task at once, joined or not; what a missing
    // join would leak is its stack (see the chapter's page). Ended sessions are joined
    // when the next client arrives, or at stop().
    auto one_more = TestClient::connect({"127.0.0.1", server.port()});
    ASSERT_EQ("y", one_more.echo("y"));
    EXPECT_EQ(*threads_before + 1 + 1, *testsupport::thread_count());
}

// Beyond max_clients a client gets an orderly close, and those already in keep going.
TEST(Ch02ThreadPerClient, ClientBeyondTheCapIsClosedOthersKeepBeingServed) {
    ch02::EchoServer server({"127.0.0.1", 0}, ch02::Limits{3});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    std::vector<TestClient> in;
    for (int i = 0; i < 3; ++i) {
        in.push_back(TestClient::connect(at));
        ASSERT_EQ("in", in.back().echo("in"));
    }
    auto extra = TestClient::connect(at);
    EXPECT_EQ(TestClient::Closed::kEof, extra.wait_closed());
    EXPECT_EQ(1u, server.clients_refused());
    for (auto& c : in) EXPECT_EQ("still", c.echo("still"));
    in.pop_back();  // one leaves: room for one more
    EXPECT_TRUE(testsupport::eventually([&] { return server.live_connections() == 2; }));
    auto late = TestClient::connect(at);
    EXPECT_EQ("late", late.echo("late"));
}
