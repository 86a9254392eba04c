// ch01_echo_client - the original article's client, done right.
//
// The article's client copies "hello" into a 1024-byte buffer and sends all 1024
// bytes, then prints whatever one recv() returned as a C string. Ours sends exactly
// the bytes of the message, reads back exactly as many (recv may return fewer than
// asked: it loops), compares them, and stops after --count messages or on Ctrl+C.
#include <iostream>
#include <stdexcept>
#include <string>

#include "iocp/cli.h"
#include "iocp/net.h"
#include "iocp/stop_signal.h"

namespace {

//! [recv-exact]
// Reads exactly `n` bytes, however many recv() calls that takes. Returns false if
// the server closed the connection first.
bool recv_exact(iocp::socket_t s, char* out, std::size_t n) {
    while (n > 0) {
        const auto want = static_cast<iocp::io_size_t>(n > (1u << 30) ? (1u << 30) : n);
        const auto got = ::recv(s, out, want, 0);
        if (got == 0) return false;                      // orderly close by the server
        if (got < 0) {
            const int err = iocp::last_socket_error();
#ifdef _WIN32
            if (err == WSAETIMEDOUT) throw std::runtime_error("no reply within --timeout");
#else
            if (iocp::is_would_block(err)) throw std::runtime_error("no reply within --timeout");
#endif
            throw iocp::SystemError("recv", err);
        }
        out += got;
        n -= static_cast<std::size_t>(got);
    }
    return true;
}
//! [recv-exact]

// SO_RCVTIMEO / SO_SNDTIMEO: a blocking call gives up after `ms` milliseconds.
void set_timeout(iocp::socket_t s, int option, long long ms) {
#ifdef _WIN32
    const DWORD t = static_cast<DWORD>(ms);  // Windows takes milliseconds as a DWORD
#else
    const timeval t{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
#endif
    if (setsockopt(s, SOL_SOCKET, option, reinterpret_cast<const char*>(&t), sizeof t) != 0)
        iocp::throw_socket_error("setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)");
}

}  // namespace

int main(int argc, char** argv) {
    iocp::Endpoint server;
    std::string message = "hello";
    long long count = 1, interval_ms = 1000, timeout_ms = 5000, size = 0;
    bool quiet = false;
    iocp::CommandLine cli("ch01_echo_client", "Chapter 1: sends a message to an echo server and checks the echo.");
    cli.add_server_address(server);
    cli.add_string("--message", message, "what to send (default: hello)");
    cli.add_int("--size", size, 0, 1LL << 30, "send N bytes of a repeating pattern instead of --message");
    cli.add_int("--count", count, 0, 1'000'000'000, "how many times (default 1; 0 = until Ctrl+C)");
    cli.add_int("--interval", interval_ms, 0, 3'600'000, "milliseconds between messages (default 1000)");
    cli.add_int("--timeout", timeout_ms, 1, 3'600'000, "give up on a reply after this many ms (default 5000)");
    cli.add_flag("--quiet", quiet, "print only the summary line");
    if (const auto code = cli.parse(argc, argv)) return *code;
    if (size > 0) {
        message.resize(static_cast<std::size_t>(size));
        for (std::size_t i = 0; i < message.size(); ++i) message[i] = static_cast<char>('a' + i % 26);
        quiet = true;  // not something to print
    }
    if (message.empty()) {
        std::cerr << "ch01_echo_client: --message must not be empty\n";
        return 2;
    }

    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;
        //! [client-loop]
        iocp::UniqueSocket s = iocp::connect_tcp(server);
        // Both directions give up after --timeout: a server that stops reading or
        // answering must not hang the client. (A message too large for the socket
        // buffers makes both sides block in send(): this is what ends that.)
        set_timeout(s.get(), SO_RCVTIMEO, timeout_ms);
        set_timeout(s.get(), SO_SNDTIMEO, timeout_ms);
        std::string echo(message.size(), '\0');
        long long done = 0;
        while (count == 0 || done < count) {
            // Exactly the message's bytes: no terminating NUL, no 1024-byte buffer.
            // (send_all fails with a would-block/timeout error when SO_SNDTIMEO runs out.)
            if (iocp::send_all(s.get(), message.data(), message.size()) != iocp::SendResult::kSent) {
                std::cerr << "ch01_echo_client: the server closed the connection\n";
                return 1;
            }
            if (!recv_exact(s.get(), echo.data(), echo.size())) {
                std::cerr << "ch01_echo_client: the server closed the connection mid-reply\n";
                return 1;
            }
            if (echo != message) {
                std::cerr << "ch01_echo_client: the echo differs from what was sent\n";
                return 1;
            }
            ++done;
            if (!quiet) std::cout << "sent " << message.size() << " bytes, received the same back: " << echo << std::endl;
            // Ctrl+C is taken here, between messages (also with --interval 0). While a
            // call is blocked it waits: at most --timeout milliseconds.
            if ((count == 0 || done < count) && stop_signal.wait_for(interval_ms)) break;
        }
        //! [client-loop]
        std::cout << done << " message(s) echoed byte for byte by " << iocp::to_string(server) << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "ch01_echo_client: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
