/* epoll_echo - the leanest readiness echo server we could write: the benchmark's peer.
 *
 * One thread, one epoll set, level-triggered, non-blocking sockets. A readable socket
 * is read once into one shared 64 KiB buffer and written back at once; only when the
 * socket takes less than all of it does the rest get a buffer of its own, and the
 * connection stops reading until that is gone (EPOLLOUT). No framework, no allocation
 * per message: what a C programmer would write to beat every completion chapter.
 *
 *   epoll_echo [--port N] [--bind ADDR]     (defaults 6000 and 127.0.0.1; port 0 picks one)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    int fd;
    char *rest;      /* bytes the socket did not take yet, or NULL */
    size_t rest_len, rest_off;
};

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { (void)sig; stopping = 1; }

static int listen_on(const char *host, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "epoll_echo: bad address %s\n", host); return -1; }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, SOMAXCONN) != 0) { perror("epoll_echo: bind/listen"); return -1; }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    printf("listening on %s:%d\n", host, ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->rest);
    free(c);
}

static void watch(int ep, struct conn *c, unsigned events) {
    struct epoll_event e = {.events = events, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

/* Sends c's leftover bytes; returns -1 when the connection is gone. */
static int flush_rest(int ep, struct conn *c) {
    while (c->rest_off < c->rest_len) {
        ssize_t n = send(c->fd, c->rest + c->rest_off, c->rest_len - c->rest_off, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n <= 0) return -1;
        c->rest_off += (size_t)n;
    }
    free(c->rest);
    c->rest = NULL;
    watch(ep, c, EPOLLIN);
    return 0;
}

static int echo(int ep, struct conn *c, char *buf, size_t cap) {
    ssize_t n = recv(c->fd, buf, cap, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (n <= 0) return -1;
    ssize_t sent = send(c->fd, buf, (size_t)n, MSG_NOSIGNAL);
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    if (sent < 0) sent = 0;
    if (sent == n) return 0;
    c->rest_len = (size_t)(n - sent);
    c->rest_off = 0;
    c->rest = malloc(c->rest_len);
    if (c->rest == NULL) return -1;
    memcpy(c->rest, buf + sent, c->rest_len);
    watch(ep, c, EPOLLOUT); /* no more reading until the echo is out */
    return 0;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 6000;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port = atoi(argv[++i]);
        else if (strcmp(argv[i], "--bind") == 0 && i + 1 < argc) host = argv[++i];
        else { fprintf(stderr, "usage: epoll_echo [--port N] [--bind ADDR]\n"); return strcmp(argv[i], "--help") == 0 ? 0 : 2; }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int lfd = listen_on(host, port);
    if (lfd < 0) return 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le);
    static char buf[64 * 1024];
    struct epoll_event ev[256];
    while (!stopping) {
        int n = epoll_wait(ep, ev, 256, 200);
        for (int i = 0; i < n; ++i) {
            struct conn *c = ev[i].data.ptr;
            if (c == NULL) { /* the listener */
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) continue; /* EAGAIN, or EMFILE: the next wake-up tries again */
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c = calloc(1, sizeof *c);
                if (c == NULL) { close(fd); continue; }
                c->fd = fd;
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                continue;
            }
            int r = c->rest ? flush_rest(ep, c) : echo(ep, c, buf, sizeof buf);
            if (r < 0) drop(ep, c);
        }
    }
    close(ep);
    close(lfd);
    return 0;
}
