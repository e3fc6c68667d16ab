/* Tests for net sends (net/send.c) on 127.0.0.1: zero-copy sends of a
 * list of segments (kvt_net_sendv) and the per-endpoint bound on bytes
 * waiting to be sent.
 *
 * Each test starts its own server, as test_net.c does: this executable
 * re-executed with --send-server (fork + exec, so the server's UCX starts
 * clean), which listens on 127.0.0.1 port 0, tells the parent the port
 * through a pipe and answers one-byte opcodes: E reply with the message,
 * V send it back as a plain (non-reply) message with the same id (an
 * empty message too), T tally silently, N reply with the tally, Q reply
 * and quit.  A server that must stop reading is stopped with SIGSTOP
 * (waited for, so "stopped" is a fact, not a race) after the connection
 * is up; SIGCONT lets it go on.
 *
 * The client checks what arrives against the concatenated segments, counts
 * done callbacks (exactly one per accepted sendv, none before sendv
 * returned, none for a refused one, one at the latest in worker destroy),
 * and reads the endpoint's charges through netInt.h to show that a peer
 * that stops reading gets FULL after the bound, with memory held
 * constant, and that the charges drain once it reads again.  Waits are
 * bounded by iterations, never by timing thresholds. */
#include "net/netInt.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"

#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define KIB 1024u
#define MIB (1024u * 1024u)
#define WAIT_STEPS 2000 /* x 5 ms: the bound on every wait for the peer */

/* ------------------------------------------------------------------ server */

typedef struct {
    bool quit;
    uint32_t tally;
} srv_t;

static void srv_on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                       size_t len, void *arg)
{
    srv_t *s = arg;
    char op = len ? ((const char *)data)[0] : 'V';
    switch (op) {
    case 'T':
        s->tally++;
        return;
    case 'N':
        (void)kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, &s->tally, sizeof(s->tally));
        return;
    case 'V':
        (void)kvt_net_send(ep, req_id, 0, data, len);
        return;
    case 'Q':
        s->quit = true;
        break;
    default:
        break;
    }
    (void)kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, data, len);
}

static void srv_on_conn(kvt_net_ep_t *ep, bool up, void *arg)
{
    if (!up)
        kvt_net_ep_close(ep);
}

static int server_main(int fd)
{
    srv_t s = {0};
    kvt_net_worker_t *w;
    kvt_net_listener_t *l;
    kvt_net_worker_params_t p = {.on_msg = srv_on_msg, .on_conn = srv_on_conn, .arg = &s};
    if (kvt_net_worker_create(&p, &w) != KVT_OK || kvt_net_listen(w, "127.0.0.1:0", &l) != KVT_OK)
        return 2;
    uint16_t port = kvt_net_listener_port(l);
    if (write(fd, &port, sizeof(port)) != sizeof(port))
        return 4;
    close(fd);
    pid_t parent = getppid();
    double end = kvt_time_s() + 60; /* never outlive a crashed test for long */
    while (!s.quit && getppid() == parent && kvt_time_s() < end)
        kvt_net_worker_wait(w, 100);
    for (int i = 0; i < 20; i++) /* let the quit reply leave */
        kvt_net_worker_wait(w, 5);
    kvt_net_listener_destroy(l);
    kvt_net_worker_destroy(w);
    return 0;
}

/* ------------------------------------------------------------------ client */

typedef struct {
    pid_t pid;
    char addr[32];
} server_t;

/* Plain messages the client got (the server's V answers), and deaths. */
typedef struct {
    int msgs, down;
    uint64_t req_id;
    uint8_t *data; /* the last message, malloc'd */
    size_t len;
} client_events_t;

static client_events_t g_ev;

/* The running server, for the teardown: a failed test must not leave a
 * stopped server behind (it would never exit by itself). */
static pid_t g_live_pid;

/* One sendv's done callback: how often it ran, with what. */
typedef struct {
    int calls;
    kvt_status_t status;
} done_t;

static void on_done(kvt_status_t status, void *arg)
{
    done_t *d = arg;
    d->calls++;
    d->status = status;
}

static void cli_on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                       size_t len, void *arg)
{
    free(g_ev.data);
    g_ev.data = malloc(len ? len : 1);
    if (len)
        memcpy(g_ev.data, data, len);
    g_ev.len = len;
    g_ev.req_id = req_id;
    g_ev.msgs++;
}

static void cli_on_conn(kvt_net_ep_t *ep, bool up, void *arg)
{
    if (!up)
        g_ev.down++;
}

static kvt_net_worker_t *client_create(size_t max_msg)
{
    free(g_ev.data);
    memset(&g_ev, 0, sizeof(g_ev));
    kvt_net_worker_params_t p = {.max_msg_bytes = max_msg, .on_msg = cli_on_msg,
                                 .on_conn = cli_on_conn};
    kvt_net_worker_t *w = NULL;
    assert_int_equal(kvt_net_worker_create(&p, &w), KVT_OK);
    return w;
}

static void client_destroy(kvt_net_worker_t *w)
{
    kvt_net_worker_destroy(w);
    free(g_ev.data);
    memset(&g_ev, 0, sizeof(g_ev));
}

static void server_start(server_t *s)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        close(fds[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* kept across exec: dies with us, stopped or not */
        char fd_arg[16];
        snprintf(fd_arg, sizeof(fd_arg), "%d", fds[1]);
        execl("/proc/self/exe", "test_net_send", "--send-server", fd_arg, (char *)NULL);
        _exit(127);
    }
    g_live_pid = s->pid;
    close(fds[1]);
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 10000), 1);
    uint16_t port = 0;
    assert_int_equal(read(fds[0], &port, sizeof(port)), (ssize_t)sizeof(port));
    close(fds[0]);
    assert_true(port != 0);
    snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", port);
}

/* The server no longer runs (waited for: it is stopped when this returns). */
static void server_stop(server_t *s)
{
    int status = 0;
    assert_int_equal(kill(s->pid, SIGSTOP), 0);
    assert_int_equal(waitpid(s->pid, &status, WUNTRACED), s->pid);
    assert_true(WIFSTOPPED(status));
}

static void server_cont(server_t *s)
{
    int status = 0;
    assert_int_equal(kill(s->pid, SIGCONT), 0);
    assert_int_equal(waitpid(s->pid, &status, WCONTINUED), s->pid);
    assert_true(WIFCONTINUED(status));
}

static void server_kill(server_t *s)
{
    int status = 0;
    kill(s->pid, SIGKILL);
    assert_int_equal(waitpid(s->pid, &status, 0), s->pid);
    g_live_pid = 0;
    assert_true(WIFSIGNALED(status));
}

/* Ask the server to quit over ep, and wait for its clean exit. */
static void server_quit(kvt_net_ep_t *ep, server_t *s)
{
    void *r;
    size_t rl;
    assert_int_equal(kvt_net_request(ep, "Q", 1, 5000, &r, &rl), KVT_OK);
    kvt_free(r);
    int status = 0;
    for (int i = 0; i < 1000 && waitpid(s->pid, &status, WNOHANG) != s->pid; i++)
        usleep(10 * 1000);
    if (!WIFEXITED(status)) {
        server_kill(s);
        fail_msg("server did not exit");
    }
    g_live_pid = 0;
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Kills the server a failed test left running (stopped, perhaps). */
static int server_teardown(void **state)
{
    if (g_live_pid > 0) {
        kill(g_live_pid, SIGKILL);
        waitpid(g_live_pid, NULL, 0);
        g_live_pid = 0;
    }
    return 0;
}

/* Progress until *counter reaches want, at most WAIT_STEPS passes. */
static void wait_count(kvt_net_worker_t *w, const int *counter, int want)
{
    for (int i = 0; i < WAIT_STEPS && *counter < want; i++)
        kvt_net_worker_wait(w, 5);
}

/* A few passes of progress, for things that must not happen. */
static void spin(kvt_net_worker_t *w, int passes)
{
    for (int i = 0; i < passes; i++)
        kvt_net_worker_wait(w, 2);
}

static uint8_t seg_byte(size_t seg, size_t i) { return (uint8_t)(i * 13u + seg * 101u + 5u); }

/* --- kvt_net_sendv: what arrives, and its done callback --- */

#define MAX_SEGS 4

typedef struct {
    size_t n;
    size_t len[MAX_SEGS];
    bool null_empty; /* empty segments have data NULL */
} sendv_case_t;

/* Send c as segments (the first byte is the V opcode), check that the
 * server's answer is their concatenation and that done ran once, after
 * kvt_net_sendv returned, with KVT_OK. */
static void sendv_echo(kvt_net_worker_t *w, kvt_net_ep_t *ep, const sendv_case_t *c,
                       uint64_t req_id)
{
    kvt_net_iov_t iov[MAX_SEGS];
    size_t total = 0;
    for (size_t i = 0; i < c->n; i++) {
        uint8_t *p = c->len[i] || !c->null_empty ? malloc(c->len[i] + 1) : NULL;
        for (size_t j = 0; j < c->len[i]; j++)
            p[j] = seg_byte(i, j);
        iov[i] = (kvt_net_iov_t){p, c->len[i]};
        total += c->len[i];
    }
    if (total)
        ((uint8_t *)iov[0].data)[0] = 'V'; /* the first segment is not empty here */
    done_t d = {0};
    int msgs = g_ev.msgs;
    assert_int_equal(kvt_net_sendv(ep, req_id, 0, c->n ? iov : NULL, c->n, on_done, &d), KVT_OK);
    assert_int_equal(d.calls, 0); /* through the event queue, never inside the call */
    wait_count(w, &g_ev.msgs, msgs + 1);
    wait_count(w, &d.calls, 1);
    assert_int_equal(g_ev.msgs, msgs + 1);
    assert_int_equal(g_ev.req_id, req_id);
    assert_int_equal(g_ev.len, total);
    size_t off = 0;
    for (size_t i = 0; i < c->n; i++) {
        if (c->len[i])
            assert_memory_equal(g_ev.data + off, iov[i].data, c->len[i]);
        off += c->len[i];
    }
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, KVT_OK);
    spin(w, 10);
    assert_int_equal(d.calls, 1); /* exactly once */
    for (size_t i = 0; i < c->n; i++)
        free((void *)iov[i].data);
}

static void test_sendv_segments(void **state)
{
    static const sendv_case_t cases[] = {
        {3, {10, 100 * KIB, 1}, false},      /* crosses the rendezvous threshold */
        {3, {10, 20, 1}, false},             /* all small: eager */
        {3, {1, 64 * KIB - 2, 1}, false},    /* exactly the threshold */
        {3, {1, 64 * KIB - 3, 1}, false},    /* one below */
        {4, {7, 0, 3 * MIB, 5}, true},       /* an empty segment without data */
        {1, {100 * KIB}, false},             /* one segment, rendezvous */
        {1, {5000}, false},                  /* one segment, eager */
        {0, {0}, false},                     /* no segments: an empty message */
    };
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep), KVT_OK);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        sendv_echo(w, ep, &cases[i], 1000 + i);
    assert_int_equal(w->n_sends, 0);
    assert_int_equal(ep->send_bytes, 0);
    server_quit(ep, &s);
    kvt_net_ep_close(ep);
    assert_int_equal(g_ev.down, 0);
    client_destroy(w);
}

/* Several zero-copy sends in flight at once each get their own done. */
static void test_sendv_many_in_flight(void **state)
{
    enum { N = 16 };
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep), KVT_OK);
    uint8_t *buf = malloc(200 * KIB);
    memset(buf, 'T', 200 * KIB);
    done_t d[N] = {{0}};
    for (int i = 0; i < N; i++) {
        kvt_net_iov_t iov[2] = {{buf, 1}, {buf + 1, (size_t)(i % 2 ? 200 * KIB - 1 : 99)}};
        assert_int_equal(kvt_net_sendv(ep, 0, 0, iov, 2, on_done, &d[i]), KVT_OK);
    }
    for (int i = 0; i < N; i++) {
        wait_count(w, &d[i].calls, 1);
        assert_int_equal(d[i].calls, 1);
        assert_int_equal(d[i].status, KVT_OK);
    }
    spin(w, 10);
    for (int i = 0; i < N; i++)
        assert_int_equal(d[i].calls, 1);
    uint32_t tally = 0;
    for (int i = 0; i < WAIT_STEPS && tally < N; i++) {
        void *r;
        size_t rl;
        assert_int_equal(kvt_net_request(ep, "N", 1, 5000, &r, &rl), KVT_OK);
        assert_int_equal(rl, sizeof(tally));
        memcpy(&tally, r, sizeof(tally));
        kvt_free(r);
    }
    assert_int_equal(tally, N);
    free(buf);
    server_quit(ep, &s);
    kvt_net_ep_close(ep);
    client_destroy(w);
}

/* Refused calls return their error and never call done; the accepted
 * neighbour of each (the iov bound, max_msg exactly) goes through. */
static void test_sendv_invalid(void **state)
{
    enum { MAXM = 256 * KIB };
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(MAXM);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep), KVT_OK);
    done_t never = {0};
    uint8_t *buf = malloc(MAXM + 1);
    memset(buf, 'V', MAXM + 1);
    kvt_net_iov_t ok[2] = {{buf, 10}, {buf + 10, 10}};

    assert_int_equal(kvt_net_sendv(NULL, 1, 0, ok, 2, on_done, &never), KVT_ERR_INVALID);
    assert_int_equal(kvt_net_sendv(ep, 1, 0, ok, 2, NULL, &never), KVT_ERR_INVALID);
    assert_int_equal(kvt_net_sendv(ep, 1, 0, NULL, 2, on_done, &never), KVT_ERR_INVALID);
    kvt_net_iov_t hole[3] = {{buf, 10}, {NULL, 1}, {buf, 10}};
    assert_int_equal(kvt_net_sendv(ep, 1, 0, hole, 3, on_done, &never), KVT_ERR_INVALID);

    kvt_net_iov_t *many = malloc((KVT_NET_MAX_IOV + 1) * sizeof(*many));
    for (size_t i = 0; i <= KVT_NET_MAX_IOV; i++)
        many[i] = (kvt_net_iov_t){buf + i % 64, 1};
    assert_int_equal(kvt_net_sendv(ep, 1, 0, many, KVT_NET_MAX_IOV + 1, on_done, &never),
                     KVT_ERR_INVALID);

    kvt_net_iov_t big[2] = {{buf, MAXM / 2}, {buf + MAXM / 2, MAXM / 2 + 1}};
    assert_int_equal(kvt_net_sendv(ep, 1, 0, big, 2, on_done, &never), KVT_ERR_TOO_LARGE);
    /* Lengths whose sum wraps around (to 0, to max_msg) are too large, not
     * small: the segments are never read. */
    kvt_net_iov_t wrap[3] = {{buf, 1}, {buf, SIZE_MAX}, {buf, SIZE_MAX}};
    assert_int_equal(kvt_net_sendv(ep, 1, 0, wrap, 2, on_done, &never), KVT_ERR_TOO_LARGE);
    assert_int_equal(kvt_net_sendv(ep, 1, 0, wrap, 3, on_done, &never), KVT_ERR_TOO_LARGE);
    wrap[0].len = MAXM + 1;
    assert_int_equal(kvt_net_sendv(ep, 1, 0, wrap, 2, on_done, &never), KVT_ERR_TOO_LARGE);
    spin(w, 20);
    assert_int_equal(never.calls, 0);
    assert_int_equal(w->n_sends, 0);

    /* The neighbours: KVT_NET_MAX_IOV one-byte segments, and max_msg. */
    done_t d = {0};
    int msgs = g_ev.msgs;
    assert_int_equal(kvt_net_sendv(ep, 2, 0, many, KVT_NET_MAX_IOV, on_done, &d), KVT_OK);
    wait_count(w, &g_ev.msgs, msgs + 1);
    wait_count(w, &d.calls, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, KVT_OK);
    assert_int_equal(g_ev.len, KVT_NET_MAX_IOV);
    for (size_t i = 0; i < KVT_NET_MAX_IOV; i++)
        assert_int_equal(g_ev.data[i], buf[i % 64]);
    big[1].len = MAXM / 2;
    d = (done_t){0};
    msgs = g_ev.msgs;
    assert_int_equal(kvt_net_sendv(ep, 3, 0, big, 2, on_done, &d), KVT_OK);
    wait_count(w, &g_ev.msgs, msgs + 1);
    wait_count(w, &d.calls, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(g_ev.len, MAXM);
    assert_int_equal(g_ev.req_id, 3);

    server_quit(ep, &s);
    kvt_net_ep_close(ep);
    client_destroy(w);
    assert_int_equal(never.calls, 0);
    free(many);
    free(buf);
}

/* On a dead endpoint: CLOSED, for sendv and send alike, and no done. */
static void test_sendv_dead_ep(void **state)
{
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep), KVT_OK);
    server_kill(&s);
    wait_count(w, &g_ev.down, 1);
    assert_int_equal(g_ev.down, 1);
    assert_false(kvt_net_ep_alive(ep));
    done_t never = {0};
    uint8_t buf[16] = "V";
    kvt_net_iov_t iov[2] = {{buf, 8}, {buf + 8, 8}};
    assert_int_equal(kvt_net_sendv(ep, 1, 0, iov, 2, on_done, &never), KVT_ERR_CLOSED);
    assert_int_equal(kvt_net_sendv(ep, 1, 0, iov, 1, on_done, &never), KVT_ERR_CLOSED);
    assert_int_equal(kvt_net_send(ep, 1, 0, buf, sizeof(buf)), KVT_ERR_CLOSED);
    spin(w, 10);
    kvt_net_ep_close(ep);
    client_destroy(w);
    assert_int_equal(never.calls, 0);
}

/* A sendv in flight when its peer dies completes once, with an error. */
static void test_sendv_peer_dies(void **state)
{
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep), KVT_OK);
    server_stop(&s);
    uint8_t *buf = calloc(1, MIB);
    kvt_net_iov_t iov[3] = {{buf, 10}, {buf + 10, MIB - 11}, {buf + MIB - 1, 1}};
    done_t d = {0};
    assert_int_equal(kvt_net_sendv(ep, 1, 0, iov, 3, on_done, &d), KVT_OK);
    spin(w, 20);
    assert_int_equal(d.calls, 0); /* a rendezvous the peer never answered */
    server_kill(&s);
    wait_count(w, &d.calls, 1);
    assert_int_equal(d.calls, 1);
    assert_int_not_equal(d.status, KVT_OK);
    wait_count(w, &g_ev.down, 1);
    spin(w, 10);
    assert_int_equal(d.calls, 1);
    kvt_net_ep_close(ep);
    client_destroy(w);
    assert_int_equal(d.calls, 1);
    free(buf);
}

/* Worker destroy with zero-copy sends still in flight to a peer that does
 * not run: a rendezvous (waits for the peer) and an eager one whose done
 * is queued but not yet delivered.  Each done runs exactly once, inside
 * destroy; the endpoint is left open for destroy to close. */
static void test_sendv_destroy_in_flight(void **state)
{
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep), KVT_OK);
    server_stop(&s);
    uint8_t *buf = calloc(1, MIB);
    kvt_net_iov_t rndv[3] = {{buf, 10}, {buf + 10, 100 * KIB}, {buf + 10 + 100 * KIB, 1}};
    kvt_net_iov_t eager[3] = {{buf, 10}, {buf + 10, 100}, {buf + 110, 1}};
    done_t d_rndv = {0}, d_eager = {0};
    assert_int_equal(kvt_net_sendv(ep, 1, 0, rndv, 3, on_done, &d_rndv), KVT_OK);
    spin(w, 20);
    assert_int_equal(d_rndv.calls, 0);
    assert_int_equal(w->n_sends, 1);
    assert_int_equal(kvt_net_sendv(ep, 2, 0, eager, 3, on_done, &d_eager), KVT_OK);
    assert_int_equal(d_eager.calls, 0);
    kvt_net_worker_destroy(w);
    assert_int_equal(d_rndv.calls, 1);
    assert_int_not_equal(d_rndv.status, KVT_OK);
    assert_int_equal(d_eager.calls, 1);
    free(buf); /* the segments are ours again */
    server_kill(&s);
    free(g_ev.data);
    memset(&g_ev, 0, sizeof(g_ev));
}

/* --- the per-endpoint send bound --- */

/* A peer that stops reading: 1 MiB sends (rendezvous, each in flight until
 * the peer takes it) are admitted up to the bound, then refused with FULL
 * while nothing more is held; once the peer runs again they drain and the
 * endpoint takes sends again. */
static void test_send_bound(void **state)
{
    const size_t msg = MIB;
    const size_t cap = 4 * NET_DEFAULT_MAX_MSG > NET_SEND_EP_MIN_BYTES ? 4 * NET_DEFAULT_MAX_MSG
                                                                       : NET_SEND_EP_MIN_BYTES;
    const size_t want = cap / msg; /* 64 */
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    assert_int_equal(w->send_ep_cap, cap);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep), KVT_OK);
    server_stop(&s);
    uint8_t *buf = malloc(msg);
    memset(buf, 'T', msg);

    size_t sent = 0;
    kvt_status_t st = KVT_OK;
    for (; sent < 2 * want; sent++) {
        if ((st = kvt_net_send(ep, 0, 0, buf, msg)) != KVT_OK)
            break;
        kvt_net_worker_progress(w);
    }
    assert_int_equal(st, KVT_ERR_FULL);
    if (sent < want - 1 || sent > want + 2)
        fail_msg("FULL after %zu sends of %zu bytes, want about %zu", sent, msg, want);
    assert_true(ep->send_bytes <= cap);
    assert_true(ep->send_bytes + msg > cap); /* refused for the bound, not another reason */
    assert_int_equal(ep->send_bytes, sent * msg); /* none completed: the peer is stopped */
    assert_int_equal(w->n_sends, sent);

    /* Held memory stays where it is, whatever is tried. */
    done_t never = {0};
    kvt_net_iov_t iov[2] = {{buf, msg / 2}, {buf, msg / 2}};
    for (int i = 0; i < 200; i++) {
        assert_int_equal(kvt_net_send(ep, 0, 0, buf, msg), KVT_ERR_FULL);
        assert_int_equal(kvt_net_sendv(ep, 0, 0, iov, 2, on_done, &never), KVT_ERR_FULL);
        kvt_net_worker_progress(w);
    }
    assert_int_equal(ep->send_bytes, sent * msg);
    assert_int_equal(w->n_sends, sent);
    assert_true(kvt_net_ep_alive(ep));

    /* The peer reads again: everything drains (what is over the peer's
     * receive budget waits there, then is received). */
    server_cont(&s);
    for (int i = 0; i < 3 * WAIT_STEPS && w->n_sends; i++)
        kvt_net_worker_wait(w, 5);
    assert_int_equal(w->n_sends, 0);
    assert_int_equal(ep->send_bytes, 0);
    assert_true(kvt_net_ep_alive(ep));
    assert_int_equal(g_ev.down, 0);
    assert_int_equal(never.calls, 0);

    /* The peer took every one (what was over its receive budget waited),
     * and the endpoint carries sends again: a zero-copy one and a copied
     * one, both echoed back intact. */
    uint32_t tally = 0;
    for (int i = 0; i < WAIT_STEPS && tally < sent; i++) {
        void *r;
        size_t rl;
        assert_int_equal(kvt_net_request(ep, "N", 1, 5000, &r, &rl), KVT_OK);
        assert_int_equal(rl, sizeof(tally));
        memcpy(&tally, r, sizeof(tally));
        kvt_free(r);
    }
    assert_int_equal(tally, sent);
    for (size_t i = 0; i < msg; i++)
        buf[i] = seg_byte(0, i);
    buf[0] = 'V';
    done_t d = {0};
    int msgs = g_ev.msgs;
    assert_int_equal(kvt_net_sendv(ep, 77, 0, iov, 2, on_done, &d), KVT_OK);
    wait_count(w, &g_ev.msgs, msgs + 1);
    wait_count(w, &d.calls, 1);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.status, KVT_OK);
    assert_int_equal(g_ev.req_id, 77);
    assert_int_equal(g_ev.len, msg);
    assert_memory_equal(g_ev.data, buf, msg / 2);
    assert_memory_equal(g_ev.data + msg / 2, buf, msg / 2);
    assert_int_equal(kvt_net_send(ep, 78, 0, buf, msg), KVT_OK);
    wait_count(w, &g_ev.msgs, msgs + 2);
    assert_int_equal(g_ev.req_id, 78);
    assert_int_equal(g_ev.len, msg);
    assert_memory_equal(g_ev.data, buf, msg);
    server_quit(ep, &s);
    kvt_net_ep_close(ep);
    client_destroy(w);
    free(buf);
}

/* The bound is per endpoint: a second endpoint to the same stopped peer
 * is admitted on its own.  A stalled peer's sends are still held at worker
 * destroy, which frees them (ASan's leak check sees any left) and runs the
 * zero-copy one's done. */
static void test_send_bound_destroy(void **state)
{
    const size_t msg = MIB;
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep[2];
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep[0]), KVT_OK);
    assert_int_equal(kvt_net_connect(w, s.addr, 5000, &ep[1]), KVT_OK);
    server_stop(&s);
    uint8_t *buf = malloc(msg);
    memset(buf, 'T', msg);
    size_t sent = 0;
    while (sent < 200 && kvt_net_send(ep[0], 0, 0, buf, msg) == KVT_OK)
        sent++;
    assert_int_equal(sent, w->send_ep_cap / msg);
    assert_int_equal(kvt_net_send(ep[0], 0, 0, buf, msg), KVT_ERR_FULL);
    assert_int_equal(kvt_net_send(ep[1], 0, 0, buf, msg), KVT_OK);
    assert_int_equal(ep[1]->send_bytes, msg);
    assert_int_equal(w->n_sends, sent + 1);
    done_t d = {0};
    kvt_net_iov_t iov[2] = {{buf, 1}, {buf, msg - 1}};
    assert_int_equal(kvt_net_sendv(ep[1], 0, 0, iov, 2, on_done, &d), KVT_OK);
    kvt_net_worker_destroy(w);
    assert_int_equal(d.calls, 1);
    server_kill(&s);
    free(buf);
    free(g_ev.data);
    memset(&g_ev, 0, sizeof(g_ev));
}

int main(int argc, char **argv)
{
    kvt_log_level_t level;
    if (getenv("KVT_LOG_LEVEL") && kvt_log_level_parse(getenv("KVT_LOG_LEVEL"), &level) == KVT_OK)
        kvt_log_set_level(level);
    if (argc == 3 && strcmp(argv[1], "--send-server") == 0)
        return server_main(atoi(argv[2]));
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sendv_segments, server_teardown),
        cmocka_unit_test_teardown(test_sendv_many_in_flight, server_teardown),
        cmocka_unit_test_teardown(test_sendv_invalid, server_teardown),
        cmocka_unit_test_teardown(test_sendv_dead_ep, server_teardown),
        cmocka_unit_test_teardown(test_sendv_peer_dies, server_teardown),
        cmocka_unit_test_teardown(test_sendv_destroy_in_flight, server_teardown),
        cmocka_unit_test_teardown(test_send_bound, server_teardown),
        cmocka_unit_test_teardown(test_send_bound_destroy, server_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
