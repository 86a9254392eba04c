// common/test_client.cpp - see test_client.h.
#include "iocp/test_client.h"

#include <memory>

#ifndef _WIN32
#include <poll.h>

#include <cerrno>
#endif

namespace iocp {

namespace {

using Clock = std::chrono::steady_clock;

#ifdef MSG_NOSIGNAL
constexpr int kSendFlags = MSG_NOSIGNAL;
#else
constexpr int kSendFlags = 0;
#endif

struct Ready {
    bool readable = false;
    bool writable = false;
};

// Waits until the socket is readable and/or writable, or the deadline passes.
Ready wait_ready(socket_t s, bool want_read, bool want_write, Clock::time_point deadline, const char* what) {
    for (;;) {
        const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
        if (left.count() <= 0) throw TimeoutError(std::string("timed out waiting to ") + what);
#ifdef _WIN32
        fd_set rd, wr, ex;
        FD_ZERO(&rd);
        FD_ZERO(&wr);
        FD_ZERO(&ex);
        if (want_read) FD_SET(s, &rd);
        if (want_write) FD_SET(s, &wr);
        FD_SET(s, &ex);  // a failed non-blocking connect is reported here on Windows
        timeval tv{static_cast<long>(left.count() / 1000), static_cast<long>((left.count() % 1000) * 1000)};
        const int n = ::select(0, &rd, &wr, &ex, &tv);
        if (n < 0) throw_socket_error("select");
        if (n == 0) continue;
        Ready r{FD_ISSET(s, &rd) != 0, FD_ISSET(s, &wr) != 0};
        if (FD_ISSET(s, &ex)) r.readable = r.writable = true;  // let the next call report the error
        return r;
#else
        pollfd p{s, static_cast<short>((want_read ? POLLIN : 0) | (want_write ? POLLOUT : 0)), 0};
        const int n = ::poll(&p, 1, static_cast<int>(left.count()));
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_socket_error("poll");
        }
        if (n == 0) continue;
        const bool trouble = (p.revents & (POLLERR | POLLHUP | POLLNVAL)) != 0;
        return Ready{(p.revents & POLLIN) != 0 || trouble, (p.revents & POLLOUT) != 0 || trouble};
#endif
    }
}

// One non-blocking send; returns bytes taken (0 if the buffer is full).
std::size_t try_send(socket_t s, std::string_view data) {
    const auto chunk = static_cast<io_size_t>(data.size() > (1u << 20) ? (1u << 20) : data.size());
    const auto n = ::send(s, data.data(), chunk, kSendFlags);
    if (n >= 0) return static_cast<std::size_t>(n);
    const int err = last_socket_error();
    if (is_would_block(err)) return 0;
#ifndef _WIN32
    if (err == EINTR) return 0;
#endif
    throw SystemError("send", err);
}

// One non-blocking recv into `out`; returns false on EOF.
bool try_recv(socket_t s, std::string& out, std::size_t max) {
    char buf[64 * 1024];
    const auto want = static_cast<io_size_t>(max < sizeof buf ? max : sizeof buf);
    const auto n = ::recv(s, buf, want, 0);
    if (n > 0) {
        out.append(buf, static_cast<std::size_t>(n));
        return true;
    }
    if (n == 0) return false;
    const int err = last_socket_error();
    if (is_would_block(err)) return true;
#ifndef _WIN32
    if (err == EINTR) return true;
#endif
    throw SystemError("recv", err);
}

}  // namespace

TestClient TestClient::connect(const Endpoint& to, Millis timeout) {
    const auto deadline = Clock::now() + timeout;
    const SocketAddress addr = resolve(to);
    UniqueSocket s(::socket(addr.family(), SOCK_STREAM, IPPROTO_TCP));
    if (!s) throw_socket_error("socket");
    set_nonblocking(s.get(), true);
    set_nodelay(s.get(), true);  // small test messages go out at once (see DESIGN: Nagle)
    if (::connect(s.get(), addr.get(), addr.length) != 0) {
        const int err = last_socket_error();
#ifdef _WIN32
        if (err != WSAEWOULDBLOCK) throw SystemError("connect", err);
#else
        if (err != EINPROGRESS) throw SystemError("connect", err);
#endif
        wait_ready(s.get(), false, true, deadline, "connect");
        int so_error = 0;
        socklen_t len = sizeof so_error;
        getsockopt(s.get(), SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&so_error), &len);
        if (so_error != 0) throw SystemError("connect", so_error);
    }
    return TestClient(std::move(s));
}

void TestClient::send(std::string_view data, Millis timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!data.empty()) {
        const std::size_t n = try_send(s_.get(), data);
        data.remove_prefix(n);
        if (!data.empty() && n == 0) wait_ready(s_.get(), false, true, deadline, "send");
    }
}

std::size_t TestClient::send_some(std::string_view data) {
    std::size_t total = 0;
    while (total < data.size()) {
        const std::size_t n = try_send(s_.get(), data.substr(total));
        if (n == 0) break;
        total += n;
    }
    return total;
}

std::string TestClient::recv_exact(std::size_t n, Millis timeout) {
    return exchange({}, n, timeout);
}

std::string TestClient::exchange(std::string_view out, std::size_t expect, Millis timeout, HalfClose half_close) {
    const auto deadline = Clock::now() + timeout;
    std::string in;
    in.reserve(expect);
    bool fin_pending = half_close == HalfClose::kAfterSending;
    if (fin_pending && out.empty()) {
        shutdown_send();
        fin_pending = false;
    }
    while (!out.empty() || in.size() < expect) {
        const Ready r = wait_ready(s_.get(), in.size() < expect, !out.empty(), deadline,
                                   out.empty() ? "receive" : "send and receive");
        if (r.writable && !out.empty()) {
            out.remove_prefix(try_send(s_.get(), out));
            if (out.empty() && fin_pending) {
                shutdown_send();
                fin_pending = false;
            }
        }
        if (r.readable && in.size() < expect && !try_recv(s_.get(), in, expect - in.size()))
            throw PeerClosedError("peer closed after " + std::to_string(in.size()) + " of " +
                                  std::to_string(expect) + " bytes");
    }
    return in;
}

TestClient::Closed TestClient::wait_closed(Millis timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
        wait_ready(s_.get(), true, false, deadline, "see the connection close");
        char byte;
        const auto n = ::recv(s_.get(), &byte, 1, 0);
        if (n == 0) return Closed::kEof;
        if (n > 0) throw std::runtime_error("unexpected data while waiting for the close");
        const int err = last_socket_error();
        if (is_would_block(err)) continue;
        if (is_disconnect_error(err)) return Closed::kReset;
        throw SystemError("recv", err);
    }
}

void TestClient::shutdown_send() {
#ifdef _WIN32
    if (::shutdown(s_.get(), SD_SEND) != 0) throw_socket_error("shutdown");
#else
    if (::shutdown(s_.get(), SHUT_WR) != 0) throw_socket_error("shutdown");
#endif
}

void TestClient::reset() {
    set_linger_reset(s_.get());
    s_.reset();
}

}  // namespace iocp
