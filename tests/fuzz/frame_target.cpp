// tests/fuzz/frame_target.cpp - the properties the fuzzer checks on chapter 14's frames.
#include "frame_target.h"

#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/frame.h"
#include "protocol/messages.h"

namespace fuzz {

namespace {

void require(bool ok, const char* what) {
    if (ok) return;
    std::fprintf(stderr, "frame fuzz: property failed: %s\n", what);
    std::abort();
}

struct Outcome {
    std::vector<std::string> frames;  // each frame's bytes, as the stream carried them
    bool too_large = false;
    bool mid_frame = false;
};

// Decodes `stream` in reads whose sizes come from `seed` (0: all at once).
Outcome decode(std::string_view stream, std::uint8_t seed) {
    Outcome out;
    ch14::FrameDecoder d;
    std::string current;  // the bytes of the frame under way
    std::uint32_t state = seed;
    std::size_t pos = 0;
    while (pos < stream.size()) {
        std::size_t read = stream.size() - pos;
        if (seed != 0) {
            state = state * 1103515245u + 12345u;
            read = std::min<std::size_t>(read, 1 + (state >> 16) % 9);  // reads of 1 to 9 bytes
        }
        std::string_view chunk = stream.substr(pos, read);
        pos += read;
        while (!chunk.empty()) {
            std::size_t used = 0;
            const ch14::Decoded r = d.feed(chunk.data(), chunk.size(), used);
            require(used <= chunk.size(), "feed took more than it was given");
            current.append(chunk.substr(0, used));
            chunk.remove_prefix(used);
            // The slack is the string's own floor, not the decoder's: a fresh string
            // asked for a few bytes takes about 30 (libstdc++), whatever the frame.
            require(d.capacity() <= ch14::kMaxPayload + 32, "the decoder reserved past the maximum");
            if (r == ch14::Decoded::kTooLarge) {
                require(used <= ch14::kHeaderSize, "a refused frame took more than its header");
                out.too_large = true;
                return out;
            }
            if (r == ch14::Decoded::kFrame) {
                const ch14::Frame& f = d.frame();
                require(ch14::encode_frame(f.type, f.payload) == current, "a frame does not encode back to its bytes");
                out.frames.push_back(current);
                current.clear();
            } else {
                require(chunk.empty(), "kMore with bytes left over");
            }
        }
    }
    out.mid_frame = d.mid_frame();
    require(out.mid_frame == !current.empty(), "mid_frame() disagrees with the bytes held");
    return out;
}

// A server message that reads back well must build the very same bytes.
void check_server_message(const std::string& bytes) {
    ch14::FrameDecoder d;
    std::size_t used = 0;
    require(d.feed(bytes.data(), bytes.size(), used) == ch14::Decoded::kFrame, "a frame's bytes decode alone");
    ch14::ServerMessage m;
    if (!ch14::parse_server(d.frame(), m)) return;
    std::string again;
    switch (m.type) {
    case ch14::Type::kWelcome: again = ch14::welcome_frame(m.seq, m.name); break;
    case ch14::Type::kMessage: again = ch14::message_frame(m.seq, m.name, m.text); break;
    case ch14::Type::kJoined: again = ch14::joined_frame(m.seq, m.name); break;
    case ch14::Type::kLeft: again = ch14::left_frame(m.seq, m.name); break;
    case ch14::Type::kClosing: again = ch14::closing_frame(); break;
    case ch14::Type::kError: again = ch14::error_frame(static_cast<ch14::Error>(m.error), m.text); break;
    case ch14::Type::kMembers: {
        // One part of a list: it builds back as one frame with its own "last" flag.
        const auto frames = ch14::members_frames(m.names);
        require(frames.size() == 1, "a list that fit one frame needs one again");
        again = frames[0];
        if (!m.last) again[ch14::kHeaderSize] = 0;
        break;
    }
    default: require(false, "parse_server accepted a type it does not know");
    }
    require(again == bytes, "a server message read back builds other bytes");
    require(ch14::valid_utf8(m.name) && ch14::valid_utf8(m.text), "parse_server let through bad UTF-8");
}

}  // namespace

int frame_one_input(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::uint8_t seed = data[0];
    const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);
    const Outcome whole = decode(stream, 0);
    const Outcome split = decode(stream, seed == 0 ? 1 : seed);
    require(whole.frames == split.frames, "the frames depend on how the bytes were split");
    require(whole.too_large == split.too_large && whole.mid_frame == split.mid_frame,
            "the end state depends on how the bytes were split");
    for (const auto& f : whole.frames) check_server_message(f);
    return 0;
}

}  // namespace fuzz
