// Chapter 5 - what the server's files share and nobody else sees: the operation record,
// the connection, and the group (up to 63 connections and the one thread that waits for
// their operations). See echo_server.h for the public side and docs/pages/ch05.md.
//
// Files, in reading order: group.h (this), io.cpp (one operation's life: start it,
// collect it, cancel it and wait), group.cpp (a group's thread and its wait loop),
// echo_server.cpp (the server: accept, hand over, stop).
#pragma once

#include <iostream>
#include <memory>
#include <vector>

#include "echo_server.h"

namespace ch05 {

// "ch05: WSARecv failed: 10054 An existing connection was forcibly closed..."
inline void log_error(const char* call, int code) {
    std::cerr << "ch05: " << iocp::SystemError(call, code).what() << "\n";
}

//! [operation]
// One overlapped operation: everything the kernel may read or write between the call
// that starts it and the moment its completion is collected. The OVERLAPPED comes
// first, as in every per-I/O record from here on (chapter 7 gets from the OVERLAPPED
// the kernel hands back to the record around it).
struct Operation {
    WSAOVERLAPPED overlapped{};      // the kernel writes the status and byte count here
    iocp::UniqueHandle event;        // overlapped.hEvent: signalled when the operation completes
    WSABUF wsabuf{};                 // which bytes: a slice of buffer
    DWORD flags = 0;                 // WSARecv's in/out flags
    std::unique_ptr<char[]> buffer;  // the bytes themselves
    std::size_t capacity = 0;
    enum class Kind { kRecv, kSend } kind = Kind::kRecv;
    bool in_flight = false;          // the kernel's: from a started call until collected
};
//! [operation]

//! [connection]
// One client. An echo needs one operation at a time: receive, send back what came
// (posting the rest again after a partial send), receive again. No receive is posted
// while a send is pending, so a client that stops reading soon stops being read from:
// flow control comes with the shape of the loop. Connections live on the heap and are
// never moved or copied: the kernel holds the address of their Operation.
struct Connection {
    iocp::UniqueSocket socket;
    Operation op;
    std::size_t filled = 0;  // bytes the last receive put into op.buffer
    std::size_t sent = 0;    // how many of those have been sent back so far
};
//! [connection]

//! [group]
// The thread that starts an operation is the thread that collects it, and it never
// leaves while one of its operations is in flight (Windows also cancels a thread's
// pending I/O when the thread exits, WSARecv's page says; we never rely on that).
class EchoServer::Group {
public:
    explicit Group(EchoServer& server);
    ~Group() { stop(); }
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;

    bool has_room() const { return load_.load() < kSocketsPerGroup; }
    bool adopt(iocp::UniqueSocket& client);  // from the accepting thread; false (client untouched) if gone
    void stop();

private:
    // group.cpp: the thread and its loop
    void run();
    void serve_signalled(const std::vector<WSAEVENT>& events, std::size_t first);
    void start_connection(iocp::UniqueSocket socket);
    void drop(std::size_t i);                // close connections_[i] and remove it from the group
    void leave(std::vector<iocp::UniqueSocket>& adopted);
    // io.cpp: one operation's life
    bool post_recv(Connection& c);
    bool post_send(Connection& c);
    void begin(Operation& op, Operation::Kind kind, char* data, std::size_t len);
    bool started(Operation& op, int rc, const char* call);
    void finish(Operation& op);
    bool on_completion(Connection& c);       // false: close this connection
    bool close_connection(Connection& c);    // false: c must not be freed (see there)

    EchoServer& server_;
    iocp::UniqueHandle wake_;                   // slot 0 of every wait: new sockets, or stop
    std::mutex inbox_mutex_;
    std::vector<iocp::UniqueSocket> inbox_;     // handed over, not yet adopted by the thread
    bool closed_ = false;                       // under inbox_mutex_: the thread has left
    std::atomic<bool> leaving_{false};          // set by stop(): this group's own signal to leave
    std::atomic<std::size_t> load_{0};          // connections + inbox: how full, for the acceptor
    std::vector<std::unique_ptr<Connection>> connections_;  // the group's thread only
    std::vector<bool> closing_;                 // the group's thread only: which to drop this round
    std::thread thread_;                        // last: starts once everything above exists
};
//! [group]

}  // namespace ch05
