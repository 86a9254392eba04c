// Chapter 14 - the chat room: what the server does with the frames its connections
// send. It knows nothing of sockets, ports or rings: it talks to its connections
// through a Transport (the engine's send and close, by connection id), so that the
// same room runs on the completion port, on io_uring, and in a test with no network.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/frame.h"
#include "protocol/messages.h"

namespace ch14 {

using ConnectionId = std::uint64_t;
using Clock = std::chrono::steady_clock;

//! [transport]
/// What the room needs from the engine. Both calls may come from any thread and never
/// block on a slow client: send queues the bytes (false if that connection is gone),
/// and close ends the connection, after what is queued for it when `after_sends`.
/// Neither calls back into the room before it returns (the room holds its lock).
class Transport {
public:
    virtual ~Transport() = default;
    virtual bool send(ConnectionId id, std::string bytes) = 0;
    virtual void close(ConnectionId id, bool after_sends) = 0;
};
//! [transport]

struct RoomLimits {
    std::size_t max_clients = 1000;               // one more is told kServerFull, then closed
    std::chrono::milliseconds frame_timeout{0};  // 0: off; else a frame begun must end within it
};

//! [room]
class Room {
public:
    Room(Transport& transport, RoomLimits limits) : transport_(transport), limits_(limits) {}

    // The engine's callbacks. For one connection they come one at a time (the engine
    // guarantees it); for different connections, from any worker at once.
    void connected(ConnectionId id);
    void received(ConnectionId id, std::string_view bytes, Clock::time_point now);
    void closed(ConnectionId id);

    /// Closes every connection whose frame has run past the frame timeout (called by
    /// a timer; `now` is its clock). Returns how many it closed.
    std::size_t sweep(Clock::time_point now);
    /// stop(): every connection is told kClosing and closed after what is queued.
    void closing();

    std::size_t connections() const;
    std::size_t members() const;
    std::uint64_t next_seq() const;
    std::uint64_t frames_handled() const { return frames_.load(); }
    std::uint64_t errors_sent() const { return errors_.load(); }
    std::uint64_t broadcasts() const { return broadcasts_.load(); }
    std::uint64_t frame_timeouts() const { return frame_timeouts_.load(); }

private:
    //! [session]
    // One connection's state. Its decoder is touched only by the callbacks of that
    // connection (one at a time); everything else under the room's mutex.
    struct Session {
        FrameDecoder decoder;
        std::atomic<Clock::rep> frame_started{0};  // when the frame under way began (0: none)
        std::string name;                          // empty until it joins
        bool done = false;                         // closed by the room: ignore what follows
    };
    //! [session]

    std::shared_ptr<Session> find(ConnectionId id) const;
    // Each returns false when the connection is closed by it. The *_locked ones run
    // under mutex_. (Transport calls never call back into the room: no lock cycle.)
    bool handle(ConnectionId id, Session& s, const Frame& f);
    bool join_locked(ConnectionId id, Session& s, std::string_view name);
    bool refuse_locked(ConnectionId id, Session& s, Error code, const std::string& reason, bool then_close);
    void broadcast_locked(std::string bytes);
    void leave_locked(ConnectionId id, Session& s, bool tell_it);

    Transport& transport_;
    RoomLimits limits_;
    mutable std::mutex mutex_;  // guards all below and every Session's name and done
    std::map<ConnectionId, std::shared_ptr<Session>> sessions_;
    std::map<std::string, ConnectionId, std::less<>> names_;  // the members, by name
    std::uint64_t next_seq_ = 1;
    bool closing_ = false;  // closing() ran: newcomers are told so, departures are not news
    std::atomic<std::uint64_t> frames_{0};
    std::atomic<std::uint64_t> errors_{0};
    std::atomic<std::uint64_t> broadcasts_{0};
    std::atomic<std::uint64_t> frame_timeouts_{0};
};
//! [room]

}  // namespace ch14
