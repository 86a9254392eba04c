// bench/load/engine.cpp - the closed loop behind echo_load (see engine.h).
#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <utility>

#ifndef _WIN32
#include <netinet/tcp.h>
#include <sys/epoll.h>
#endif

namespace load {
namespace {

using Clock = std::chrono::steady_clock;

#ifdef MSG_NOSIGNAL
constexpr int kSendFlags = MSG_NOSIGNAL;  // a server that closed must not kill us with SIGPIPE
#else
constexpr int kSendFlags = 0;
#endif

// The pattern every message is cut from: 1 MiB of pseudo-random bytes (splitmix64),
// plus room for the longest message to start near its end.
constexpr std::size_t kPatternSpan = std::size_t{1} << 20;

std::string make_pattern(std::size_t longest) {
    std::string p(kPatternSpan + longest, '\0');
    std::uint64_t x = 0x9E3779B97F4A7C15ull;
    for (char& ch : p) {
        x += 0x9E3779B97F4A7C15ull;
        std::uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        ch = static_cast<char>((z ^ (z >> 31)) & 0xFF);
    }
    return p;
}

// Message k of connection `id` starts here: neighbours in time and in the connection
// table start far apart in the pattern.
std::size_t offset_of(std::uint64_t id, std::uint64_t k) {
    return static_cast<std::size_t>((id * 2654435761ull + k * 40503ull) % kPatternSpan);
}

struct Conn {
    iocp::socket_t socket = iocp::kInvalidSocket;
    std::uint64_t id = 0;
    std::uint64_t k = 0;  // the message in progress
    std::size_t offset = 0, sent = 0, received = 0;
    Clock::time_point started;
    bool writing = false;  // the poller watches for room to send
    bool open = true;
};

// One thread's poller over its connections: which are readable, which writable.
struct Ready {
    std::size_t index;
    bool readable, writable;
};

#ifdef _WIN32
class Poller {
public:
    void add(iocp::socket_t s, std::size_t index) {
        fds_.push_back(WSAPOLLFD{s, POLLRDNORM, 0});
        index_.push_back(index);
    }
    void watch_writes(iocp::socket_t s, std::size_t, bool on) {
        for (auto& f : fds_)
            if (f.fd == s) f.events = static_cast<SHORT>(POLLRDNORM | (on ? POLLWRNORM : 0));
    }
    void remove(iocp::socket_t s) {
        for (std::size_t i = 0; i < fds_.size(); ++i) {
            if (fds_[i].fd != s) continue;
            fds_[i] = fds_.back(), fds_.pop_back();
            index_[i] = index_.back(), index_.pop_back();
            return;
        }
    }
    void wait(int timeout_ms, std::vector<Ready>& out) {
        out.clear();
        if (fds_.empty()) return;
        if (WSAPoll(fds_.data(), static_cast<ULONG>(fds_.size()), timeout_ms) <= 0) return;
        for (std::size_t i = 0; i < fds_.size(); ++i) {
            const SHORT r = fds_[i].revents;
            if (r == 0) continue;
            // An error or a hang-up is reported as readable: the recv() that follows says which.
            out.push_back({index_[i], (r & (POLLRDNORM | POLLERR | POLLHUP | POLLNVAL)) != 0, (r & POLLWRNORM) != 0});
        }
    }

private:
    std::vector<WSAPOLLFD> fds_;
    std::vector<std::size_t> index_;
};
#else
class Poller {
public:
    Poller() : ep_(epoll_create1(EPOLL_CLOEXEC)) {
        if (ep_ < 0) throw iocp::SystemError("epoll_create1", errno);
    }
    ~Poller() { ::close(ep_); }
    Poller(const Poller&) = delete;
    Poller& operator=(const Poller&) = delete;
    void add(iocp::socket_t s, std::size_t index) { control(EPOLL_CTL_ADD, s, index, EPOLLIN); }
    void watch_writes(iocp::socket_t s, std::size_t index, bool on) {
        control(EPOLL_CTL_MOD, s, index, EPOLLIN | (on ? EPOLLOUT : 0u));
    }
    void remove(iocp::socket_t s) { epoll_ctl(ep_, EPOLL_CTL_DEL, s, nullptr); }
    void wait(int timeout_ms, std::vector<Ready>& out) {
        out.clear();
        const int n = epoll_wait(ep_, events_, kBatch, timeout_ms);
        for (int i = 0; i < n; ++i) {
            const std::uint32_t e = events_[i].events;
            out.push_back({static_cast<std::size_t>(events_[i].data.u64), (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0,
                           (e & EPOLLOUT) != 0});
        }
    }

private:
    void control(int op, iocp::socket_t s, std::size_t index, std::uint32_t events) {
        epoll_event e{};
        e.events = events;
        e.data.u64 = index;
        if (epoll_ctl(ep_, op, s, &e) != 0) throw iocp::SystemError("epoll_ctl", errno);
    }
    static constexpr int kBatch = 256;
    int ep_;
    epoll_event events_[kBatch];
};
#endif

// One thread's share of the run: its connections, its poller, its tally.
class Loop {
public:
    Loop(const Config& config, const std::string& pattern, const std::atomic<int>& phase,
         std::atomic<std::uint64_t>& completed, Tally& tally)
        : config_(config), pattern_(pattern), phase_(phase), completed_(completed), tally_(tally),
          scratch_(std::max<std::size_t>(config.size, 64 * 1024)) {}

    void add(iocp::socket_t s, std::uint64_t id) {
        Conn c{};
        c.socket = s;
        c.id = id;
        conns_.push_back(c);
    }

    void run() {
        for (std::size_t i = 0; i < conns_.size(); ++i) poller_.add(conns_[i].socket, i);
        active_ = conns_.size();
        last_echo_ = Clock::now();
        for (auto& c : conns_) begin(c);
        std::vector<Ready> ready;
        while (active_ > 0 && static_cast<Phase>(phase_.load()) != Phase::kStop) {
            poller_.wait(100, ready);
            for (const Ready& r : ready) {
                Conn& c = conns_[r.index];
                if (c.open && r.writable) push(c);
                if (c.open && r.readable) pull(c);
            }
            if (active_ > 0 && Clock::now() - last_echo_ > std::chrono::duration<double>(config_.stall_s)) {
                tally_.errors += active_;
                note("no echo for " + std::to_string(config_.stall_s) + " s on " + std::to_string(active_) + " connection(s)");
                return;
            }
        }
        // A timed run ends on the clock, so a connection the server never served would
        // go unnoticed (one client at a time, chapter 1): each must have had an echo.
        std::size_t starved = 0;
        for (const Conn& c : conns_)
            if (c.open && c.k == 0) ++starved;
        if (starved > 0) {
            tally_.errors += starved;
            note(std::to_string(starved) + " connection(s) got no echo in the whole run");
        }
    }

private:
    void begin(Conn& c) {
        c.offset = offset_of(c.id, c.k);
        c.sent = c.received = 0;
        c.started = Clock::now();
        push(c);
    }

    // Sends what the poller says fits; asks to hear about room when the socket is full.
    void push(Conn& c) {
        while (c.sent < config_.size) {
            const auto n = ::send(c.socket, pattern_.data() + c.offset + c.sent,
                                  static_cast<iocp::io_size_t>(config_.size - c.sent), kSendFlags);
            if (n > 0) {
                c.sent += static_cast<std::size_t>(n);
                continue;
            }
            const int err = iocp::last_socket_error();
            if (n < 0 && iocp::is_would_block(err)) break;
            return fail(c, "send failed: " + iocp::error_text(err));
        }
        const bool want = c.sent < config_.size;
        if (want != c.writing) {
            c.writing = want;
            poller_.watch_writes(c.socket, static_cast<std::size_t>(&c - conns_.data()), want);
        }
    }

    // Reads at most what is still owed for this message, and checks it against its slice.
    void pull(Conn& c) {
        const std::size_t want = std::min(config_.size - c.received, scratch_.size());
        const auto n = ::recv(c.socket, scratch_.data(), static_cast<iocp::io_size_t>(want), 0);
        if (n == 0) return fail(c, "the server closed the connection");
        if (n < 0) {
            const int err = iocp::last_socket_error();
            if (iocp::is_would_block(err)) return;
            return fail(c, "recv failed: " + iocp::error_text(err));
        }
        const auto got = static_cast<std::size_t>(n);
        if (c.received + got > c.sent ||
            std::memcmp(scratch_.data(), pattern_.data() + c.offset + c.received, got) != 0) {
            ++tally_.mismatches;
            note("echoed bytes differ from the message sent (connection " + std::to_string(c.id) + ")");
            return retire(c);
        }
        c.received += got;
        if (c.received == config_.size) complete(c);
    }

    void complete(Conn& c) {
        const auto now = Clock::now();
        last_echo_ = now;
        completed_.fetch_add(1, std::memory_order_relaxed);
        if (static_cast<Phase>(phase_.load()) == Phase::kMeasure) {
            ++tally_.messages;
            const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now - c.started).count();
            tally_.latencies_ns.push_back(static_cast<std::uint32_t>(std::min<long long>(ns, UINT32_MAX)));
        }
        ++c.k;
        if (config_.rounds != 0 && c.k == config_.rounds) return retire(c);
        begin(c);
    }

    void fail(Conn& c, const std::string& why) {
        ++tally_.errors;
        note(why);
        retire(c);
    }
    void retire(Conn& c) {
        c.open = false;
        poller_.remove(c.socket);
        --active_;
    }
    void note(const std::string& why) {
        if (tally_.first_error.empty()) tally_.first_error = why;
    }

    const Config& config_;
    const std::string& pattern_;
    const std::atomic<int>& phase_;
    std::atomic<std::uint64_t>& completed_;
    Tally& tally_;
    std::vector<Conn> conns_;
    Poller poller_;
    std::vector<char> scratch_;
    std::size_t active_ = 0;
    Clock::time_point last_echo_;
};

}  // namespace

void Tally::add(Tally&& other) {
    messages += other.messages;
    errors += other.errors;
    mismatches += other.mismatches;
    latencies_ns.insert(latencies_ns.end(), other.latencies_ns.begin(), other.latencies_ns.end());
    if (first_error.empty()) first_error = std::move(other.first_error);
}

Run::Run(Config config) : config_(std::move(config)), pattern_(make_pattern(config_.size)) {
    if (config_.threads == 0 || config_.clients == 0 || config_.size == 0)
        throw std::invalid_argument("clients, threads and size must be at least 1");
    config_.threads = std::min(config_.threads, config_.clients);
}

void Run::connect_all() {
    sockets_.reserve(config_.clients);
    for (std::size_t i = 0; i < config_.clients; ++i) {
        sockets_.push_back(iocp::connect_tcp(config_.server));
        iocp::set_nodelay(sockets_.back().get(), true);  // one small message at a time: no Nagle wait
        iocp::set_nonblocking(sockets_.back().get(), true);
    }
}

Tally Run::run(const std::function<void(double)>& every_second, const std::function<void(Phase)>& on_phase) {
    const bool timed = config_.duration_s > 0;
    const Phase first = timed && config_.warmup_s > 0 ? Phase::kWarmup : Phase::kMeasure;
    set_phase(first);
    if (on_phase) on_phase(first);
    std::vector<Tally> tallies(config_.threads);
    std::vector<std::thread> threads;
    running_ = static_cast<int>(config_.threads);
    const auto start = Clock::now();
    for (std::size_t t = 0; t < config_.threads; ++t) {
        threads.emplace_back([this, t, &tallies] {
            Loop loop(config_, pattern_, phase_, completed_, tallies[t]);
            for (std::size_t i = t; i < sockets_.size(); i += config_.threads) loop.add(sockets_[i].get(), i);
            try {
                loop.run();
            } catch (const std::exception& e) {
                ++tallies[t].errors;
                if (tallies[t].first_error.empty()) tallies[t].first_error = e.what();
            }
            --running_;
        });
    }
    double next_tick = 1;
    while (running_.load() > 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        if (timed && phase() == Phase::kWarmup && elapsed >= config_.warmup_s) {
            set_phase(Phase::kMeasure);
            if (on_phase) on_phase(Phase::kMeasure);
        }
        if (timed && phase() == Phase::kMeasure && elapsed >= config_.warmup_s + config_.duration_s) {
            set_phase(Phase::kStop);
            if (on_phase) on_phase(Phase::kStop);
        }
        if (elapsed >= next_tick) {
            if (every_second) every_second(elapsed);
            next_tick += 1;
        }
    }
    for (auto& th : threads) th.join();
    if (phase() != Phase::kStop) {  // a rounds run ends when its threads do
        set_phase(Phase::kStop);
        if (on_phase) on_phase(Phase::kStop);
    }
    Tally sum;
    for (auto& t : tallies) sum.add(std::move(t));
    std::sort(sum.latencies_ns.begin(), sum.latencies_ns.end());
    return sum;
}

bool is_loopback(const iocp::SocketAddress& address) {
    if (address.family() == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(address.get());
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (address.family() == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(address.get());
        const auto* b = a->sin6_addr.s6_addr;
        static const unsigned char one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
        return std::memcmp(b, one, 16) == 0 || (std::memcmp(b, mapped, 12) == 0 && b[12] == 127);
    }
    return false;
}

double quantile_us(const std::vector<std::uint32_t>& sorted, double q) {
    if (sorted.empty()) return 0;
    const auto i = static_cast<std::size_t>(q * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(i, sorted.size() - 1)] / 1000.0;
}

}  // namespace load
