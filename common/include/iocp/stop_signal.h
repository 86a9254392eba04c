// common/stop_signal.h - Ctrl+C stops a chapter program cleanly.
//
//   iocp::StopSignal stop;       // first, before any thread starts, and before the server
//   server.start();
//   stop.wait();                 // returns on Ctrl+C (or SIGTERM, or the console closing)
//   server.stop();               // the server's own orderly shutdown
//   ...                          // ~StopSignal, last: "the program has finished stopping"
//
// The signal handler itself does nothing but wake wait(): a handler may only touch
// a few async-signal-safe things, and stopping a server is not one of them.
//
// Windows adds a twist. For Ctrl+C the handler returns and the program goes on. For a
// closed console window, a logoff or a shutdown, the system ends the process as soon as
// the handler returns (Microsoft, "HandlerRoutine callback function"). So for those the
// handler waits until ~StopSignal says the program has finished stopping, for at most
// kCloseGrace: the system gives a handler about 5 seconds before it ends the process
// anyway, and stopping within that time is the program's part of the bargain.
#pragma once

#include <string>

namespace iocp {

class StopSignal {
public:
    StopSignal();   // Linux: blocks SIGINT/SIGTERM in this and every later thread.
                    // Windows: installs a console control handler.
    ~StopSignal();  // Windows: lets a waiting close/logoff/shutdown handler return
    StopSignal(const StopSignal&) = delete;
    StopSignal& operator=(const StopSignal&) = delete;

    /// Blocks until Ctrl+C, SIGTERM or the console closing; returns what it was.
    std::string wait();

    /// Waits at most `ms` milliseconds; true if a stop was asked for (then or before).
    bool wait_for(long long ms);

#ifdef _WIN32
    /// How long a close, logoff or shutdown handler waits for the program to finish
    /// stopping before it returns and lets the system end the process.
    static constexpr unsigned long kCloseGraceMs = 4500;

    /// What Windows calls on its own thread for each console event (`type` is one of
    /// the CTRL_*_EVENT values); returns the handler's BOOL. Public so that a test can
    /// deliver the events Wine never sends (a closed window, a logoff, a shutdown).
    static int on_console_event(unsigned long type);
#endif

private:
    bool stopped_ = false;  // Linux: a signal sigtimedwait() already took
};

}  // namespace iocp
