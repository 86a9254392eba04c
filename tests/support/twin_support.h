// tests/support/twin_support.h - for the tests of chapters that have an IOCP twin and an
// io_uring twin (7 on): start a server, or skip with the reason on a Linux kernel that
// refuses io_uring. Windows builds start the server and never skip.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <utility>

#include "contract/echo_contract.h"
#include "iocp/net.h"
#ifndef _WIN32
#include "support/io_uring_support.h"
#endif

namespace testsupport {

/// Records a skip with `why`. (gtest's skip macro returns from the function it is in,
/// so it lives in a void one.)
inline void skip_because(const std::string& why) { GTEST_SKIP() << why; }

/// The contract's target for a twin. On Linux its start() first asks whether io_uring
/// is refused; if so it records a skip and returns nullptr, so SetUp ends with the skip
/// and the test body is not run.
inline contract::Target or_skip_without_io_uring(contract::Target target) {
#ifndef _WIN32
    target.start = [start = std::move(target.start)]() -> std::unique_ptr<contract::ServerUnderTest> {
        if (const auto why = io_uring_refused()) {
            skip_because(*why);
            return nullptr;
        }
        return start();
    };
#endif
    return target;
}

/// A started Server on 127.0.0.1, port 0; or nullptr with a skip recorded, on a Linux
/// kernel that refuses io_uring. Tests call it through START_TWIN_SERVER.
template <class Server, class Limits>
std::unique_ptr<Server> start_twin(const Limits& limits) {
#ifndef _WIN32
    if (const auto why = io_uring_refused()) {
        skip_because(*why);
        return nullptr;
    }
#endif
    auto server = std::make_unique<Server>(iocp::Endpoint{"127.0.0.1", 0}, limits);
    server->start();
    return server;
}

}  // namespace testsupport

/// In a TEST body: `START_TWIN_SERVER(server, ch09::EchoServer, limits);` declares
/// `server`, or ends the test as skipped.
#define START_TWIN_SERVER(var, Server, limits)                  \
    auto var = ::testsupport::start_twin<Server>(limits);       \
    if (IsSkipped()) return;                                    \
    ASSERT_NE(nullptr, var)
