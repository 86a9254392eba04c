// The echo contract. What each test proves is in its comment; the chapters' pages
// link here. Every socket call has a timeout (iocp::TestClient) and every stop() a
// watchdog (finishes_within): a broken server fails these tests, it never hangs them.
#include "echo_contract.h"

#include <chrono>
#include <optional>
#include <thread>
#include <vector>

#include "iocp/test_client.h"
#include "support/test_support.h"

namespace contract {

using iocp::TestClient;
using std::chrono::milliseconds;
using testsupport::make_payload;
using testsupport::same_bytes;

namespace {
constexpr milliseconds kStopLimit{15000};

std::optional<std::size_t> g_fds_before, g_threads_before;
}  // namespace

void EchoContract::SetUp() {
    g_fds_before = testsupport::open_descriptors();
    g_threads_before = testsupport::thread_count();
    server_ = GetParam().start();
}

void EchoContract::TearDown() {
    if (server_) testsupport::finishes_within(kStopLimit, "stop()", [&] { server_->stop(); });
    server_.reset();
}

// Binary data comes back exactly: every byte value, NULs included (no strlen), and
// only as many bytes as were sent (no fixed 1024-byte replies).
TEST_P(EchoContract, EchoesBinaryPayloadExactly) {
    std::string every_byte;
    for (int round = 0; round < 4; ++round)
        for (int b = 0; b < 256; ++b) every_byte.push_back(static_cast<char>(b));
    auto client = TestClient::connect(endpoint());
    EXPECT_TRUE(same_bytes(every_byte, client.echo(every_byte)));
    const std::string nul_first("\0\xff\0hello\0", 9);
    EXPECT_TRUE(same_bytes(nul_first, client.echo(nul_first)));
}

// From 1 byte to 8 MiB on one connection. The large ones cannot fit in any socket
// buffer: the server meets partial sends and many partial receives.
TEST_P(EchoContract, EchoesMessagesFromOneByteToEightMiB) {
    auto client = TestClient::connect(endpoint());
    const std::size_t sizes[] = {1, 2, 1000, 65536 + 7, (1u << 20) + 3, 8u << 20};
    std::uint32_t seed = 1;
    for (const std::size_t size : sizes) {
        const std::string payload = make_payload(size, seed++);
        ASSERT_TRUE(same_bytes(payload, client.echo(payload, milliseconds(60000)))) << "size " << size;
    }
}

// Many small request/response rounds on one connection: the server keeps its
// per-connection state right between messages.
TEST_P(EchoContract, EchoesTenThousandSmallMessagesOnOneConnection) {
    auto client = TestClient::connect(endpoint());
    for (std::uint32_t i = 0; i < 10000; ++i) {
        const std::string message = make_payload(1 + i % 64, i);
        const std::string echo = client.echo(message);
        if (echo != message) FAIL() << "message " << i << ": " << same_bytes(message, echo).message();
    }
}

// K clients at once, each with its own payload: nobody gets anybody else's bytes
// (the original article's single shared buffer would fail this).
TEST_P(EchoContract, ServesConcurrentClientsWithoutCrossTalk) {
    const int k = concurrency();
    std::vector<TestClient> clients;
    std::vector<std::string> payloads;
    for (int i = 0; i < k; ++i) {
        clients.push_back(TestClient::connect(endpoint()));
        payloads.push_back(make_payload(1024 + static_cast<std::size_t>(i % 7) * 100, static_cast<std::uint32_t>(1000 + i)));
    }
    // All send first, then all read: the server has every connection busy at once.
    for (int i = 0; i < k; ++i) clients[static_cast<std::size_t>(i)].send(payloads[static_cast<std::size_t>(i)]);
    for (int i = 0; i < k; ++i) {
        const auto idx = static_cast<std::size_t>(i);
        ASSERT_TRUE(same_bytes(payloads[idx], clients[idx].recv_exact(payloads[idx].size()))) << "client " << i;
    }
    EXPECT_TRUE(testsupport::eventually([&] { return server_->live_connections() == static_cast<std::size_t>(k); }))
        << "live_connections() = " << server_->live_connections();
}

// A client that resets (RST, not FIN) in the middle of a message costs the server
// that one connection; the others keep being served.
TEST_P(EchoContract, ClientResetMidMessageDoesNotDisturbOthers) {
    std::optional<TestClient> steady;
    if (concurrency() >= 2) {  // a bystander that stays connected throughout
        steady = TestClient::connect(endpoint());
        ASSERT_EQ("before", steady->echo("before"));
    }
    {
        auto rude = TestClient::connect(endpoint());
        const std::string big = make_payload(4u << 20, 7);
        rude.send_some(big);  // part of a message, maybe not even all of that read yet
        rude.reset();
    }
    if (steady) {
        EXPECT_EQ("after", steady->echo("after"));
    }
    auto next = TestClient::connect(endpoint());
    const std::string payload = make_payload(100000, 8);
    EXPECT_TRUE(same_bytes(payload, next.echo(payload)));
    next.close();
    if (steady) steady->close();
    EXPECT_TRUE(testsupport::eventually([&] { return server_->live_connections() == 0; }))
        << "live_connections() = " << server_->live_connections();
}

// Half-close: the client sends, then shuts down its sending side. It must still get
// every byte echoed, and then see the server's orderly close (EOF, not a reset).
TEST_P(EchoContract, HalfCloseStillReceivesEveryByteThenEof) {
    auto client = TestClient::connect(endpoint());
    const std::string payload = make_payload(3u << 20, 9);
    const std::string echo = client.exchange(payload, payload.size(), iocp::kDefaultTimeout,
                                             TestClient::HalfClose::kAfterSending);
    EXPECT_TRUE(same_bytes(payload, echo));
    EXPECT_EQ(TestClient::Closed::kEof, client.wait_closed());
}

// A client that sends and never reads fills its socket buffers and then the
// server's; the server must not buffer without bound, must keep serving others
// (where its model serves more than one) and must still stop on request.
TEST_P(EchoContract, ClientThatNeverReadsCannotStallOthersOrStop) {
    auto hog = TestClient::connect(endpoint());
    const std::string chunk = make_payload(1u << 20, 10);
    std::size_t sent = 0;
    // Push until nothing more is taken for a while (or 64 MiB, whichever first).
    for (int idle_rounds = 0; idle_rounds < 3 && sent < (64u << 20);) {
        const std::size_t n = hog.send_some(chunk);
        sent += n;
        if (n == 0) {
            ++idle_rounds;
            std::this_thread::sleep_for(milliseconds(100));
        } else {
            idle_rounds = 0;
        }
    }
    EXPECT_LT(sent, 64u << 20) << "the server accepted 64 MiB it could not send back";
    if (concurrency() >= 2) {
        auto other = TestClient::connect(endpoint());
        EXPECT_EQ("still here", other.echo("still here"));
    }
    testsupport::finishes_within(kStopLimit, "stop() with a client that never reads", [&] { server_->stop(); });
    EXPECT_EQ(0u, server_->live_connections());
}

// stop() with clients connected: returns within a bound, every client sees its
// connection end, and nothing is left behind (threads, descriptors, connections).
TEST_P(EchoContract, StopWithClientsConnectedLeavesNothingBehind) {
    const int k = concurrency() < 20 ? concurrency() : 20;
    std::vector<TestClient> clients;
    for (int i = 0; i < k; ++i) {
        clients.push_back(TestClient::connect(endpoint()));
        EXPECT_EQ("hi", clients.back().echo("hi"));
    }
    testsupport::finishes_within(kStopLimit, "stop() with clients connected", [&] { server_->stop(); });
    EXPECT_EQ(0u, server_->live_connections());
    for (auto& c : clients) EXPECT_NO_THROW(c.wait_closed()) << "a client was not disconnected";
    clients.clear();
    server_.reset();
    if (g_threads_before) {
        EXPECT_EQ(*g_threads_before, *testsupport::thread_count()) << "threads left behind";
    }
    if (g_fds_before) {
        EXPECT_EQ(*g_fds_before, *testsupport::open_descriptors()) << "descriptors left behind";
    }
}

// Connect, echo, close, many times over: per-connection state is released every time.
TEST_P(EchoContract, ManyShortConnectionsLeaveNoConnectionBehind) {
    for (int i = 0; i < 300; ++i) {
        auto client = TestClient::connect(endpoint());
        const std::string m = make_payload(1 + static_cast<std::size_t>(i) % 300, static_cast<std::uint32_t>(i));
        ASSERT_TRUE(same_bytes(m, client.echo(m))) << "connection " << i;
    }
    EXPECT_TRUE(testsupport::eventually([&] { return server_->live_connections() == 0; }))
        << "live_connections() = " << server_->live_connections();
}

}  // namespace contract
