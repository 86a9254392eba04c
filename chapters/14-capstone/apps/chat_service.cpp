// Chapter 14 - the chat room on the engine (see chat_service.h).
#include "chat_service.h"

#include <thread>

namespace ch14 {

void ChatService::on_connect(ConnectionId id, const std::string& peer) {
    static_cast<void>(peer);
    room_.connected(id);
}

void ChatService::on_data(ConnectionId id, std::string_view bytes) { room_.received(id, bytes, Clock::now()); }

//! [chat-stop]
void ChatService::stop(std::chrono::milliseconds grace) {
    if (stopped_) return;
    stopped_ = true;
    room_.closing();  // every client: kClosing, then a close after sends
    // The notices go out while the engine runs; a client that reads nothing cannot
    // hold the stop longer than the grace.
    const auto until = Clock::now() + grace;
    while (Clock::now() < until && (engine_.live_connections() > 0 || engine_.commands_pending() > 0))
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    engine_.stop();
}
//! [chat-stop]

}  // namespace ch14
