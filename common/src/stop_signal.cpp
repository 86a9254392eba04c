// common/stop_signal.cpp - see stop_signal.h.
#include "iocp/stop_signal.h"

#ifdef _WIN32
#include <windows.h>

#include <atomic>
#else
#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <ctime>
#endif

namespace iocp {

#ifdef _WIN32

namespace {
// Windows runs a console control handler on a new thread of its own. The two
// manual-reset events are made once and never closed: a handler may still be waiting
// on one while the process exits.
struct Events {
    HANDLE asked = CreateEventW(nullptr, TRUE, FALSE, nullptr);     // a stop was asked for
    HANDLE finished = CreateEventW(nullptr, TRUE, FALSE, nullptr);  // the program has stopped
};
Events& events() {
    static Events* const e = new Events;
    return *e;
}
std::atomic<const char*> g_what{nullptr};  // what the first event was

BOOL WINAPI handler(DWORD type) { return StopSignal::on_console_event(type); }
}  // namespace

StopSignal::StopSignal() {
    g_what = nullptr;  // one StopSignal at a time: a new one starts from "nothing asked"
    ResetEvent(events().asked);
    ResetEvent(events().finished);
    SetConsoleCtrlHandler(handler, TRUE);
}

StopSignal::~StopSignal() {
    SetEvent(events().finished);  // a close/logoff/shutdown handler may return now
    SetConsoleCtrlHandler(handler, FALSE);
}

//! [console-event]
int StopSignal::on_console_event(unsigned long type) {
    const char* what = type == CTRL_C_EVENT       ? "Ctrl+C"
                       : type == CTRL_BREAK_EVENT ? "Ctrl+Break"
                       : type == CTRL_CLOSE_EVENT ? "console closed"
                       : type == CTRL_LOGOFF_EVENT ? "logoff"
                                                   : "shutdown";
    const char* none = nullptr;
    g_what.compare_exchange_strong(none, what);  // the first event names the stop
    SetEvent(events().asked);
    // Ctrl+C and Ctrl+Break: TRUE means "handled", so the default handler, which calls
    // ExitProcess, does not run, and main() stops the server in its own time.
    if (type == CTRL_C_EVENT || type == CTRL_BREAK_EVENT) return TRUE;
    // A closed console, a logoff, a shutdown: whatever this returns, the system ends the
    // process once it has returned (Microsoft, "HandlerRoutine callback function"), and
    // would cut main()'s stop() off half-way. So wait until ~StopSignal reports that the
    // program has stopped, within the few seconds the system allows a handler.
    WaitForSingleObject(events().finished, kCloseGraceMs);
    return TRUE;
}
//! [console-event]

std::string StopSignal::wait() {
    WaitForSingleObject(events().asked, INFINITE);
    return g_what.load();
}

bool StopSignal::wait_for(long long ms) {
    const DWORD limit = ms < 0 ? 0 : ms >= static_cast<long long>(INFINITE) ? INFINITE - 1 : static_cast<DWORD>(ms);
    return WaitForSingleObject(events().asked, limit) == WAIT_OBJECT_0;
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
