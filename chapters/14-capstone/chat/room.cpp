// Chapter 14 - the chat room's rules: join, say, list, leave; every broadcast numbered
// and sent to every member under one lock, so that each member's queue holds them in
// the server's order; every bad input answered with an error frame, and the ones that
// leave the stream unusable with a close.
#include "room.h"

#include <utility>

namespace ch14 {

void Room::connected(ConnectionId id) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closing_) {
        transport_.send(id, closing_frame());
        transport_.close(id, true);
        return;
    }
    //! [server-full]
    // One more than --max-clients: told why, then closed. The others are untouched,
    // and the next one is welcome once someone leaves.
    if (sessions_.size() >= limits_.max_clients) {
        ++errors_;
        transport_.send(id, error_frame(Error::kServerFull, "the room is full; try again later"));
        transport_.close(id, true);
        return;
    }
    //! [server-full]
    sessions_.emplace(id, std::make_shared<Session>());
}

std::shared_ptr<Room::Session> Room::find(ConnectionId id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = sessions_.find(id);
    return it == sessions_.end() ? nullptr : it->second;
}

//! [received]
// Bytes in any split: the decoder gathers frames, each handled as it completes. The
// frame deadline runs from the first byte of a frame to its last.
void Room::received(ConnectionId id, std::string_view bytes, Clock::time_point now) {
    const std::shared_ptr<Session> s = find(id);
    if (!s) return;  // refused at connect, or closed by the room: nothing to do
    while (!bytes.empty()) {
        std::size_t used = 0;
        const Decoded r = s->decoder.feed(bytes.data(), bytes.size(), used);
        bytes.remove_prefix(used);
        if (r == Decoded::kTooLarge) {
            std::lock_guard<std::mutex> lock(mutex_);
            refuse_locked(id, *s, Error::kFrameTooLarge,
                          "a frame of " + std::to_string(s->decoder.refused_length()) + " bytes; at most " +
                              std::to_string(kMaxPayload),
                          true);
            return;
        }
        if (r == Decoded::kMore) break;
        ++frames_;
        s->frame_started = 0;  // that frame is whole: its deadline is met
        if (!handle(id, *s, s->decoder.frame())) return;
    }
    if (s->decoder.mid_frame() && s->frame_started == 0) s->frame_started = now.time_since_epoch().count();
}
//! [received]

//! [handle]
bool Room::handle(ConnectionId id, Session& s, const Frame& f) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (s.done) return false;
    const std::string_view p = f.payload;
    switch (static_cast<Type>(f.type)) {
    case Type::kJoin:
        return join_locked(id, s, p);
    case Type::kSay:
        if (s.name.empty()) return refuse_locked(id, s, Error::kNotJoined, "join first", false);
        if (!valid_text(p)) return refuse_locked(id, s, Error::kBadPayload, "1 to 1024 bytes of UTF-8, no control", false);
        broadcast_locked(message_frame(next_seq_, s.name, p));
        return true;
    case Type::kList:
        if (!p.empty()) return refuse_locked(id, s, Error::kBadPayload, "list takes no payload", false);
        if (s.name.empty()) return refuse_locked(id, s, Error::kNotJoined, "join first", false);
        {
            std::vector<std::string> names;
            for (const auto& entry : names_) names.push_back(entry.first);
            for (auto& frame : members_frames(names)) transport_.send(id, std::move(frame));
        }
        return true;
    case Type::kLeave:
        if (!p.empty()) return refuse_locked(id, s, Error::kBadPayload, "leave takes no payload", false);
        if (!s.name.empty()) leave_locked(id, s, true);  // it hears its own departure last
        s.done = true;
        transport_.close(id, true);
        return false;
    default:
        // A type not in the table, or one only the server sends: this is no client of
        // ours, and what follows cannot be trusted either.
        return refuse_locked(id, s, Error::kUnknownType, "type " + std::to_string(f.type), true);
    }
}
//! [handle]

//! [join]
bool Room::join_locked(ConnectionId id, Session& s, std::string_view name) {
    if (!s.name.empty()) return refuse_locked(id, s, Error::kAlreadyJoined, "you are " + s.name, false);
    if (!valid_name(name)) return refuse_locked(id, s, Error::kBadName, "1 to 32 bytes of UTF-8, no control", false);
    if (names_.count(name) != 0)
        return refuse_locked(id, s, Error::kNameTaken, std::string(name) + " is here already", false);
    s.name = std::string(name);
    names_.emplace(s.name, id);
    // Its first broadcast is its own arrival: the welcome names that number.
    transport_.send(id, welcome_frame(next_seq_, s.name));
    broadcast_locked(joined_frame(next_seq_, s.name));
    return true;
}
//! [join]

//! [broadcast]
// Under the room's mutex: the sequence number moves on and every member's copy is
// queued before the next broadcast can take a number. A send never waits for a slow
// reader (the engine queues it, and drops a reader whose queue passes its limit).
void Room::broadcast_locked(std::string bytes) {
    ++next_seq_;
    ++broadcasts_;
    for (const auto& member : names_) transport_.send(member.second, bytes);
}
//! [broadcast]

// `tell_it`: the leaver is sent its own departure (a leave); not when it is gone.
void Room::leave_locked(ConnectionId id, Session& s, bool tell_it) {
    names_.erase(s.name);
    std::string left = left_frame(next_seq_, s.name);
    if (tell_it) transport_.send(id, left);
    s.name.clear();
    if (closing_) return;  // everyone is being told the server closes: no more news
    broadcast_locked(std::move(left));
}

bool Room::refuse_locked(ConnectionId id, Session& s, Error code, const std::string& reason, bool then_close) {
    ++errors_;
    transport_.send(id, error_frame(code, reason));
    if (!then_close) return true;
    if (!s.name.empty()) leave_locked(id, s, false);
    s.done = true;
    transport_.close(id, true);
    return false;
}

void Room::closed(ConnectionId id) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    if (!it->second->name.empty()) leave_locked(id, *it->second, false);
    sessions_.erase(it);
}

//! [sweep]
std::size_t Room::sweep(Clock::time_point now) {
    if (limits_.frame_timeout.count() <= 0) return 0;
    const Clock::rep limit = std::chrono::duration_cast<Clock::duration>(limits_.frame_timeout).count();
    std::size_t closed_now = 0;
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [id, s] : sessions_) {
        const Clock::rep started = s->frame_started;
        if (started == 0 || s->done || now.time_since_epoch().count() - started <= limit) continue;
        ++frame_timeouts_;
        ++closed_now;
        refuse_locked(id, *s, Error::kFrameTimeout, "a frame begun " + std::to_string(limits_.frame_timeout.count()) +
                                                        " ms ago is still not complete", true);
    }
    return closed_now;
}
//! [sweep]

void Room::closing() {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
    for (auto& [id, s] : sessions_) {
        if (s->done) continue;
        s->done = true;
        transport_.send(id, closing_frame());
        transport_.close(id, true);
    }
}

std::size_t Room::connections() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return sessions_.size();
}

std::size_t Room::members() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return names_.size();
}

std::uint64_t Room::next_seq() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return next_seq_;
}

}  // namespace ch14
