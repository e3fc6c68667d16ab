/* Shared by the net/ tests (test_net.c, test_net_heal.c): a test server,
 * this executable re-executed with --net-server (main must hand that to
 * server_main), and the client side that starts, quits and reaps it.
 * What the server answers is described in test_net.c's header.  Test
 * programs only: static data and functions, one copy per test file. */
#ifndef KVT_TESTS_SUPPORT_NET_FX_H
#define KVT_TESTS_SUPPORT_NET_FX_H

#include "net/netInt.h"

#include "common/alloc.h"
#include "common/le.h"
#include "common/log.h"
#include "common/time.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define REGION_LEN (8u << 20)
#define MAX_MSG (4u << 20)

#define TEST_FLAG_ZERO 0x100u

static inline uint8_t pat(uint64_t off) { return (uint8_t)(off * 131u + (off >> 9) * 7u + 11u); }

/* What fill_request puts at byte i (byte 0 is the opcode). */
static inline uint8_t req_byte(size_t i, unsigned seed) { return (uint8_t)(i * 7u + seed); }

/* The server's answer to N. */
typedef struct {
    uint32_t tally, tally_bad; /* T messages, and those with a wrong payload */
    uint32_t zeros;            /* empty TEST_FLAG_ZERO messages */
    uint32_t zero_inflight;    /* rendezvous receives listed when the last one came */
    uint32_t inflight;         /* rendezvous receives listed now */
    uint64_t rndv_bytes;       /* charged to the worker's budget now */
} srv_stats_t;

/* The server's answer to C: its worker's connection counts. */
typedef struct {
    uint64_t accepted, refused;
    uint64_t rebuilds; /* kvt_net_worker_rebuilds */
} srv_conns_t;

/* ------------------------------------------------------------------ server */

typedef struct {
    kvt_net_worker_t *w;
    kvt_net_mem_t *mem;
    uint8_t *region;
    bool quit;
    bool rebuild; /* W: after the reply left */
    bool squat;   /* L: its port taken while it listens again */
    bool unsquat; /* l: the port given back */
    srv_stats_t st;
} srv_t;

static inline uint32_t srv_rndv_listed(const srv_t *s)
{
    uint32_t n = 0;
    for (const net_rndv_t *r = s->w->rndv; r; r = r->next)
        n++;
    return n;
}

static inline void srv_tally(srv_t *s, const uint8_t *data, size_t len)
{
    s->st.tally++;
    for (size_t i = 1; i < len; i++) {
        if (data[i] != req_byte(i, 1)) {
            s->st.tally_bad++;
            return;
        }
    }
}

static inline void srv_stats_reply(srv_t *s, kvt_net_ep_t *ep, uint64_t req_id)
{
    s->st.inflight = srv_rndv_listed(s);
    s->st.rndv_bytes = s->w->rndv_bytes;
    (void)kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, &s->st, sizeof(s->st));
}

static inline void srv_conns_reply(srv_t *s, kvt_net_ep_t *ep, uint64_t req_id)
{
    srv_conns_t c = {.accepted = s->w->n_accepted, .refused = s->w->n_refused,
                     .rebuilds = kvt_net_worker_rebuilds(s->w)};
    (void)kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, &c, sizeof(c));
}

static inline void srv_rkey_reply(srv_t *s, kvt_net_ep_t *ep, uint64_t req_id)
{
    size_t rlen;
    const void *rkey = kvt_net_mem_rkey(s->mem, &rlen);
    uint8_t *buf = malloc(16 + rlen);
    uint64_t addr = (uint64_t)(uintptr_t)s->region, len = REGION_LEN;
    memcpy(buf, &addr, 8);
    memcpy(buf + 8, &len, 8);
    memcpy(buf + 16, rkey, rlen);
    (void)kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, buf, 16 + rlen);
    free(buf);
}

static inline void srv_on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                       size_t len, void *arg)
{
    srv_t *s = arg;
    if (len == 0 && (flags & TEST_FLAG_ZERO)) {
        s->st.zeros++;
        s->st.zero_inflight = srv_rndv_listed(s);
        return;
    }
    char op = len ? ((const char *)data)[0] : 'E';
    switch (op) {
    case 'T':
        srv_tally(s, data, len);
        return;
    case 'N':
        srv_stats_reply(s, ep, req_id);
        return;
    case 'C':
        srv_conns_reply(s, ep, req_id);
        return;
    case 'R':
        srv_rkey_reply(s, ep, req_id);
        return;
    case 'S':
        return;
    case 'K':
        kill(getpid(), SIGKILL);
        return;
    case 'D':
        usleep(400 * 1000);
        break;
    case 'P':
        (void)kvt_net_send(ep, 7, 0, "push", 4);
        break;
    case 'Q':
        s->quit = true;
        break;
    case 'W':
        s->rebuild = true;
        break;
    case 'L':
        s->squat = true;
        break;
    case 'l':
        s->unsquat = true;
        break;
    default:
        break;
    }
    (void)kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, data, len);
}

/* A dead client's endpoint is closed, which frees its place under the
 * connection cap. */
static inline void srv_on_conn(kvt_net_ep_t *ep, bool up, void *arg)
{
    if (!up)
        kvt_net_ep_close(ep);
}

/* A plain TCP socket listening on 127.0.0.1:port, or -1. */
static inline int squat_port(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 4) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static inline int server_main(int fd, size_t max_conns)
{
    srv_t s = {0};
    kvt_net_worker_t *w;
    kvt_net_listener_t *l;
    kvt_net_worker_params_t p = {.max_conns = max_conns, .on_msg = srv_on_msg,
                                 .on_conn = srv_on_conn, .arg = &s};
    if (kvt_net_worker_create(&p, &w) != KVT_OK || kvt_net_listen(w, "127.0.0.1:0", &l) != KVT_OK)
        return 2;
    s.w = w;
    s.region = malloc(REGION_LEN);
    for (uint64_t i = 0; i < REGION_LEN; i++)
        s.region[i] = pat(i);
    if (kvt_net_mem_register(w, s.region, REGION_LEN, &s.mem) != KVT_OK)
        return 3;
    uint16_t port = kvt_net_listener_port(l);
    if (write(fd, &port, sizeof(port)) != sizeof(port))
        return 4;
    close(fd);
    pid_t parent = getppid();
    double end = kvt_time_s() + 30; /* never outlive a crashed test for long */
    int squat_fd = -1;
    while (!s.quit && getppid() == parent && kvt_time_s() < end) {
        kvt_net_worker_wait(w, 100);
        if (s.squat) { /* as a rebuild would meet a port taken meanwhile */
            s.squat = false;
            kvt_net_listener_unbind(l);
            squat_fd = squat_port(port);
            kvt_net_listeners_rebind(w);
            if (squat_fd < 0 || !w->listen_down)
                return 6;
        }
        if (s.unsquat) {
            s.unsquat = false;
            close(squat_fd);
            squat_fd = -1;
        }
        if (s.rebuild) {
            for (int i = 0; i < 20; i++) /* let the W reply leave */
                kvt_net_worker_wait(w, 5);
            s.rebuild = false;
            if (kvt_net_worker_rebuild(w) != KVT_OK)
                return 5;
        }
    }
    for (int i = 0; i < 20; i++) /* let the quit reply leave */
        kvt_net_worker_wait(w, 5);
    kvt_net_mem_deregister(s.mem);
    kvt_net_listener_destroy(l);
    kvt_net_worker_destroy(w);
    free(s.region);
    return 0;
}

/* ------------------------------------------------------------------ client */

typedef struct {
    pid_t pid;
    char addr[32];
} server_t;

typedef struct {
    int up, down, pushes;
    kvt_net_ep_t *down_ep;
    bool close_on_down; /* what a server does with a dead client */
} client_events_t;

static client_events_t g_ev;

static inline void cli_on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                       size_t len, void *arg)
{
    if (req_id == 7 && len == 4 && memcmp(data, "push", 4) == 0)
        g_ev.pushes++;
}

static inline void cli_on_conn(kvt_net_ep_t *ep, bool up, void *arg)
{
    if (up) {
        g_ev.up++;
    } else {
        g_ev.down++;
        g_ev.down_ep = ep;
        if (g_ev.close_on_down)
            kvt_net_ep_close(ep);
    }
}

static inline kvt_net_worker_t *client_create(size_t max_msg)
{
    memset(&g_ev, 0, sizeof(g_ev));
    kvt_net_worker_params_t p = {.max_msg_bytes = max_msg, .on_msg = cli_on_msg,
                                 .on_conn = cli_on_conn};
    kvt_net_worker_t *w = NULL;
    assert_int_equal(kvt_net_worker_create(&p, &w), KVT_OK);
    return w;
}

/* max_conns 0: the default cap. */
static inline void server_start_capped(server_t *s, unsigned max_conns)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        close(fds[0]);
        char fd_arg[16], cap_arg[16];
        snprintf(fd_arg, sizeof(fd_arg), "%d", fds[1]);
        snprintf(cap_arg, sizeof(cap_arg), "%u", max_conns);
        execl("/proc/self/exe", "test_net", "--net-server", fd_arg, cap_arg, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 10000), 1);
    uint16_t port = 0;
    assert_int_equal(read(fds[0], &port, sizeof(port)), (ssize_t)sizeof(port));
    close(fds[0]);
    assert_true(port != 0);
    snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", port);
}

static inline void server_start(server_t *s) { server_start_capped(s, 0); }

/* Wait for the server to exit; returns its wait status (kills it at 5 s). */
static inline int server_reap(server_t *s)
{
    int status = 0;
    for (int i = 0; i < 500; i++) {
        if (waitpid(s->pid, &status, WNOHANG) == s->pid)
            return status;
        usleep(10 * 1000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &status, 0);
    fail_msg("server did not exit");
    return status;
}

static inline void server_quit(kvt_net_worker_t *w, server_t *s)
{
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s->addr, 3000, &ep), KVT_OK);
    void *r;
    size_t rl;
    assert_int_equal(kvt_net_request(ep, "Q", 1, 3000, &r, &rl), KVT_OK);
    kvt_free(r);
    kvt_net_ep_close(ep);
    int st = server_reap(s);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static inline void fill_request(uint8_t *buf, size_t len, char op, unsigned seed)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = req_byte(i, seed);
    buf[0] = (uint8_t)op;
}

static inline void echo_once(kvt_net_ep_t *ep, uint8_t *buf, size_t len, unsigned seed)
{
    fill_request(buf, len, 'E', seed);
    void *reply = NULL;
    size_t rl = 0;
    assert_int_equal(kvt_net_request(ep, buf, len, 5000, &reply, &rl), KVT_OK);
    assert_int_equal(rl, len);
    assert_memory_equal(reply, buf, len);
    kvt_free(reply);
}

/* Ask the server for its region's address and rkey. */
static inline kvt_net_rkey_t *fetch_rkey(kvt_net_ep_t *ep, uint64_t *addr_p)
{
    void *reply;
    size_t rl;
    assert_int_equal(kvt_net_request(ep, "R", 1, 3000, &reply, &rl), KVT_OK);
    assert_true(rl > 16);
    uint8_t *r = reply;
    uint64_t len;
    memcpy(addr_p, r, 8);
    memcpy(&len, r + 8, 8);
    assert_int_equal(len, REGION_LEN);
    kvt_net_rkey_t *rk = NULL;
    /* garbage and truncation are refused before UCX sees them */
    r[rl - 1] ^= 0x5a;
    assert_int_equal(kvt_net_rkey_unpack(ep, r + 16, rl - 16, &rk), KVT_ERR_INVALID);
    r[rl - 1] ^= 0x5a;
    assert_int_equal(kvt_net_rkey_unpack(ep, r + 16, rl - 17, &rk), KVT_ERR_INVALID);
    assert_int_equal(kvt_net_rkey_unpack(ep, r + 16, 3, &rk), KVT_ERR_INVALID);
    assert_int_equal(kvt_net_rkey_unpack(ep, r + 16, rl - 16, &rk), KVT_OK);
    kvt_free(reply);
    return rk;
}

#endif
