// Chapter 14 - the chat room's messages, on top of frames: every type, its fields, the
// error codes, and one function to build each message and one to read it back. The
// page specifies the same thing byte by byte; a client can be written from either.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "frame.h"

namespace ch14 {

//! [types]
enum class Type : std::uint8_t {
    // client to server
    kJoin = 0x01,   // name
    kSay = 0x02,    // text
    kList = 0x03,   // (empty)
    kLeave = 0x04,  // (empty)
    // server to client
    kWelcome = 0x81,  // seq (u64): the sequence number of the first broadcast this member gets; name
    kMessage = 0x82,  // seq (u64), name length (u8), name, text           - a broadcast
    kJoined = 0x83,   // seq (u64), name                                   - a broadcast
    kLeft = 0x84,     // seq (u64), name                                   - a broadcast
    kMembers = 0x85,  // last part (u8: 0 or 1), count (u16), count x (length (u8), name)
    kClosing = 0x86,  // (empty): the server is stopping; the connection closes next
    kError = 0xFF,    // code (u16), reason (UTF-8 text)
};
//! [types]

//! [errors]
enum class Error : std::uint16_t {
    kFrameTooLarge = 1,   // a header announced more than kMaxPayload: then close
    kUnknownType = 2,     // a type this table does not list, or a server type: then close
    kBadName = 3,         // empty, longer than kMaxName, not UTF-8, or with a control character
    kNameTaken = 4,       // another member has that name
    kNotJoined = 5,       // say or list before join
    kAlreadyJoined = 6,   // a second join
    kServerFull = 7,      // more clients than --max-clients: then close
    kFrameTimeout = 8,    // a frame begun and not finished within --frame-timeout-ms: then close
    kBadPayload = 9,      // a payload that does not fit its type (an empty or non-UTF-8 text, ...)
};
//! [errors]

inline constexpr std::size_t kMaxName = 32;   // bytes of UTF-8
inline constexpr std::size_t kMaxText = 1024;  // bytes of UTF-8 in one say

/// A name: 1 to kMaxName bytes of UTF-8, no control character (below U+0020, or U+007F).
bool valid_name(std::string_view name);
/// A chat line: 1 to kMaxText bytes of UTF-8, no control character but tab.
bool valid_text(std::string_view text);
const char* error_name(Error e);

// What a client sends. The builders do not check: a test must be able to send a bad name.
std::string join_frame(std::string_view name);
std::string say_frame(std::string_view text);
std::string list_frame();
std::string leave_frame();

// What the server sends.
std::string welcome_frame(std::uint64_t first_seq, std::string_view name);
std::string message_frame(std::uint64_t seq, std::string_view name, std::string_view text);
std::string joined_frame(std::uint64_t seq, std::string_view name);
std::string left_frame(std::uint64_t seq, std::string_view name);
/// The member list, in as many kMembers frames as it takes (each at most kMaxPayload).
std::vector<std::string> members_frames(const std::vector<std::string>& names);
std::string closing_frame();
std::string error_frame(Error code, std::string_view reason);

//! [server-message]
/// Any server message, read back (by the client and the tests).
struct ServerMessage {
    Type type = Type::kError;
    std::uint64_t seq = 0;           // welcome, message, joined, left
    std::string name;                // welcome, message, joined, left
    std::string text;                // message; error: the reason
    std::vector<std::string> names;  // members
    bool last = false;               // members: the list's last part
    std::uint16_t error = 0;         // error: the code
};
//! [server-message]

/// False for a frame that is no well-formed server message (unknown type, fields that
/// do not fit the payload, a name or text that is not UTF-8).
bool parse_server(const Frame& frame, ServerMessage& out);

/// One line for a person: "[12] ana: hello", "[13] * bo joined", "error 4 (name taken): ...".
std::string describe(const ServerMessage& m);

}  // namespace ch14
