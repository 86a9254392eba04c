// Chapter 14's engine: the echo contract on the engine as an echo application, and what
// an application relies on - a send from any thread, by id, reaching that connection
// and never a later one in its slot; a close after sends delivering every byte first;
// every count back to zero.
#include <gtest/gtest.h>

#include <chrono>
#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "apps/echo_service.h"
#include "contract/echo_contract.h"
#include "engine/engine.h"
#include "iocp/test_client.h"
#include "support/test_support.h"
#include "support/twin_support.h"
#include "support/load.h"
#ifndef _WIN32
#include "support/io_uring_support.h"
#endif

using iocp::TestClient;
using testsupport::eventually;
using testsupport::make_payload;
using testsupport::same_bytes;

namespace {

contract::Target engine_target() {
    ch14::EngineOptions options;
    options.threads = 2;
    return testsupport::or_skip_without_io_uring(contract::make_target<ch14::EchoService>("engine_echo", {200}, options));
}

// Records what the engine says; on connect it may greet, then close after sends.
class Recorder final : public ch14::Handler {
public:
    std::string greeting;
    bool close_after_greeting = false;
    ch14::Engine* engine = nullptr;

    void on_connect(ch14::ConnectionId id, const std::string&) override {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            connected_.push_back(id);
        }
        if (!greeting.empty()) engine->send(id, greeting);
        if (close_after_greeting) engine->close(id, true);
    }
    void on_data(ch14::ConnectionId id, std::string_view bytes) override { engine->send(id, std::string(bytes)); }
    void on_close(ch14::ConnectionId id) override {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_.push_back(id);
    }
    std::vector<ch14::ConnectionId> connected() {
        std::lock_guard<std::mutex> lock(mutex_);
        return connected_;
    }
    std::vector<ch14::ConnectionId> closed() {
        std::lock_guard<std::mutex> lock(mutex_);
        return closed_;
    }

private:
    std::mutex mutex_;
    std::vector<ch14::ConnectionId> connected_, closed_;
};

struct Started {
    Recorder handler;
    std::unique_ptr<ch14::Engine> engine;
};

std::string counts(const ch14::Engine& e) {
    return "live " + std::to_string(e.live_connections()) + ", in flight " + std::to_string(e.operations_in_flight()) +
           ", lent " + std::to_string(e.buffers_lent()) + ", queued " + std::to_string(e.bytes_queued()) +
           ", commands " + std::to_string(e.commands_pending()) + ", dropped sends " +
           std::to_string(e.sends_dropped()) + ", over limit " + std::to_string(e.clients_over_limit());
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(ch14, EchoContract, ::testing::Values(engine_target()), contract::target_name);

// A started engine with a Recorder, configured first by `setup`; or a skip.
std::unique_ptr<Started> start_engine(std::size_t threads, const std::function<void(Recorder&)>& setup = {},
                                      ch14::EngineOptions options = {}) {
    auto s = std::make_unique<Started>();
    if (setup) setup(s->handler);
    options.threads = threads;
    s->engine = std::make_unique<ch14::Engine>(iocp::Endpoint{"127.0.0.1", 0}, s->handler, options);
    s->handler.engine = s->engine.get();
    s->engine->start();
    return s;
}

// On Linux, a skip where the kernel refuses io_uring; on Windows, never.
#ifdef _WIN32
#define CH14_SKIP_WITHOUT_ENGINE()
#else
#define CH14_SKIP_WITHOUT_ENGINE() \
    if (const auto why = testsupport::io_uring_refused()) GTEST_SKIP() << *why
#endif

#define CH14_START_ENGINE(var, ...)                                                      \
    CH14_SKIP_WITHOUT_ENGINE();                                                          \
    auto var##_owned = start_engine(__VA_ARGS__);                                        \
    Started& var = *var##_owned

//! [send-any-thread]
// The test's own thread sends to a connection by its id: the engine's worker delivers.
TEST(Ch14Engine, ASendFromAnyThreadReachesItsConnection) {
    CH14_START_ENGINE(s, 2);
    auto client = TestClient::connect({"127.0.0.1", s.engine->port()});
    ASSERT_TRUE(eventually([&] { return s.handler.connected().size() == 1; }));
    const ch14::ConnectionId id = s.handler.connected()[0];
    const std::string big = make_payload(300 * 1024, 3);
    std::thread other([&] { s.engine->send(id, "hello, "); s.engine->send(id, big); });
    other.join();
    EXPECT_EQ("hello, ", client.recv_exact(7));
    EXPECT_TRUE(same_bytes(big, client.recv_exact(big.size())));
    client.close();
    ASSERT_TRUE(eventually([&] { return s.engine->live_connections() == 0; })) << counts(*s.engine);
}
//! [send-any-thread]

//! [gone-id]
// An id outlives its connection, and never names the next one in the slot.
TEST(Ch14Engine, ASendToAGoneConnectionIsDroppedNeverMisdelivered) {
    CH14_START_ENGINE(s, 1);
    const iocp::Endpoint at{"127.0.0.1", s.engine->port()};
    {
        auto first = TestClient::connect(at);
        ASSERT_EQ("one", first.echo("one"));
    }
    ASSERT_TRUE(eventually([&] { return s.handler.closed().size() == 1 && s.engine->live_connections() == 0; }));
    const ch14::ConnectionId gone = s.handler.closed()[0];
    auto second = TestClient::connect(at);  // the slot freed last is taken first
    ASSERT_EQ("two", second.echo("two"));
    EXPECT_TRUE(s.engine->send(gone, "not for you"));
    ASSERT_TRUE(eventually([&] { return s.engine->sends_dropped() == 1; })) << counts(*s.engine);
    EXPECT_EQ("three", second.echo("three"));  // and nothing else arrived before it
}
//! [gone-id]

//! [close-after-sends]
// A greeting of nearly 1 MiB (the budget), then a close after sends: every byte
// arrives, then EOF.
TEST(Ch14Engine, ACloseAfterSendsDeliversEveryByteThenCloses) {
    const std::string greeting = make_payload(1024 * 1024 - 100, 5);  // just within the budget
    CH14_START_ENGINE(s, 2, [&](Recorder& r) {
        r.greeting = greeting;
        r.close_after_greeting = true;
    });
    auto client = TestClient::connect({"127.0.0.1", s.engine->port()});
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the queue fills while nobody reads
    EXPECT_TRUE(same_bytes(s.handler.greeting, client.recv_exact(s.handler.greeting.size())));
    EXPECT_EQ(TestClient::Closed::kEof, client.wait_closed());
    client.close();  // our FIN: the engine, lingering for it, closes at once
    ASSERT_TRUE(eventually([&] { return s.engine->live_connections() == 0; })) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->linger_timeouts());
}
//! [close-after-sends]

// Everything the engine counts as outstanding returns to zero, busy clients and all.
TEST(Ch14Engine, StopWithBusyClientsLeavesEveryCountAtZero) {
    CH14_START_ENGINE(s, 2);
    const iocp::Endpoint at{"127.0.0.1", s.engine->port()};
    std::vector<TestClient> clients;
    for (int i = 0; i < 20; ++i) {
        clients.push_back(TestClient::connect(at));
        clients.back().send(make_payload(64 * 1024, static_cast<std::uint32_t>(i)));  // echoes nobody reads
    }
    ASSERT_TRUE(eventually([&] { return s.engine->live_connections() == 20; }));
    s.engine->stop();
    EXPECT_EQ(0u, s.engine->live_connections()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->operations_in_flight()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->buffers_lent()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->bytes_queued()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->commands_pending()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->accepts_pending()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->operations_abandoned()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->pool_errors());
    EXPECT_EQ(20u, s.handler.closed().size()) << "every connection's close is told once";
    testsupport::reset_all(clients);
}

//! [linger]
// A close after sends to a client that reads everything, sees our FIN, and never
// closes: the engine waits for its FIN no longer than the linger time.
TEST(Ch14Engine, ACloseAfterSendsToAPeerThatNeverClosesEndsAtTheLinger) {
    ch14::EngineOptions options;
    options.linger = std::chrono::milliseconds(300);
    CH14_START_ENGINE(s, 1, [](Recorder& r) {
        r.greeting = "bye";
        r.close_after_greeting = true;
    }, options);
    auto client = TestClient::connect({"127.0.0.1", s.engine->port()});
    EXPECT_EQ("bye", client.recv_exact(3));
    EXPECT_EQ(TestClient::Closed::kEof, client.wait_closed());  // our FIN; theirs never comes
    ASSERT_TRUE(eventually([&] { return s.engine->live_connections() == 0; })) << counts(*s.engine);
    EXPECT_EQ(1u, s.engine->linger_timeouts());
    EXPECT_EQ(1u, s.handler.closed().size());
}
//! [linger]

//! [hammer]
// Two threads send to every id the engine ever handed out, the gone ones included, and
// now and then close one, while clients come and go one after another (the slot freed
// last is taken first, so a stale id names a slot with a new occupant). Each send
// carries its id: a client that received two different ids got bytes meant for
// another connection. Then every connection was told of its close exactly once, and
// stop() leaves every count at zero.
TEST(Ch14Engine, SendsAndClosesFromOtherThreadsNeverReachAnotherConnection) {
    CH14_START_ENGINE(s, 2);
    const iocp::Endpoint at{"127.0.0.1", s.engine->port()};
    std::atomic<bool> done{false};
    std::vector<std::thread> senders;
    for (int t = 0; t < 2; ++t)
        senders.emplace_back([&, t] {
            std::uint64_t k = static_cast<std::uint64_t>(t);
            while (!done) {
                for (const ch14::ConnectionId id : s.handler.connected()) {
                    s.engine->send(id, std::to_string(id) + ";");
                    if (++k % 61 == 0) s.engine->close(id, k % 2 == 0);
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
        });
    int closed_by_engine = 0;
    for (int round = 0; round < 40; ++round) {
        auto client = TestClient::connect(at);
        std::string first;
        try {
            for (int tokens = 0; tokens < 5; ++tokens) {
                std::string token;
                for (std::string b = client.recv_exact(1); b != ";"; b = client.recv_exact(1)) token += b;
                if (first.empty()) first = token;
                EXPECT_EQ(first, token) << "round " << round << ": bytes for another connection";
            }
        } catch (const iocp::PeerClosedError&) {
            ++closed_by_engine;  // a close() from a sender: expected now and then
        }
        if (round % 2 == 0) client.reset(); else client.close();
    }
    done = true;
    for (auto& t : senders) t.join();
    ASSERT_TRUE(eventually([&] { return s.engine->live_connections() == 0; })) << counts(*s.engine);
    s.engine->stop();
    EXPECT_EQ(0u, s.engine->operations_in_flight()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->buffers_lent()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->bytes_queued()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->commands_pending()) << counts(*s.engine);
    EXPECT_EQ(0u, s.engine->pool_errors());
    EXPECT_EQ(0u, s.engine->stale_completions());
    auto connected = s.handler.connected();
    auto closed = s.handler.closed();
    std::sort(connected.begin(), connected.end());
    std::sort(closed.begin(), closed.end());
    EXPECT_EQ(40u, connected.size());
    EXPECT_EQ(connected.end(), std::adjacent_find(connected.begin(), connected.end())) << "an id named two connections";
    EXPECT_EQ(connected, closed) << "every connection told of its close exactly once";
    EXPECT_GT(s.engine->sends_dropped(), 0u) << "the gone ids were sent to";
    std::cout << "[ info     ] " << closed_by_engine << " of 40 clients closed by a sender; "
              << s.engine->sends_dropped() << " sends dropped\n";
}
//! [hammer]
