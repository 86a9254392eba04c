// Chapter 14 - a chat client's connection: frames out, server messages in, through the
// same frame decoder the server uses. Blocking, with timeouts: the terminal client
// reads on one thread and sends on another; the tests use it as it is.
#pragma once

#include <string>

#include "iocp/test_client.h"
#include "protocol/frame.h"
#include "protocol/messages.h"

namespace ch14 {

class ChatClient {
public:
    static ChatClient connect(const iocp::Endpoint& to) { return ChatClient(iocp::TestClient::connect(to)); }

    /// Sends bytes as they are (a frame, or anything a test wants the server to see).
    void send(const std::string& bytes) { client_.send(bytes); }

    /// The next server message; throws iocp::TimeoutError, iocp::PeerClosedError (the
    /// server closed), or std::runtime_error for bytes that are no server message.
    ServerMessage read(iocp::Millis timeout = iocp::kDefaultTimeout);

    /// join, then the welcome: its first sequence number. Throws on an error reply.
    std::uint64_t join(const std::string& name, iocp::Millis timeout = iocp::kDefaultTimeout);

    iocp::TestClient& socket() { return client_; }

private:
    explicit ChatClient(iocp::TestClient c) : client_(std::move(c)) {}
    iocp::TestClient client_;
    FrameDecoder decoder_;
};

}  // namespace ch14
