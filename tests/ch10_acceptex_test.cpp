// Chapter 10 tests: accepting without an accept thread. The echo contract with 200
// clients; a burst of more than ten times the accepts posted, every client echoed; 100
// clients that connect and say nothing while a real client is served at once (and, on
// Windows, why a receive length in AcceptEx would have stopped it); a client that resets
// before its accept completes leaves the listener serving; accepted sockets know their
// peer (getpeername); a shortage of sockets pauses accepting and never stops it; stop()
// with accepts pending, every one coming home cancelled, and stop() under load.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
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

namespace {

constexpr int kConcurrent = 200;

contract::Target chapter_target() {
#ifdef _WIN32
    const char* name = "iocp_acceptex";
#else
    const char* name = "io_uring_multishot_accept";
#endif
    return testsupport::or_skip_without_io_uring(contract::make_target<ch10::EchoServer>(name, {kConcurrent}));
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(ch10, EchoContract, ::testing::Values(chapter_target()), contract::target_name);

namespace {

ch10::Limits with_accepts(std::size_t accepts, std::size_t threads = 2) {
    ch10::Limits limits;
    limits.accepts = accepts;
    limits.threads = threads;
    return limits;
}

#define CH10_START_SERVER(var, limits) START_TWIN_SERVER(var, ch10::EchoServer, limits)

// The accept side of a server, in one line for failure messages.
std::string accepts(const ch10::EchoServer& s) {
    std::string line = "accepts posted " + std::to_string(s.accepts_posted()) + ", pending " +
                       std::to_string(s.accepts_pending()) + ", clients accepted " +
                       std::to_string(s.clients_accepted()) + ", gone before accept " +
                       std::to_string(s.clients_gone_before_accept()) + ", cancelled " +
                       std::to_string(s.accepts_cancelled()) + ", failures " + std::to_string(s.accept_failures());
#ifdef _WIN32
    line += ", accept sockets open " + std::to_string(s.accept_sockets_open());
#endif
    return line + "; live " + std::to_string(s.live_connections()) + ", in flight " +
           std::to_string(s.operations_in_flight());
}

// Connections that connect and never send: each is only its socket.
std::vector<TestClient> silent_clients(const iocp::Endpoint& at, int count) {
    std::vector<TestClient> clients;
    for (int i = 0; i < count; ++i) clients.push_back(TestClient::connect(at));
    return clients;
}

}  // namespace

//! [burst]
// A burst far larger than the accepts posted: the listen backlog holds the clients the
// accepts have not reached yet, and each accept is posted again from its completion,
// so every client is served. On Windows every completion is one more AcceptEx; on
// Linux one multishot request serves them all.
TEST(Ch10Accept, ABurstOfTenTimesThePrePostedAcceptsIsFullyServed) {
    constexpr std::size_t kPosted = 16;
    constexpr int kClients = 200;  // 12.5 times kPosted
    CH10_START_SERVER(server, with_accepts(kPosted));
    int echoed = 0;
    auto clients = testsupport::connect_burst({"127.0.0.1", server->port()}, kClients, 4, echoed);
    EXPECT_EQ(kClients, echoed) << accepts(*server);
    EXPECT_EQ(static_cast<std::uint64_t>(kClients), server->clients_accepted()) << accepts(*server);
    EXPECT_EQ(0u, server->accept_failures()) << accepts(*server);
    std::cout << "[ info     ] " << kClients << " clients served by " << server->accepts_posted()
              << " accept request(s) in all\n";
#ifdef _WIN32
    EXPECT_EQ(kPosted + kClients, server->accepts_posted()) << "one AcceptEx per completion: " << accepts(*server);
    EXPECT_EQ(kPosted, server->accepts_pending()) << accepts(*server);
#else
    EXPECT_EQ(1u, server->accepts_pending()) << "the multishot accept stays armed: " << accepts(*server);
#endif
    testsupport::reset_all(clients);
}
//! [burst]

//! [silent-clients]
// 100 clients connect and say nothing, eight accepts posted. With a receive length of 0
// each accept completes on the connection alone, so the silent clients are accepted
// (and cost a pending receive each) and the next client is served at once.
TEST(Ch10Accept, ClientsThatConnectAndSayNothingHoldNoAccept) {
    CH10_START_SERVER(server, with_accepts(8));
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto silent = silent_clients(at, 100);
    auto real = TestClient::connect(at);
    EXPECT_EQ("served at once", real.echo("served at once")) << accepts(*server);
    EXPECT_TRUE(eventually([&] { return server->clients_accepted() == 101; })) << accepts(*server);
#ifdef _WIN32
    const int connected = server->pending_accepts_connected();
    if (connected < 0)
        std::cout << "[ info     ] SO_CONNECT_TIME is not supported here\n";
    else
        EXPECT_EQ(0, connected) << "an AcceptEx with a receive length of 0 never holds a client";
#endif
    testsupport::reset_all(silent);
}
//! [silent-clients]

//! [receive-length]
// The trap the default avoids. With a receive length, AcceptEx completes only when the
// client's first bytes arrive: four silent clients take the four accepts, and the next
// client, who did send, waits in the backlog with no accept left to reach it. The
// server looks dead. SO_CONNECT_TIME shows the four accepts each holding a client. Once
// one silent client speaks, its accept completes, comes round again, and takes the
// waiting client. (Linux: io_uring's accept receives nothing, so there is no trap.)
TEST(Ch10Accept, AReceiveLengthLetsSilentClientsHoldEveryAccept) {
#ifndef _WIN32
    GTEST_SKIP() << "Windows only: an io_uring accept has no receive length; it completes on the connection";
#else
    ch10::Limits limits = with_accepts(4);
    limits.accept_receive_bytes = 64;
    CH10_START_SERVER(server, limits);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto silent = silent_clients(at, 4);
    auto waiting = TestClient::connect(at);
    waiting.send("hello");
    const int connected = server->pending_accepts_connected();
    if (connected < 0)
        std::cout << "[ info     ] SO_CONNECT_TIME is not supported here\n";
    else
        EXPECT_TRUE(eventually([&] { return server->pending_accepts_connected() == 4; }))
            << "four accepts should each hold a silent client";
    // Nothing can come, however long we wait; half a second shows it without claiming speed.
    std::this_thread::sleep_for(milliseconds(500));
    EXPECT_EQ(0u, server->clients_accepted()) << "an accept completed with no bytes: " << accepts(*server);
    EXPECT_EQ(4u, server->accepts_pending()) << accepts(*server);
    silent[0].send("x");  // one speaks: its accept completes with that byte, and comes round
    EXPECT_EQ("x", silent[0].recv_exact(1)) << "the first byte came with the accept and is echoed";
    EXPECT_EQ("hello", waiting.recv_exact(5)) << "the waiting client was never reached: " << accepts(*server);
    EXPECT_EQ(2u, server->clients_accepted()) << accepts(*server);
    testsupport::reset_all(silent);
#endif
}
//! [receive-length]

//! [peer-names]
// Every accepted socket knows its peer. On Windows the server reads the peer from
// AcceptEx's own buffer (GetAcceptExSockaddrs) and checks getpeername() agrees, which
// works only after SO_UPDATE_ACCEPT_CONTEXT; on Linux the accepted socket is whole and
// getpeername() simply answers. Each client's own address must be among those told.
TEST(Ch10Accept, AcceptedSocketsKnowTheirPeer) {
    std::mutex mutex;
    std::vector<std::string> peers;
    ch10::Limits limits = with_accepts(4);
    limits.on_accepted = [&](const std::string& peer) {
        std::lock_guard<std::mutex> lock(mutex);
        peers.push_back(peer);
    };
    CH10_START_SERVER(server, limits);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    std::vector<TestClient> clients;
    for (int i = 0; i < 5; ++i) {
        clients.push_back(TestClient::connect(at));
        ASSERT_EQ("who", clients.back().echo("who")) << accepts(*server);
    }
    EXPECT_EQ(0u, server->accept_failures()) << "getpeername() disagreed, or failed: " << accepts(*server);
    server->stop();  // no more calls of on_accepted
    for (const TestClient& c : clients) {
        const std::string mine = iocp::local_address(c.native());
        EXPECT_NE(peers.end(), std::find(peers.begin(), peers.end(), mine)) << mine << " was never told";
    }
    EXPECT_EQ(5u, peers.size());
}
//! [peer-names]

//! [reset-before-accept]
// A client that connects and resets while no accept can take it. Accepting is held off
// by a shortage of sockets (Windows: the test hook, since Wine cannot run short; Linux:
// a real one, out of descriptors), so the client sits in the backlog and resets there.
// When accepting resumes, whatever the system makes of it (an accept that fails with
// WSAECONNRESET, a socket that reports the reset, or nothing at all), the listener
// goes on serving: the next client is echoed, and the client before it still is.
TEST(Ch10Accept, AClientThatResetsBeforeItsAcceptCompletesLeavesTheListenerServing) {
#ifndef _WIN32
    testsupport::DescriptorLimit limit(64);  // before the multishot accept reads it
#endif
    CH10_START_SERVER(server, with_accepts(1));
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto first = TestClient::connect(at);
    ASSERT_EQ("first", first.echo("first"));
#ifdef _WIN32
    server->simulate_socket_shortage(true);
    auto second = TestClient::connect(at);  // takes the one accept; re-posting it fails
    ASSERT_EQ("second", second.echo("second"));
    auto quitter = TestClient::connect(at);  // queued, no accept posted
#else
    auto second = TestClient::connect(at);
    ASSERT_EQ("second", second.echo("second"));
    std::optional<testsupport::DescriptorShortage> shortage;
    shortage.emplace(1, false);              // the server's next accept fails with EMFILE
    auto quitter = TestClient::connect(at);  // queued, not accepted
#endif
    EXPECT_TRUE(eventually([&] { return server->accept_failures() >= 1; })) << accepts(*server);
    quitter.reset();  // SO_LINGER 0: a reset while still in the backlog
    std::this_thread::sleep_for(milliseconds(200));  // let the reset land before accepting resumes
#ifdef _WIN32
    server->simulate_socket_shortage(false);
#else
    shortage.reset();
#endif
    auto next = TestClient::connect(at);
    EXPECT_EQ("next", next.echo("next")) << accepts(*server);
    EXPECT_EQ("still", first.echo("still"));
    std::cout << "[ info     ] after the reset in the backlog: " << accepts(*server) << "; resets counted "
              << server->reset_by_peer() << "\n";
}
//! [reset-before-accept]

//! [shortage]
// Out of sockets while making the next accept's: accepting pauses (each parked accept
// waits 100 ms before its next try, where a spinning server would fail thousands of
// times) and never stops: the client that waited through the shortage is served once
// it ends, and connected clients are served throughout.
TEST(Ch10Accept, RunningOutOfSocketsPausesAcceptingAndNeverStopsIt) {
#ifndef _WIN32
    testsupport::DescriptorLimit limit(64);  // before the multishot accept reads it
#endif
    CH10_START_SERVER(server, with_accepts(2));
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto early = TestClient::connect(at);
    ASSERT_EQ("early", early.echo("early"));
#ifdef _WIN32
    server->simulate_socket_shortage(true);
    const auto began = std::chrono::steady_clock::now();
    auto a = TestClient::connect(at);  // the two accepts complete; neither can be posted again
    auto b = TestClient::connect(at);
    ASSERT_EQ("a", a.echo("a"));
    ASSERT_EQ("b", b.echo("b"));
    auto late = TestClient::connect(at);
    late.send("late");
    std::this_thread::sleep_for(milliseconds(300));
    EXPECT_EQ("still", early.echo("still")) << "the shortage stopped service";
    const std::uint64_t failures = server->accept_failures();
    const auto ms = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - began).count();
    server->simulate_socket_shortage(false);
    std::cout << "[ info     ] accepts that could not be posted during the " << ms << " ms shortage: " << failures
              << "\n";
    EXPECT_GE(failures, 2u) << accepts(*server);
    EXPECT_LE(failures, static_cast<std::uint64_t>(2 * (2 + ms / 100))) << "an accept was retried without a pause";
    EXPECT_EQ("late", late.recv_exact(4)) << "the client that waited through the shortage: " << accepts(*server);
#else
    testsupport::expect_accept_to_pause_through_a_shortage(
        at, {&early}, [&] { return server->accept_failures(); }, false);
#endif
}
//! [shortage]

//! [stop-with-accepts]
// stop() with accepts pending: every one comes home cancelled, its socket closed. The
// server's own counts show nothing left (and on Linux, the process's descriptors).
TEST(Ch10Stop, StopWithAcceptsPendingCancelsEveryOneAndLeaksNothing) {
    constexpr std::size_t kPosted = 32;
    const std::optional<std::size_t> fds_before = testsupport::open_descriptors();
    const std::optional<std::size_t> threads_before = testsupport::thread_count();
    CH10_START_SERVER(server, with_accepts(kPosted));
    auto client = TestClient::connect({"127.0.0.1", server->port()});
    ASSERT_EQ("one", client.echo("one"));
#ifdef _WIN32
    const std::uint64_t expected = kPosted;  // every AcceptEx, the used one posted again
    EXPECT_EQ(kPosted, server->accept_sockets_open()) << accepts(*server);
#else
    const std::uint64_t expected = 1;  // the one multishot request
#endif
    EXPECT_EQ(expected, server->accepts_pending()) << accepts(*server);
    testsupport::finishes_within(milliseconds(30000), "stop() with accepts pending", [&] { server->stop(); });
    EXPECT_EQ(expected, server->accepts_cancelled()) << accepts(*server);
    EXPECT_EQ(0u, server->accepts_pending()) << accepts(*server);
#ifdef _WIN32
    EXPECT_EQ(0u, server->accept_sockets_open()) << "an accept's socket leaked: " << accepts(*server);
#endif
    EXPECT_EQ(0u, server->live_connections());
    EXPECT_EQ(0u, server->operations_in_flight());
    EXPECT_EQ(0u, server->live_contexts());
    EXPECT_EQ(TestClient::Closed::kEof, client.wait_closed());
    client.close();
    server.reset();
    if (fds_before) {
        EXPECT_EQ(*fds_before, *testsupport::open_descriptors()) << "a descriptor leaked";
    }
    if (threads_before) {
        EXPECT_EQ(*threads_before, *testsupport::thread_count()) << "a thread outlived stop()";
    }
}
//! [stop-with-accepts]

// stop() under load: 200 echoing clients, the accepts and the connections closed in
// order, nothing left behind.
TEST(Ch10Stop, StopUnderLoadFromTwoHundredClientsLeavesNothingBehind) {
    CH10_START_SERVER(server, with_accepts(16, 4));
    testsupport::EchoLoad load({"127.0.0.1", server->port()}, kConcurrent, 4);
    const bool loaded = load.wait_until_running(2000);
    load.server_stopping();
    testsupport::finishes_within(milliseconds(30000), "stop() under load", [&] { server->stop(); });
    load.finish();
    ASSERT_TRUE(loaded) << "the load never got going: " << load.connected() << " connected";
    EXPECT_EQ(0u, server->accepts_pending()) << accepts(*server);
    EXPECT_EQ(0u, server->live_connections()) << accepts(*server);
    EXPECT_EQ(0u, server->operations_in_flight()) << accepts(*server);
    EXPECT_EQ(0u, server->live_contexts());
    EXPECT_EQ(static_cast<std::uint64_t>(kConcurrent), server->closed_by_us()) << accepts(*server);
    EXPECT_EQ(0u, server->stale_completions());
}
