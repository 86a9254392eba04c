// Chapter 14, Linux side: the buffer pool - chapter 11's provided buffer ring per
// worker, from which the kernel takes a buffer when a receive has data for it. A buffer
// is lent only while its bytes are handed to on_data, then goes straight back; the
// connections that found the ring empty wait in line for one.
#include "internal.h"

#include <stdexcept>
#include <string>

#include <sys/mman.h>

namespace ch14 {

//! [buffer-ring]
// A ring of buffer addresses shared with the kernel, registered as buffer group 0 of
// w's ring. A receive submitted with IOSQE_BUFFER_SELECT names no buffer: when data
// arrives the kernel takes the next one from this ring, and the completion says which
// (IORING_CQE_F_BUFFER, the id in the high bits of its flags). A receive waiting on an
// idle connection holds nothing. liburing 2.3 (Debian 12) has no
// io_uring_setup_buf_ring, so the ring's memory is mapped here and registered.
void Engine::make_buffer_ring(Worker& w) {
    std::size_t count = 1;  // a power of two, as the kernel requires; at most 32768
    while (count < (options_.pool_buffers + threads_ - 1) / threads_ && count < 32768) count *= 2;
    w.ring_bytes = count * sizeof(io_uring_buf);
    void* ring = ::mmap(nullptr, w.ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    // The buffers themselves: mapped too, so pages never used are never resident.
    void* memory = ::mmap(nullptr, count * options_.buffer_size, PROT_READ | PROT_WRITE,
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
        b.data = w.buffer_memory + i * options_.buffer_size;
        b.id = static_cast<std::uint16_t>(i);
        io_uring_buf_ring_add(w.buffer_ring, b.data, static_cast<unsigned>(options_.buffer_size), b.id,
                              io_uring_buf_ring_mask(static_cast<unsigned>(count)), static_cast<int>(i));
    }
    io_uring_buf_ring_advance(w.buffer_ring, static_cast<int>(count));  // all the kernel's to pick from
}
//! [buffer-ring]

//! [take-buffer]
// A receive's completion on w: the buffer the kernel picked, if it picked one.
Engine::Buffer* Engine::take_buffer(Worker& w, unsigned flags) {
    if ((flags & IORING_CQE_F_BUFFER) == 0) return nullptr;
    Buffer* b = &w.buffers[flags >> IORING_CQE_BUFFER_SHIFT];
    //! [double-lend]
    // The check a test relies on: the kernel handing out a buffer we have not given
    // back would have it written by a receive while its bytes wait to be echoed.
    if (b->lent) ++pool_errors_;
    //! [double-lend]
    b->lent = true;
    ++w.buffers_out;
    ++lent_;
    return b;
}
//! [take-buffer]

//! [give-back]
// On w: b's bytes have been handed over (or its connection is gone): its address goes
// back on the ring for the kernel to pick again. Then one connection that found the ring empty
// receives again, and, with the buffer just returned, finds one.
void Engine::give_back(Worker& w, Buffer* b) {
    if (!b->lent) ++pool_errors_;  // given back twice
    b->lent = false;
    io_uring_buf_ring_add(w.buffer_ring, b->data, static_cast<unsigned>(options_.buffer_size), b->id,
                          io_uring_buf_ring_mask(static_cast<unsigned>(w.ring_buffers)), 0);
    io_uring_buf_ring_advance(w.buffer_ring, 1);
    --w.buffers_out;
    --lent_;
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
void Engine::serve_line(Worker& w) {
    if (w.buffers_out >= w.ring_buffers) return;  // none there: the next give_back serves it
    while (!w.waiting.empty() && !w.draining) {
        const std::uint64_t tag = w.waiting.front();
        w.waiting.erase(w.waiting.begin());
        IoContext* io = find(w, tag);  // gone, or closing since: its turn passes
        if (io == nullptr || io->connection->closing || !io->connection->waiting) continue;
        io->connection->waiting = false;
        if (rearm(*io->connection)) break;  // else the buffer is for the next in line
    }
}
//! [serve-line]

// After the ring is closed (stop): the kernel holds no buffer any more.
void Engine::free_buffer_ring(Worker& w) {
    if (w.buffer_ring != nullptr) ::munmap(w.buffer_ring, w.ring_bytes);
    if (w.buffer_memory != nullptr) ::munmap(w.buffer_memory, w.ring_buffers * options_.buffer_size);
    w.buffer_ring = nullptr;
    w.buffer_memory = nullptr;
}

}  // namespace ch14
