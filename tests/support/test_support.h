// tests/support - helpers every test file shares: payloads, byte comparison that
// reports where two buffers differ, a watchdog that turns a hang into a failure,
// process resource counts for leak checks, and (Linux) a descriptor shortage on
// demand. Client loads live in load.h; starting a twin or skipping, in twin_support.h.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#ifndef _WIN32
#include <sys/resource.h>
#endif

namespace testsupport {

/// How long a test waits for bytes that take thousands of tiny round trips (a 7-byte
/// server buffer): under Wine on a loaded 2-core machine that has taken over 20 s. A
/// limit on waiting, so a hang still fails; never a claim about speed.
inline constexpr std::chrono::milliseconds kPatientTimeout{120000};

/// Deterministic pseudo-random bytes. Every payload of 2 bytes or more holds a NUL
/// and a 0xFF, so a server that treats data as C strings fails at once.
std::string make_payload(std::size_t size, std::uint32_t seed);

/// make_payload() whose first bytes are `label` (cut to `size`), so a payload that
/// lands on the wrong connection or round names where it came from.
std::string labelled_payload(std::size_t size, std::uint32_t seed, const std::string& label);

/// Passes when both are byte-identical; otherwise says the sizes or the first offset
/// that differs, with a few bytes of hex around it (never an 8 MiB dump).
::testing::AssertionResult same_bytes(const std::string& expected, const std::string& actual);

/// Runs fn on another thread and waits at most `limit`. If fn is still running then,
/// the test fails with `what` and the process aborts: a hung test must end, and a
/// thread stuck inside the server cannot be abandoned safely.
void finishes_within(std::chrono::milliseconds limit, const char* what, const std::function<void()>& fn);

/// Open descriptors and threads of this process, where the platform lets us count
/// them reliably: both on Linux (/proc/self/fd, /proc/self/task), threads only on
/// Windows (a Toolhelp snapshot, leaving out the system's thread-pool threads, which
/// come and go on their own). nullopt elsewhere.
std::optional<std::size_t> open_descriptors();
std::optional<std::size_t> thread_count();

/// Resident memory of this process in bytes (Linux: /proc/self/statm); nullopt elsewhere.
std::optional<std::size_t> resident_bytes();

/// Polls `cond` until it holds or `limit` passes; returns its last value. For state
/// that settles asynchronously (a server noticing a close), never for speed.
bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = std::chrono::seconds(10));

/// Why this process cannot hold `needed` descriptors, or nullopt if it can. On Linux
/// the soft RLIMIT_NOFILE is first raised as far as `needed` (the hard one too, which
/// only a privileged process may); the answer explains the skip. Windows: nullopt.
std::optional<std::string> too_few_descriptors(std::size_t needed);

/// True under Wine (its ntdll exports wine_get_version), where a few documented
/// Windows behaviours differ; tests assert those only on Windows and print Wine's.
bool running_under_wine();

#ifndef _WIN32
/// Runs this process out of descriptors until end() or destruction: the soft
/// RLIMIT_NOFILE comes down to what is open now plus a few (unless `lower` is false:
/// then the limit stays as it is), and dup() takes all but `spare` of those. A
/// server's accept() then fails with EMFILE while a test client still has room for its
/// socket. end() closes them and puts the limit back.
class DescriptorShortage {
public:
    explicit DescriptorShortage(std::size_t spare, bool lower = true);
    ~DescriptorShortage() { end(); }
    DescriptorShortage(const DescriptorShortage&) = delete;
    DescriptorShortage& operator=(const DescriptorShortage&) = delete;
    void end();

private:
    rlimit saved_{};
    bool lowered_ = false;
    std::vector<int> taken_;
};

/// Lowers the soft RLIMIT_NOFILE to what is open now plus `headroom`, until
/// destruction. For a server that reads the limit once: io_uring's accept reads it
/// when the request is prepared, so a multishot accept armed before a shortage lowers
/// the limit never sees it. Lower it first, start the server, then run short with
/// DescriptorShortage(spare, false), which fills up to this limit.
class DescriptorLimit {
public:
    explicit DescriptorLimit(std::size_t headroom);
    ~DescriptorLimit();
    DescriptorLimit(const DescriptorLimit&) = delete;
    DescriptorLimit& operator=(const DescriptorLimit&) = delete;

private:
    rlimit saved_{};
};
#endif

}  // namespace testsupport
