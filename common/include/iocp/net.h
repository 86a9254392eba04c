// common/net.h - the socket plumbing every chapter shares and none of them teaches.
//
// One vocabulary over Winsock and BSD sockets: a socket type, an RAII owner for it,
// Winsock start-up, the error helper, a listener, send_all. The chapters include this
// and spend their lines on the I/O model they are about.
#pragma once

#ifdef _WIN32
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace iocp {

#ifdef _WIN32
using socket_t = SOCKET;
inline constexpr socket_t kInvalidSocket = INVALID_SOCKET;
#else
using socket_t = int;
inline constexpr socket_t kInvalidSocket = -1;
#endif

/// The length argument of recv() and send(): an int in Winsock, a size_t in POSIX.
/// Casting to it (not to int) keeps both GCC's and clang's conversion warnings quiet.
#ifdef _WIN32
using io_size_t = int;
#else
using io_size_t = std::size_t;
#endif

// ---------------------------------------------------------------------------------------
// Errors: a failed call reports its name, its number and the system's text for it.

/// The last socket error of this thread: WSAGetLastError() on Windows, errno elsewhere.
int last_socket_error();

/// The system's text for an error number (FormatMessage on Windows, strerror elsewhere).
std::string error_text(int code);

/// "recv failed: 10054 An existing connection was forcibly closed by the remote host."
class SystemError : public std::runtime_error {
public:
    SystemError(std::string call, int code);
    const std::string& call() const noexcept { return call_; }
    int code() const noexcept { return code_; }

private:
    std::string call_;
    int code_;
};

/// Throws SystemError for `call` with last_socket_error().
[[noreturn]] void throw_socket_error(const char* call);

/// True for the errors that mean "the peer went away": reset, aborted, broken pipe,
/// shut down. A server closes that one client and keeps serving the others.
bool is_disconnect_error(int code);

/// True for "out of descriptors / buffers / memory" (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM; WSAEMFILE, WSAENOBUFS). Retrying such a failure at once fails again at
/// once: a server pauses before it tries again.
bool is_resource_exhaustion(int code);

/// True when a non-blocking call would have blocked (EAGAIN/EWOULDBLOCK/WSAEWOULDBLOCK).
bool is_would_block(int code);

// ---------------------------------------------------------------------------------------
// Start-up and ownership.

/// Winsock must be started before any socket call on Windows (WSAStartup) and stopped
/// after the last one (WSACleanup). Nothing to do elsewhere. Calls nest.
class WinsockGuard {
public:
    WinsockGuard();
    ~WinsockGuard();
    WinsockGuard(const WinsockGuard&) = delete;
    WinsockGuard& operator=(const WinsockGuard&) = delete;
};

/// Owns one socket; closes it once. Movable, not copyable.
class UniqueSocket {
public:
    UniqueSocket() noexcept = default;
    explicit UniqueSocket(socket_t s) noexcept : s_(s) {}
    ~UniqueSocket() { reset(); }
    UniqueSocket(UniqueSocket&& other) noexcept : s_(other.release()) {}
    UniqueSocket& operator=(UniqueSocket&& other) noexcept {
        if (this != &other) reset(other.release());
        return *this;
    }
    UniqueSocket(const UniqueSocket&) = delete;
    UniqueSocket& operator=(const UniqueSocket&) = delete;

    socket_t get() const noexcept { return s_; }
    bool valid() const noexcept { return s_ != kInvalidSocket; }
    explicit operator bool() const noexcept { return valid(); }
    socket_t release() noexcept {
        socket_t s = s_;
        s_ = kInvalidSocket;
        return s;
    }
    void reset(socket_t s = kInvalidSocket) noexcept;

private:
    socket_t s_ = kInvalidSocket;
};

// ---------------------------------------------------------------------------------------
// Addresses and listeners.

/// Where a server listens. Port 0 asks the OS for a free port (what tests do).
struct Endpoint {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
};

/// "127.0.0.1:6000", or "[::1]:6000" for an IPv6 host.
std::string to_string(const Endpoint& e);

/// A bound, listening TCP socket for `where` (IPv4 or IPv6 literal).
UniqueSocket listen_tcp(const Endpoint& where, int backlog = SOMAXCONN);

/// The local port a socket is bound to (the real one after binding port 0).
std::uint16_t local_port(socket_t s);

/// "127.0.0.1:6000" / "[::1]:6000" for the socket's peer ("?" if it has none).
std::string peer_address(socket_t s);
/// The same for the socket's own address.
std::string local_address(socket_t s);
/// The same for an IPv4 or IPv6 address of `len` bytes; "?" for anything else.
std::string address_text(const sockaddr* addr, socklen_t len);

/// A numeric address (IPv4 or IPv6 literal, no DNS) ready for bind() or connect().
struct SocketAddress {
    sockaddr_storage storage{};
    socklen_t length = 0;
    int family() const { return storage.ss_family; }
    const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
};
SocketAddress resolve(const Endpoint& where);

/// A connected TCP socket (blocking connect; for programs and tools, not servers).
UniqueSocket connect_tcp(const Endpoint& to);

// ---------------------------------------------------------------------------------------
// Small socket operations.

void set_nonblocking(socket_t s, bool on);
void set_nodelay(socket_t s, bool on);

/// SO_LINGER {on, 0}: the next close sends RST instead of FIN ("abortive close").
void set_linger_reset(socket_t s);

enum class SendResult { kSent, kPeerGone };

/// Sends every byte of data on a blocking socket, looping over partial sends.
/// kPeerGone when the peer reset or closed; throws SystemError on any other error.
SendResult send_all(socket_t s, const char* data, std::size_t len);

/// Wakes a thread blocked in recv/send on `s` from another thread, for shutdown.
/// The socket can only be closed afterwards. See the comment in net.cpp for why
/// this is shutdown() on Linux and shutdown() + CancelIoEx on Windows.
void interrupt_blocking_io(socket_t s);

/// Wakes a thread blocked in accept() on `listener` by connecting to it once. Race
/// free on every platform: a thread that is just about to call accept() finds the
/// connection waiting and returns at once. Best effort; never throws.
void poke_listener(socket_t listener);

/// Closes a socket without throwing; used by UniqueSocket.
void close_socket(socket_t s) noexcept;

}  // namespace iocp
