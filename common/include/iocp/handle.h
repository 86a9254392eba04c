// common/handle.h - RAII owners for the OS objects that are not sockets.
//
// Windows: UniqueHandle owns a kernel HANDLE (an event, a completion port, a thread)
// and closes it with CloseHandle. A WSAEVENT is such a HANDLE: WSACreateEvent makes a
// manual-reset event and WSACloseEvent closes it, so one owner serves both.
// Linux: UniqueFd owns a descriptor that is not a socket (epoll, eventfd, io_uring).
// Both are movable, not copyable, and close once.
#pragma once

#include "iocp/net.h"

namespace iocp {

#ifdef _WIN32

class UniqueHandle {
public:
    UniqueHandle() noexcept = default;
    explicit UniqueHandle(HANDLE h) noexcept : h_(h) {}
    ~UniqueHandle() { reset(); }
    UniqueHandle(UniqueHandle&& other) noexcept : h_(other.release()) {}
    UniqueHandle& operator=(UniqueHandle&& other) noexcept {
        if (this != &other) reset(other.release());
        return *this;
    }
    UniqueHandle(const UniqueHandle&) = delete;
    UniqueHandle& operator=(const UniqueHandle&) = delete;

    HANDLE get() const noexcept { return h_; }
    // Win32 has two "no handle" values: CreateEvent and CreateIoCompletionPort fail
    // with NULL, CreateFile with INVALID_HANDLE_VALUE. Neither is ever closed.
    bool valid() const noexcept { return h_ != nullptr && h_ != INVALID_HANDLE_VALUE; }
    explicit operator bool() const noexcept { return valid(); }
    HANDLE release() noexcept {
        HANDLE h = h_;
        h_ = nullptr;
        return h;
    }
    void reset(HANDLE h = nullptr) noexcept {
        if (valid()) CloseHandle(h_);
        h_ = h;
    }

private:
    HANDLE h_ = nullptr;
};

/// Throws SystemError for `call` with GetLastError(): for the non-socket Win32 calls
/// (CreateEvent, CreateIoCompletionPort, GetQueuedCompletionStatus...). Socket calls
/// report through WSAGetLastError() and use throw_socket_error().
[[noreturn]] void throw_last_error(const char* call);

#else

class UniqueFd {
public:
    UniqueFd() noexcept = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    ~UniqueFd() { reset(); }
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        if (this != &other) reset(other.release());
        return *this;
    }
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;

    int get() const noexcept { return fd_; }
    bool valid() const noexcept { return fd_ >= 0; }
    explicit operator bool() const noexcept { return valid(); }
    int release() noexcept {
        const int fd = fd_;
        fd_ = -1;
        return fd;
    }
    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

/// Throws SystemError for `call` with errno (epoll_create1, eventfd, ...).
[[noreturn]] void throw_last_error(const char* call);

#endif

}  // namespace iocp
