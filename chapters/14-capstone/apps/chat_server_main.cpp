// ch14_chat_server - the chat room, until Ctrl+C. Clients speak the protocol of
// protocol/messages.h (ch14_chat_client is one); at Ctrl+C each is told the server is
// closing before it closes.
#include <chrono>
#include <exception>
#include <iostream>

#include "chat_service.h"
#include "engine_cli.h"
#include "iocp/stop_signal.h"

int main(int argc, char** argv) {
    iocp::Endpoint where;
    iocp::CommandLine cli("ch14_chat_server", "Chapter 14: a chat room on the engine.");
    ch14::EngineCli engine_cli(cli, where);
    long long frame_ms = 10000;
    cli.add_int("--frame-timeout-ms", frame_ms, 0, 86400000,
                "close a client whose frame, once begun, is not complete within this (default 10000; 0: never)");
    if (const auto code = cli.parse(argc, argv)) return *code;
    try {
        iocp::WinsockGuard winsock;
        iocp::StopSignal stop_signal;
        ch14::EngineOptions options = engine_cli.options();
        ch14::RoomLimits room{options.max_clients, std::chrono::milliseconds(frame_ms)};
        // The engine's own cap sits above the room's, so that one client too many is
        // accepted and told why, rather than closed unanswered.
        options.max_clients += 64;
        ch14::ChatService chat(where, room, options);
        chat.start();
        std::cout << "listening on " << iocp::to_string({where.host, chat.port()}) << std::endl;
        const std::string why = stop_signal.wait();
        std::cout << why << ": closing the room with " << chat.room().members() << " member(s)" << std::endl;
        chat.stop();
        const ch14::Room& r = chat.room();
        std::cout << r.broadcasts() << " broadcast(s), " << r.frames_handled() << " frame(s), " << r.errors_sent()
                  << " error(s) sent, " << r.frame_timeouts() << " frame timeout(s); "
                  << chat.engine().clients_over_limit() << " client(s) dropped for not reading" << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "ch14_chat_server: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
