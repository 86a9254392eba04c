// common/cli.cpp - see cli.h.
#include "iocp/cli.h"

#include <charconv>
#include <iostream>
#include <sstream>

namespace iocp {

CommandLine::CommandLine(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

void CommandLine::add_endpoint(Endpoint& where) {
    where.host = "127.0.0.1";
    where.port = 6000;
    endpoint_ = &where;
    add_string("--bind", where.host, "address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)");
    add_int("--port", port_, 0, 65535, "TCP port (default 6000; 0 picks a free one)");
}

void CommandLine::add_server_address(Endpoint& server) {
    server.host = "127.0.0.1";
    server.port = 6000;
    endpoint_ = &server;
    add_string("--host", server.host, "server address (default 127.0.0.1)");
    add_int("--port", port_, 1, 65535, "server port (default 6000)");
}

void CommandLine::add_int(std::string name, long long& target, long long min, long long max, std::string help) {
    Option o{std::move(name), std::move(help), Option::Kind::kInt};
    o.int_target = &target;
    o.min = min;
    o.max = max;
    options_.push_back(std::move(o));
}

void CommandLine::add_string(std::string name, std::string& target, std::string help) {
    Option o{std::move(name), std::move(help), Option::Kind::kString};
    o.string_target = &target;
    options_.push_back(std::move(o));
}

void CommandLine::add_flag(std::string name, bool& target, std::string help) {
    Option o{std::move(name), std::move(help), Option::Kind::kFlag};
    o.flag_target = &target;
    options_.push_back(std::move(o));
}

std::string CommandLine::usage() const {
    std::ostringstream out;
    out << "usage: " << program_ << " [options]\n" << summary_ << "\n\noptions:\n";
    for (const auto& o : options_) {
        std::string left = o.name + (o.kind == Option::Kind::kInt      ? " N"
                                     : o.kind == Option::Kind::kString ? " TEXT"
                                                                       : "");
        out << "  " << left << std::string(left.size() < 16 ? 16 - left.size() : 1, ' ') << o.help << "\n";
    }
    out << "  --help          show this text\n";
    return out.str();
}

std::optional<int> CommandLine::parse(int argc, char** argv) {
    auto fail = [&](const std::string& why) {
        std::cerr << program_ << ": " << why << "\n\n" << usage();
        return std::optional<int>(2);
    };
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            std::cout << usage();
            return 0;
        }
        std::string value;
        bool has_inline_value = false;
        if (const auto eq = arg.find('='); eq != std::string::npos) {  // --port=6000
            value = arg.substr(eq + 1);
            arg.resize(eq);
            has_inline_value = true;
        }
        const Option* match = nullptr;
        for (const auto& o : options_)
            if (o.name == arg) match = &o;
        if (!match) return fail("unknown option '" + arg + "'");
        if (match->kind == Option::Kind::kFlag) {
            if (has_inline_value) return fail(arg + " takes no value");
            *match->flag_target = true;
            continue;
        }
        if (!has_inline_value) {
            if (i + 1 >= argc) return fail(arg + " needs a value");
            value = argv[++i];
        }
        if (match->kind == Option::Kind::kString) {
            *match->string_target = value;
            continue;
        }
        long long n = 0;
        const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
        if (ec != std::errc() || end != value.data() + value.size())
            return fail(arg + " needs a whole number, not '" + value + "'");
        if (n < match->min || n > match->max)
            return fail(arg + " must be between " + std::to_string(match->min) + " and " + std::to_string(match->max));
        *match->int_target = n;
    }
    if (endpoint_) endpoint_->port = static_cast<std::uint16_t>(port_);
    return std::nullopt;
}

}  // namespace iocp
