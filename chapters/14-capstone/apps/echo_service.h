// Chapter 14 - the smallest application on the engine: an echo. Every byte a
// connection sends is sent back to it; the engine does the rest (its budget pauses a
// client that sends faster than it reads, and drops one that never reads).
#pragma once

#include <string>
#include <string_view>

#include "engine/engine.h"

namespace ch14 {

//! [echo-service]
class EchoService final : public Handler {
public:
    explicit EchoService(iocp::Endpoint where, EngineOptions options = {}) : engine_(std::move(where), *this, options) {}
    ~EchoService() override { stop(); }  // the engine's last callbacks come while this is whole
    void start() { engine_.start(); }
    void stop() { engine_.stop(); }
    std::uint16_t port() const { return engine_.port(); }
    std::size_t live_connections() const { return engine_.live_connections(); }
    Engine& engine() { return engine_; }

    void on_connect(ConnectionId, const std::string&) override {}
    void on_data(ConnectionId id, std::string_view bytes) override { engine_.send(id, std::string(bytes)); }
    void on_close(ConnectionId) override {}

private:
    Engine engine_;
};
//! [echo-service]

}  // namespace ch14
