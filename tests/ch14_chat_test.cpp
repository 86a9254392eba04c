// Chapter 14's chat room on the engine, over real sockets: a conversation; hundreds of
// clients chatting at once, each checking it got every broadcast once and in the
// server's order; and the faults a production server meets - oversized frames, random
// bytes, a frame cut off by EOF, a frame trickled past its deadline, a client that
// never reads, one client too many, a reset mid-conversation, a stop with 500 clients.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apps/chat_service.h"
#include "chat/client.h"
#include "iocp/test_client.h"
#ifndef _WIN32
#include "support/io_uring_support.h"
#endif
#include "support/load.h"
#include "support/test_support.h"

using ch14::ChatClient;
using ch14::Error;
using ch14::ServerMessage;
using ch14::Type;
using std::chrono::milliseconds;
using testsupport::eventually;

namespace {

std::unique_ptr<ch14::ChatService> start_chat(ch14::RoomLimits room = {1000, milliseconds(0)},
                                              ch14::EngineOptions options = {}) {
    if (options.threads == 0) options.threads = 2;
    options.max_clients = room.max_clients + 64;
    auto chat = std::make_unique<ch14::ChatService>(iocp::Endpoint{"127.0.0.1", 0}, room, options);
    chat->start();
    return chat;
}

// On Linux, a skip where the kernel refuses io_uring; on Windows, never.
#ifdef _WIN32
#define CH14_START_CHAT(var, ...) auto var = start_chat(__VA_ARGS__)
#else
#define CH14_START_CHAT(var, ...)                                                \
    if (const auto why = testsupport::io_uring_refused()) GTEST_SKIP() << *why;  \
    auto var = start_chat(__VA_ARGS__)
#endif

std::string counts(ch14::ChatService& c) {
    const auto& e = c.engine();
    return "members " + std::to_string(c.room().members()) + ", connections " + std::to_string(c.room().connections()) +
           ", live " + std::to_string(e.live_connections()) + ", in flight " + std::to_string(e.operations_in_flight()) +
           ", queued " + std::to_string(e.bytes_queued()) + ", commands " + std::to_string(e.commands_pending()) +
           ", over limit " + std::to_string(e.clients_over_limit()) + ", errors sent " +
           std::to_string(c.room().errors_sent());
}

// Reads until the server closes; returns the last message before (kError for none).
ServerMessage last_before_close(ChatClient& c) {
    ServerMessage last;
    last.type = Type::kError;
    try {
        for (;;) last = c.read();
    } catch (const iocp::PeerClosedError&) {
    }
    return last;
}

}  // namespace

TEST(Ch14Chat, TwoClientsChatOverTheNetwork) {
    CH14_START_CHAT(chat);
    const iocp::Endpoint at{"127.0.0.1", chat->port()};
    auto ana = ChatClient::connect(at);
    EXPECT_EQ(1u, ana.join("ana"));
    EXPECT_EQ("[1] * ana joined", ch14::describe(ana.read()));
    auto bo = ChatClient::connect(at);
    EXPECT_EQ(2u, bo.join("bo"));
    EXPECT_EQ("[2] * bo joined", ch14::describe(bo.read()));
    EXPECT_EQ("[2] * bo joined", ch14::describe(ana.read()));
    bo.send(ch14::say_frame("ol\xc3\xa1, ana"));
    EXPECT_EQ("[3] bo: ol\xc3\xa1, ana", ch14::describe(ana.read()));
    EXPECT_EQ("[3] bo: ol\xc3\xa1, ana", ch14::describe(bo.read()));
    ana.send(ch14::list_frame());
    EXPECT_EQ("members: ana bo", ch14::describe(ana.read()));
    bo.send(ch14::leave_frame());
    EXPECT_EQ("[4] * bo left", ch14::describe(bo.read()));
    EXPECT_EQ(iocp::TestClient::Closed::kEof, bo.socket().wait_closed());
    EXPECT_EQ("[4] * bo left", ch14::describe(ana.read()));
}

//! [stress]
// kClients join, then all say kLines lines at once. Every client checks every
// broadcast it gets: numbered without a gap from its welcome on, each line of each
// sender exactly once and in that sender's order, and all kClients * kLines of them.
TEST(Ch14Chat, HundredsOfClientsGetEveryBroadcastOnceInTheServersOrder) {
    constexpr int kClients = 200, kLines = 10;
    CH14_START_CHAT(chat);
    const iocp::Endpoint at{"127.0.0.1", chat->port()};
    std::vector<std::unique_ptr<ChatClient>> clients;
    std::vector<std::uint64_t> first(kClients);
    for (int i = 0; i < kClients; ++i) {
        clients.push_back(std::make_unique<ChatClient>(ChatClient::connect(at)));
        first[static_cast<std::size_t>(i)] = clients.back()->join("c" + std::to_string(i));
    }
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> verified{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kClients; ++i) {
        threads.emplace_back([&, i] {
            ChatClient& c = *clients[static_cast<std::size_t>(i)];
            ++ready;
            while (ready < kClients) std::this_thread::yield();
            for (int k = 0; k < kLines; ++k) c.send(ch14::say_frame(std::to_string(i) + ":" + std::to_string(k)));
            std::uint64_t next = first[static_cast<std::size_t>(i)];
            std::map<std::string, int> line_of;  // sender -> next line expected
            int lines = 0;
            try {
                while (lines < kClients * kLines) {
                    const ServerMessage m = c.read(testsupport::kPatientTimeout);
                    if (m.seq != next) throw std::runtime_error("broadcast " + std::to_string(m.seq) + ", expected " + std::to_string(next));
                    ++next;
                    if (m.type != Type::kMessage) continue;
                    const auto colon = m.text.find(':');
                    const std::string sender = m.text.substr(0, colon);
                    if (sender != m.name.substr(1) || std::stoi(m.text.substr(colon + 1)) != line_of[sender]++)
                        throw std::runtime_error("out of order or not its own: " + ch14::describe(m));
                    ++lines;
                }
                verified += static_cast<std::uint64_t>(lines);
            } catch (const std::exception& e) {
                ADD_FAILURE() << "client " << i << ": " << e.what();
            }
        });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(static_cast<std::uint64_t>(kClients) * kClients * kLines, verified.load()) << counts(*chat);
    std::cout << "[ info     ] " << kClients << " clients verified " << verified.load() << " broadcasts; "
              << counts(*chat) << "\n";
}
//! [stress]

//! [faults]
// Bytes that are no client of ours: each gets its error and its close, and a member
// chatting beside them never notices.
TEST(Ch14Chat, BadInputIsAnsweredAndClosedWhileOthersChat) {
    CH14_START_CHAT(chat);
    const iocp::Endpoint at{"127.0.0.1", chat->port()};
    auto ana = ChatClient::connect(at);
    ana.join("ana");
    ana.read();
    {
        auto huge = ChatClient::connect(at);
        huge.send(std::string("\x7f\xff\xff\xff\x02", 5));  // 2 GiB announced
        const auto m = last_before_close(huge);
        EXPECT_EQ(static_cast<int>(Error::kFrameTooLarge), m.error) << ch14::describe(m);
    }
    {
        auto noise = ChatClient::connect(at);
        std::mt19937 rng(14);
        std::string junk(3000, '\0');
        for (char& ch : junk) ch = static_cast<char>(rng());
        junk[0] = 0;  // a small length, then a type no client sends
        junk[1] = 0;
        junk[2] = 0;
        junk[3] = 1;
        junk[4] = static_cast<char>(0x99);
        noise.send(junk);
        const auto m = last_before_close(noise);
        EXPECT_EQ(static_cast<int>(Error::kUnknownType), m.error) << ch14::describe(m);
    }
    {
        auto cut = ChatClient::connect(at);
        cut.send(ch14::say_frame("never finished").substr(0, 9));
        cut.socket().shutdown_send();  // EOF inside a frame: the server just closes
        EXPECT_EQ(iocp::TestClient::Closed::kEof, cut.socket().wait_closed());
    }
    {
        auto rude = ChatClient::connect(at);
        rude.join("rude");
        rude.send(ch14::say_frame("bye").substr(0, 6));
        rude.socket().reset();  // a reset mid-frame
    }
    ana.send(ch14::say_frame("still fine"));
    ServerMessage m;
    do m = ana.read(); while (m.type != Type::kMessage);
    EXPECT_EQ("ana: still fine", m.name + ": " + m.text);
    ASSERT_TRUE(eventually([&] { return chat->room().connections() == 1 && chat->engine().live_connections() == 1; }))
        << counts(*chat);
}
//! [faults]

//! [every-point]
// A client that goes at every point of a conversation (before joining, inside its join
// frame, joined, inside a say, after a say), in each way a client goes (a reset, a
// half-close, a close): the server takes each in its stride, the member beside it
// hears the departures of those that had joined, and keeps chatting.
TEST(Ch14Chat, ResetsAndHalfClosesAtEveryPointLeaveTheRoomWhole) {
    CH14_START_CHAT(chat);
    const iocp::Endpoint at{"127.0.0.1", chat->port()};
    auto witness = ChatClient::connect(at);
    witness.join("witness");
    witness.read();
    const std::string join = ch14::join_frame("victim");
    const std::string say = ch14::say_frame("last words");
    const std::vector<std::string> points = {"", join.substr(0, 6), join, join + say.substr(0, 7), join + say};
    enum class End { kReset, kHalfClose, kClose };
    int departures = 0;
    for (std::size_t p = 0; p < points.size(); ++p) {
        for (const End end : {End::kReset, End::kHalfClose, End::kClose}) {
            auto victim = ChatClient::connect(at);
            if (!points[p].empty()) victim.send(points[p]);
            const bool joined = p >= 2;
            if (joined) {
                EXPECT_EQ(Type::kWelcome, victim.read().type) << "point " << p;
            }
            if (end == End::kReset) {
                victim.socket().reset();
            } else if (end == End::kHalfClose) {
                victim.socket().shutdown_send();
                last_before_close(victim);  // what it was sent, then the server's FIN
            } else {
                victim.socket().close();
            }
            if (joined) {  // the witness sees it join, maybe speak, and leave
                ServerMessage m;
                do m = witness.read(); while (m.type != Type::kLeft);
                EXPECT_EQ("victim", m.name);
                ++departures;
            }
            ASSERT_TRUE(eventually([&] { return chat->room().connections() == 1; }))
                << "point " << p << ", end " << static_cast<int>(end) << ": " << counts(*chat);
        }
    }
    EXPECT_EQ(9, departures);
    witness.send(ch14::say_frame("still here"));
    ServerMessage m;
    do m = witness.read(); while (m.type != Type::kMessage || m.text != "still here");
    ASSERT_TRUE(eventually([&] { return chat->engine().live_connections() == 1; })) << counts(*chat);
}
//! [every-point]

//! [slowloris]
TEST(Ch14Chat, AFrameTrickledPastTheFrameDeadlineIsClosed) {
    CH14_START_CHAT(chat, {100, milliseconds(400)});
    const iocp::Endpoint at{"127.0.0.1", chat->port()};
    auto slow = ChatClient::connect(at);
    const std::string frame = ch14::join_frame("slowpoke");
    for (std::size_t i = 0; i + 1 < frame.size(); ++i) {  // a byte every 100 ms, never the last
        slow.send(frame.substr(i, 1));
        std::this_thread::sleep_for(milliseconds(100));
        if (chat->room().frame_timeouts() > 0) break;
    }
    const auto m = last_before_close(slow);
    EXPECT_EQ(static_cast<int>(Error::kFrameTimeout), m.error) << ch14::describe(m);
    EXPECT_EQ(1u, chat->room().frame_timeouts());
}
//! [slowloris]

//! [slow-reader]
// A member that never reads while another says 12 MB of lines: dropped at its budget
// (256 KiB here), and the room keeps flowing: the talker hears every line it said.
TEST(Ch14Chat, AMemberThatNeverReadsIsDroppedAndTheRoomFlows) {
    ch14::EngineOptions options;
    options.output_limit = 256 * 1024;
    options.output_high = 64 * 1024;
    CH14_START_CHAT(chat, {100, milliseconds(0)}, options);
    const iocp::Endpoint at{"127.0.0.1", chat->port()};
    auto sleeper = ChatClient::connect(at);
    sleeper.join("sleeper");
    auto talker = ChatClient::connect(at);
    talker.join("talker");
    const std::string line(1000, 'x');
    constexpr int kLines = 12000;  // 12 MB: more than the socket buffers on both sides can hide
    std::thread say([&] {
        for (int k = 0; k < kLines; ++k) talker.send(ch14::say_frame(line));
    });
    int heard = 0;
    bool saw_drop = false;
    while (heard < kLines) {
        const ServerMessage m = talker.read(testsupport::kPatientTimeout);
        if (m.type == Type::kMessage) ++heard;
        if (m.type == Type::kLeft && m.name == "sleeper") saw_drop = true;
    }
    say.join();
    EXPECT_TRUE(saw_drop) << counts(*chat);
    EXPECT_EQ(1u, chat->engine().clients_over_limit()) << counts(*chat);
    sleeper.socket().reset();
}
//! [slow-reader]

TEST(Ch14Chat, OneClientTooManyIsToldWhyAndTheNextIsWelcome) {
    CH14_START_CHAT(chat, {3, milliseconds(0)});
    const iocp::Endpoint at{"127.0.0.1", chat->port()};
    std::vector<std::unique_ptr<ChatClient>> in;
    for (int i = 0; i < 3; ++i) {
        in.push_back(std::make_unique<ChatClient>(ChatClient::connect(at)));
        in.back()->join("m" + std::to_string(i));
    }
    auto extra = ChatClient::connect(at);
    const auto m = last_before_close(extra);
    EXPECT_EQ(static_cast<int>(Error::kServerFull), m.error) << ch14::describe(m);
    in[0]->socket().reset();
    in.erase(in.begin());
    ASSERT_TRUE(eventually([&] { return chat->room().connections() == 2; })) << counts(*chat);
    auto next = ChatClient::connect(at);
    EXPECT_NO_THROW(next.join("next"));
}

//! [stop-500]
// stop() while 500 clients are joined and 50 of them talk: every client sees the
// closing notice or a clean close, and every count of the engine returns to zero.
TEST(Ch14Chat, StopWithFiveHundredClientsChattingLeavesNothingBehind) {
    constexpr int kClients = 500, kTalkers = 50;
    if (const auto why = testsupport::too_few_descriptors(2 * kClients + 64)) GTEST_SKIP() << *why;
    CH14_START_CHAT(chat);
    const iocp::Endpoint at{"127.0.0.1", chat->port()};
    std::vector<std::unique_ptr<ChatClient>> clients;
    for (int i = 0; i < kClients; ++i) {
        clients.push_back(std::make_unique<ChatClient>(ChatClient::connect(at)));
        clients.back()->send(ch14::join_frame("u" + std::to_string(i)));
    }
    ASSERT_TRUE(eventually([&] { return chat->room().members() == kClients; })) << counts(*chat);
    std::atomic<bool> talking{true};
    std::vector<std::thread> talkers;
    for (int i = 0; i < kTalkers; ++i)
        talkers.emplace_back([&, i] {
            try {
                while (talking) clients[static_cast<std::size_t>(i)]->send(ch14::say_frame("chatter"));
            } catch (const std::exception&) {
                // closed by the stop: expected
            }
        });
    std::vector<int> outcome(kClients, 0);  // 1: the notice, 2: a close without it
    std::vector<std::thread> readers;
    for (int t = 0; t < 10; ++t)
        readers.emplace_back([&, t] {
            for (int i = t; i < kClients; i += 10) {
                ChatClient& c = *clients[static_cast<std::size_t>(i)];
                try {
                    for (;;) {
                        if (c.read(testsupport::kPatientTimeout).type == Type::kClosing) {
                            outcome[static_cast<std::size_t>(i)] = 1;
                            break;
                        }
                    }
                } catch (const iocp::PeerClosedError&) {
                    outcome[static_cast<std::size_t>(i)] = 2;
                } catch (const std::exception& e) {
                    ADD_FAILURE() << "client " << i << ": " << e.what();
                }
            }
        });
    std::this_thread::sleep_for(milliseconds(300));
    chat->stop();
    talking = false;
    for (auto& t : talkers) t.join();
    for (auto& t : readers) t.join();
    int noticed = 0, closed = 0;
    for (const int o : outcome) (o == 1 ? noticed : closed) += o != 0 ? 1 : 0;
    EXPECT_EQ(kClients, noticed + closed);
    const auto& e = chat->engine();
    EXPECT_EQ(0u, e.live_connections());
    EXPECT_EQ(0u, e.operations_in_flight());
    EXPECT_EQ(0u, e.buffers_lent());
    EXPECT_EQ(0u, e.bytes_queued());
    EXPECT_EQ(0u, e.commands_pending());
    EXPECT_EQ(0u, e.operations_abandoned());
    std::cout << "[ info     ] stop: " << noticed << " clients saw the notice, " << closed << " a clean close\n";
    for (auto& c : clients) c->socket().reset();
}
//! [stop-500]
