// Chapter 14 - the chat room on the engine: the engine's callbacks go to the room, the
// room's sends and closes go to the engine, and the engine's tick runs the room's frame
// deadline. stop() tells every client the server is closing, lets the notices out,
// then stops the engine.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "chat/room.h"
#include "engine/engine.h"

namespace ch14 {

//! [chat-service]
class ChatService final : public Handler, private Transport {
public:
    ChatService(iocp::Endpoint where, RoomLimits room, EngineOptions options = {})
        : engine_(std::move(where), *this, options), room_(*this, room) {}
    ~ChatService() override { stop(); }
    void start() { engine_.start(); }
    /// Every client told kClosing; up to `grace` for the notices to go out; then the
    /// engine stops (which closes what is left).
    void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(2000));
    std::uint16_t port() const { return engine_.port(); }
    std::size_t live_connections() const { return engine_.live_connections(); }
    Engine& engine() { return engine_; }
    Room& room() { return room_; }

private:
    // Handler: the engine's calls.
    void on_connect(ConnectionId id, const std::string& peer) override;
    void on_data(ConnectionId id, std::string_view bytes) override;
    void on_close(ConnectionId id) override { room_.closed(id); }
    void on_tick(Clock::time_point now) override { room_.sweep(now); }
    // Transport: the room's calls.
    bool send(ConnectionId id, std::string bytes) override { return engine_.send(id, std::move(bytes)); }
    void close(ConnectionId id, bool after_sends) override { engine_.close(id, after_sends); }

    Engine engine_;
    Room room_;
    bool stopped_ = false;
};
//! [chat-service]

}  // namespace ch14
