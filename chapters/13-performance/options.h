// Chapter 13 - the server's options (Limits, with this chapter's Steps) and what it
// reports back about the steps it could run (Features). Split from echo_server.h,
// which includes it, so that each file reads in one sitting.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>

namespace ch13 {

//! [limits]
struct Limits {
    std::size_t max_clients = 10000;
    // Chapter 11's budgets: pool buffers of buffer_size, shared (Linux: split between
    // the workers' rings); per connection, receives pause at output_high bytes of
    // buffers queued, resume at output_low, and past output_limit the client is dropped.
    std::size_t buffer_size = 16 * 1024;
    std::size_t pool_buffers = 1024;
    std::size_t output_low = 16 * 1024;
    std::size_t output_high = 64 * 1024;
    std::size_t output_limit = 1024 * 1024;
    std::size_t threads = 0;  // 0: two per CPU on Windows, one per CPU on Linux
    std::chrono::milliseconds drain_timeout{10000};  // how long stop() waits for cancelled I/O
    std::size_t accepts = 64;  // Windows: AcceptEx calls pending at once
    std::function<void(const std::string& peer)> on_accepted;  // told each accepted client
    //! [timeouts]
    // 0: off. Idle: a connection that receives nothing for this long is closed (while
    // it is paused at its output budget it is not waiting to receive, and the send
    // timeout watches it instead). Send: a send that moves no byte for this long closes
    // its connection. Both sides check every timeout_tick() ms, so expiry comes up to
    // one tick late.
    std::chrono::milliseconds idle_timeout{0};
    std::chrono::milliseconds send_timeout{0};
    //! [timeouts]
    //! [steps]
    // This chapter's steps, each on unless turned off, so that each one's effect can be
    // measured against the server without it (--without). A step the kernel or the
    // providers do not offer stays off whatever this says: features() tells.
    struct Steps {
        bool batch = true;            // up to 64 completions per wait, not one
        bool skip_on_success = true;  // Windows: FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
        bool multishot = true;        // Linux: a multishot receive, armed once
        bool single_issuer = true;    // Linux: SINGLE_ISSUER + DEFER_TASKRUN
        bool registered_ring = true;  // Linux: the ring's descriptor registered
        bool fixed_files = true;      // Linux: the sockets registered
    } steps;
    //! [steps]
};
//! [limits]

/// Which of the chapter's steps this server runs with (this kernel or these providers).
struct Features {
    bool batch_dequeue = false;      // GQCSEx (Windows); batched CQE reaping (Linux)
    bool skip_on_success = false;    // Windows
    bool multishot_recv = false;     // Linux
    bool single_issuer = false;      // Linux: SINGLE_ISSUER + DEFER_TASKRUN
    bool registered_ring = false;    // Linux: the ring's descriptor registered
    bool fixed_files = false;        // Linux: each socket registered
};

}  // namespace ch13
