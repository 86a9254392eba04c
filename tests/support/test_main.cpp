// main() for every test executable.
#include <gtest/gtest.h>

#include <thread>

#include "iocp/net.h"

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    iocp::WinsockGuard winsock;  // Winsock must be up before the first socket call
    // ThreadSanitizer starts a helper thread of its own when the program creates its
    // first thread. Create one now, so that tests counting this process's threads
    // (nothing left behind by stop()) count the same before and after.
    std::thread([] {}).join();
    return RUN_ALL_TESTS();
}
