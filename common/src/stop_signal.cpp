// common/stop_signal.cpp - see stop_signal.h.
#include "iocp/stop_signal.h"

#ifdef _WIN32
#include <windows.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#else
#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <ctime>
#endif

namespace iocp {

#ifdef _WIN32

// Windows calls a console control handler on a new thread of its own, so the handler
// can take a lock and notify a condition variable like any other thread.
namespace {
std::mutex g_mutex;
std::condition_variable g_cv;
const char* g_what = nullptr;

BOOL WINAPI on_console_event(DWORD type) {
    const char* what = type == CTRL_C_EVENT       ? "Ctrl+C"
                       : type == CTRL_BREAK_EVENT ? "Ctrl+Break"
                                                  : "console closing";
    {
        std::lock_guard lock(g_mutex);
        g_what = what;
    }
    g_cv.notify_all();
    return TRUE;  // handled: do not run the default handler, which ends the process
}
}  // namespace

StopSignal::StopSignal() { SetConsoleCtrlHandler(on_console_event, TRUE); }
StopSignal::~StopSignal() { SetConsoleCtrlHandler(on_console_event, FALSE); }

std::string StopSignal::wait() {
    std::unique_lock lock(g_mutex);
    g_cv.wait(lock, [] { return g_what != nullptr; });
    return g_what;
}

bool StopSignal::wait_for(long long ms) {
    std::unique_lock lock(g_mutex);
    return g_cv.wait_for(lock, std::chrono::milliseconds(ms), [] { return g_what != nullptr; });
}

#else

// With SIGINT and SIGTERM blocked in every thread, no handler ever runs; sigwait()
// takes the pending signal synchronously in the one thread that asks for it.
namespace {
sigset_t stop_set() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}
}  // namespace

StopSignal::StopSignal() {
    const sigset_t set = stop_set();
    pthread_sigmask(SIG_BLOCK, &set, nullptr);  // threads created later inherit the mask
}

StopSignal::~StopSignal() {
    const sigset_t set = stop_set();
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

std::string StopSignal::wait() {
    const sigset_t set = stop_set();
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    return sig == SIGINT ? "SIGINT" : "SIGTERM";
}

bool StopSignal::wait_for(long long ms) {
    const sigset_t set = stop_set();
    const timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>((ms % 1000) * 1000000)};
    // A caught signal stays "taken": remember it so later calls keep answering true.
    if (stopped_) return true;
    for (;;) {
        const int sig = sigtimedwait(&set, nullptr, &ts);
        if (sig > 0) return stopped_ = true;
        if (errno == EAGAIN) return false;  // the time ran out
        // EINTR: some other signal; wait again (the timeout restarts, which is fine here)
    }
}

#endif

}  // namespace iocp
