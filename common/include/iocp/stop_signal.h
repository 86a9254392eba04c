// common/stop_signal.h - Ctrl+C stops a chapter program cleanly.
//
//   iocp::StopSignal stop;       // first, before any thread starts
//   server.start();
//   stop.wait();                 // returns on Ctrl+C (or SIGTERM, or console close)
//   server.stop();               // the server's own orderly shutdown
//
// The signal handler itself does nothing but wake wait(): a handler may only touch
// a few async-signal-safe things, and stopping a server is not one of them.
#pragma once

#include <string>

namespace iocp {

class StopSignal {
public:
    StopSignal();   // Linux: blocks SIGINT/SIGTERM in this and every later thread.
                    // Windows: installs a console control handler.
    ~StopSignal();
    StopSignal(const StopSignal&) = delete;
    StopSignal& operator=(const StopSignal&) = delete;

    /// Blocks until Ctrl+C, SIGTERM or the console closing; returns what it was.
    std::string wait();

    /// Waits at most `ms` milliseconds; true if a stop was asked for (then or before).
    bool wait_for(long long ms);

private:
    bool stopped_ = false;  // Linux: a signal sigtimedwait() already took
};

}  // namespace iocp
