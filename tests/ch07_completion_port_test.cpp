// Chapter 7 tests. First the port alone, as a queue, with no server: what a reader may
// rely on when a worker calls GetQueuedCompletionStatus, and what closing a socket does
// to the operations pending on it (on Linux, the same lessons on an io_uring, with NOPs
// and messages). Then the echo server: the echo contract with 200 clients, no
// cross-talk between clients with distinct binary payloads, one receive posted per
// idle connection, short sends re-posted, stop() under load leaving no operation in
// flight and no connection alive, 1500 clients at once, and the accept pausing when
// descriptors run out.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <cstring>
#include <thread>
#include <vector>

#include "contract/echo_contract.h"
#include "echo_server.h"
#include "iocp/handle.h"
#include "iocp/test_client.h"
#include "support/load.h"
#include "support/test_support.h"
#include "support/twin_support.h"


using iocp::TestClient;
using std::chrono::milliseconds;
#ifndef _WIN32
using testsupport::io_uring_refused;
#endif
using testsupport::labelled_payload;
using testsupport::make_payload;
using testsupport::running_under_wine;
using testsupport::too_few_descriptors;
using testsupport::same_bytes;

namespace {

constexpr int kConcurrent = 200;  // the issue asks for at least 200 clients at once

contract::Target chapter_target() {
#ifdef _WIN32
    const char* name = "iocp";
#else
    const char* name = "io_uring";
#endif
    return testsupport::or_skip_without_io_uring(
        contract::make_target<ch07::EchoServer>(name, {kConcurrent}));
}

}  // namespace

INSTANTIATE_TEST_SUITE_P(ch07, EchoContract, ::testing::Values(chapter_target()), contract::target_name);

// =======================================================================================
// Part 1: the queue alone.
// =======================================================================================
#ifdef _WIN32

namespace {

iocp::UniqueHandle make_port(DWORD concurrency) {
    iocp::UniqueHandle port(CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, concurrency));
    if (!port) iocp::throw_last_error("CreateIoCompletionPort");
    return port;
}

// What one GetQueuedCompletionStatus call returned. bytes and key start as sentinels, so
// a test can see whether the call wrote them.
struct Dequeued {
    BOOL ok = FALSE;
    DWORD error = 0;  // GetLastError() when ok is FALSE
    DWORD bytes = 0xDEADBEEF;
    ULONG_PTR key = 0xC0FFEE;
    OVERLAPPED* overlapped = reinterpret_cast<OVERLAPPED*>(static_cast<ULONG_PTR>(1));
};

Dequeued dequeue(HANDLE port, DWORD timeout_ms) {
    Dequeued d;
    d.ok = GetQueuedCompletionStatus(port, &d.bytes, &d.key, &d.overlapped, timeout_ms);
    d.error = d.ok ? ERROR_SUCCESS : GetLastError();
    return d;
}

void post(HANDLE port, DWORD bytes, ULONG_PTR key, OVERLAPPED* overlapped) {
    if (!PostQueuedCompletionStatus(port, bytes, key, overlapped)) iocp::throw_last_error("PostQueuedCompletionStatus");
}

}  // namespace

//! [fifo]
// "An I/O completion packet is queued in first-in-first-out (FIFO) order" (Microsoft,
// I/O Completion Ports). One thread posting and one taking: they come out in order.
TEST(Ch07Port, PacketsComeOutInTheOrderPosted) {
    const auto port = make_port(1);
    std::vector<OVERLAPPED> ops(1000);
    for (DWORD i = 0; i < ops.size(); ++i) post(port.get(), i * 3, 1000 + i, &ops[i]);
    for (DWORD i = 0; i < ops.size(); ++i) {
        const Dequeued d = dequeue(port.get(), 0);
        ASSERT_TRUE(d.ok) << "packet " << i << ": error " << d.error;
        ASSERT_EQ(1000 + i, d.key) << "packet " << i << " out of order";
        ASSERT_EQ(i * 3, d.bytes);
        ASSERT_EQ(&ops[i], d.overlapped);
    }
    EXPECT_EQ(static_cast<DWORD>(WAIT_TIMEOUT), dequeue(port.get(), 0).error) << "more packets than were posted";
}
//! [fifo]

//! [timeout]
// A wait that ends with nothing to dequeue returns FALSE with *lpOverlapped NULL, and
// GetLastError() is WAIT_TIMEOUT. This is how a worker tells "nothing came" from "an
// operation failed" (FALSE with an OVERLAPPED). Microsoft's page (Remarks) says that
// the byte count and the key are then not stored, "and their values are
// indeterminate": that Windows and Wine leave them untouched, as checked here, is
// observed, not promised, and a worker must not read them.
TEST(Ch07Port, AnEmptyPortTimesOutWithNoOverlapped) {
    const auto port = make_port(1);
    for (const DWORD timeout_ms : {0u, 50u}) {
        const Dequeued d = dequeue(port.get(), timeout_ms);
        EXPECT_FALSE(d.ok);
        EXPECT_EQ(nullptr, d.overlapped);
        EXPECT_EQ(static_cast<DWORD>(WAIT_TIMEOUT), d.error);
        EXPECT_EQ(0xDEADBEEFu, d.bytes) << "a timeout wrote the byte count";
        EXPECT_EQ(0xC0FFEEu, d.key) << "a timeout wrote the key";
    }
}
//! [timeout]

//! [as-posted]
// The three values given to PostQueuedCompletionStatus come out untouched: the kernel
// never looks at them. The key is a ULONG_PTR, a full pointer on 64-bit Windows; a
// key cast to DWORD, as in the original article, keeps only the low half
// (0xFFFFFFFF00001234 would arrive as 0x1234: a pointer to nowhere).
// A packet posted with no OVERLAPPED comes out TRUE with a NULL OVERLAPPED, which is
// how a worker recognises a message from its own program, such as an exit packet.
TEST(Ch07Port, KeyBytesAndOverlappedArriveExactlyAsPosted) {
    const auto port = make_port(1);
    OVERLAPPED op{};
    const ULONG_PTR wide_key = static_cast<ULONG_PTR>(0xFFFFFFFF00001234ull);
    post(port.get(), 0xFFFFFFFF, wide_key, &op);
    post(port.get(), 7, reinterpret_cast<ULONG_PTR>(&op), nullptr);

    const Dequeued first = dequeue(port.get(), 0);
    EXPECT_TRUE(first.ok);
    EXPECT_EQ(0xFFFFFFFFu, first.bytes);
    EXPECT_EQ(wide_key, first.key);
    EXPECT_EQ(&op, first.overlapped);

    const Dequeued second = dequeue(port.get(), 0);
    EXPECT_TRUE(second.ok) << "a posted packet without an OVERLAPPED is not a failure";
    EXPECT_EQ(nullptr, second.overlapped);
    EXPECT_EQ(7u, second.bytes);
    EXPECT_EQ(reinterpret_cast<ULONG_PTR>(&op), second.key);
}
//! [as-posted]

//! [two-channels]
// The two ways a packet carries context. The completion key is given once, when a
// handle is associated with the port, and comes back with every packet for that
// handle: per handle. The OVERLAPPED is given with each operation and comes back with
// that operation's packet: per I/O. Two sends on one socket: same key, two contexts.
TEST(Ch07Port, KeyNamesTheHandleOverlappedNamesTheOperation) {
    struct HandleState {
        int id;
    } handle_state{7};
    struct SendContext {
        OVERLAPPED overlapped;  // first, so CONTAINING_RECORD is a no-op here; it works anywhere
        const char* text;
    };
    const auto port = make_port(1);
    const auto listener = iocp::listen_tcp({"127.0.0.1", 0});
    auto client = TestClient::connect({"127.0.0.1", iocp::local_port(listener.get())});
    iocp::UniqueSocket server_side(::accept(listener.get(), nullptr, nullptr));
    ASSERT_TRUE(server_side.valid());
    ASSERT_NE(nullptr, CreateIoCompletionPort(reinterpret_cast<HANDLE>(server_side.get()), port.get(),
                                              reinterpret_cast<ULONG_PTR>(&handle_state), 0));

    SendContext a{OVERLAPPED{}, "hello"}, b{OVERLAPPED{}, ", world"};
    for (SendContext* ctx : {&a, &b}) {
        WSABUF buf{static_cast<ULONG>(std::strlen(ctx->text)), const_cast<char*>(ctx->text)};
        const int rc = WSASend(server_side.get(), &buf, 1, nullptr, 0, &ctx->overlapped, nullptr);
        ASSERT_TRUE(rc == 0 || WSAGetLastError() == WSA_IO_PENDING) << "WSASend: " << WSAGetLastError();
    }
    std::set<SendContext*> seen;
    for (int i = 0; i < 2; ++i) {
        const Dequeued d = dequeue(port.get(), 10000);
        ASSERT_TRUE(d.ok) << "error " << d.error;
        EXPECT_EQ(reinterpret_cast<ULONG_PTR>(&handle_state), d.key) << "the key is the handle's";
        SendContext* ctx = CONTAINING_RECORD(d.overlapped, SendContext, overlapped);
        EXPECT_TRUE(ctx == &a || ctx == &b) << "an OVERLAPPED we never gave";
        EXPECT_EQ(std::strlen(ctx->text), d.bytes) << ctx->text;
        seen.insert(ctx);
    }
    EXPECT_EQ(2u, seen.size()) << "each operation's packet names its own context";
    EXPECT_EQ("hello, world", client.recv_exact(12));
}
//! [two-channels]

// Any thread may post, and a thread blocked in GetQueuedCompletionStatus wakes for it.
// This is the exit packet's mechanism.
TEST(Ch07Port, APacketPostedFromAnotherThreadWakesAWaiter) {
    const auto port = make_port(1);
    Dequeued got;
    testsupport::finishes_within(milliseconds(30000), "a waiter woken by a posted packet", [&] {
        std::thread waiter([&] { got = dequeue(port.get(), 20000); });
        std::this_thread::sleep_for(milliseconds(100));  // most likely waiting by now; either way works
        post(port.get(), 42, 4242, nullptr);
        waiter.join();
    });
    EXPECT_TRUE(got.ok) << "error " << got.error;
    EXPECT_EQ(42u, got.bytes);
    EXPECT_EQ(4242u, got.key);
}

//! [close-port]
// Closing the port while a thread waits on it. Windows: the wait ends at once, FALSE,
// NULL OVERLAPPED, ERROR_ABANDONED_WAIT_0 (GetQueuedCompletionStatus, Remarks).
// Wine 8 differs: the wait is not woken, and runs to its own timeout (WAIT_TIMEOUT).
// Under Wine the test accepts either, a later Wine may fix it, and prints which came.
// So a program must never rely on closing the port to wake its workers: ours post
// exit packets, which work on both. (Closing a handle another thread is using is a
// race in any case: the value can be reused by the next handle created.)
TEST(Ch07Port, ClosingThePortEndsAWait) {
    const bool wine = running_under_wine();
    for (int attempt = 0;; ++attempt) {
        auto port = make_port(1);
        const HANDLE raw = port.get();
        std::atomic<bool> about_to_wait{false};
        Dequeued got;
        testsupport::finishes_within(milliseconds(30000), "a wait on a port being closed", [&] {
            std::thread waiter([&] {
                about_to_wait = true;
                got = dequeue(raw, 3000);  // bounded: under Wine only the timeout ends it
            });
            while (!about_to_wait) std::this_thread::yield();
            std::this_thread::sleep_for(milliseconds(200));  // let it enter the wait
            port.reset();  // CloseHandle
            waiter.join();
        });
        // ERROR_INVALID_HANDLE means the close came before the call: try again.
        if (!got.ok && got.error == ERROR_INVALID_HANDLE && attempt < 5) continue;
        EXPECT_FALSE(got.ok);
        EXPECT_EQ(nullptr, got.overlapped);
        if (wine) {
            EXPECT_TRUE(got.error == WAIT_TIMEOUT || got.error == ERROR_ABANDONED_WAIT_0) << "error " << got.error;
            std::cout << "[ wine     ] the wait ended with "
                      << (got.error == WAIT_TIMEOUT ? "WAIT_TIMEOUT: closing the port did not wake it"
                                                    : "ERROR_ABANDONED_WAIT_0, as on Windows")
                      << "\n";
        } else {
            EXPECT_EQ(static_cast<DWORD>(ERROR_ABANDONED_WAIT_0), got.error);
        }
        break;
    }
}
//! [close-port]

//! [lifo]
// "Threads that block their execution on an I/O completion port are released in
// last-in-first-out (LIFO) order" (I/O Completion Ports): the thread that waited last,
// whose stack and cache are warmest, gets the next packet. Wine 8 releases them in
// FIFO order instead. Checked on both: every waiter gets exactly one packet. Checked
// on Windows only: the order.
TEST(Ch07Port, WaitingThreadsAreReleasedLastInFirstOut) {
    constexpr int kWaiters = 3;
    const auto port = make_port(8);  // room for all three to run
    std::mutex m;
    std::vector<int> release_order;
    std::vector<std::thread> waiters;
    testsupport::finishes_within(milliseconds(30000), "waiters released one by one", [&] {
        for (int i = 0; i < kWaiters; ++i) {
            waiters.emplace_back([&, i] {
                const Dequeued d = dequeue(port.get(), 20000);
                std::lock_guard<std::mutex> lock(m);
                release_order.push_back(d.ok ? i : -1);
            });
            std::this_thread::sleep_for(milliseconds(300));  // thread i waits before thread i+1
        }
        for (int i = 0; i < kWaiters; ++i) {
            post(port.get(), 0, 1, nullptr);
            EXPECT_TRUE(testsupport::eventually([&] {
                std::lock_guard<std::mutex> lock(m);
                return release_order.size() == static_cast<std::size_t>(i + 1);
            })) << "packet " << i << " released no waiter";
        }
        for (auto& t : waiters) t.join();
    });
    std::vector<int> sorted = release_order;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ((std::vector<int>{0, 1, 2}), sorted) << "each waiter gets exactly one packet";
    std::string order;
    for (const int i : release_order) order += std::to_string(i) + " ";
    if (running_under_wine()) {
        std::cout << "[ wine     ] waiters released in the order " << order << "(Windows: 2 1 0)\n";
    } else {
        EXPECT_EQ((std::vector<int>{2, 1, 0}), release_order) << "order: " << order;
    }
}
//! [lifo]

//! [concurrency]
// NumberOfConcurrentThreads: how many threads associated with the port may run at
// once. With 1, while thread A runs on the packet it took, a second packet is not given
// to a waiting thread B: B's wait times out, and A takes the packet when it comes back.
// (A thread that blocks elsewhere, in Sleep or a blocking recv, stops counting as
// running, and the port lets another one in.) Wine 8 ignores the value and hands the
// packet to B at once. Checked on both: the packet is delivered exactly once.
TEST(Ch07Port, ConcurrencyValueHoldsBackASecondWaiterWhileTheFirstRuns) {
    const auto port = make_port(1);
    std::atomic<bool> a_took_first{false}, a_may_finish{false};
    Dequeued a_second, b_got;
    testsupport::finishes_within(milliseconds(30000), "the concurrency test", [&] {
        post(port.get(), 1, 1, nullptr);
        std::thread a([&] {
            if (!dequeue(port.get(), 20000).ok) return;
            a_took_first = true;
            // Stay running (no blocking call) until B has had its chance.
            const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
            while (!a_may_finish && std::chrono::steady_clock::now() < give_up) {
            }
            a_second = dequeue(port.get(), 0);
        });
        while (!a_took_first) std::this_thread::yield();
        std::thread b([&] { b_got = dequeue(port.get(), 500); });
        std::this_thread::sleep_for(milliseconds(100));  // B waiting, most likely
        post(port.get(), 2, 2, nullptr);
        b.join();
        a_may_finish = true;
        a.join();
    });
    EXPECT_EQ(1, (b_got.ok ? 1 : 0) + (a_second.ok ? 1 : 0)) << "the second packet went to exactly one thread";
    if (running_under_wine()) {
        std::cout << "[ wine     ] the second packet went to " << (b_got.ok ? "B (concurrency ignored)" : "A")
                  << " (Windows: A)\n";
    } else {
        EXPECT_FALSE(b_got.ok) << "B was released although A was running and the concurrency is 1";
        EXPECT_EQ(static_cast<DWORD>(WAIT_TIMEOUT), b_got.error);
        EXPECT_TRUE(a_second.ok);
        EXPECT_EQ(2u, a_second.key);
    }
}
//! [concurrency]

// The next two tests pin down what closing a socket does to an operation pending on it,
// the rows of the page's Wine table that the server's close_connection is built on.
namespace {

// One connected pair: `server_side` is associated with `port` under `key`; the client
// end reads only when told to.
struct AssociatedPair {
    iocp::UniqueSocket listener;
    std::optional<TestClient> client;
    iocp::UniqueSocket server_side;
};

AssociatedPair make_associated_pair(HANDLE port, ULONG_PTR key) {
    AssociatedPair p;
    p.listener = iocp::listen_tcp({"127.0.0.1", 0});
    p.client = TestClient::connect({"127.0.0.1", iocp::local_port(p.listener.get())});
    p.server_side = iocp::UniqueSocket(::accept(p.listener.get(), nullptr, nullptr));
    if (!p.server_side) iocp::throw_socket_error("accept");
    if (CreateIoCompletionPort(reinterpret_cast<HANDLE>(p.server_side.get()), port, key, 0) == nullptr)
        iocp::throw_last_error("CreateIoCompletionPort(socket)");
    return p;
}

// An operation's memory: the kernel's until its packet is taken. A test that gives up
// waiting leaks it on purpose (never frees what the kernel may still write to).
struct LentOp {
    OVERLAPPED overlapped{};
    std::string buffer;
};

// Waits for the packet of `op`. Any other packet is a failure.
std::optional<Dequeued> wait_for(HANDLE port, LentOp* op, DWORD timeout_ms) {
    const Dequeued d = dequeue(port, timeout_ms);
    if (d.overlapped == nullptr) return std::nullopt;
    if (d.overlapped != &op->overlapped) ADD_FAILURE() << "a packet for another operation";
    return d;
}

// Posts 1 MiB sends that the client never reads until one stays pending (no packet for
// 500 ms): the buffers on both sides are full. Every earlier send has come home. The
// stuck one is returned; it owns its memory until its packet comes.
std::unique_ptr<LentOp> post_sends_until_one_sticks(HANDLE port, SOCKET s) {
    for (int i = 0; i < 64; ++i) {
        auto op = std::make_unique<LentOp>();
        op->buffer = make_payload(1u << 20, static_cast<std::uint32_t>(i));
        WSABUF buf{static_cast<ULONG>(op->buffer.size()), op->buffer.data()};
        if (WSASend(s, &buf, 1, nullptr, 0, &op->overlapped, nullptr) == SOCKET_ERROR &&
            WSAGetLastError() != WSA_IO_PENDING) {
            ADD_FAILURE() << "WSASend: " << WSAGetLastError();
            return nullptr;
        }
        const auto d = wait_for(port, op.get(), 500);
        if (!d) return op;
        if (!d->ok) {
            ADD_FAILURE() << "a send to a connected peer failed: " << d->error;
            return nullptr;
        }
    }
    ADD_FAILURE() << "64 MiB went out to a client that reads nothing";
    return nullptr;
}

}  // namespace

//! [close-pending-recv]
// closesocket() on a socket with a receive pending: the receive still completes, and
// its packet is how a server learns the buffer is free again. Windows fails it (995
// or 64), and an earlier version of Microsoft's GetQueuedCompletionStatus page said
// that a closed socket's operation may also come back TRUE with 0 bytes, just like a
// FIN. Wine 8 fails it with 676 (ERROR_HANDLES_CLOSED). Checked on both: the packet
// comes. Checked on Windows only: which one.
TEST(Ch07Port, ClosingASocketCompletesItsPendingReceive) {
    const auto port = make_port(1);
    int key = 0;
    AssociatedPair pair = make_associated_pair(port.get(), reinterpret_cast<ULONG_PTR>(&key));
    auto op = std::make_unique<LentOp>();
    op->buffer.resize(64);
    WSABUF buf{static_cast<ULONG>(op->buffer.size()), op->buffer.data()};
    DWORD flags = 0;
    ASSERT_EQ(SOCKET_ERROR, WSARecv(pair.server_side.get(), &buf, 1, nullptr, &flags, &op->overlapped, nullptr));
    ASSERT_EQ(WSA_IO_PENDING, WSAGetLastError()) << "the client sent nothing: the receive must wait";
    EXPECT_FALSE(wait_for(port.get(), op.get(), 100)) << "a receive completed with nothing sent";
    pair.server_side.reset();  // closesocket
    const auto d = wait_for(port.get(), op.get(), 10000);
    if (!d) {
        op.release();  // the kernel may still write to it: leaked on purpose
        FAIL() << "closesocket() left the receive pending";
    }
    const bool wine = running_under_wine();
    std::cout << (wine ? "[ wine     ]" : "[ info     ]") << " a pending receive whose socket was closed: "
              << (d->ok ? "TRUE" : "FALSE") << ", error " << d->error << ", " << d->bytes
              << " bytes (Windows: FALSE with 995 or 64, or TRUE with 0 bytes; Wine 8: FALSE with 676)\n";
    if (!wine) {
        EXPECT_TRUE(d->ok ? d->bytes == 0 : (d->error == ERROR_OPERATION_ABORTED || d->error == ERROR_NETNAME_DELETED))
            << "ok " << d->ok << ", error " << d->error << ", bytes " << d->bytes;
    }
}
//! [close-pending-recv]

//! [close-stuck-send]
// A send that waits for a client that reads nothing. Windows cancels it when its socket
// is closed. Wine 8 leaves it pending until the client goes away, then fails it with
// error 6; a server that waited for that packet before freeing the connection would
// wait as long as the client liked. CancelIoEx ends it at once on both (995), which is
// why close_connection calls it before closing. Checked on both: CancelIoEx, and that
// the packet comes at the latest once the client has gone. Windows only: closesocket.
TEST(Ch07Port, ASendStuckOnAPeerThatDoesNotReadEndsWhenItsSocketIsClosed) {
    const bool wine = running_under_wine();
    const auto port = make_port(1);
    int key = 0;

    // 1. closesocket() alone.
    {
        AssociatedPair pair = make_associated_pair(port.get(), reinterpret_cast<ULONG_PTR>(&key));
        auto stuck = post_sends_until_one_sticks(port.get(), pair.server_side.get());
        ASSERT_NE(nullptr, stuck);
        pair.server_side.reset();  // closesocket
        auto d = wait_for(port.get(), stuck.get(), 2000);
        const bool ended_by_close = d.has_value();
        if (!d) {
            pair.client->close();  // the client goes away
            d = wait_for(port.get(), stuck.get(), 10000);
        }
        if (!d) {
            stuck.release();  // leaked on purpose: the kernel may still use it
            FAIL() << "the send never completed, not even after the client closed";
        }
        std::cout << (wine ? "[ wine     ]" : "[ info     ]") << " a stuck send whose socket was closed: "
                  << (ended_by_close ? "ended by closesocket" : "ended only when the client closed") << ", "
                  << (d->ok ? "TRUE" : "FALSE") << ", error " << d->error
                  << " (Windows: ended by closesocket; Wine 8: only when the client closed, error 6)\n";
        if (!wine) {
            EXPECT_TRUE(ended_by_close) << "closesocket() left the send pending";
        }
    }

    // 2. CancelIoEx first, as close_connection does.
    {
        AssociatedPair pair = make_associated_pair(port.get(), reinterpret_cast<ULONG_PTR>(&key));
        auto stuck = post_sends_until_one_sticks(port.get(), pair.server_side.get());
        ASSERT_NE(nullptr, stuck);
        EXPECT_TRUE(CancelIoEx(reinterpret_cast<HANDLE>(pair.server_side.get()), nullptr)) << GetLastError();
        pair.server_side.reset();
        auto d = wait_for(port.get(), stuck.get(), 2000);
        const bool ended_by_cancel = d.has_value();
        if (!d) {
            pair.client->close();
            d = wait_for(port.get(), stuck.get(), 10000);
        }
        if (!d) {
            stuck.release();
            FAIL() << "the cancelled send never completed, not even after the client closed";
        }
        EXPECT_TRUE(ended_by_cancel) << "CancelIoEx + closesocket left the send pending";
        EXPECT_FALSE(d->ok);
        EXPECT_EQ(static_cast<DWORD>(ERROR_OPERATION_ABORTED), d->error);
    }
}
//! [close-stuck-send]

#else  // Linux: the same lessons on an io_uring

namespace {

// A ring for one test; skips the test (with the reason) when the kernel refuses.
class Ring {
public:
    explicit Ring(unsigned entries = 256) {
        if (const int rc = io_uring_queue_init(entries, &ring_, 0); rc < 0)
            throw iocp::SystemError("io_uring_queue_init", -rc);
    }
    ~Ring() { io_uring_queue_exit(&ring_); }
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;
    io_uring* get() { return &ring_; }
    io_uring_sqe* sqe() {
        io_uring_sqe* s = io_uring_get_sqe(&ring_);
        if (s == nullptr) throw std::runtime_error("submission queue full");
        return s;
    }

private:
    io_uring ring_{};
};

#define CH07_REQUIRE_IO_URING()                                 \
    do {                                                        \
        if (const auto why = io_uring_refused()) GTEST_SKIP() << *why; \
    } while (0)

struct Reaped {
    int rc;  // 0, or -ETIME when the wait timed out
    std::uint64_t user_data = 0xC0FFEE;
    int res = -1;
};

Reaped reap(io_uring* ring, long long timeout_ms) {
    __kernel_timespec ts{};
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (timeout_ms % 1000) * 1000000;
    io_uring_cqe* cqe = nullptr;
    Reaped r{io_uring_wait_cqe_timeout(ring, &cqe, &ts)};
    if (r.rc == 0) {
        r.user_data = io_uring_cqe_get_data64(cqe);
        r.res = cqe->res;
        io_uring_cqe_seen(ring, cqe);
    }
    return r;
}

}  // namespace

//! [fifo-uring]
// The counterpart of PostQueuedCompletionStatus when the poster is the ring's own
// thread: a NOP, whose user_data comes back in its completion. NOPs complete at once,
// in the order submitted, so their completions come out in that order. (Real I/O
// completes in the order it finishes, on both systems: a fast receive on one socket
// overtakes a slow one on another.)
TEST(Ch07Ring, NopCompletionsComeOutInTheOrderSubmitted) {
    CH07_REQUIRE_IO_URING();
    Ring ring;
    constexpr std::uint64_t kCount = 200;
    for (std::uint64_t i = 0; i < kCount; ++i) {
        io_uring_sqe* s = ring.sqe();
        io_uring_prep_nop(s);
        io_uring_sqe_set_data64(s, 1000 + i);
    }
    ASSERT_EQ(static_cast<int>(kCount), io_uring_submit(ring.get()));
    for (std::uint64_t i = 0; i < kCount; ++i) {
        const Reaped r = reap(ring.get(), 0);
        ASSERT_EQ(0, r.rc) << "completion " << i << ": " << std::strerror(-r.rc);
        ASSERT_EQ(1000 + i, r.user_data) << "completion " << i << " out of order";
        ASSERT_EQ(0, r.res);
    }
    EXPECT_EQ(-ETIME, reap(ring.get(), 0).rc) << "more completions than submissions";
}
//! [fifo-uring]

//! [timeout-uring]
// GetQueuedCompletionStatus with a timeout is io_uring_wait_cqe_timeout: -ETIME and no
// completion when nothing arrived in time.
TEST(Ch07Ring, AnEmptyRingTimesOut) {
    CH07_REQUIRE_IO_URING();
    Ring ring;
    for (const long long timeout_ms : {0LL, 50LL}) {
        const Reaped r = reap(ring.get(), timeout_ms);
        EXPECT_EQ(-ETIME, r.rc) << std::strerror(-r.rc);
        EXPECT_EQ(0xC0FFEEu, r.user_data) << "a timeout produced a completion";
    }
}
//! [timeout-uring]

// user_data is 64 bits, given back untouched. It is the only context a completion
// carries (besides res, the result the kernel chose); a pointer to a struct carries
// the rest, as the OVERLAPPED pointer does on Windows.
TEST(Ch07Ring, UserDataArrivesExactlyAsSubmitted) {
    CH07_REQUIRE_IO_URING();
    Ring ring;
    int object = 0;
    const std::uint64_t values[] = {0xFFFFFFFF00001234ull, reinterpret_cast<std::uintptr_t>(&object), 0};
    for (const std::uint64_t v : values) {
        io_uring_sqe* s = ring.sqe();
        io_uring_prep_nop(s);
        io_uring_sqe_set_data64(s, v);
    }
    io_uring_submit(ring.get());
    for (const std::uint64_t v : values) {
        const Reaped r = reap(ring.get(), 1000);
        ASSERT_EQ(0, r.rc);
        EXPECT_EQ(v, r.user_data);
        EXPECT_EQ(0, r.res) << "a NOP's result is always 0: it cannot carry a byte count";
    }
}

//! [two-channels-uring]
// io_uring has one context channel: user_data, per operation. Two sends on one socket
// come back as two completions, each with its own context; nothing is kept per
// descriptor, so the context must say which connection it belongs to.
TEST(Ch07Ring, UserDataNamesTheOperationThereIsNoPerHandleKey) {
    CH07_REQUIRE_IO_URING();
    struct SendContext {
        int connection_id;
        const char* text;
    };
    Ring ring;
    const auto listener = iocp::listen_tcp({"127.0.0.1", 0});
    auto client = TestClient::connect({"127.0.0.1", iocp::local_port(listener.get())});
    iocp::UniqueSocket server_side(::accept(listener.get(), nullptr, nullptr));
    ASSERT_TRUE(server_side.valid());
    SendContext a{7, "hello"}, b{7, ", world"};
    for (SendContext* ctx : {&a, &b}) {
        io_uring_sqe* s = ring.sqe();
        io_uring_prep_send(s, server_side.get(), ctx->text, std::strlen(ctx->text), MSG_NOSIGNAL);
        io_uring_sqe_set_data(s, ctx);
        s->flags |= IOSQE_IO_LINK;  // the second starts after the first: bytes stay in order
    }
    ASSERT_EQ(2, io_uring_submit(ring.get()));
    std::set<SendContext*> seen;
    for (int i = 0; i < 2; ++i) {
        const Reaped r = reap(ring.get(), 10000);
        ASSERT_EQ(0, r.rc);
        auto* ctx = reinterpret_cast<SendContext*>(static_cast<std::uintptr_t>(r.user_data));
        ASSERT_TRUE(ctx == &a || ctx == &b) << "a user_data we never gave";
        EXPECT_EQ(static_cast<int>(std::strlen(ctx->text)), r.res) << ctx->text;
        EXPECT_EQ(7, ctx->connection_id);
        seen.insert(ctx);
    }
    EXPECT_EQ(2u, seen.size());
    EXPECT_EQ("hello, world", client.recv_exact(12));
}
//! [two-channels-uring]

//! [msg-ring]
// PostQueuedCompletionStatus from another thread. An io_uring's submission queue has
// one producer, so another thread does not submit to it; it sends from its own ring
// with IORING_OP_MSG_RING (Linux 5.18), which puts a completion straight into the
// target's queue: user_data and res as given, like the key and the byte count of a
// posted packet. The waiter wakes for it. Only the waiter ever touches the target
// ring, so the kernel is asked first whether it knows MSG_RING: there is no fallback
// that would have this thread submit to the target while the waiter waits on it.
TEST(Ch07Ring, AMessageFromAnotherRingWakesAWaiter) {
    CH07_REQUIRE_IO_URING();
    Ring target, sender(8);
    {
        io_uring_probe* probe = io_uring_get_probe_ring(sender.get());  // nullptr before Linux 5.6
        const bool known = probe != nullptr && io_uring_opcode_supported(probe, IORING_OP_MSG_RING);
        if (probe != nullptr) io_uring_free_probe(probe);
        if (!known) GTEST_SKIP() << "this kernel has no IORING_OP_MSG_RING (Linux 5.18+)";
    }
    Reaped got{-1};
    int sent_result = 1;
    testsupport::finishes_within(milliseconds(30000), "a waiter woken by MSG_RING", [&] {
        std::thread waiter([&] { got = reap(target.get(), 20000); });
        std::this_thread::sleep_for(milliseconds(100));  // most likely waiting by now; either way works
        io_uring_sqe* s = sender.sqe();
        io_uring_prep_msg_ring(s, target.get()->ring_fd, 4242, 0xFFFFFFFF00001234ull, 0);
        io_uring_sqe_set_data64(s, 1);
        io_uring_submit(sender.get());
        const Reaped own = reap(sender.get(), 20000);
        sent_result = own.rc == 0 ? own.res : own.rc;
        waiter.join();  // if the message failed, the waiter's own timeout ends its wait
    });
    ASSERT_EQ(0, sent_result) << std::strerror(-sent_result);
    ASSERT_EQ(0, got.rc) << std::strerror(-got.rc);
    EXPECT_EQ(0xFFFFFFFF00001234ull, got.user_data);
    EXPECT_EQ(4242, got.res);
}
//! [msg-ring]

#endif  // _WIN32

// =======================================================================================
// Part 2: the echo server.
// =======================================================================================
namespace {

// Starts a server for one test, or ends the test as skipped (a kernel that refuses io_uring).
#define CH07_START_SERVER(var, ...) START_TWIN_SERVER(var, ch07::EchoServer, ch07::Limits{__VA_ARGS__})

constexpr int kMany = 1500;  // more clients than the ring's first completion queue had room for

}  // namespace

//! [no-cross-talk]
// The original article's server receives every connection's bytes into one global
// buffer and echoes from it. Two clients talking at once overwrite each other there:
// a client gets the other's bytes, or a mix, and strlen() cuts any binary message at
// its first NUL. Here 200 clients send distinct binary payloads (NULs and 0xFF in
// each, larger than the server's 16 KiB buffer so that each message takes several
// receive/send rounds, interleaved with everyone else's), three rounds each, and every
// client must get back exactly its own bytes.
TEST(Ch07EchoServer, ConcurrentClientsWithDistinctBinaryPayloadsNeverSeeEachOthersBytes) {
    CH07_START_SERVER(server);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    std::vector<TestClient> clients;
    for (int i = 0; i < kConcurrent; ++i) clients.push_back(TestClient::connect(at));
    for (std::uint32_t round = 0; round < 3; ++round) {
        std::vector<std::string> payloads;
        for (std::uint32_t i = 0; i < clients.size(); ++i) {
            // Sizes from 17 KiB to 47 KiB; the first bytes name the client and the round.
            std::string label = "c";
            label.append(std::to_string(1000 + i)).append("r").append(std::to_string(round)).append("\0\xff", 2);
            payloads.push_back(labelled_payload(17 * 1024 + (i * 151 + round * 977) % (30 * 1024), 100000 * round + i, label));
        }
        for (std::size_t i = 0; i < clients.size(); ++i) clients[i].send(payloads[i]);
        for (std::size_t i = 0; i < clients.size(); ++i)
            ASSERT_TRUE(same_bytes(payloads[i], clients[i].recv_exact(payloads[i].size())))
                << "client " << i << ", round " << round;
    }
    EXPECT_EQ(static_cast<std::size_t>(kConcurrent), server->live_connections());
}
//! [no-cross-talk]

//! [one-receive-each]
// The completion model's cost and its promise, in one number: every idle connection
// has exactly one receive posted, its buffer lent to the kernel until bytes arrive.
// When the clients leave, each receive completes (0 bytes: FIN) and nothing is left.
TEST(Ch07EchoServer, EveryIdleConnectionHoldsExactlyOneReceive) {
    CH07_START_SERVER(server);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    std::vector<TestClient> clients;
    for (int i = 0; i < 50; ++i) {
        clients.push_back(TestClient::connect(at));
        ASSERT_EQ("ping", clients.back().echo("ping"));
    }
    EXPECT_TRUE(testsupport::eventually([&] {
        return server->operations_in_flight() == 50 && server->live_connections() == 50;
    })) << "in flight: " << server->operations_in_flight() << ", live: " << server->live_connections();
    clients.clear();
    EXPECT_TRUE(testsupport::eventually([&] {
        return server->operations_in_flight() == 0 && server->live_connections() == 0;
    })) << "in flight: " << server->operations_in_flight() << ", live: " << server->live_connections();
    EXPECT_EQ(50u, server->connections_served());
}
//! [one-receive-each]

//! [short-sends]
// A client that sends and does not read fills every buffer between it and the server;
// the server's echo then goes out in pieces. With a 1 MiB buffer per connection, a send
// of up to 1 MiB meets a socket with room for only part of it, and the rest must be
// posted again. On Linux that is a short send, and sends_reposted() counts it; a
// Windows overlapped send of this size normally completes whole, so there the test
// checks the bytes only. Every byte must come back, in order.
TEST(Ch07EchoServer, ShortSendsAreRepostedUntilEveryByteIsOut) {
    ch07::Limits limits;
    limits.buffer_size = 1u << 20;
    CH07_START_SERVER(server, limits);
    auto client = TestClient::connect({"127.0.0.1", server->port()});
    const std::string payload = make_payload(32u << 20, 77);
    std::size_t sent = 0;
    for (int idle_rounds = 0; idle_rounds < 3 && sent < payload.size();) {
        const std::size_t n = client.send_some(std::string_view(payload).substr(sent));
        sent += n;
        if (n == 0) {
            ++idle_rounds;
            std::this_thread::sleep_for(milliseconds(100));
        } else {
            idle_rounds = 0;
        }
    }
    ASSERT_GT(sent, 0u);
    EXPECT_TRUE(same_bytes(payload.substr(0, sent), client.recv_exact(sent, milliseconds(60000))));
    std::cout << "[ info     ] " << sent << " bytes pushed before the client read; sends re-posted: "
              << server->sends_reposted() << "\n";
#ifndef _WIN32
    EXPECT_GT(server->sends_reposted(), 0u) << "the echo never met a full socket";
#endif
}
//! [short-sends]

//! [stop-under-load]
// stop() in the middle of traffic: 200 clients echoing from four threads, plus 8 that
// push without reading until the server takes no more. A connection here receives
// again only after its echo is sent, so a hog that stalls is one whose echo is stuck
// in a pending send. stop() must end within a bound, with no operation in flight and no
// connection alive: every context was freed after its operation came home, never before.
TEST(Ch07EchoServer, StopUnderLoadLeavesNoOperationInFlight) {
    CH07_START_SERVER(server);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    // 8 hogs, not more: each fills its socket buffers and ours, ~11 MB apiece here.
    constexpr int kThreads = 4, kHogs = 8;
    const std::vector<TestClient> hogs = testsupport::stalled_hogs(at, kHogs);

    testsupport::EchoLoad load(at, kConcurrent, kThreads);
    const bool loaded = load.wait_until_running(2000);
    load.server_stopping();
    testsupport::finishes_within(milliseconds(15000), "stop() under load", [&] { server->stop(); });
    load.finish();
    ASSERT_TRUE(loaded) << "the load never got going: " << load.connected() << " connected, " << load.echoes()
                        << " echoes";
    EXPECT_EQ(0u, server->operations_in_flight());
    EXPECT_EQ(0u, server->live_connections());
    EXPECT_EQ(static_cast<std::uint64_t>(kConcurrent + kHogs), server->connections_served());
}
//! [stop-under-load]

// Beyond max_clients a client is closed at once, and those already in keep going. This
// one has sent nothing, so it sees EOF (one that had sent bytes could see a reset).
TEST(Ch07EchoServer, ClientBeyondMaxClientsIsClosedOthersKeepBeingServed) {
    ch07::Limits limits;
    limits.max_clients = 2;
    CH07_START_SERVER(server, limits);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto a = TestClient::connect(at);
    auto b = TestClient::connect(at);
    ASSERT_EQ("a", a.echo("a"));
    ASSERT_EQ("b", b.echo("b"));
    auto c = TestClient::connect(at);
    EXPECT_EQ(TestClient::Closed::kEof, c.wait_closed());
    EXPECT_EQ(1u, server->clients_refused());
    EXPECT_EQ("a2", a.echo("a2"));
    b.close();
    EXPECT_TRUE(testsupport::eventually([&] { return server->live_connections() == 1; }));
    auto d = TestClient::connect(at);
    EXPECT_EQ("d", d.echo("d"));
}

//! [many-idle]
// 1500 idle clients: 1500 receives pending at once, and stop() with every one of them
// connected, which cancels the 1500 at once (on Linux, 1500 cancel requests and 3000
// completions in one drain). Every connection must be closed and every operation must
// come home.
TEST(Ch07EchoServer, StopWithFifteenHundredIdleClientsClosesEveryOne) {
    if (const auto why = too_few_descriptors(2 * kMany + 200)) GTEST_SKIP() << *why;
    CH07_START_SERVER(server);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    std::vector<TestClient> clients;
    clients.reserve(kMany);
    for (int i = 0; i < kMany; ++i) clients.push_back(TestClient::connect(at));
    ASSERT_EQ("ping", clients.back().echo("ping"));
    EXPECT_TRUE(testsupport::eventually(
        [&] {
            return server->live_connections() == static_cast<std::size_t>(kMany) &&
                   server->operations_in_flight() == static_cast<std::size_t>(kMany);
        },
        std::chrono::seconds(30)))
        << "live: " << server->live_connections() << ", in flight: " << server->operations_in_flight();
    testsupport::finishes_within(milliseconds(30000), "stop() with 1500 idle clients", [&] { server->stop(); });
    EXPECT_EQ(0u, server->operations_in_flight());
    EXPECT_EQ(0u, server->live_connections());
    EXPECT_EQ(static_cast<std::uint64_t>(kMany), server->connections_served());
    int eof = 0, reset = 0;
    for (auto& c : clients) (c.wait_closed(milliseconds(10000)) == TestClient::Closed::kEof ? eof : reset)++;
    std::cout << "[ info     ] after stop(): " << eof << " clients saw EOF, " << reset << " a reset\n";
    EXPECT_EQ(kMany, eof + reset);
#ifndef _WIN32
    EXPECT_EQ(0u, server->completion_queue_overflows()) << "the ring's completion queue was too small";
#endif
}
//! [many-idle]

//! [many-burst]
// 1500 clients arrive at once from four threads, each sending its own payload the moment
// it is connected: accepts, receives and sends all complete in bursts, far more at once
// than the ring's first completion queue held. Every client gets exactly its bytes.
TEST(Ch07EchoServer, ABurstOfFifteenHundredClientsIsEchoedInFull) {
    if (const auto why = too_few_descriptors(2 * kMany + 200)) GTEST_SKIP() << *why;
    CH07_START_SERVER(server);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    int echoed = 0;
    auto clients = testsupport::connect_burst(at, kMany, 4, echoed);
    EXPECT_EQ(kMany, echoed);
    EXPECT_EQ(static_cast<std::size_t>(kMany), server->live_connections());
    testsupport::reset_all(clients);  // no TIME_WAIT left behind (see reset_all)
    EXPECT_TRUE(testsupport::eventually(
        [&] { return server->live_connections() == 0 && server->operations_in_flight() == 0; },
        std::chrono::seconds(30)))
        << "live: " << server->live_connections() << ", in flight: " << server->operations_in_flight();
#ifndef _WIN32
    EXPECT_EQ(0u, server->completion_queue_overflows()) << "the ring's completion queue was too small";
#endif
}
//! [many-burst]

#ifndef _WIN32
// The ring's completion queue is sized from max_clients, and the kernel caps its size
// (65536 entries since Linux 5.5). A max_clients beyond what the cap can serve is
// refused by start(), with a message that names the numbers, instead of a server that
// would overflow its queue under load.
TEST(Ch07EchoServer, StartRefusesMoreClientsThanTheCompletionQueueCanServe) {
    if (const auto why = io_uring_refused()) GTEST_SKIP() << *why;
    ch07::Limits limits;
    limits.max_clients = 1000000;
    ch07::EchoServer server({"127.0.0.1", 0}, limits);
    try {
        server.start();
        ADD_FAILURE() << "start() accepted max_clients = 1000000";
    } catch (const std::runtime_error& e) {
        std::cout << "[ info     ] " << e.what() << "\n";
        EXPECT_NE(std::string::npos, std::string(e.what()).find("max_clients 1000000")) << e.what();
    }
}

//! [emfile]
// When the process runs out of descriptors, the accept completes with -EMFILE and the
// client stays queued. The server must not retry at once (it would fail at once,
// forever, at full CPU) and must not give up accepting: it pauses 100 ms with a
// timeout request and tries again. accept_failures() shows which: a pausing server
// fails at most once per 100 ms of shortage (plus the first), a spinning one many
// thousand times. A client that arrives during the shortage is served once
// descriptors are back.
TEST(Ch07EchoServer, AcceptPausesWhenDescriptorsRunOutThenServesTheWaitingClient) {
    CH07_START_SERVER(server);
    const iocp::Endpoint at{"127.0.0.1", server->port()};
    auto early = TestClient::connect(at);
    ASSERT_EQ("early", early.echo("early"));
    testsupport::expect_accept_to_pause_through_a_shortage(at, {&early},
                                                        [&] { return server->accept_failures(); });
}
//! [emfile]
#endif
