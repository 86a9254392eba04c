// main() for every test executable: Winsock must be up before the first socket call.
#include <gtest/gtest.h>

#include "iocp/net.h"

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    iocp::WinsockGuard winsock;
    return RUN_ALL_TESTS();
}
