// Chapter 1 tests: the echo contract for one client at a time, and what "one at a
// time" means for a second client.
#include <gtest/gtest.h>

#include "contract/echo_contract.h"
#include "echo_server.h"
#include "iocp/test_client.h"
#include "support/test_support.h"

using iocp::TestClient;

INSTANTIATE_TEST_SUITE_P(ch01, EchoContract,
                         ::testing::Values(contract::make_target<ch01::EchoServer>("blocking", {1})),
                         contract::target_name);

// The lesson of chapter 1: the second client connects at once (the kernel queues it
// in the listen backlog) but is not served until the first one leaves.
TEST(Ch01BlockingEcho, SecondClientWaitsUntilTheFirstLeaves) {
    ch01::EchoServer server({"127.0.0.1", 0});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    auto first = TestClient::connect(at);
    ASSERT_EQ("first", first.echo("first"));

    auto second = TestClient::connect(at);  // succeeds: the handshake needs no accept()
    second.send("second");
    // While the first client stays, the second gets nothing. 300 ms is only how long
    // we look; a correct chapter-1 server never answers here, however long we wait.
    EXPECT_THROW(second.recv_exact(6, std::chrono::milliseconds(300)), iocp::TimeoutError);

    first.close();
    EXPECT_EQ("second", second.recv_exact(6));
    EXPECT_EQ(1u, server.connections_served());
    second.close();
    EXPECT_TRUE(testsupport::eventually([&] { return server.connections_served() == 2; }));
    server.stop();
}

// A stop() before any client ever came: the thread is blocked in accept().
TEST(Ch01BlockingEcho, StopsWhileWaitingInAccept) {
    ch01::EchoServer server({"127.0.0.1", 0});
    server.start();
    testsupport::finishes_within(std::chrono::seconds(10), "stop() in accept", [&] { server.stop(); });
    EXPECT_EQ(0u, server.connections_served());
}

// A port already taken is reported, not ignored (the article never checks bind()).
TEST(Ch01BlockingEcho, BindFailureIsReportedWithTheCallName) {
    ch01::EchoServer first({"127.0.0.1", 0});
    first.start();
    ch01::EchoServer second({"127.0.0.1", first.port()});
    try {
        second.start();
        FAIL() << "a second server bound the same port";
    } catch (const iocp::SystemError& e) {
        EXPECT_NE(std::string(e.what()).find("bind"), std::string::npos) << e.what();
    }
}
