// Chapter 11, Linux side: the buffer pool - a provided buffer ring per worker, from
// which the kernel itself takes a buffer when a receive has data for it, and to which
// a buffer returns once its bytes are echoed; and the connections waiting for one. Its
// twin is iocp/pool.cpp, where a zero-byte receive and a list of our own do this.
#include "internal.h"

#include <stdexcept>
#include <string>

#include <sys/mman.h>

namespace ch11 {

//! [buffer-ring]
// A ring of buffer addresses shared with the kernel, registered as buffer group 0 of
// w's ring. A receive submitted with IOSQE_BUFFER_SELECT names no buffer: when data
// arrives the kernel takes the next one from this ring, and the completion says which
// (IORING_CQE_F_BUFFER, the id in the high bits of its flags). A receive waiting on an
// idle connection holds nothing. liburing 2.3 (Debian 12) has no
// io_uring_setup_buf_ring, so the ring's memory is mapped here and registered.
void EchoServer::make_buffer_ring(Worker& w) {
    std::size_t count = 1;  // a power of two, as the kernel requires; at most 32768
    while (count < (limits_.pool_buffers + threads_ - 1) / threads_ && count < 32768) count *= 2;
    w.ring_bytes = count * sizeof(io_uring_buf);
    void* ring = ::mmap(nullptr, w.ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    // The buffers themselves: mapped too, so pages never used are never resident.
    void* memory = ::mmap(nullptr, count * limits_.buffer_size, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED || memory == MAP_FAILED) iocp::throw_last_error("mmap (buffer ring)");
    w.buffer_ring = static_cast<io_uring_buf_ring*>(ring);
    w.buffer_memory = static_cast<char*>(memory);
    w.ring_buffers = count;
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uintptr_t>(ring);
    reg.ring_entries = static_cast<unsigned>(count);
    reg.bgid = kBufferGroup;
    if (const int rc = io_uring_register_buf_ring(&w.ring, &reg, 0); rc < 0)
        throw iocp::SystemError("io_uring_register_buf_ring (Linux 5.19 or later needed)", -rc);
    io_uring_buf_ring_init(w.buffer_ring);
    w.buffers.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
        Buffer& b = w.buffers[i];
        b.data = w.buffer_memory + i * limits_.buffer_size;
        b.id = static_cast<std::uint16_t>(i);
        io_uring_buf_ring_add(w.buffer_ring, b.data, static_cast<unsigned>(limits_.buffer_size), b.id,
                              io_uring_buf_ring_mask(static_cast<unsigned>(count)), static_cast<int>(i));
    }
    io_uring_buf_ring_advance(w.buffer_ring, static_cast<int>(count));  // all the kernel's to pick from
    pool_size_ += count;
}
//! [buffer-ring]

//! [take-buffer]
// A receive's completion on w: the buffer the kernel picked, if it picked one.
EchoServer::Buffer* EchoServer::take_buffer(Worker& w, unsigned flags) {
    if ((flags & IORING_CQE_F_BUFFER) == 0) return nullptr;
    Buffer* b = &w.buffers[flags >> IORING_CQE_BUFFER_SHIFT];
    //! [double-lend]
    // The check a test relies on: the kernel handing out a buffer we have not given
    // back would have it written by a receive while its bytes wait to be echoed.
    if (b->lent) ++pool_errors_;
    //! [double-lend]
    b->lent = true;
    b->next = nullptr;
    b->length = b->sent = 0;
    ++w.buffers_out;
    count_lent(1);
    return b;
}
//! [take-buffer]

//! [give-back]
// On w: b's bytes are echoed (or its connection is gone): its address goes back on the
// ring for the kernel to pick again. Then one connection that found the ring empty
// receives again, and, with the buffer just returned, finds one.
void EchoServer::give_back(Worker& w, Buffer* b) {
    if (!b->lent) ++pool_errors_;  // given back twice
    b->lent = false;
    io_uring_buf_ring_add(w.buffer_ring, b->data, static_cast<unsigned>(limits_.buffer_size), b->id,
                          io_uring_buf_ring_mask(static_cast<unsigned>(w.ring_buffers)), 0);
    io_uring_buf_ring_advance(w.buffer_ring, 1);
    --w.buffers_out;
    count_lent(-1);
    serve_line(w);
}
//! [give-back]

//! [serve-line]
// A buffer lies in w's ring: the first connection in line that is still there receives
// again, and finds it. Called when a buffer comes back, and when a receive ends without
// taking the one that lies there: the kernel takes a buffer only for bytes, so a
// receive that the line had woken and that then ends in a FIN or an error leaves it in
// the ring, and without this call the rest of the line would wait for a buffer that
// nobody will give back (a test found them waiting, the buffer in the ring).
void EchoServer::serve_line(Worker& w) {
    if (w.buffers_out >= w.ring_buffers) return;  // none there: the next give_back serves it
    while (!w.waiting.empty() && !w.draining) {
        const std::uint64_t tag = w.waiting.front();
        w.waiting.erase(w.waiting.begin());
        IoContext* io = find(w, tag);  // gone, or closing since: its turn passes
        if (io == nullptr || io->connection->closing || !io->connection->waiting) continue;
        io->connection->waiting = false;
        post_recv(*io->connection);
        break;
    }
}
//! [serve-line]

// After the ring is closed (stop): the kernel holds no buffer any more.
void EchoServer::free_buffer_ring(Worker& w) {
    if (w.buffer_ring != nullptr) ::munmap(w.buffer_ring, w.ring_bytes);
    if (w.buffer_memory != nullptr) ::munmap(w.buffer_memory, w.ring_buffers * limits_.buffer_size);
    w.buffer_ring = nullptr;
    w.buffer_memory = nullptr;
}

// The lent count and its peak, for the tests and the page.
void EchoServer::count_lent(std::ptrdiff_t n) {
    const std::size_t now = n > 0 ? lent_.fetch_add(1) + 1 : lent_.fetch_sub(1) - 1;
    std::size_t seen = most_lent_.load();
    while (now > seen && !most_lent_.compare_exchange_weak(seen, now)) {
    }
}

}  // namespace ch11
