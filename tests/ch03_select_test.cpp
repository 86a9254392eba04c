// Chapter 3 tests: the echo contract for one select() thread, FD_SETSIZE met with a
// clean refusal, and flow control with a tiny per-connection buffer.
#include <gtest/gtest.h>

#include <vector>

#include "contract/echo_contract.h"
#include "echo_server.h"
#include "iocp/test_client.h"
#include "support/test_support.h"

#ifndef _WIN32
#include <sys/resource.h>
#include <unistd.h>
#endif

using iocp::TestClient;

namespace {
// As many clients as select() can watch at once. On Linux the test's own client
// sockets live in the same process and take descriptor numbers too (two per
// connection), so 400 stays clear of FD_SETSIZE (1024).
#ifdef _WIN32
constexpr int kConcurrent = static_cast<int>(ch03::kSelectCapacity);  // 62
#else
constexpr int kConcurrent = 400;
#endif
}  // namespace

INSTANTIATE_TEST_SUITE_P(ch03, EchoContract,
                         ::testing::Values(contract::make_target<ch03::EchoServer>("select", {kConcurrent})),
                         contract::target_name);

// Clients are connected one by one until select() can watch no more. The first one
// past the limit gets an orderly close (EOF) and a log line; every earlier client is
// still served afterwards.
TEST(Ch03Select, ClientPastFdSetSizeIsClosedCleanlyOthersKeepBeingServed) {
#ifndef _WIN32
    // glibc's limit is on descriptor numbers, not on a count: use up the numbers below
    // FD_SETSIZE so that the server's next accepted socket lands at or above it.
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < FD_SETSIZE + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < FD_SETSIZE + 64)
        GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << rl.rlim_max << " is too low to reach FD_SETSIZE "
                     << FD_SETSIZE << " (raise it with ulimit -Hn)";
#endif
    ch03::EchoServer server({"127.0.0.1", 0});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
#ifndef _WIN32
    std::vector<int> filler;  // every dup() is closed again below, the last one too
    for (int fd = ::dup(0); fd >= 0; fd = ::dup(0)) {
        filler.push_back(fd);
        if (fd >= FD_SETSIZE - 40) break;
    }
#endif
    std::vector<TestClient> served;
    bool refused = false;
    for (int i = 0; i < static_cast<int>(ch03::kSelectCapacity) + 5 && !refused; ++i) {
        auto client = TestClient::connect(at);
        client.send("ping");
        // A refused client sees its connection end instead of its echo: EOF, or a
        // reset when "ping" had already arrived, since TCP answers a close with unread
        // input by RST (RFC 1122, 4.2.2.13). A client that sent nothing sees EOF; the
        // next test checks that.
        try {
            ASSERT_EQ("ping", client.recv_exact(4));
            served.push_back(std::move(client));
        } catch (const iocp::PeerClosedError&) {
            refused = true;
        } catch (const iocp::SystemError& e) {
            ASSERT_TRUE(iocp::is_disconnect_error(e.code())) << e.what();
            refused = true;
        }
    }
#ifndef _WIN32
    for (int fd : filler) ::close(fd);
#endif
    ASSERT_TRUE(refused) << "no client was refused after " << served.size();
    EXPECT_EQ(1u, server.clients_refused());
#ifdef _WIN32
    EXPECT_EQ(ch03::kSelectCapacity, served.size());  // 64 - listener - waker
#endif
    for (auto& c : served) ASSERT_EQ("pong", c.echo("pong"));
}

// The configured cap works below FD_SETSIZE too.
TEST(Ch03Select, ClientBeyondMaxClientsIsClosedCleanly) {
    ch03::EchoServer server({"127.0.0.1", 0}, ch03::Limits{2, 64 * 1024});
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
}

// With a 7-byte buffer per connection the server reads at most 7 bytes, echoes them,
// and reads again only when they are gone: flow control on every step, and still
// every byte comes back in order, for several clients interleaved.
TEST(Ch03Select, TinyBufferStillEchoesEveryByteInOrder) {
    ch03::EchoServer server({"127.0.0.1", 0}, ch03::Limits{ch03::kSelectCapacity, 7});
    server.start();
    const iocp::Endpoint at{"127.0.0.1", server.port()};
    std::vector<TestClient> clients;
    std::vector<std::string> payloads;
    for (std::uint32_t i = 0; i < 4; ++i) {
        clients.push_back(TestClient::connect(at));
        payloads.push_back(testsupport::make_payload(20000 + i, 50 + i));
    }
    for (std::size_t i = 0; i < clients.size(); ++i) clients[i].send(payloads[i]);
    for (std::size_t i = 0; i < clients.size(); ++i)
        EXPECT_TRUE(testsupport::same_bytes(payloads[i], clients[i].recv_exact(payloads[i].size(), testsupport::kPatientTimeout)));
}
