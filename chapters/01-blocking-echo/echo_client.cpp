// ch01_echo_client - the original article's client, done right.
//
// The article's client copies "hello" into a 1024-byte buffer and sends all 1024
// bytes, then prints whatever one recv() returned as a C string. Ours sends exactly
// the bytes of the message, reads back exactly as many (recv may return fewer than
// asked: it loops), compares them, and stops after --count messages or on Ctrl+C.
#include <iostream>
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
        const int want = n > (1u << 30) ? (1 << 30) : static_cast<int>(n);
        const auto got = ::recv(s, out, want, 0);
        if (got == 0) return false;                      // orderly close by the server
        if (got < 0) iocp::throw_socket_error("recv");   // includes our receive timeout
        out += got;
        n -= static_cast<std::size_t>(got);
    }
    return true;
}
//! [recv-exact]

void set_receive_timeout(iocp::socket_t s, long long ms) {
#ifdef _WIN32
    const DWORD t = static_cast<DWORD>(ms);  // Windows takes milliseconds as a DWORD
#else
    const timeval t{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
#endif
    if (setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, reinterpret_cast<const char*>(&t), sizeof t) != 0)
        iocp::throw_socket_error("setsockopt(SO_RCVTIMEO)");
}

}  // namespace

int main(int argc, char** argv) {
    iocp::Endpoint server;
    std::string message = "hello";
    long long count = 1, interval_ms = 1000, timeout_ms = 5000;
    bool quiet = false;
    iocp::CommandLine cli("ch01_echo_client", "Chapter 1: sends a message to an echo server and checks the echo.");
    cli.add_server_address(server);
    cli.add_string("--message", message, "what to send (default: hello)");
    cli.add_int("--count", count, 0, 1'000'000'000, "how many times (default 1; 0 = until Ctrl+C)");
    cli.add_int("--interval", interval_ms, 0, 3'600'000, "milliseconds between messages (default 1000)");
    cli.add_int("--timeout", timeout_ms, 1, 3'600'000, "give up on a reply after this many ms (default 5000)");
    cli.add_flag("--quiet", quiet, "print only the summary line");
    if (const auto code = cli.parse(argc, argv)) return *code;
    if (message.empty()) {
        std::cerr << "ch01_echo_client: --message must not be empty\n";
        return 2;
    }

    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;
        //! [client-loop]
        iocp::UniqueSocket s = iocp::connect_tcp(server);
        set_receive_timeout(s.get(), timeout_ms);
        std::string echo(message.size(), '\0');
        long long done = 0;
        while (count == 0 || done < count) {
            // Exactly the message's bytes: no terminating NUL, no 1024-byte buffer.
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
            if ((count == 0 || done < count) && interval_ms > 0 && stop_signal.wait_for(interval_ms)) break;
        }
        //! [client-loop]
        std::cout << done << " message(s) echoed byte for byte by " << iocp::to_string(server) << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "ch01_echo_client: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
