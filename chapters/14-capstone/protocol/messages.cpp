// Chapter 14 - building and reading the chat room's messages (see messages.h for the
// table). Every reader checks each field against what is left of the payload before it
// reads it: a frame may say anything.
#include "messages.h"

#include <string>

namespace ch14 {

namespace {

bool no_controls(std::string_view s, bool tab_ok) {
    for (const char ch : s) {
        const auto b = static_cast<unsigned char>(ch);
        if ((b < 0x20 && !(tab_ok && b == '\t')) || b == 0x7F) return false;
    }
    return true;
}

std::string seq_and(std::uint64_t seq, std::string_view rest) {
    std::string p;
    put_u64(p, seq);
    p.append(rest);
    return p;
}

std::string frame_of(Type t, std::string_view payload) { return encode_frame(static_cast<std::uint8_t>(t), payload); }

}  // namespace

bool valid_name(std::string_view name) {
    return !name.empty() && name.size() <= kMaxName && valid_utf8(name) && no_controls(name, false);
}

bool valid_text(std::string_view text) {
    return !text.empty() && text.size() <= kMaxText && valid_utf8(text) && no_controls(text, true);
}

const char* error_name(Error e) {
    switch (e) {
    case Error::kFrameTooLarge: return "frame too large";
    case Error::kUnknownType: return "unknown type";
    case Error::kBadName: return "bad name";
    case Error::kNameTaken: return "name taken";
    case Error::kNotJoined: return "not joined";
    case Error::kAlreadyJoined: return "already joined";
    case Error::kServerFull: return "server full";
    case Error::kFrameTimeout: return "frame timeout";
    case Error::kBadPayload: return "bad payload";
    }
    return "unknown error";
}

std::string join_frame(std::string_view name) { return frame_of(Type::kJoin, name); }
std::string say_frame(std::string_view text) { return frame_of(Type::kSay, text); }
std::string list_frame() { return frame_of(Type::kList, {}); }
std::string leave_frame() { return frame_of(Type::kLeave, {}); }

std::string welcome_frame(std::uint64_t first_seq, std::string_view name) {
    return frame_of(Type::kWelcome, seq_and(first_seq, name));
}

//! [message-frame]
std::string message_frame(std::uint64_t seq, std::string_view name, std::string_view text) {
    std::string p;
    put_u64(p, seq);
    p.push_back(static_cast<char>(name.size()));  // at most kMaxName: fits a byte
    p.append(name);
    p.append(text);
    return frame_of(Type::kMessage, p);
}
//! [message-frame]

std::string joined_frame(std::uint64_t seq, std::string_view name) { return frame_of(Type::kJoined, seq_and(seq, name)); }
std::string left_frame(std::uint64_t seq, std::string_view name) { return frame_of(Type::kLeft, seq_and(seq, name)); }

std::vector<std::string> members_frames(const std::vector<std::string>& names) {
    std::vector<std::string> frames;
    std::size_t i = 0;
    do {
        std::string entries;
        std::uint16_t count = 0;
        while (i < names.size() && 3 + entries.size() + 1 + names[i].size() <= kMaxPayload) {
            entries.push_back(static_cast<char>(names[i].size()));
            entries.append(names[i]);
            ++count;
            ++i;
        }
        std::string p;
        p.push_back(i == names.size() ? 1 : 0);
        put_u16(p, count);
        p.append(entries);
        frames.push_back(frame_of(Type::kMembers, p));
    } while (i < names.size());
    return frames;
}

std::string closing_frame() { return frame_of(Type::kClosing, {}); }

std::string error_frame(Error code, std::string_view reason) {
    std::string p;
    put_u16(p, static_cast<std::uint16_t>(code));
    p.append(reason.substr(0, kMaxPayload - 2));
    return frame_of(Type::kError, p);
}

//! [parse-server]
bool parse_server(const Frame& frame, ServerMessage& out) {
    out = ServerMessage{};
    std::string_view p = frame.payload;
    out.type = static_cast<Type>(frame.type);
    switch (out.type) {
    case Type::kWelcome:
    case Type::kJoined:
    case Type::kLeft:
        if (p.size() < 8) return false;
        out.seq = get_u64(p);
        out.name = std::string(p.substr(8));
        return valid_name(out.name);
    case Type::kMessage: {
        if (p.size() < 9) return false;
        out.seq = get_u64(p);
        const std::size_t n = static_cast<unsigned char>(p[8]);
        if (p.size() < 9 + n) return false;
        out.name = std::string(p.substr(9, n));
        out.text = std::string(p.substr(9 + n));
        return valid_name(out.name) && valid_text(out.text);
    }
    case Type::kMembers: {
        if (p.size() < 3 || static_cast<unsigned char>(p[0]) > 1) return false;
        out.last = p[0] == 1;
        const std::uint16_t count = get_u16(p.substr(1));
        p.remove_prefix(3);
        for (std::uint16_t k = 0; k < count; ++k) {
            if (p.empty() || p.size() < 1 + static_cast<std::size_t>(static_cast<unsigned char>(p[0]))) return false;
            const std::size_t n = static_cast<unsigned char>(p[0]);
            out.names.emplace_back(p.substr(1, n));
            if (!valid_name(out.names.back())) return false;
            p.remove_prefix(1 + n);
        }
        return p.empty();
    }
    case Type::kClosing:
        return p.empty();
    case Type::kError:
        if (p.size() < 2) return false;
        out.error = get_u16(p);
        out.text = std::string(p.substr(2));
        return valid_utf8(out.text);
    default:
        return false;  // a client's type, or none at all
    }
}
//! [parse-server]

std::string describe(const ServerMessage& m) {
    const std::string seq = "[" + std::to_string(m.seq) + "] ";
    switch (m.type) {
    case Type::kWelcome: return "welcome, " + m.name + " (the room is at " + std::to_string(m.seq) + ")";
    case Type::kMessage: return seq + m.name + ": " + m.text;
    case Type::kJoined: return seq + "* " + m.name + " joined";
    case Type::kLeft: return seq + "* " + m.name + " left";
    case Type::kMembers: {
        std::string line = "members:";
        for (const auto& n : m.names) line += " " + n;
        return line;
    }
    case Type::kClosing: return "* the server is closing";
    case Type::kError:
        return "error " + std::to_string(m.error) + " (" + error_name(static_cast<Error>(m.error)) + "): " + m.text;
    default: return "?";
    }
}

}  // namespace ch14
