/* Tests for net/http (the libmicrohttpd server) and net/http_client, on
 * 127.0.0.1 only.
 *
 * A real server on 127.0.0.1:0 with test_handler (routes below), driven by
 * the client: echo of method/path/headers/body, a 404 from the handler, a
 * body over the cap (413, declared or chunked) after which the server still
 * serves, a handler that does not answer (500), SSE streams received in
 * order with [DONE], clients that hang up mid-stream (done_fn once, with
 * client_gone), 50 concurrent clients, malformed bytes on a raw socket, and
 * stop with idle keep-alive connections and a stalled stream.  The client
 * alone is checked against a canned raw-socket server (chunked and
 * until-close bodies, a bad status line, caps, timeouts, refused
 * connects) and its SSE parser against split input.  An alarm guards every
 * test, so a hang fails instead of stalling ctest. */
#include "net/http.h"
#include "net/http_client.h"

#include "common/log.h"
#include "common/time.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#define TIMEOUT_MS 5000
#define SSE_EVENTS 40

/* ---------------------------------------------------------------- server */

typedef struct {
    atomic_int done_calls;   /* done_fn calls */
    atomic_int gone_calls;   /* ... with client_gone */
    atomic_int requests;
} test_state_t;

static test_state_t g_state;

typedef struct {
    int i, n;          /* events sent / to send (n < 0: forever) */
    int calls;
    bool silent;       /* return 0 forever (never writes) */
    bool done;
} sse_src_t;

static long sse_next(void *arg, char *buf, size_t cap)
{
    sse_src_t *s = arg;
    if (s->silent)
        return 0;
    if (s->done)
        return KVT_HTTP_STREAM_END;
    if (++s->calls % 3 == 0)
        return 0; /* exercise "call again later" */
    if (s->n >= 0 && s->i == s->n) {
        s->done = true;
        return snprintf(buf, cap, "data: [DONE]\n\n");
    }
    if (s->n < 0)
        usleep(2000);
    return snprintf(buf, cap, ": comment\r\ndata: {\"n\":%d}\r\n\r\n", s->i++);
}

static void sse_done(void *arg, bool client_gone)
{
    atomic_fetch_add(&g_state.done_calls, 1);
    if (client_gone)
        atomic_fetch_add(&g_state.gone_calls, 1);
    free(arg);
}

static void start_sse(kvt_http_req_t *req, int n, bool silent)
{
    sse_src_t *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->n = n;
    s->silent = silent;
    assert_int_equal(kvt_http_respond_stream(req, 200, "text/event-stream", sse_next, sse_done, s),
                     KVT_OK);
    /* a second answer is refused */
    assert_int_equal(kvt_http_respond(req, 200, NULL, "x", 1), KVT_ERR_INVALID);
}

static void echo(kvt_http_req_t *req)
{
    size_t len;
    const char *body = kvt_http_req_body(req, &len);
    const char *auth = kvt_http_req_header(req, "authorization");
    char *out = malloc(len + 512);
    assert_non_null(out);
    int n = snprintf(out, 512, "%s %s auth=%s len=%zu body=", kvt_http_req_method(req),
                     kvt_http_req_path(req), auth ? auth : "-", len);
    memcpy(out + n, body, len);
    assert_int_equal(kvt_http_add_header(req, "X-Echo", "yes"), KVT_OK);
    assert_int_equal(kvt_http_add_header(req, "X-Bad", "a\r\nb"), KVT_ERR_INVALID);
    assert_int_equal(kvt_http_respond(req, 200, "text/plain", out, (size_t)n + len), KVT_OK);
    free(out);
}

static void test_handler(kvt_http_req_t *req, void *arg)
{
    const char *path = kvt_http_req_path(req);
    atomic_fetch_add(&g_state.requests, 1);
    if (strcmp(path, "/noanswer") == 0)
        return;
    if (strcmp(path, "/sse") == 0)
        return start_sse(req, SSE_EVENTS, false);
    if (strcmp(path, "/sse-forever") == 0)
        return start_sse(req, -1, false);
    if (strcmp(path, "/sse-silent") == 0)
        return start_sse(req, -1, true);
    if (strcmp(path, "/slow") == 0)
        usleep(20000);
    if (strncmp(path, "/echo", 5) == 0 || strcmp(path, "/slow") == 0)
        return echo(req);
    static const char nf[] = "{\"error\":{\"message\":\"not found\"}}";
    kvt_http_respond(req, 404, "application/json", nf, sizeof(nf) - 1);
}

static kvt_http_server_t *server_start(size_t max_body, char *addr, size_t cap)
{
    memset(&g_state, 0, sizeof(g_state));
    kvt_http_params_t p = {.listen = "127.0.0.1:0", .handler = test_handler, .max_body = max_body};
    kvt_http_server_t *srv = NULL;
    assert_int_equal(kvt_http_start(&p, &srv), KVT_OK);
    assert_true(kvt_http_port(srv) != 0);
    snprintf(addr, cap, "127.0.0.1:%u", kvt_http_port(srv));
    return srv;
}

static int setup(void **state)
{
    alarm(60);
    return 0;
}

static int teardown(void **state)
{
    alarm(0);
    return 0;
}

/* Wait up to ms for *v to reach want. */
static bool wait_for(atomic_int *v, int want, int ms)
{
    for (int i = 0; i < ms && atomic_load(v) < want; i++)
        usleep(1000);
    return atomic_load(v) >= want;
}

static int raw_connect(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

/* Read what the server sends until close or timeout (at most cap - 1). */
static size_t raw_read(int fd, char *buf, size_t cap, int timeout_ms)
{
    size_t n = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (n + 1 < cap && poll(&p, 1, timeout_ms) == 1) {
        ssize_t k = recv(fd, buf + n, cap - 1 - n, 0);
        if (k <= 0)
            break;
        n += (size_t)k;
        if (memmem(buf, n, "\r\n\r\n", 4) && timeout_ms > 100)
            timeout_ms = 100; /* the head is in: a body follows at once or not at all */
    }
    buf[n] = '\0';
    return n;
}

/* ------------------------------------------------------------ requests */

static void test_echo_get_post(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(0, addr, sizeof(addr));
    kvt_http_reply_t r;
    assert_int_equal(kvt_http_request(addr, "GET", "/echo/a?x=1", NULL, NULL, 0, TIMEOUT_MS,
                                      1 << 20, &r), KVT_OK);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "GET /echo/a auth=- len=0 body=");
    kvt_http_reply_cleanup(&r);

    const char *hdrs[] = {"Authorization: Bearer sekret", "X-Other: 1", NULL};
    const char body[] = "{\"prompt\":\"hi\"}";
    assert_int_equal(kvt_http_request(addr, "POST", "/echo", hdrs, body, strlen(body), TIMEOUT_MS,
                                      1 << 20, &r), KVT_OK);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "POST /echo auth=Bearer sekret len=15 body={\"prompt\":\"hi\"}");
    kvt_http_reply_cleanup(&r);

    /* a body on GET is delivered too */
    assert_int_equal(kvt_http_request(addr, "GET", "/echo", NULL, "abc", 3, TIMEOUT_MS, 1 << 20,
                                      &r), KVT_OK);
    assert_string_equal(r.body, "GET /echo auth=- len=3 body=abc");
    kvt_http_reply_cleanup(&r);

    /* the reply cap is enforced */
    assert_int_equal(kvt_http_request(addr, "GET", "/echo", NULL, NULL, 0, TIMEOUT_MS, 10, &r),
                     KVT_ERR_TOO_LARGE);
    /* headers with CR/LF are refused before anything is sent */
    const char *bad[] = {"X: a\r\nInjected: b", NULL};
    assert_int_equal(kvt_http_request(addr, "GET", "/echo", bad, NULL, 0, TIMEOUT_MS, 100, &r),
                     KVT_ERR_INVALID);
    kvt_http_stop(srv);
}

static void test_not_found_and_no_answer(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(0, addr, sizeof(addr));
    kvt_http_reply_t r;
    assert_int_equal(kvt_http_request(addr, "GET", "/missing", NULL, NULL, 0, TIMEOUT_MS, 4096,
                                      &r), KVT_OK);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "not found"));
    kvt_http_reply_cleanup(&r);
    assert_int_equal(kvt_http_request(addr, "POST", "/noanswer", NULL, "x", 1, TIMEOUT_MS, 4096,
                                      &r), KVT_OK);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(r.body, "\"type\":\"server_error\""));
    kvt_http_reply_cleanup(&r);
    kvt_http_stop(srv);
}

static void expect_alive(const char *addr)
{
    kvt_http_reply_t r;
    assert_int_equal(kvt_http_request(addr, "POST", "/echo", NULL, "ok", 2, TIMEOUT_MS, 4096, &r),
                     KVT_OK);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "body=ok"));
    kvt_http_reply_cleanup(&r);
}

static void test_body_cap(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(1024, addr, sizeof(addr));
    kvt_http_reply_t r;
    char *big = malloc(4 << 20);
    assert_non_null(big);
    memset(big, 'a', 4 << 20);
    /* exactly the cap passes */
    assert_int_equal(kvt_http_request(addr, "POST", "/echo", NULL, big, 1024, TIMEOUT_MS, 1 << 20,
                                      &r), KVT_OK);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, strlen("POST /echo auth=- len=1024 body=") + 1024);
    kvt_http_reply_cleanup(&r);
    /* one byte over, and 4 MiB over: 413 with a JSON error */
    size_t sizes[] = {1025, 4 << 20};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(kvt_http_request(addr, "POST", "/echo", NULL, big, sizes[i], TIMEOUT_MS,
                                          4096, &r), KVT_OK);
        assert_int_equal(r.status, 413);
        assert_non_null(strstr(r.body, "\"error\""));
        assert_non_null(strstr(r.body, "invalid_request_error"));
        kvt_http_reply_cleanup(&r);
        expect_alive(addr);
    }
    free(big);

    /* a chunked body without a declared length crosses the cap mid-way */
    int fd = raw_connect(addr);
    char req[4096];
    int n = snprintf(req, sizeof(req), "POST /echo HTTP/1.1\r\nHost: x\r\n"
                                       "Transfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++)
        n += snprintf(req + n, sizeof(req) - (size_t)n, "200\r\n%0512d\r\n", 0);
    n += snprintf(req + n, sizeof(req) - (size_t)n, "0\r\n\r\n");
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    char buf[8192];
    raw_read(fd, buf, sizeof(buf), 3000);
    assert_memory_equal(buf, "HTTP/1.1 413", 12);
    assert_non_null(strstr(buf, "body_too_large"));
    close(fd);
    expect_alive(addr);
    assert_int_equal(atomic_load(&g_state.requests), 4); /* the handler never saw a 413 */
    kvt_http_stop(srv);
}

/* ----------------------------------------------------------------- SSE */

typedef struct {
    int events;
    int next;       /* expected n */
    bool done, order_ok;
    int stop_after; /* > 0: ask to stop after this many events */
} sse_rx_t;

static int on_event(const char *data, size_t len, void *arg)
{
    sse_rx_t *rx = arg;
    assert_int_equal(strlen(data), len);
    if (strcmp(data, "[DONE]") == 0) {
        rx->done = true;
        return 0;
    }
    int n = -1;
    if (sscanf(data, "{\"n\":%d}", &n) != 1 || n < rx->next)
        rx->order_ok = false;
    rx->next = n + 1;
    rx->events++;
    return rx->stop_after > 0 && rx->events >= rx->stop_after;
}

static void test_sse_stream(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(0, addr, sizeof(addr));
    for (int round = 0; round < 3; round++) {
        sse_rx_t rx = {.order_ok = true};
        kvt_http_reply_t r;
        assert_int_equal(kvt_http_request_sse(addr, "/sse", NULL, "{}", 2, TIMEOUT_MS, on_event,
                                              &rx, &r), KVT_OK);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body_len, 0);
        kvt_http_reply_cleanup(&r);
        assert_int_equal(rx.events, SSE_EVENTS);
        assert_true(rx.order_ok);
        assert_true(rx.done);
        assert_true(wait_for(&g_state.done_calls, round + 1, 2000));
        assert_int_equal(atomic_load(&g_state.gone_calls), 0);
    }
    /* a non-2xx reply is not parsed as events: its body comes back */
    sse_rx_t rx = {.order_ok = true};
    kvt_http_reply_t r;
    assert_int_equal(kvt_http_request_sse(addr, "/missing", NULL, "{}", 2, TIMEOUT_MS, on_event,
                                          &rx, &r), KVT_OK);
    assert_int_equal(r.status, 404);
    assert_int_equal(rx.events, 0);
    assert_non_null(strstr(r.body, "not found"));
    kvt_http_reply_cleanup(&r);
    kvt_http_stop(srv);
}

static void test_sse_client_gone(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(0, addr, sizeof(addr));
    /* the client stops reading after 3 events of an endless stream */
    sse_rx_t rx = {.order_ok = true, .stop_after = 3};
    kvt_http_reply_t r;
    assert_int_equal(kvt_http_request_sse(addr, "/sse-forever", NULL, "{}", 2, TIMEOUT_MS,
                                          on_event, &rx, &r), KVT_OK);
    kvt_http_reply_cleanup(&r);
    assert_int_equal(rx.events, 3);
    assert_true(wait_for(&g_state.gone_calls, 1, 5000));
    /* a stream that never writes notices the hang-up too */
    int fd = raw_connect(addr);
    const char req[] = "POST /sse-silent HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(req) - 1);
    char buf[4096];
    raw_read(fd, buf, sizeof(buf), 2000);
    assert_memory_equal(buf, "HTTP/1.1 200", 12);
    assert_non_null(strstr(buf, "no-cache"));
    close(fd);
    assert_true(wait_for(&g_state.gone_calls, 2, 5000));
    usleep(100000);
    assert_int_equal(atomic_load(&g_state.done_calls), 2); /* once each */
    expect_alive(addr);
    kvt_http_stop(srv);
    assert_int_equal(atomic_load(&g_state.done_calls), 2);
}

/* ----------------------------------------------------------- concurrency */

typedef struct {
    const char *addr;
    int id;
    int ok;
} client_arg_t;

static void *client_thread(void *p)
{
    client_arg_t *a = p;
    for (int i = 0; i < 4; i++) {
        char body[64], want[128];
        int n = snprintf(body, sizeof(body), "client-%d-%d", a->id, i);
        snprintf(want, sizeof(want), "POST /slow auth=- len=%d body=%s", n, body);
        kvt_http_reply_t r;
        if (kvt_http_request(a->addr, "POST", "/slow", NULL, body, (size_t)n, TIMEOUT_MS, 4096,
                             &r) != KVT_OK)
            continue;
        if (r.status == 200 && strcmp(r.body, want) == 0)
            a->ok++;
        kvt_http_reply_cleanup(&r);
    }
    return NULL;
}

static void test_concurrent_clients(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(0, addr, sizeof(addr));
    enum { N = 50 };
    pthread_t th[N];
    client_arg_t args[N];
    uint64_t t0 = kvt_time_ns();
    for (int i = 0; i < N; i++) {
        args[i] = (client_arg_t){.addr = addr, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, client_thread, &args[i]), 0);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
    }
    double s = (double)(kvt_time_ns() - t0) * 1e-9;
    assert_int_equal(ok, N * 4);
    /* 200 requests of 20 ms each: serial would take 4 s */
    assert_true(s < 3.0);
    kvt_http_stop(srv);
}

/* ------------------------------------------------------------ robustness */

static void test_malformed_input(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(0, addr, sizeof(addr));
    static char huge[100000];
    memset(huge, 'h', sizeof(huge));
    memcpy(huge, "GET / HTTP/1.1\r\nX-Long: ", 24);
    memcpy(huge + sizeof(huge) - 4, "\r\n\r\n", 4);
    const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {"GARBAGE\r\n\r\n", 11},
        {"GET / HTTP/9.9\r\n\r\n", 18},
        {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 52},
        {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 70},
        {"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n", 64},
        {"\x00\x01\x02\xff\xfe\r\n\r\n", 9},
        {"GET /missing HTTP/1.1\r\nBad Header Line\r\n\r\n", 42},
        {huge, sizeof(huge)},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int fd = raw_connect(addr);
        send(fd, cases[i].bytes, cases[i].len, MSG_NOSIGNAL);
        shutdown(fd, SHUT_WR);
        char buf[4096];
        size_t n = raw_read(fd, buf, sizeof(buf), 2000);
        /* either a 4xx/5xx answer or a plain close; never a 2xx */
        if (n > 0) {
            assert_memory_equal(buf, "HTTP/1.", 7);
            assert_true(buf[9] == '4' || buf[9] == '5');
        }
        close(fd);
        expect_alive(addr);
    }
    assert_true(atomic_load(&g_state.requests) >= (int)(sizeof(cases) / sizeof(cases[0])));
    kvt_http_stop(srv);
}

static void test_stop_with_open_connections(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(0, addr, sizeof(addr));
    /* an idle keep-alive connection after one request */
    int ka = raw_connect(addr);
    const char req[] = "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(ka, req, sizeof(req) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(req) - 1);
    char buf[4096];
    raw_read(ka, buf, sizeof(buf), 2000);
    assert_memory_equal(buf, "HTTP/1.1 200", 12);
    /* a connection that never sent anything, and a stalled stream */
    int idle = raw_connect(addr);
    int st = raw_connect(addr);
    const char sreq[] = "POST /sse-silent HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(send(st, sreq, sizeof(sreq) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(sreq) - 1);
    raw_read(st, buf, sizeof(buf), 2000);
    assert_memory_equal(buf, "HTTP/1.1 200", 12);
    uint64_t t0 = kvt_time_ns();
    kvt_http_stop(srv);
    assert_true((double)(kvt_time_ns() - t0) * 1e-9 < 3.0);
    assert_int_equal(atomic_load(&g_state.done_calls), 1);
    assert_int_equal(atomic_load(&g_state.gone_calls), 1);
    close(ka);
    close(idle);
    close(st);
}

static void test_start_errors(void **state)
{
    char addr[64];
    kvt_http_server_t *srv = server_start(0, addr, sizeof(addr));
    kvt_http_server_t *other = NULL;
    kvt_http_params_t p = {.listen = addr, .handler = test_handler};
    assert_int_equal(kvt_http_start(&p, &other), KVT_ERR_IO); /* port taken */
    assert_null(other);
    p.listen = "127.0.0.1";
    assert_int_equal(kvt_http_start(&p, &other), KVT_ERR_INVALID);
    p.listen = "127.0.0.1:70000";
    assert_int_equal(kvt_http_start(&p, &other), KVT_ERR_INVALID);
    p.listen = "127.0.0.1:0";
    p.handler = NULL;
    assert_int_equal(kvt_http_start(&p, &other), KVT_ERR_INVALID);
    kvt_http_stop(srv);
    kvt_http_stop(NULL);
    /* the port is free now: connecting is refused */
    kvt_http_reply_t r;
    assert_int_equal(kvt_http_request(addr, "GET", "/", NULL, NULL, 0, TIMEOUT_MS, 100, &r),
                     KVT_ERR_IO);
}

/* -------------------------------------------------- client vs canned replies */

typedef struct {
    int lfd;
    const char *reply; /* NULL: accept, read, never answer */
    size_t reply_len;
    uint16_t port;
} canned_t;

static void *canned_thread(void *p)
{
    canned_t *c = p;
    int fd = accept(c->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    char buf[4096];
    ssize_t k = recv(fd, buf, sizeof(buf), 0); /* the request (small) */
    (void)k;
    if (c->reply) {
        for (size_t i = 0; i < c->reply_len; i++) { /* byte by byte: splits everything */
            if (send(fd, c->reply + i, 1, MSG_NOSIGNAL) != 1)
                break;
        }
    } else {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        poll(&pf, 1, 3000); /* until the client gives up */
    }
    close(fd);
    return NULL;
}

static void canned_start(canned_t *c, pthread_t *th, const char *reply)
{
    c->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    assert_int_equal(bind(c->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(c->lfd, 4), 0);
    socklen_t sl = sizeof(sin);
    getsockname(c->lfd, (struct sockaddr *)&sin, &sl);
    c->port = ntohs(sin.sin_port);
    c->reply = reply;
    c->reply_len = reply ? strlen(reply) : 0;
    assert_int_equal(pthread_create(th, NULL, canned_thread, c), 0);
}

static kvt_status_t canned_request(const char *reply, size_t max_body, kvt_http_reply_t *r)
{
    canned_t c;
    pthread_t th;
    canned_start(&c, &th, reply);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", c.port);
    kvt_status_t st = kvt_http_request(addr, "GET", "/", NULL, NULL, 0, 300, max_body, r);
    pthread_join(th, NULL);
    close(c.lfd);
    return st;
}

static void test_client_decoding(void **state)
{
    kvt_http_reply_t r;
    assert_int_equal(canned_request("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                                    "transfer-encoding: chunked\r\n\r\n"
                                    "5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\n"
                                    "X-Trailer: t\r\n\r\n", 1024, &r), KVT_OK);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "hello 0123456789");
    kvt_http_reply_cleanup(&r);
    assert_int_equal(canned_request("HTTP/1.0 200 OK\r\nX: y\r\n\r\nuntil close", 1024, &r),
                     KVT_OK);
    assert_string_equal(r.body, "until close");
    kvt_http_reply_cleanup(&r);
    assert_int_equal(canned_request("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef", 1024,
                                    &r), KVT_OK);
    assert_string_equal(r.body, "abc");
    kvt_http_reply_cleanup(&r);
    /* bad replies */
    assert_int_equal(canned_request("SMTP ready\r\n\r\n", 1024, &r), KVT_ERR_CORRUPT);
    assert_int_equal(canned_request("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 1024, &r),
                     KVT_ERR_CORRUPT);
    assert_int_equal(canned_request("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                                    1024, &r), KVT_ERR_CORRUPT);
    assert_int_equal(canned_request("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", 9,
                                    &r), KVT_ERR_TOO_LARGE);
    /* a peer that never answers: timeout */
    uint64_t t0 = kvt_time_ns();
    assert_int_equal(canned_request(NULL, 1024, &r), KVT_ERR_AGAIN);
    assert_true((double)(kvt_time_ns() - t0) * 1e-9 < 2.0);
}

/* ------------------------------------------------------------ SSE parser */

typedef struct {
    char got[16][64];
    int n;
} sse_log_t;

static int sse_collect(const char *data, size_t len, void *arg)
{
    sse_log_t *l = arg;
    assert_true(len < 64 && l->n < 16);
    memcpy(l->got[l->n], data, len + 1);
    l->n++;
    return strcmp(data, "stop") == 0;
}

static void test_sse_parser(void **state)
{
    const char in[] = ": hello\r\ndata: one\r\n\r\ndata:two\ndata:  2b\n\nevent: x\nid: 4\n\n"
                      "data\rdata: three\r\rdata: stop\n\ndata: after\n\n";
    /* every split point, and byte by byte */
    for (size_t step = 1; step <= sizeof(in); step++) {
        sse_log_t log = {.n = 0};
        kvt_http_sse_t s;
        kvt_http_sse_init(&s, 64, sse_collect, &log);
        kvt_status_t st = KVT_OK;
        for (size_t i = 0; i < sizeof(in) - 1 && st == KVT_OK; i += step) {
            size_t k = sizeof(in) - 1 - i < step ? sizeof(in) - 1 - i : step;
            st = kvt_http_sse_feed(&s, in + i, k);
        }
        kvt_http_sse_cleanup(&s);
        assert_int_equal(st, KVT_ERR_CLOSED);
        assert_int_equal(log.n, 4);
        assert_string_equal(log.got[0], "one");
        assert_string_equal(log.got[1], "two\n 2b");
        assert_string_equal(log.got[2], "\nthree");
        assert_string_equal(log.got[3], "stop");
    }
    /* an event over the bound */
    sse_log_t log = {.n = 0};
    kvt_http_sse_t s;
    kvt_http_sse_init(&s, 8, sse_collect, &log);
    assert_int_equal(kvt_http_sse_feed(&s, "data: 0123456789\n\n", 18), KVT_ERR_TOO_LARGE);
    kvt_http_sse_cleanup(&s);
    kvt_http_sse_init(&s, 8, sse_collect, &log);
    assert_int_equal(kvt_http_sse_feed(&s, "data: 0123\ndata: 4567\n\n", 23), KVT_ERR_TOO_LARGE);
    kvt_http_sse_cleanup(&s);
    assert_int_equal(log.n, 0);
}

int main(void)
{
    kvt_log_set_level(KVT_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_echo_get_post, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found_and_no_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sse_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sse_client_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_open_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_decoding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sse_parser, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
