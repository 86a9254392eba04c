// asio_echo - the echo server a C++ programmer would write with Boost.Asio: the benchmark's peer.
//
// The textbook shape: one session per connection that reads what is there
// (async_read_some into its own 64 KiB buffer), writes it all back (async_write), and
// reads again; one io_context, run by --threads threads (default 1). Asio runs on
// epoll here; its own reactor, not a completion port.
//
//   asio_echo [--port N] [--bind ADDR] [--threads N]   (defaults 6000, 127.0.0.1, 1)
#include <array>
#include <utility>  // before Asio: Boost 1.74's awaitable.hpp uses std::exchange without it in C++20
#include <boost/asio.hpp>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

class Session : public std::enable_shared_from_this<Session> {
public:
    explicit Session(tcp::socket socket) : socket_(std::move(socket)) {}
    void start() { read(); }

private:
    void read() {
        socket_.async_read_some(asio::buffer(buffer_), [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
            if (!ec) self->write(n);
        });
    }
    void write(std::size_t n) {
        asio::async_write(socket_, asio::buffer(buffer_, n), [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
            if (!ec) self->read();
        });
    }
    tcp::socket socket_;
    std::array<char, 64 * 1024> buffer_;
};

void accept(tcp::acceptor& acceptor) {
    acceptor.async_accept([&acceptor](boost::system::error_code ec, tcp::socket socket) {
        if (!ec) {
            socket.set_option(tcp::no_delay(true), ec);
            std::make_shared<Session>(std::move(socket))->start();
        }
        // On an error (EMFILE among them) Asio calls back at once; a real server would
        // pause here. The benchmark never runs it out of descriptors.
        accept(acceptor);
    });
}

}  // namespace

int main(int argc, char** argv) {
    std::string host = "127.0.0.1";
    unsigned short port = 6000;
    int threads = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--port" && i + 1 < argc) port = static_cast<unsigned short>(std::atoi(argv[++i]));
        else if (a == "--bind" && i + 1 < argc) host = argv[++i];
        else if (a == "--threads" && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
        else {
            std::cerr << "usage: asio_echo [--port N] [--bind ADDR] [--threads N]\n";
            return a == "--help" ? 0 : 2;
        }
    }
    try {
        asio::io_context io(threads);
        tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address(host), port));
        std::cout << "listening on " << host << ":" << acceptor.local_endpoint().port() << std::endl;
        asio::signal_set signals(io, SIGINT, SIGTERM);
        signals.async_wait([&io](boost::system::error_code, int) { io.stop(); });
        accept(acceptor);
        std::vector<std::thread> pool;
        for (int i = 1; i < threads; ++i) pool.emplace_back([&io] { io.run(); });
        io.run();
        for (auto& t : pool) t.join();
    } catch (const std::exception& e) {
        std::cerr << "asio_echo: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
