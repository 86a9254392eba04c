// common/cli.h - the command line every chapter program shares.
//
//   chNN_program [--bind ADDR] [--port N] [chapter options] [--help]
//
// --port defaults to 6000 as in the original article (0 picks a free port);
// --bind defaults to 127.0.0.1: a tutorial server is not exposed to the network
// unless the reader asks for it with --bind 0.0.0.0.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "iocp/net.h"

namespace iocp {

class CommandLine {
public:
    CommandLine(std::string program, std::string summary);

    /// Adds --bind and --port, writing into `where` (defaults 127.0.0.1 and 6000).
    void add_endpoint(Endpoint& where);
    /// For clients: --host and --port of the server to connect to (same defaults).
    void add_server_address(Endpoint& server);
    void add_int(std::string name, long long& target, long long min, long long max, std::string help);
    void add_string(std::string name, std::string& target, std::string help);
    void add_flag(std::string name, bool& target, std::string help);

    /// Parses argv. Returns an exit code when the program should stop now
    /// (0 after --help, 2 after a usage error, with the message printed), else nullopt.
    std::optional<int> parse(int argc, char** argv);

    std::string usage() const;

private:
    struct Option {
        std::string name;
        std::string help;
        enum class Kind { kInt, kString, kFlag } kind;
        long long* int_target = nullptr;
        long long min = 0, max = 0;
        std::string* string_target = nullptr;
        bool* flag_target = nullptr;
    };
    std::string program_, summary_;
    std::vector<Option> options_;
    Endpoint* endpoint_ = nullptr;
    long long port_ = 6000;
};

}  // namespace iocp
