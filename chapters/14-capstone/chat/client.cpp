// Chapter 14 - a chat client's connection (see client.h).
#include "client.h"

#include <stdexcept>

namespace ch14 {

ServerMessage ChatClient::read(iocp::Millis timeout) {
    // The header, then exactly the payload it announces: the decoder checks the
    // length before a byte of payload is asked for.
    const std::string header = client_.recv_exact(kHeaderSize, timeout);
    std::size_t used = 0;
    Decoded r = decoder_.feed(header.data(), header.size(), used);
    if (r == Decoded::kTooLarge) throw std::runtime_error("the server announced a frame over the maximum");
    if (r == Decoded::kMore) {
        const std::uint32_t length = static_cast<std::uint32_t>(static_cast<unsigned char>(header[0])) << 24 |
                                     static_cast<std::uint32_t>(static_cast<unsigned char>(header[1])) << 16 |
                                     static_cast<std::uint32_t>(static_cast<unsigned char>(header[2])) << 8 |
                                     static_cast<unsigned char>(header[3]);
        const std::string payload = client_.recv_exact(length, timeout);
        r = decoder_.feed(payload.data(), payload.size(), used);
    }
    ServerMessage m;
    if (r != Decoded::kFrame || !parse_server(decoder_.frame(), m))
        throw std::runtime_error("the server sent a malformed message (type " + std::to_string(decoder_.frame().type) + ")");
    return m;
}

std::uint64_t ChatClient::join(const std::string& name, iocp::Millis timeout) {
    send(join_frame(name));
    const ServerMessage m = read(timeout);
    if (m.type != Type::kWelcome) throw std::runtime_error("join " + name + ": " + describe(m));
    return m.seq;
}

}  // namespace ch14
