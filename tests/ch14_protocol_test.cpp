// Chapter 14's protocol: the frame decoder in every split, a length refused before any
// allocation, UTF-8 and names, every server message read back, and the fuzzer's corpus
// replayed (tests/fuzz: each input must keep every property the fuzzer checks).
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz/frame_target.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "support/test_support.h"

using ch14::Decoded;
using ch14::FrameDecoder;
using testsupport::make_payload;
using testsupport::same_bytes;

namespace {

// Decodes `stream` in reads of `step` bytes; returns the frames, and the last answer.
std::vector<ch14::Frame> decode_in_steps(const std::string& stream, std::size_t step, Decoded& last) {
    FrameDecoder d;
    std::vector<ch14::Frame> frames;
    last = Decoded::kMore;
    for (std::size_t pos = 0; pos < stream.size(); pos += step) {
        const std::string chunk = stream.substr(pos, step);
        std::size_t off = 0;
        while (off < chunk.size()) {
            std::size_t used = 0;
            last = d.feed(chunk.data() + off, chunk.size() - off, used);
            off += used;
            if (last == Decoded::kTooLarge) return frames;
            if (last == Decoded::kFrame) frames.push_back(d.frame());
        }
    }
    return frames;
}

ch14::ServerMessage read_back(const std::string& bytes) {
    FrameDecoder d;
    std::size_t used = 0;
    EXPECT_EQ(Decoded::kFrame, d.feed(bytes.data(), bytes.size(), used));
    EXPECT_EQ(bytes.size(), used);
    ch14::ServerMessage m;
    EXPECT_TRUE(ch14::parse_server(d.frame(), m)) << "not a well-formed server message";
    return m;
}

}  // namespace

//! [decoder-splits]
// Three frames (one empty, one with every byte value, one of the maximum size) come
// out the same whether they arrive at once, byte by byte, or in reads of 7 or 4096.
TEST(Ch14Frames, AnySplitGivesTheSameFrames) {
    const std::string binary = make_payload(256, 7) + std::string("\0\xff\0", 3);
    const std::string big = make_payload(ch14::kMaxPayload, 9);
    const std::string stream = ch14::encode_frame(3, "") + ch14::encode_frame(0x82, binary) + ch14::encode_frame(200, big);
    for (const std::size_t step : {stream.size(), std::size_t{1}, std::size_t{7}, std::size_t{4096}}) {
        Decoded last{};
        const auto frames = decode_in_steps(stream, step, last);
        ASSERT_EQ(3u, frames.size()) << "reads of " << step;
        EXPECT_EQ(Decoded::kFrame, last);
        EXPECT_EQ(3, frames[0].type);
        EXPECT_EQ("", frames[0].payload);
        EXPECT_EQ(0x82, frames[1].type);
        EXPECT_TRUE(same_bytes(binary, frames[1].payload));
        EXPECT_EQ(200, frames[2].type);
        EXPECT_TRUE(same_bytes(big, frames[2].payload));
    }
}
//! [decoder-splits]

//! [decoder-oversize]
// A header that claims 4 GiB is refused at its fifth byte, with nothing reserved, and
// the decoder stays refused: the connection cannot be resynchronised, only closed.
TEST(Ch14Frames, AnOversizedLengthIsRefusedBeforeAnyAllocation) {
    const std::string header("\xff\xff\xff\xff\x02", 5);
    FrameDecoder d;
    std::size_t used = 0;
    EXPECT_EQ(Decoded::kMore, d.feed(header.data(), 4, used));
    EXPECT_TRUE(d.mid_frame());
    EXPECT_EQ(Decoded::kTooLarge, d.feed(header.data() + 4, 1, used));
    EXPECT_EQ(1u, used);
    EXPECT_EQ(0xffffffffu, d.refused_length());
    EXPECT_LT(d.capacity(), 64u) << "the decoder reserved for a frame it refused";
    const std::string more = "anything";
    EXPECT_EQ(Decoded::kTooLarge, d.feed(more.data(), more.size(), used));
    EXPECT_EQ(0u, used);
}
//! [decoder-oversize]

// The limit is exact: kMaxPayload passes, one byte more does not, on both sides.
TEST(Ch14Frames, TheLimitIsExact) {
    Decoded last{};
    EXPECT_EQ(1u, decode_in_steps(ch14::encode_frame(1, std::string(ch14::kMaxPayload, 'a')), 100, last).size());
    std::string over = ch14::encode_frame(1, std::string(ch14::kMaxPayload, 'a'));
    over[3] = static_cast<char>(over[3] + 1);  // the length, one more
    over.push_back('a');
    EXPECT_TRUE(decode_in_steps(over, 100, last).empty());
    EXPECT_EQ(Decoded::kTooLarge, last);
    EXPECT_THROW(ch14::encode_frame(1, std::string(ch14::kMaxPayload + 1, 'a')), std::length_error);
}

TEST(Ch14Frames, MidFrameTellsWhenTheDeadlineRuns) {
    const std::string f = ch14::say_frame("hi");
    FrameDecoder d;
    std::size_t used = 0;
    EXPECT_FALSE(d.mid_frame());
    EXPECT_EQ(Decoded::kMore, d.feed(f.data(), 1, used));
    EXPECT_TRUE(d.mid_frame());
    EXPECT_EQ(Decoded::kMore, d.feed(f.data() + 1, f.size() - 2, used));
    EXPECT_TRUE(d.mid_frame());
    EXPECT_EQ(Decoded::kFrame, d.feed(f.data() + f.size() - 1, 1, used));
    EXPECT_FALSE(d.mid_frame());
}

//! [utf8-cases]
TEST(Ch14Text, Utf8IsCheckedByTheRfcTable) {
    for (const char* good : {"", "plain", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9d\x84\x9e", "\xed\x9f\xbf",
                             "\xf4\x8f\xbf\xbf"})
        EXPECT_TRUE(ch14::valid_utf8(good)) << good;
    for (const char* bad : {"\x80", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xed\xa0\x80", "\xf0\x80\x80\x80",
                            "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff", "\xe2\x82", "ok\xc3"})
        EXPECT_FALSE(ch14::valid_utf8(bad)) << testing::PrintToString(std::string(bad));
}
//! [utf8-cases]

TEST(Ch14Text, NamesAndLines) {
    EXPECT_TRUE(ch14::valid_name("ana"));
    EXPECT_TRUE(ch14::valid_name("Jos\xc3\xa9 Mar\xc3\xad" "a"));
    EXPECT_TRUE(ch14::valid_name(std::string(ch14::kMaxName, 'n')));
    EXPECT_FALSE(ch14::valid_name(""));
    EXPECT_FALSE(ch14::valid_name(std::string(ch14::kMaxName + 1, 'n')));
    EXPECT_FALSE(ch14::valid_name("tab\there"));
    EXPECT_FALSE(ch14::valid_name("del\x7f"));
    EXPECT_FALSE(ch14::valid_name("bad\xc3"));
    EXPECT_TRUE(ch14::valid_text("a\tb"));
    EXPECT_TRUE(ch14::valid_text(std::string(ch14::kMaxText, 't')));
    EXPECT_FALSE(ch14::valid_text(std::string(ch14::kMaxText + 1, 't')));
    EXPECT_FALSE(ch14::valid_text("line\nbreak"));
    EXPECT_FALSE(ch14::valid_text(""));
}

// Every server message reads back as it was built, and reads as a person expects.
TEST(Ch14Messages, EveryServerMessageReadsBack) {
    auto m = read_back(ch14::message_frame(12, "ana", "hello\tthere"));
    EXPECT_EQ(ch14::Type::kMessage, m.type);
    EXPECT_EQ(12u, m.seq);
    EXPECT_EQ("ana", m.name);
    EXPECT_EQ("hello\tthere", m.text);
    EXPECT_EQ("[12] ana: hello\tthere", ch14::describe(m));
    m = read_back(ch14::welcome_frame(0x0102030405060708ull, "bo"));
    EXPECT_EQ(0x0102030405060708ull, m.seq);
    EXPECT_EQ("bo", m.name);
    EXPECT_EQ("[13] * bo joined", ch14::describe(read_back(ch14::joined_frame(13, "bo"))));
    EXPECT_EQ("[14] * bo left", ch14::describe(read_back(ch14::left_frame(14, "bo"))));
    EXPECT_EQ(ch14::Type::kClosing, read_back(ch14::closing_frame()).type);
    m = read_back(ch14::error_frame(ch14::Error::kNameTaken, "someone is ana already"));
    EXPECT_EQ(4, m.error);
    EXPECT_EQ("error 4 (name taken): someone is ana already", ch14::describe(m));
}

// 500 names of 20 bytes do not fit one frame: they come in parts, the last one marked.
TEST(Ch14Messages, ALongMemberListComesInParts) {
    std::vector<std::string> names;
    for (int i = 0; i < 500; ++i) names.push_back("member-" + std::to_string(1000000000000 + i));
    const auto frames = ch14::members_frames(names);
    ASSERT_GT(frames.size(), 1u);
    std::vector<std::string> back;
    for (std::size_t i = 0; i < frames.size(); ++i) {
        ASSERT_LE(frames[i].size(), ch14::kHeaderSize + ch14::kMaxPayload);
        const auto m = read_back(frames[i]);
        EXPECT_EQ(i + 1 == frames.size(), m.last) << "part " << i;
        back.insert(back.end(), m.names.begin(), m.names.end());
    }
    EXPECT_EQ(names, back);
    EXPECT_TRUE(read_back(ch14::members_frames({})[0]).last);
}

// What no server sends is no server message: client types, fields past the payload's
// end, a name that is not UTF-8, a closing notice with a payload.
TEST(Ch14Messages, MalformedServerMessagesAreRejected) {
    ch14::ServerMessage m;
    EXPECT_FALSE(ch14::parse_server({0x02, "hello"}, m));
    EXPECT_FALSE(ch14::parse_server({0x82, std::string(8, '\0') + "\x05" + "ana"}, m));  // name runs past the end
    EXPECT_FALSE(ch14::parse_server({0x83, std::string(8, '\0') + "\xc3"}, m));
    EXPECT_FALSE(ch14::parse_server({0x83, std::string(7, '\0')}, m));
    EXPECT_FALSE(ch14::parse_server({0x86, "x"}, m));
    EXPECT_FALSE(ch14::parse_server({0x85, std::string("\x01\x00\x02\x01" "a", 5)}, m));  // two announced, one there
}

//! [corpus-replay]
// Every input the fuzzer kept, run again through the same properties, on every build
// (the fuzzer itself needs clang; its findings must hold for GCC, mingw and Wine too).
TEST(Ch14Fuzz, TheCorpusReplaysClean) {
    namespace fs = std::filesystem;
    const fs::path corpus(CH14_CORPUS_DIR);
    ASSERT_TRUE(fs::is_directory(corpus)) << corpus;
    std::size_t inputs = 0, bytes = 0;
    for (const auto& entry : fs::directory_iterator(corpus)) {
        std::ifstream in(entry.path(), std::ios::binary);
        const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        fuzz::frame_one_input(reinterpret_cast<const std::uint8_t*>(data.data()), data.size());  // aborts on a failure
        ++inputs;
        bytes += data.size();
    }
    EXPECT_GE(inputs, 50u) << "the corpus has shrunk: " << corpus;
    std::cout << "[ info     ] replayed " << inputs << " inputs, " << bytes << " bytes\n";
}
//! [corpus-replay]
