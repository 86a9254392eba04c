// tests/support/io_uring_support.h - for the io_uring twins' tests (Linux, liburing).
#pragma once

#include <liburing.h>

#include <cstring>
#include <optional>
#include <string>

namespace testsupport {

/// Why this kernel refuses io_uring (built without it, kernel.io_uring_disabled=2, a
/// seccomp filter in a container), or nullopt. The Linux tests then skip and say why;
/// they never pass without having run. Asked once per process.
inline std::optional<std::string> io_uring_refused() {
    static const std::optional<std::string> why = []() -> std::optional<std::string> {
        io_uring ring{};
        if (const int rc = io_uring_queue_init(2, &ring, 0); rc < 0)
            return "this kernel refuses io_uring: io_uring_queue_init failed: " + std::string(std::strerror(-rc));
        io_uring_queue_exit(&ring);
        return std::nullopt;
    }();
    return why;
}

}  // namespace testsupport
