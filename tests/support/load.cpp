#include "load.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "test_support.h"

#ifndef _WIN32
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

namespace testsupport {

using std::chrono::milliseconds;

std::vector<iocp::TestClient> connect_burst(const iocp::Endpoint& at, int count, int threads, int& echoed) {
    const int per_thread = count / threads;
    std::vector<std::vector<iocp::TestClient>> clients(static_cast<std::size_t>(threads));
    std::atomic<int> right{0};
    finishes_within(milliseconds(120000), "a burst of clients", [&] {
        std::vector<std::thread> workers;
        for (int t = 0; t < threads; ++t) {
            workers.emplace_back([&, t] {
                auto payload = [&](int i) {
                    const auto n = static_cast<std::uint32_t>(t * per_thread + i);
                    return make_payload(1 + (n * 37) % 6000, n);
                };
                auto& mine = clients[static_cast<std::size_t>(t)];
                try {
                    for (int i = 0; i < per_thread; ++i) {
                        mine.push_back(iocp::TestClient::connect(at, milliseconds(30000)));
                        mine.back().send(payload(i), milliseconds(30000));
                    }
                    for (int i = 0; i < per_thread; ++i) {
                        const std::string expected = payload(i);
                        if (same_bytes(expected, mine[static_cast<std::size_t>(i)].recv_exact(expected.size(),
                                                                                            milliseconds(30000))))
                            ++right;
                        else
                            ADD_FAILURE() << "thread " << t << ", client " << i << ": wrong echo";
                    }
                } catch (const std::exception& e) {
                    ADD_FAILURE() << "thread " << t << ": " << e.what();
                }
            });
        }
        for (auto& w : workers) w.join();
    });
    echoed = right;
    std::vector<iocp::TestClient> all;
    for (auto& mine : clients)
        for (auto& c : mine) all.push_back(std::move(c));
    return all;
}

void reset_all(std::vector<iocp::TestClient>& clients) {
    for (auto& c : clients) c.reset();
    clients.clear();
}

#ifdef _WIN32
IdleConnections::IdleConnections(const iocp::Endpoint& at, std::size_t count) {
    clients_.reserve(count);
    for (std::size_t i = 0; i < count; ++i) clients_.push_back(iocp::TestClient::connect(at));
}

IdleConnections::~IdleConnections() { reset_all(clients_); }
#else
IdleConnections::IdleConnections(const iocp::Endpoint& at, std::size_t count) {
    const iocp::SocketAddress addr = iocp::resolve(at);
    int ready[2];
    int hold[2];
    if (::pipe(ready) != 0 || ::pipe(hold) != 0) throw std::runtime_error("pipe failed");
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        // The child: system calls only (the parent's other threads may have held a
        // lock of the allocator when it forked). Each connection closes with a reset,
        // so that none lingers in TIME_WAIT afterwards.
        ::close(ready[0]);
        ::close(hold[1]);
        std::size_t made = 0;
        for (std::size_t i = 0; i < count; ++i) {
            const int s = ::socket(addr.family(), SOCK_STREAM, 0);
            if (s < 0 || ::connect(s, addr.get(), addr.length) != 0) break;
            const linger reset{1, 0};
            ::setsockopt(s, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
            ++made;
        }
        if (::write(ready[1], &made, sizeof made) != static_cast<ssize_t>(sizeof made)) ::_exit(1);
        char byte = 0;
        while (::read(hold[0], &byte, 1) > 0) {
        }
        ::_exit(0);  // every socket closes, with its reset
    }
    ::close(ready[1]);
    ::close(hold[0]);
    child_ = pid;
    hold_ = hold[1];
    std::size_t made = 0;
    const ssize_t got = ::read(ready[0], &made, sizeof made);
    ::close(ready[0]);
    if (got != static_cast<ssize_t>(sizeof made) || made != count)
        throw std::runtime_error("the child process connected " + std::to_string(made) + " of " +
                                 std::to_string(count) + " idle connections");
}

IdleConnections::~IdleConnections() {
    if (hold_ >= 0) ::close(hold_);
    if (child_ > 0) ::waitpid(child_, nullptr, 0);
}
#endif

std::vector<iocp::TestClient> stalled_hogs(const iocp::Endpoint& at, int count) {
    constexpr std::size_t kLimit = 64u << 20;
    std::vector<iocp::TestClient> hogs;
    for (int i = 0; i < count; ++i) {
        hogs.push_back(iocp::TestClient::connect(at));
        if (hogs.back().echo("hi") != "hi") throw std::runtime_error("hog " + std::to_string(i) + ": wrong echo");
    }
    // Push until no hog has taken a byte for 300 ms (or one reached 64 MiB): the socket
    // buffers absorb a few megabytes sent once, and the server's send would not be stuck.
    const std::string megabyte = make_payload(1u << 20, 5);
    std::vector<std::size_t> pushed(hogs.size(), 0);
    for (int idle_rounds = 0; idle_rounds < 3;) {
        std::size_t moved = 0;
        for (std::size_t i = 0; i < hogs.size(); ++i) {
            if (pushed[i] >= kLimit) continue;
            const std::size_t n = hogs[i].send_some(megabyte);
            pushed[i] += n;
            moved += n;
        }
        if (moved == 0) {
            ++idle_rounds;
            std::this_thread::sleep_for(milliseconds(100));
        } else {
            idle_rounds = 0;
        }
    }
    for (std::size_t i = 0; i < hogs.size(); ++i)
        if (pushed[i] >= kLimit) throw std::runtime_error("hog " + std::to_string(i) + " took 64 MiB and never stalled");
    return hogs;
}

EchoLoad::EchoLoad(const iocp::Endpoint& at, int clients, int threads)
    : clients_(clients), per_thread_(static_cast<std::size_t>(threads)) {
    const int per_thread = clients / threads;
    for (int t = 0; t < threads; ++t) {
        threads_.emplace_back([this, at, t, per_thread] {
            auto& mine = per_thread_[static_cast<std::size_t>(t)];
            try {
                for (int i = 0; i < per_thread; ++i) {
                    mine.push_back(iocp::TestClient::connect(at));
                    if (mine.back().echo("x") != "x") ADD_FAILURE() << "wrong echo, thread " << t;
                    ++connected_;
                }
                for (std::uint32_t n = 0; !done_; ++n) {
                    auto& c = mine[n % mine.size()];
                    const std::string m = make_payload(1 + n % 4000, static_cast<std::uint32_t>(t) * 1000000 + n);
                    if (c.echo(m, milliseconds(5000)) != m) ADD_FAILURE() << "wrong echo, thread " << t;
                    ++echoes_;
                }
            } catch (const std::exception& e) {
                // The server closing this connection under us is expected once it is
                // stopping, and only then.
                if (!stopping_) ADD_FAILURE() << "thread " << t << ", before the server stopped: " << e.what();
            }
        });
    }
}

bool EchoLoad::wait_until_running(std::uint64_t echoes) {
    return eventually([&] { return connected_ == clients_ && echoes_ >= echoes; }, std::chrono::seconds(60));
}

void EchoLoad::finish() {
    done_ = true;
    for (auto& t : threads_)
        if (t.joinable()) t.join();
}

#ifndef _WIN32
void expect_accept_to_pause_through_a_shortage(const iocp::Endpoint& at,
                                               const std::vector<iocp::TestClient*>& connected,
                                               const std::function<std::uint64_t()>& accept_failures,
                                               bool lower) {
    // One free descriptor: for the client's socket, none for the server's.
    DescriptorShortage shortage(1, lower);
    const auto shortage_began = std::chrono::steady_clock::now();
    auto late = iocp::TestClient::connect(at);
    late.send("late");
    std::this_thread::sleep_for(milliseconds(300));  // the server meets EMFILE, pauses, retries
    for (std::size_t i = 0; i < connected.size(); ++i)
        EXPECT_EQ("still", connected[i]->echo("still")) << "the shortage stopped service for client " << i;
    const std::uint64_t failures = accept_failures();
    const auto shortage_ms =
        std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - shortage_began).count();
    shortage.end();
    std::cout << "[ info     ] accepts failed during the " << shortage_ms << " ms shortage: " << failures << "\n";
    EXPECT_GE(failures, 1u) << "the server never ran out of descriptors: the test did not test";
    EXPECT_LE(failures, static_cast<std::uint64_t>(2 + shortage_ms / 100))
        << "the server retried a failing accept without pausing";
    EXPECT_EQ("late", late.recv_exact(4)) << "the client that waited through the shortage was not served";
}
#endif

int echo_labelled_rounds(const iocp::Endpoint& at, int clients, int rounds, std::size_t size) {
    std::atomic<int> right{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < clients; ++t) {
        threads.emplace_back([&, t] {
            try {
                auto c = iocp::TestClient::connect(at);
                for (int r = 0; r < rounds; ++r) {
                    const std::string payload = labelled_payload(size, static_cast<std::uint32_t>(t * 1000 + r),
                                                                 "client " + std::to_string(t) + " round " + std::to_string(r));
                    const auto same = same_bytes(payload, c.echo(payload, kPatientTimeout));
                    if (same) {
                        ++right;
                    } else {
                        ADD_FAILURE() << "client " << t << " round " << r << ": " << same.message();
                    }
                }
            } catch (const std::exception& e) {
                ADD_FAILURE() << "client " << t << ": " << e.what();
            }
        });
    }
    for (auto& th : threads) th.join();
    return right.load();
}

std::size_t push_without_reading(iocp::TestClient& c, std::size_t total) {
    const std::string chunk = make_payload(1u << 20, 11);
    std::size_t pushed = 0;
    try {
        for (int idle_rounds = 0; idle_rounds < 5 && pushed < total;) {
            const std::size_t n = c.send_some(std::string_view(chunk).substr(0, std::min(chunk.size(), total - pushed)));
            pushed += n;
            idle_rounds = n == 0 ? idle_rounds + 1 : 0;
            if (n == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    } catch (const iocp::SystemError&) {
        // The server dropped the client (the hard limit): what it took is the answer.
    }
    return pushed;
}

std::string turn_after_a_leaver(const iocp::Endpoint& at, const std::function<std::uint64_t()>& waits) {
    auto hog = iocp::TestClient::connect(at);
    push_without_reading(hog, 64u << 20);  // its echo, stuck in a send, holds the one buffer
    auto leaver = iocp::TestClient::connect(at);  // in line, behind the hog
#ifdef _WIN32
    leaver.send("x");  // a zero-byte receive completes on data: then it needs a buffer
#else
    // Nothing to say: a receive asks the ring for its buffer when it is issued, so even
    // a silent connection finds the ring empty and waits in line.
#endif
    if (!eventually([&] { return waits() >= 1; })) return "(the leaver never waited in line)";
    auto talker = iocp::TestClient::connect(at);
    talker.send("my turn");
    if (!eventually([&] { return waits() >= 2; })) return "(the talker never waited in line)";
    leaver.close();  // the first in line goes: on Linux a FIN, no bytes
    hog.reset();     // the buffer comes back
    return talker.recv_exact(7, kPatientTimeout);
}

}  // namespace testsupport
