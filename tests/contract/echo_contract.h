// tests/contract - the echo contract: one suite, run against every chapter's server.
//
// A chapter's test file instantiates it with a Target: how to start its server on
// 127.0.0.1 port 0, and what its I/O model can do (how many clients at once).
//
//   INSTANTIATE_TEST_SUITE_P(ch02, EchoContract,
//       ::testing::Values(contract::make_target<ch02::EchoServer>("thread_per_client", {200})),
//       contract::target_name);
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "iocp/net.h"

namespace contract {

/// What the contract needs from a running server, whatever its model.
class ServerUnderTest {
public:
    virtual ~ServerUnderTest() = default;
    virtual std::uint16_t port() const = 0;
    virtual void stop() = 0;
    virtual std::size_t live_connections() const = 0;
};

//! [target]
/// What a chapter's model can do; the contract scales its tests to it.
struct Capabilities {
    int concurrent_clients = 1;  // served at the same time (1: one after another)
};

struct Target {
    std::string name;
    std::function<std::unique_ptr<ServerUnderTest>()> start;
    Capabilities caps;
};
//! [target]

/// Wraps any chapter server with start(), stop(), port() and live_connections().
template <class Server>
class Adapter final : public ServerUnderTest {
public:
    template <class... Args>
    explicit Adapter(Args&&... args) : server_(std::forward<Args>(args)...) { server_.start(); }
    std::uint16_t port() const override { return server_.port(); }
    void stop() override { server_.stop(); }
    std::size_t live_connections() const override { return server_.live_connections(); }

private:
    Server server_;
};

/// A Target for Server constructed as Server(Endpoint{"127.0.0.1", 0}, extra...).
template <class Server, class... Extra>
Target make_target(std::string name, Capabilities caps, Extra... extra) {
    return Target{std::move(name),
                  [=] { return std::make_unique<Adapter<Server>>(iocp::Endpoint{"127.0.0.1", 0}, extra...); },
                  caps};
}

/// How gtest prints a Target in test names and messages: by its name, not its bytes.
inline void PrintTo(const Target& t, std::ostream* os) { *os << t.name; }

inline std::string target_name(const ::testing::TestParamInfo<Target>& info) { return info.param.name; }

class EchoContract : public ::testing::TestWithParam<Target> {
protected:
    void SetUp() override;
    void TearDown() override;
    iocp::Endpoint endpoint() const { return {"127.0.0.1", server_->port()}; }
    int concurrency() const { return GetParam().caps.concurrent_clients; }

    std::unique_ptr<ServerUnderTest> server_;
};

}  // namespace contract

// INSTANTIATE_TEST_SUITE_P(chNN, EchoContract, ...) is written at global scope.
using contract::EchoContract;
