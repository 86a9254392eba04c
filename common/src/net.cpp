// common/net.cpp - see net.h (and handle.h for throw_last_error).
#include "iocp/net.h"
#include "iocp/handle.h"

#include <cerrno>
#include <cstring>
#include <memory>

#ifndef _WIN32
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <sys/types.h>
#endif

namespace iocp {

// ---------------------------------------------------------------------------------------
// Errors

int last_socket_error() {
#ifdef _WIN32
    return WSAGetLastError();
#else
    return errno;
#endif
}

std::string error_text(int code) {
#ifdef _WIN32
    char* text = nullptr;
    const DWORD n = FormatMessageA(
        FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
        nullptr, static_cast<DWORD>(code), MAKELANGID(LANG_NEUTRAL, SUBLANG_DEFAULT),
        reinterpret_cast<char*>(&text), 0, nullptr);
    std::string out = n ? std::string(text, n) : "unknown error";
    if (text) LocalFree(text);
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' '))
        out.pop_back();
    return out;
#else
    return std::strerror(code);
#endif
}

SystemError::SystemError(std::string call, int code)
    : std::runtime_error(call + " failed: " + std::to_string(code) + " " + error_text(code)),
      call_(std::move(call)),
      code_(code) {}

void throw_socket_error(const char* call) { throw SystemError(call, last_socket_error()); }

bool is_disconnect_error(int code) {
#ifdef _WIN32
    return code == WSAECONNRESET || code == WSAECONNABORTED || code == WSAENETRESET ||
           code == WSAESHUTDOWN || code == WSAENOTCONN || code == ERROR_NETNAME_DELETED ||
           code == ERROR_OPERATION_ABORTED ||
           // What GetLastError() can say after a failed overlapped socket operation,
           // besides 64 and 995: the connection was aborted or timed out locally.
           code == ERROR_CONNECTION_ABORTED || code == ERROR_SEM_TIMEOUT;
#else
    return code == ECONNRESET || code == ECONNABORTED || code == EPIPE || code == ENOTCONN ||
           code == ESHUTDOWN || code == ETIMEDOUT;
#endif
}

bool is_resource_exhaustion(int code) {
#ifdef _WIN32
    return code == WSAEMFILE || code == WSAENOBUFS || code == ERROR_NOT_ENOUGH_MEMORY;
#else
    return code == EMFILE || code == ENFILE || code == ENOBUFS || code == ENOMEM;
#endif
}

bool is_would_block(int code) {
#ifdef _WIN32
    return code == WSAEWOULDBLOCK;
#else
    return code == EAGAIN || code == EWOULDBLOCK;
#endif
}

// ---------------------------------------------------------------------------------------
// Start-up and ownership

WinsockGuard::WinsockGuard() {
#ifdef _WIN32
    WSADATA data;
    if (const int rc = WSAStartup(MAKEWORD(2, 2), &data); rc != 0)  // returns the error
        throw SystemError("WSAStartup", rc);
#endif
}

WinsockGuard::~WinsockGuard() {
#ifdef _WIN32
    WSACleanup();
#endif
}

void close_socket(socket_t s) noexcept {
    if (s == kInvalidSocket) return;
#ifdef _WIN32
    closesocket(s);
#else
    ::close(s);
#endif
}

void UniqueSocket::reset(socket_t s) noexcept {
    if (s_ != kInvalidSocket) close_socket(s_);
    s_ = s;
}

// ---------------------------------------------------------------------------------------
// Addresses and listeners

std::string address_text(const sockaddr* addr, socklen_t len) {
    sockaddr_storage ss{};
    if (addr == nullptr || len <= 0 || static_cast<std::size_t>(len) > sizeof ss) return "?";
    std::memcpy(&ss, addr, static_cast<std::size_t>(len));
    if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) return "?";
    char host[INET6_ADDRSTRLEN] = {};
    std::uint16_t port = 0;
    std::string out;
    // Appended piece by piece: `"[" + std::string(host)` makes GCC 12 at -O3 report a
    // false -Wrestrict inside std::string.
    if (ss.ss_family == AF_INET6) {
        const auto& a6 = reinterpret_cast<const sockaddr_in6&>(ss);
        inet_ntop(AF_INET6, &a6.sin6_addr, host, sizeof host);
        port = ntohs(a6.sin6_port);
        out.append("[").append(host).append("]");
    } else {
        const auto& a4 = reinterpret_cast<const sockaddr_in&>(ss);
        inet_ntop(AF_INET, &a4.sin_addr, host, sizeof host);
        port = ntohs(a4.sin_port);
        out.append(host);
    }
    return out.append(":").append(std::to_string(port));
}

// Numeric addresses only: a tutorial server binds what the reader typed, no DNS.
SocketAddress resolve(const Endpoint& where) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    const std::string port = std::to_string(where.port);
    addrinfo* result = nullptr;
    if (const int rc = getaddrinfo(where.host.c_str(), port.c_str(), &hints, &result); rc != 0) {
#ifdef _WIN32
        throw SystemError("getaddrinfo(" + where.host + ")", rc);
#else
        throw std::runtime_error("getaddrinfo(" + where.host + ") failed: " + gai_strerror(rc));
#endif
    }
    SocketAddress out;
    std::memcpy(&out.storage, result->ai_addr, result->ai_addrlen);
    out.length = static_cast<socklen_t>(result->ai_addrlen);
    freeaddrinfo(result);
    return out;
}

std::string to_string(const Endpoint& e) {
    const bool v6 = e.host.find(':') != std::string::npos;
    return (v6 ? "[" + e.host + "]" : e.host) + ":" + std::to_string(e.port);
}

UniqueSocket listen_tcp(const Endpoint& where, int backlog) {
    const SocketAddress addr = resolve(where);
    UniqueSocket s(::socket(addr.family(), SOCK_STREAM, IPPROTO_TCP));
    if (!s) throw_socket_error("socket");
    //! [restart]
    // A server stopped with Ctrl+C and started again at once must be able to bind its
    // port while the connections it just closed sit in TIME_WAIT (we closed first, so
    // the waiting is ours: a minute on Linux, minutes on Windows).
#ifdef _WIN32
    // Windows (2000 and later) already allows that with no option at all (Microsoft
    // KB 307175). Not SO_REUSEADDR: on Windows it lets a second socket bind a port in
    // active use and take its connections. Not SO_EXCLUSIVEADDRUSE either, which blocks
    // such theft but also the restart, until every accepted connection is gone
    // ("Using SO_REUSEADDR and SO_EXCLUSIVEADDRUSE"). A service that must never have
    // its port taken sets it, and waits out its old connections on restart.
    // Wine 8 allows the restart with or without SO_EXCLUSIVEADDRUSE, so under Wine the
    // difference cannot be seen; this choice rests on Microsoft's pages alone.
#else
    // Linux refuses that bind (EADDRINUSE) unless SO_REUSEADDR is set; with it, two
    // listeners still cannot share the port.
    const int one = 1;
    if (setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        throw_socket_error("setsockopt(SO_REUSEADDR)");
#endif
    //! [restart]
    if (::bind(s.get(), addr.get(), addr.length) != 0)
        throw_socket_error(("bind(" + where.host + ":" + std::to_string(where.port) + ")").c_str());
    if (::listen(s.get(), backlog) != 0) throw_socket_error("listen");
    return s;
}

std::uint16_t local_port(socket_t s) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(s, reinterpret_cast<sockaddr*>(&ss), &len) != 0) throw_socket_error("getsockname");
    if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(ss).sin6_port);
    return ntohs(reinterpret_cast<const sockaddr_in&>(ss).sin_port);
}

std::string peer_address(socket_t s) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getpeername(s, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
    return address_text(reinterpret_cast<const sockaddr*>(&ss), len);
}

std::string local_address(socket_t s) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(s, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
    return address_text(reinterpret_cast<const sockaddr*>(&ss), len);
}

UniqueSocket connect_tcp(const Endpoint& to) {
    const SocketAddress addr = resolve(to);
    UniqueSocket s(::socket(addr.family(), SOCK_STREAM, IPPROTO_TCP));
    if (!s) throw_socket_error("socket");
    if (::connect(s.get(), addr.get(), addr.length) != 0)
        throw_socket_error(("connect(" + to.host + ":" + std::to_string(to.port) + ")").c_str());
    return s;
}

// ---------------------------------------------------------------------------------------
// Small socket operations

void set_nonblocking(socket_t s, bool on) {
#ifdef _WIN32
    u_long mode = on ? 1 : 0;
    // FIONBIO is an unsigned constant and ioctlsocket() takes a long: say the cast.
    if (ioctlsocket(s, static_cast<long>(FIONBIO), &mode) != 0) throw_socket_error("ioctlsocket(FIONBIO)");
#else
    const int flags = fcntl(s, F_GETFL, 0);
    if (flags < 0) throw_socket_error("fcntl(F_GETFL)");
    if (fcntl(s, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK)) != 0)
        throw_socket_error("fcntl(F_SETFL)");
#endif
}

void set_nodelay(socket_t s, bool on) {
    const int v = on ? 1 : 0;
    if (setsockopt(s, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&v), sizeof v) != 0)
        throw_socket_error("setsockopt(TCP_NODELAY)");
}

void set_linger_reset(socket_t s) {
    linger l{};
    l.l_onoff = 1;
    l.l_linger = 0;
    if (setsockopt(s, SOL_SOCKET, SO_LINGER, reinterpret_cast<const char*>(&l), sizeof l) != 0)
        throw_socket_error("setsockopt(SO_LINGER)");
}

SendResult send_all(socket_t s, const char* data, std::size_t len) {
#ifdef MSG_NOSIGNAL
    constexpr int kFlags = MSG_NOSIGNAL;  // a peer that closed must not kill us with SIGPIPE
#else
    constexpr int kFlags = 0;  // Windows has no SIGPIPE
#endif
    //! [send-all-loop]
    while (len > 0) {
        // send() may take fewer bytes than asked (a "partial send"): loop on the rest.
        const auto chunk = static_cast<io_size_t>(len > (1u << 30) ? (1u << 30) : len);
        const auto n = ::send(s, data, chunk, kFlags);
        if (n < 0) {
            const int err = last_socket_error();
#ifndef _WIN32
            if (err == EINTR) continue;
#endif
            if (is_disconnect_error(err)) return SendResult::kPeerGone;
            throw SystemError("send", err);
        }
        data += n;
        len -= static_cast<std::size_t>(n);
    }
    //! [send-all-loop]
    return SendResult::kSent;
}

void interrupt_blocking_io(socket_t s) {
#ifdef _WIN32
    // shutdown() makes every later recv/send on the socket fail at once (WSAESHUTDOWN),
    // but on Windows it does not wake a call that is already blocked, and closesocket()
    // may not be called while another thread is inside a Winsock call on the same
    // socket (closesocket, Remarks). CancelIoEx cancels every I/O request on a handle,
    // whichever thread issued it; a blocking recv() or accept() waits on such a request
    // inside Winsock's driver, so the call returns (WSAEINTR on Windows; Wine 8 reports
    // 995, ERROR_OPERATION_ABORTED). That a blocking call is woken this way is observed
    // behaviour, not a documented promise, and after a cancel Microsoft leaves any
    // further use of the socket undefined ("Overlapped I/O and Event Objects"): every
    // caller here closes it next, once the blocked thread has returned.
    // Order matters: shutdown first, so a thread that enters recv() after the cancel
    // still fails instead of blocking.
    shutdown(s, SD_BOTH);
    CancelIoEx(reinterpret_cast<HANDLE>(s), nullptr);
#else
    // On Linux shutdown() wakes a blocked recv (returns 0) or send (EPIPE), and every
    // later call fails at once. Closing the descriptor instead would race: another
    // thread could be handed the same number by the next socket() or accept().
    ::shutdown(s, SHUT_RDWR);
#endif
}

void poke_listener(socket_t listener) {
    try {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        if (getsockname(listener, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return;
        // A listener bound to the wildcard address is reached through loopback.
        if (ss.ss_family == AF_INET) {
            auto& a4 = reinterpret_cast<sockaddr_in&>(ss);
            if (a4.sin_addr.s_addr == htonl(INADDR_ANY)) a4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        } else if (ss.ss_family == AF_INET6) {
            auto& a6 = reinterpret_cast<sockaddr_in6&>(ss);
            static const in6_addr any = IN6ADDR_ANY_INIT;
            if (std::memcmp(&a6.sin6_addr, &any, sizeof any) == 0) a6.sin6_addr = in6addr_loopback;
        }
        UniqueSocket s(::socket(ss.ss_family, SOCK_STREAM, IPPROTO_TCP));
        if (!s) return;
        ::connect(s.get(), reinterpret_cast<sockaddr*>(&ss), len);
        // Closing right away is fine: the accept() still returns the connection.
    } catch (...) {
    }
}

}  // namespace iocp

// ---------------------------------------------------------------------------------------
// handle.h

namespace iocp {

#ifdef _WIN32
void throw_last_error(const char* call) { throw SystemError(call, static_cast<int>(GetLastError())); }
#else
void throw_last_error(const char* call) { throw SystemError(call, errno); }
#endif

}  // namespace iocp
