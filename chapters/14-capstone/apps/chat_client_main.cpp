// ch14_chat_client - a terminal chat client: joins with --name, then every line typed
// is said to the room; /list asks who is there, /quit leaves. What the room says is
// printed as it arrives, from a thread of its own, with the sequence numbers checked:
// a gap would mean a lost broadcast, and is reported.
#include <atomic>
#include <exception>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include "chat/client.h"
#include "iocp/cli.h"

namespace {

std::mutex print_mutex;

void print(const std::string& line) {
    std::lock_guard<std::mutex> lock(print_mutex);
    std::cout << line << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
    iocp::Endpoint server;
    iocp::CommandLine cli("ch14_chat_client", "Chapter 14: a chat room client. Type to talk; /list, /quit.");
    cli.add_server_address(server);
    std::string name;
    cli.add_string("--name", name, "your name in the room (1 to 32 bytes of UTF-8)");
    if (const auto code = cli.parse(argc, argv)) return *code;
    if (name.empty()) {
        std::cerr << "ch14_chat_client: --name is required\n" << cli.usage();
        return 2;
    }
    try {
        iocp::WinsockGuard winsock;
        auto chat = ch14::ChatClient::connect(server);
        std::uint64_t expected = chat.join(name);
        print("joined as " + name + "; type to talk, /list, /quit");
        std::atomic<bool> over{false};
        //! [client-reader]
        std::thread reader([&] {
            try {
                for (;;) {
                    const ch14::ServerMessage m = chat.read(iocp::Millis(24LL * 3600 * 1000));
                    const bool numbered = m.type == ch14::Type::kMessage || m.type == ch14::Type::kJoined ||
                                          m.type == ch14::Type::kLeft;
                    if (numbered && m.seq != expected)
                        print("! expected broadcast " + std::to_string(expected) + ", got " + std::to_string(m.seq));
                    if (numbered) expected = m.seq + 1;
                    print(ch14::describe(m));
                }
            } catch (const iocp::PeerClosedError&) {
                print("* the server closed the connection");
            } catch (const std::exception& e) {
                if (!over) print(std::string("* ") + e.what());
            }
            over = true;
        });
        //! [client-reader]
        std::string line;
        while (!over && std::getline(std::cin, line)) {
            if (line.empty()) continue;
            if (line == "/quit") break;
            chat.send(line == "/list" ? ch14::list_frame() : ch14::say_frame(line));
        }
        if (!over) chat.send(ch14::leave_frame());  // the server answers with our own departure, then closes
        reader.join();
    } catch (const std::exception& e) {
        std::cerr << "ch14_chat_client: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
