// Chapter 14 - frames: the decoder's state machine (header, then payload), the encoder,
// big-endian fields and the UTF-8 check that names and chat lines must pass.
#include "frame.h"

#include <algorithm>
#include <stdexcept>

namespace ch14 {

//! [feed]
Decoded FrameDecoder::feed(const char* data, std::size_t size, std::size_t& used) {
    used = 0;
    if (broken_) return Decoded::kTooLarge;
    if (!mid_frame()) frame_.payload.clear();  // a new frame: the last one was handed over
    // The header first, byte by byte if that is how it comes.
    while (have_header_ < kHeaderSize) {
        if (used == size) return Decoded::kMore;
        header_[have_header_++] = static_cast<unsigned char>(data[used++]);
        if (have_header_ < kHeaderSize) continue;
        const std::uint64_t length = (std::uint64_t{header_[0]} << 24) | (std::uint64_t{header_[1]} << 16) |
                                     (std::uint64_t{header_[2]} << 8) | std::uint64_t{header_[3]};
        // The check comes before any allocation: a client cannot make us reserve what
        // it only claims to send.
        if (length > max_) {
            broken_ = true;
            refused_ = length;
            return Decoded::kTooLarge;
        }
        frame_.type = header_[4];
        want_ = static_cast<std::size_t>(length);
        if (want_ > frame_.payload.capacity()) {
            // Reserved afresh, not grown: a string that grows may double its capacity
            // (the fuzzer found 8 KiB reserved for a frame of 4 KiB), a new one takes
            // what it is asked for.
            std::string fresh;
            fresh.reserve(want_);
            frame_.payload.swap(fresh);
        }
    }
    // Then the payload, as much of it as this read brought.
    const std::size_t take = std::min(want_, size - used);
    frame_.payload.append(data + used, take);
    used += take;
    want_ -= take;
    if (want_ > 0) return Decoded::kMore;
    have_header_ = 0;  // complete: the next byte starts the next frame
    return Decoded::kFrame;
}
//! [feed]

std::string encode_frame(std::uint8_t type, std::string_view payload) {
    if (payload.size() > kMaxPayload) throw std::length_error("frame payload over kMaxPayload");
    std::string out;
    out.reserve(kHeaderSize + payload.size());
    const auto n = static_cast<std::uint32_t>(payload.size());
    out.push_back(static_cast<char>(n >> 24));
    out.push_back(static_cast<char>((n >> 16) & 0xFF));
    out.push_back(static_cast<char>((n >> 8) & 0xFF));
    out.push_back(static_cast<char>(n & 0xFF));
    out.push_back(static_cast<char>(type));
    out.append(payload);
    return out;
}

void put_u16(std::string& out, std::uint16_t v) {
    out.push_back(static_cast<char>(v >> 8));
    out.push_back(static_cast<char>(v & 0xFF));
}

void put_u64(std::string& out, std::uint64_t v) {
    for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

std::uint16_t get_u16(std::string_view in) {
    return static_cast<std::uint16_t>((static_cast<unsigned char>(in[0]) << 8) | static_cast<unsigned char>(in[1]));
}

std::uint64_t get_u64(std::string_view in) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
    return v;
}

//! [utf8]
// Each sequence checked against the table of RFC 3629, section 4: the lead byte says
// how many continuation bytes follow, and the second byte's range rules out overlong
// forms (E0, F0), surrogates (ED) and code points past U+10FFFF (F4).
bool valid_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto b = static_cast<unsigned char>(s[i]);
        if (b < 0x80) {
            ++i;
            continue;
        }
        std::size_t extra = 0;
        unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
        if (b >= 0xC2 && b <= 0xDF) {
            extra = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            extra = 2;
            if (b == 0xE0) lo = 0xA0;
            if (b == 0xED) hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            extra = 3;
            if (b == 0xF0) lo = 0x90;
            if (b == 0xF4) hi = 0x8F;
        } else {
            return false;  // 80-C1 (a continuation or an overlong lead) and F5-FF never lead
        }
        if (s.size() - i <= extra) return false;
        for (std::size_t k = 1; k <= extra; ++k) {
            const auto c = static_cast<unsigned char>(s[i + k]);
            if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) return false;
        }
        i += extra + 1;
    }
    return true;
}
//! [utf8]

}  // namespace ch14
