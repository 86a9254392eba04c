// Tests of common/: what every chapter's program relies on and no chapter teaches.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "iocp/net.h"
#include "iocp/stop_signal.h"
#include "iocp/test_client.h"
#include "support/test_support.h"

using namespace std::chrono_literals;

// A server stopped with Ctrl+C and started again at once binds its port again, though
// the connections it closed first still sit in TIME_WAIT (see listen_tcp).
TEST(ListenTcp, ARestartedServerBindsItsPortWhileItsOldConnectionsLinger) {
    std::uint16_t port = 0;
    {
        iocp::UniqueSocket listener = iocp::listen_tcp({"127.0.0.1", 0});
        port = iocp::local_port(listener.get());
        auto client = iocp::TestClient::connect({"127.0.0.1", port});
        iocp::UniqueSocket accepted(::accept(listener.get(), nullptr, nullptr));
        ASSERT_TRUE(accepted);
        accepted.reset();  // the server closes first: TIME_WAIT is on its side
        EXPECT_EQ(iocp::TestClient::Closed::kEof, client.wait_closed());
        client.close();
    }
    // Linux: fails without SO_REUSEADDR. Windows: fails with SO_EXCLUSIVEADDRUSE. (Wine 8
    // binds either way, so there the test only shows that nothing else is in the way.)
    iocp::UniqueSocket again = iocp::listen_tcp({"127.0.0.1", port});
    EXPECT_EQ(port, iocp::local_port(again.get()));
}

#ifdef _WIN32
// Closing the console window: the system ends the process as soon as the handler
// returns, so the handler must wait until the program has stopped. Wine never sends
// this event, so the test delivers it the way Windows does: on a thread of its own.
TEST(StopSignal, AClosedConsoleWaitsUntilTheProgramHasStopped) {
    auto stop_signal = std::make_unique<iocp::StopSignal>();
    std::atomic<bool> returned{false};
    std::thread system([&] {
        EXPECT_EQ(TRUE, iocp::StopSignal::on_console_event(CTRL_CLOSE_EVENT));
        returned = true;
    });
    EXPECT_EQ("console closed", stop_signal->wait());
    // main() would call server.stop() here. However long that takes (within the
    // system's grace period), the handler must not have returned: we look for a while.
    std::this_thread::sleep_for(300ms);
    EXPECT_FALSE(returned.load()) << "the handler returned before the program had stopped: Windows would end it now";
    testsupport::finishes_within(10s, "the handler returning once StopSignal is gone", [&] {
        stop_signal.reset();  // main() returning: the program has stopped
        system.join();
    });
    EXPECT_TRUE(returned.load());
}

// Ctrl+C only asks: the handler returns at once, and the program stops in its own time.
TEST(StopSignal, CtrlCReturnsAtOnceAndWakesWait) {
    iocp::StopSignal stop_signal;
    testsupport::finishes_within(10s, "the Ctrl+C handler", [] {
        EXPECT_EQ(TRUE, iocp::StopSignal::on_console_event(CTRL_C_EVENT));
    });
    EXPECT_TRUE(stop_signal.wait_for(0));
    EXPECT_EQ("Ctrl+C", stop_signal.wait());
}
#endif
