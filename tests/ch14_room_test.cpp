// Chapter 14's chat room without a network: a fake transport records what the room
// sends to each connection and which it closes, so that every rule (join, say, list,
// leave, each error, the frame deadline, a full room, closing) is checked byte by byte,
// and broadcasts from many threads are checked for one order.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "chat/room.h"
#include "protocol/frame.h"
#include "protocol/messages.h"

using ch14::Error;
using ch14::ServerMessage;
using ch14::Type;
using std::chrono::milliseconds;

namespace {

class FakeTransport : public ch14::Transport {
public:
    bool send(ch14::ConnectionId id, std::string bytes) override {
        std::lock_guard<std::mutex> lock(mutex_);
        if (closed_.count(id) != 0) return false;
        streams_[id] += bytes;
        return true;
    }
    void close(ch14::ConnectionId id, bool after_sends) override {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_[id] = after_sends;
    }
    // Everything sent to `id`, read back; a malformed message fails the test.
    std::vector<ServerMessage> messages(ch14::ConnectionId id) {
        std::string stream;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stream = streams_[id];
        }
        std::vector<ServerMessage> out;
        ch14::FrameDecoder d;
        std::size_t pos = 0;
        while (pos < stream.size()) {
            std::size_t used = 0;
            const auto r = d.feed(stream.data() + pos, stream.size() - pos, used);
            pos += used;
            if (r != ch14::Decoded::kFrame) break;
            ServerMessage m;
            EXPECT_TRUE(ch14::parse_server(d.frame(), m)) << "connection " << id << " got a malformed message";
            out.push_back(m);
        }
        EXPECT_EQ(stream.size(), pos) << "connection " << id << " got a partial frame";
        return out;
    }
    bool closed(ch14::ConnectionId id) {
        std::lock_guard<std::mutex> lock(mutex_);
        return closed_.count(id) != 0 && closed_[id];
    }

private:
    std::mutex mutex_;
    std::map<ch14::ConnectionId, std::string> streams_;
    std::map<ch14::ConnectionId, bool> closed_;
};

const auto t0 = ch14::Clock::now();

struct Ch14Room : ::testing::Test {
    FakeTransport net;
    ch14::Room room{net, {1000, milliseconds(0)}};
    void say(ch14::ConnectionId id, const std::string& bytes, ch14::Clock::time_point at = t0) {
        room.received(id, bytes, at);
    }
    void joined(ch14::ConnectionId id, const std::string& name) {
        room.connected(id);
        say(id, ch14::join_frame(name));
    }
    ServerMessage last(ch14::ConnectionId id) {
        const auto all = net.messages(id);
        return all.empty() ? ServerMessage{} : all.back();
    }
    std::uint16_t last_error(ch14::ConnectionId id) {
        const auto m = last(id);
        return m.type == Type::kError ? m.error : 0;
    }
};

std::string describe_all(const std::vector<ServerMessage>& ms) {
    std::string out;
    for (const auto& m : ms) out += ch14::describe(m) + "\n";
    return out;
}

}  // namespace

//! [room-chat]
TEST_F(Ch14Room, TwoMembersChatInTheServersOrder) {
    joined(1, "ana");
    joined(2, "bo");
    say(1, ch14::say_frame("hi bo"));
    say(2, ch14::say_frame("hi ana"));
    EXPECT_EQ("welcome, ana (the room is at 1)\n[1] * ana joined\n[2] * bo joined\n[3] ana: hi bo\n[4] bo: hi ana\n",
              describe_all(net.messages(1)));
    EXPECT_EQ("welcome, bo (the room is at 2)\n[2] * bo joined\n[3] ana: hi bo\n[4] bo: hi ana\n",
              describe_all(net.messages(2)));
    EXPECT_EQ(5u, room.next_seq());
}
//! [room-chat]

TEST_F(Ch14Room, FramesInAnySplitAreTheSame) {
    room.connected(1);
    const std::string bytes = ch14::join_frame("ana") + ch14::say_frame("one") + ch14::say_frame("two");
    for (const char ch : bytes) say(1, std::string(1, ch));
    EXPECT_EQ("welcome, ana (the room is at 1)\n[1] * ana joined\n[2] ana: one\n[3] ana: two\n",
              describe_all(net.messages(1)));
    EXPECT_EQ(3u, room.frames_handled());
}

// Mistakes a person makes get an error and the connection stays: each code checked.
TEST_F(Ch14Room, MistakesAreAnsweredAndTheConnectionStays) {
    joined(1, "ana");
    room.connected(2);
    say(2, ch14::say_frame("hello?"));
    EXPECT_EQ(static_cast<int>(Error::kNotJoined), last_error(2));
    say(2, ch14::list_frame());
    EXPECT_EQ(static_cast<int>(Error::kNotJoined), last_error(2));
    for (const std::string& bad : {std::string(), std::string(33, 'x'), std::string("\xc3"), std::string("a\nb")}) {
        say(2, ch14::join_frame(bad));
        EXPECT_EQ(static_cast<int>(Error::kBadName), last_error(2)) << testing::PrintToString(bad);
    }
    say(2, ch14::join_frame("ana"));
    EXPECT_EQ(static_cast<int>(Error::kNameTaken), last_error(2));
    say(2, ch14::join_frame("bo"));
    EXPECT_EQ(Type::kJoined, last(2).type);
    say(2, ch14::join_frame("bo2"));
    EXPECT_EQ(static_cast<int>(Error::kAlreadyJoined), last_error(2));
    for (const std::string& bad : {std::string(), std::string(1025, 't'), std::string("\xff"), std::string("a\rb")}) {
        say(2, ch14::say_frame(bad));
        EXPECT_EQ(static_cast<int>(Error::kBadPayload), last_error(2)) << testing::PrintToString(bad);
    }
    say(2, ch14::encode_frame(static_cast<std::uint8_t>(Type::kList), "x"));
    EXPECT_EQ(static_cast<int>(Error::kBadPayload), last_error(2));
    EXPECT_FALSE(net.closed(2));
    say(2, ch14::say_frame("still here"));
    EXPECT_EQ("[3] bo: still here", ch14::describe(last(1)));
    EXPECT_EQ(13u, room.errors_sent());
}

//! [room-closing-errors]
// What leaves the stream unusable gets an error, then a close after it; a member that
// goes that way is seen leaving by the others.
TEST_F(Ch14Room, AnOversizedFrameOrUnknownTypeIsAnsweredThenClosed) {
    joined(1, "ana");
    joined(2, "bo");
    say(2, std::string("\x00\x10\x00\x00\x02", 5));  // 1 MiB announced
    EXPECT_EQ(static_cast<int>(Error::kFrameTooLarge), last_error(2));
    EXPECT_TRUE(net.closed(2));
    EXPECT_EQ("[3] * bo left", ch14::describe(last(1)));
    room.connected(3);
    say(3, ch14::encode_frame(0x82, "I am the server"));
    EXPECT_EQ(static_cast<int>(Error::kUnknownType), last_error(3));
    EXPECT_TRUE(net.closed(3));
    room.connected(4);
    say(4, ch14::encode_frame(0x42, ""));
    EXPECT_EQ(static_cast<int>(Error::kUnknownType), last_error(4));
    EXPECT_TRUE(net.closed(4));
    say(4, ch14::join_frame("late"));  // what follows a close is ignored
    EXPECT_EQ(1u, room.members());
}
//! [room-closing-errors]

TEST_F(Ch14Room, ALeaverHearsItsOwnDepartureLast) {
    joined(1, "ana");
    joined(2, "bo");
    say(2, ch14::leave_frame());
    EXPECT_EQ("[3] * bo left", ch14::describe(last(2)));
    EXPECT_EQ("[3] * bo left", ch14::describe(last(1)));
    EXPECT_TRUE(net.closed(2));
    room.closed(2);  // the engine's callback, once the socket is gone: no second notice
    EXPECT_EQ(4u, room.next_seq());
    room.closed(1);  // a member whose connection just ends leaves too
    EXPECT_EQ(0u, room.members());
    EXPECT_EQ(0u, room.connections());
}

TEST_F(Ch14Room, ListNamesEveryMember) {
    joined(1, "cy");
    joined(2, "ana");
    joined(3, "bo");
    say(1, ch14::list_frame());
    const auto m = last(1);
    EXPECT_EQ(Type::kMembers, m.type);
    EXPECT_TRUE(m.last);
    EXPECT_EQ((std::vector<std::string>{"ana", "bo", "cy"}), m.names);
}

//! [room-full]
TEST(Ch14RoomRules, OneMoreThanMaxClientsIsToldAndClosedTheNextIsWelcome) {
    FakeTransport net;
    ch14::Room room(net, {2, milliseconds(0)});
    room.connected(1);
    room.connected(2);
    room.connected(3);
    const auto got = net.messages(3);
    ASSERT_EQ(1u, got.size());
    EXPECT_EQ(static_cast<int>(Error::kServerFull), got[0].error);
    EXPECT_TRUE(net.closed(3));
    EXPECT_FALSE(net.closed(1));
    room.closed(3);  // unknown to the room: nothing happens
    room.closed(1);
    room.connected(4);
    room.received(4, ch14::join_frame("dee"), t0);
    EXPECT_EQ(Type::kJoined, net.messages(4).back().type);
}
//! [room-full]

//! [room-deadline]
// The slowloris defence: a frame begun must end within the frame timeout. Trickling
// bytes does not move the deadline; a frame that completes meets it.
TEST(Ch14RoomRules, AFrameTrickledPastItsDeadlineIsClosed) {
    FakeTransport net;
    ch14::Room room(net, {10, milliseconds(100)});
    const std::string say = ch14::say_frame("slowly");
    room.connected(1);
    room.connected(2);
    room.received(1, say.substr(0, 3), t0);
    room.received(2, say, t0);  // a whole frame: no deadline runs
    room.received(1, say.substr(3, 3), t0 + milliseconds(60));
    EXPECT_EQ(0u, room.sweep(t0 + milliseconds(90)));
    EXPECT_EQ(1u, room.sweep(t0 + milliseconds(120)));
    EXPECT_EQ(static_cast<int>(Error::kFrameTimeout), net.messages(1).back().error);
    EXPECT_TRUE(net.closed(1));
    EXPECT_FALSE(net.closed(2));
    EXPECT_EQ(0u, room.sweep(t0 + milliseconds(1000)));  // closed once, not again
    EXPECT_EQ(1u, room.frame_timeouts());
}
//! [room-deadline]

TEST_F(Ch14Room, ClosingTellsEveryoneAndTurnsNewcomersAway) {
    joined(1, "ana");
    room.connected(2);
    room.closing();
    EXPECT_EQ(Type::kClosing, last(1).type);
    EXPECT_EQ(Type::kClosing, last(2).type);
    EXPECT_TRUE(net.closed(1) && net.closed(2));
    room.closed(1);
    EXPECT_EQ(Type::kClosing, last(1).type);  // no "ana left" after the notice
    room.connected(3);
    EXPECT_EQ(Type::kClosing, last(3).type);
    EXPECT_TRUE(net.closed(3));
}

//! [room-order]
// Eight members say 200 lines each from eight threads at once: every member receives
// every broadcast once, numbered without a gap, in the same order as everyone else.
TEST(Ch14RoomRules, BroadcastsFromManyThreadsReachEveryMemberInOneOrder) {
    FakeTransport net;
    ch14::Room room(net, {100, milliseconds(0)});
    constexpr int kMembers = 8, kLines = 200;
    for (int i = 1; i <= kMembers; ++i) {
        room.connected(static_cast<ch14::ConnectionId>(i));
        room.received(static_cast<ch14::ConnectionId>(i), ch14::join_frame("m" + std::to_string(i)), t0);
    }
    std::vector<std::thread> threads;
    for (int i = 1; i <= kMembers; ++i)
        threads.emplace_back([&, i] {
            for (int k = 0; k < kLines; ++k)
                room.received(static_cast<ch14::ConnectionId>(i), ch14::say_frame(std::to_string(k)), t0);
        });
    for (auto& t : threads) t.join();
    std::vector<std::uint64_t> reference;
    for (const auto& m : net.messages(1))
        if (m.type == Type::kMessage) reference.push_back(m.seq);
    ASSERT_EQ(static_cast<std::size_t>(kMembers * kLines), reference.size());
    for (std::size_t k = 1; k < reference.size(); ++k) ASSERT_EQ(reference[k - 1] + 1, reference[k]);
    for (int i = 2; i <= kMembers; ++i) {
        std::vector<std::uint64_t> seen;
        for (const auto& m : net.messages(static_cast<ch14::ConnectionId>(i)))
            if (m.type == Type::kMessage) seen.push_back(m.seq);
        EXPECT_EQ(reference, seen) << "member " << i;
    }
}
//! [room-order]
