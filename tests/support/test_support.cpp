#include "test_support.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <future>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

#ifdef __linux__
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>
#elif defined(_WIN32)
#include <windows.h>
#include <tlhelp32.h>
#endif

namespace testsupport {

std::string make_payload(std::size_t size, std::uint32_t seed) {
    std::string out(size, '\0');
    std::uint32_t x = seed * 2654435761u + 0x9E3779B9u;  // xorshift32, never seeded with 0
    if (x == 0) x = 1;
    for (auto& c : out) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        c = static_cast<char>(x & 0xFF);
    }
    if (size >= 2) {
        out[size / 3] = '\0';
        out[size - 1] = static_cast<char>(0xFF);
    }
    return out;
}

std::string labelled_payload(std::size_t size, std::uint32_t seed, const std::string& label) {
    std::string out = make_payload(size, seed);
    out.replace(0, std::min(label.size(), size), label, 0, size);
    return out;
}

namespace {
std::string hex_around(const std::string& s, std::size_t at) {
    std::ostringstream out;
    const std::size_t from = at >= 4 ? at - 4 : 0;
    for (std::size_t i = from; i < s.size() && i < at + 5; ++i) {
        char buf[8];
        std::snprintf(buf, sizeof buf, i == at ? "[%02x] " : "%02x ", static_cast<unsigned char>(s[i]));
        out << buf;
    }
    return out.str();
}
}  // namespace

::testing::AssertionResult same_bytes(const std::string& expected, const std::string& actual) {
    const std::size_t n = expected.size() < actual.size() ? expected.size() : actual.size();
    for (std::size_t i = 0; i < n; ++i) {
        if (expected[i] != actual[i])
            return ::testing::AssertionFailure()
                   << "bytes differ at offset " << i << " of " << expected.size() << ": expected "
                   << hex_around(expected, i) << "got " << hex_around(actual, i);
    }
    if (expected.size() != actual.size())
        return ::testing::AssertionFailure()
               << "sizes differ: expected " << expected.size() << " bytes, got " << actual.size();
    return ::testing::AssertionSuccess();
}

void finishes_within(std::chrono::milliseconds limit, const char* what, const std::function<void()>& fn) {
    std::packaged_task<void()> task(fn);
    auto done = task.get_future();
    std::thread runner(std::move(task));
    if (done.wait_for(limit) != std::future_status::ready) {
        ADD_FAILURE() << what << " did not finish within " << limit.count() << " ms";
        std::cerr << "watchdog: " << what << " is hung; aborting so the test fails instead of hanging"
                  << std::endl;
        std::abort();
    }
    runner.join();
    done.get();  // rethrows what fn threw
}

#ifdef __linux__
namespace {
std::optional<std::size_t> count_entries(const char* dir) {
    DIR* d = opendir(dir);
    if (!d) return std::nullopt;
    std::size_t n = 0;
    while (const dirent* e = readdir(d))
        if (e->d_name[0] != '.') ++n;
    closedir(d);
    return n - (std::string(dir) == "/proc/self/fd" ? 1 : 0);  // opendir's own descriptor
}
}  // namespace
std::optional<std::size_t> open_descriptors() { return count_entries("/proc/self/fd"); }
// Threads that are alive, and not io_uring's own. A thread that has just been joined
// can still be listed for a moment, as a zombie ('Z') or dead ('X') task, until the kernel
// has released it. And since Linux 5.12 the kernel runs a ring's async workers (iou-wrk-*,
// and iou-sqp-* for SQPOLL) as threads of the process that owns the ring, started when a
// request must block and ended a while after the ring is gone: they come and go on their
// own, like the Windows loader's pool below, and no stop() can wait for them.
namespace {
std::optional<std::size_t> live_threads_now() {
    DIR* d = opendir("/proc/self/task");
    if (!d) return std::nullopt;
    std::size_t n = 0;
    while (const dirent* e = readdir(d)) {
        if (e->d_name[0] == '.') continue;
        // /proc/self/task/TID/stat: "TID (name) STATE ..."; the name may hold spaces.
        std::FILE* f = std::fopen(("/proc/self/task/" + std::string(e->d_name) + "/stat").c_str(), "r");
        if (f == nullptr) continue;  // released since readdir(): gone
        char line[512] = {};
        const bool got = std::fgets(line, sizeof line, f) != nullptr;
        std::fclose(f);
        const char* open = got ? std::strchr(line, '(') : nullptr;
        const char* close = got ? std::strrchr(line, ')') : nullptr;
        if (open == nullptr || close == nullptr || close[1] == '\0') {
            ++n;  // unreadable: count it rather than hide a thread
            continue;
        }
        const std::string name(open + 1, close);
        const char state = close[2];
        if (state == 'Z' || state == 'X') continue;
        if (name.rfind("iou-", 0) == 0) continue;
        ++n;
    }
    closedir(d);
    return n;
}
}  // namespace

// A thread that has just been joined can still be listed, and running its exit, for a
// moment after pthread_join() returns (the join waits for the thread's id to be
// cleared, not for the kernel to drop the task). So: two readings 2 ms apart that
// agree, within half a second.
std::optional<std::size_t> thread_count() {
    std::optional<std::size_t> last = live_threads_now();
    for (int i = 0; i < 250 && last; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        const std::optional<std::size_t> now = live_threads_now();
        if (now == last) return now;
        last = now;
    }
    return last;
}
#elif defined(_WIN32)
// Handles are not counted: Winsock and the runtime open handles of their own at
// unpredictable times. Threads are, with a Toolhelp snapshot (Wine implements it), but
// only the threads this process started itself. Since Windows 10 the loader runs a
// thread pool in every process, whose threads start and end at their own pace; counting
// them would make every "no thread left behind" test flake on Windows. Such threads
// start in ntdll.dll (its thread-pool worker), ours do not (std::thread starts in the C
// runtime), so the start address tells them apart. Wine's own threads start in ntdll too.
namespace {
bool starts_in_ntdll(DWORD thread_id) {
    // NtQueryInformationThread with ThreadQuerySetWin32StartAddress (9): the address a
    // thread was created with. Looked up at run time: not every SDK declares it.
    using Query = LONG(WINAPI*)(HANDLE, int, void*, ULONG, ULONG*);
    const HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
    static const auto query = reinterpret_cast<Query>(
        reinterpret_cast<void*>(GetProcAddress(ntdll, "NtQueryInformationThread")));
    if (ntdll == nullptr || query == nullptr) return false;
    HANDLE thread = OpenThread(THREAD_QUERY_INFORMATION, FALSE, thread_id);
    if (thread == nullptr) return false;  // cannot tell: count it
    void* start = nullptr;
    const LONG status = query(thread, 9, &start, sizeof start, nullptr);
    CloseHandle(thread);
    if (status < 0) return false;
    const auto* base = reinterpret_cast<const unsigned char*>(ntdll);
    const auto* dos = reinterpret_cast<const IMAGE_DOS_HEADER*>(base);
    const auto* nt = reinterpret_cast<const IMAGE_NT_HEADERS*>(base + dos->e_lfanew);
    const auto* at = static_cast<const unsigned char*>(start);
    return at >= base && at < base + nt->OptionalHeader.SizeOfImage;
}
}  // namespace
std::optional<std::size_t> open_descriptors() { return std::nullopt; }
std::optional<std::size_t> thread_count() {
    HANDLE snap = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
    if (snap == INVALID_HANDLE_VALUE) return std::nullopt;
    THREADENTRY32 te{};
    te.dwSize = sizeof te;
    std::size_t n = 0;
    const DWORD me = GetCurrentProcessId();
    for (BOOL ok = Thread32First(snap, &te); ok; ok = Thread32Next(snap, &te))
        if (te.th32OwnerProcessID == me && !starts_in_ntdll(te.th32ThreadID)) ++n;
    CloseHandle(snap);
    return n;
}
#else
std::optional<std::size_t> open_descriptors() { return std::nullopt; }
std::optional<std::size_t> thread_count() { return std::nullopt; }
#endif

bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!cond()) {
        if (std::chrono::steady_clock::now() > deadline) return cond();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

std::optional<std::string> too_few_descriptors(std::size_t needed) {
#ifndef _WIN32
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return std::string("getrlimit failed: ") + std::strerror(errno);
    if (rl.rlim_cur < needed) {
        // The hard limit too, if it is below: only a privileged process (root, or
        // CAP_SYS_RESOURCE) may raise it, and the skip below says so otherwise.
        if (rl.rlim_max < needed) {
            rlimit raised{static_cast<rlim_t>(needed), static_cast<rlim_t>(needed)};
            setrlimit(RLIMIT_NOFILE, &raised);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
        rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, static_cast<rlim_t>(needed));
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < needed)
        return "RLIMIT_NOFILE hard limit " + std::to_string(rl.rlim_max) + " is below the " + std::to_string(needed) +
               " descriptors this test needs, and this process may not raise it (ulimit -Hn, as root)";
#else
    (void)needed;
#endif
    return std::nullopt;
}

#ifndef _WIN32
DescriptorShortage::DescriptorShortage(std::size_t spare, bool lower) {
    // UBSan checks the dynamic type of std::cerr the first time a member is called on
    // it (a server's log line does), and that check opens a pipe: during the shortage
    // it would fail and report a false error. One call now puts the answer in its cache.
    const std::size_t open_now = open_descriptors().value_or(0);
    std::cerr << "[ info     ] " << open_now << " descriptors open before the shortage\n";
    if (getrlimit(RLIMIT_NOFILE, &saved_) != 0) throw std::runtime_error(std::string("getrlimit: ") + std::strerror(errno));
    if (lower) {
        rlimit low = saved_;
        low.rlim_cur = static_cast<rlim_t>(open_now + 16);
        if (setrlimit(RLIMIT_NOFILE, &low) != 0)
            throw std::runtime_error(std::string("setrlimit: ") + std::strerror(errno));
        lowered_ = true;
    } else if (saved_.rlim_cur > open_now + 4096) {
        throw std::runtime_error("DescriptorShortage(lower = false) would take over 4096 descriptors: "
                                 "lower the limit first (DescriptorLimit)");
    }
    for (int fd = ::dup(0); fd >= 0; fd = ::dup(0)) taken_.push_back(fd);
    for (std::size_t i = 0; i < spare && !taken_.empty(); ++i) {
        ::close(taken_.back());
        taken_.pop_back();
    }
}

void DescriptorShortage::end() {
    for (const int fd : taken_) ::close(fd);
    taken_.clear();
    if (lowered_) setrlimit(RLIMIT_NOFILE, &saved_);
    lowered_ = false;
}

DescriptorLimit::DescriptorLimit(std::size_t headroom) {
    if (getrlimit(RLIMIT_NOFILE, &saved_) != 0) throw std::runtime_error(std::string("getrlimit: ") + std::strerror(errno));
    rlimit low = saved_;
    low.rlim_cur = static_cast<rlim_t>(open_descriptors().value_or(0) + headroom);
    if (low.rlim_cur > saved_.rlim_cur) low.rlim_cur = saved_.rlim_cur;
    if (setrlimit(RLIMIT_NOFILE, &low) != 0) throw std::runtime_error(std::string("setrlimit: ") + std::strerror(errno));
}

DescriptorLimit::~DescriptorLimit() { setrlimit(RLIMIT_NOFILE, &saved_); }
#endif

std::optional<std::size_t> resident_bytes() {
#ifdef __linux__
    std::FILE* f = std::fopen("/proc/self/statm", "r");
    if (f == nullptr) return std::nullopt;
    unsigned long size = 0, resident = 0;
    const int got = std::fscanf(f, "%lu %lu", &size, &resident);
    std::fclose(f);
    if (got != 2) return std::nullopt;
    return static_cast<std::size_t>(resident) * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
#else
    return std::nullopt;
#endif
}

bool running_under_wine() {
#ifdef _WIN32
    const HMODULE ntdll = GetModuleHandleA("ntdll.dll");
    return ntdll != nullptr && GetProcAddress(ntdll, "wine_get_version") != nullptr;
#else
    return false;
#endif
}

}  // namespace testsupport
