// Chapter 14 - the wire format's lowest layer: a frame is a 5-byte header (the payload's
// length, 4 bytes big-endian, then the message type, 1 byte) and the payload. One
// decoder, used by the server, the client and the tests, takes bytes in any split: one
// frame in many reads, many frames in one read. It reads a frame's length before it
// reserves anything, so a header that claims 4 GiB costs nothing but an error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ch14 {

//! [frame-limits]
inline constexpr std::size_t kHeaderSize = 5;     // length (4, big-endian) + type (1)
inline constexpr std::size_t kMaxPayload = 4096;  // the largest payload a frame may carry
//! [frame-limits]

struct Frame {
    std::uint8_t type = 0;
    std::string payload;
};

//! [decoded]
enum class Decoded {
    kFrame,     // a whole frame: frame() holds it until the next feed()
    kMore,      // every byte given was taken, and no frame is complete yet
    kTooLarge,  // a header announced more than the maximum: the stream is unusable from here
};
//! [decoded]

class FrameDecoder {
public:
    explicit FrameDecoder(std::size_t max_payload = kMaxPayload) : max_(max_payload) {}

    /// Takes bytes from `data` up to the end of the next frame at most; `used` says how
    /// many it took. Call again with the rest while it answers kFrame. After kTooLarge
    /// it takes nothing more and answers kTooLarge again: the caller closes.
    Decoded feed(const char* data, std::size_t size, std::size_t& used);

    /// The frame that the last feed() completed.
    Frame& frame() { return frame_; }

    /// True between a frame's first byte and its last: the frame deadline runs.
    bool mid_frame() const { return have_header_ > 0 || want_ > 0; }

    /// The announced length of the frame that was refused (after kTooLarge).
    std::uint64_t refused_length() const { return refused_; }

    /// Bytes reserved for payloads so far: the largest frame seen, not more (the fuzzer
    /// checks; a string's own small floor aside).
    std::size_t capacity() const { return frame_.payload.capacity(); }

private:
    std::size_t max_;
    unsigned char header_[kHeaderSize] = {};
    std::size_t have_header_ = 0;  // header bytes gathered for the frame under way
    std::size_t want_ = 0;         // payload bytes still to come for it
    bool broken_ = false;
    std::uint64_t refused_ = 0;
    Frame frame_;
};

/// The bytes of one frame. Throws std::length_error past kMaxPayload: what this side
/// sends must pass the other side's decoder.
std::string encode_frame(std::uint8_t type, std::string_view payload);

/// Big-endian fields, as the frames carry them.
void put_u16(std::string& out, std::uint16_t v);
void put_u64(std::string& out, std::uint64_t v);
std::uint16_t get_u16(std::string_view in);  // in.size() >= 2
std::uint64_t get_u64(std::string_view in);  // in.size() >= 8

/// Well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past U+10FFFF.
bool valid_utf8(std::string_view s);

}  // namespace ch14
