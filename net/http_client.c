/* net/http_client: the blocking HTTP/1.1 client (http_client.h).
 *
 * Owner: net/.  No shared state: each call owns its socket and buffers.
 * One exchange: connect (non-blocking connect + poll), send the request
 * (head and body), read the status line and headers into a fixed 64 KiB
 * buffer (skipping 1xx answers), then hand the body to a sink piece by
 * piece: whole-body collection, a caller's stream callback, or the SSE
 * parser.  Content-Length, chunked and read-until-close bodies are all
 * decoded here, so sinks see plain body bytes.
 *
 * Failure: see the header.  A sink that stops the exchange returns
 * KVT_ERR_CLOSED internally, which becomes KVT_OK for the caller. */
#include "net/http_client.h"

#include "common/alloc.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_CAP KVT_HTTP_CLIENT_MAX_HEAD
#define MAX_LINE 1024 /* a chunk-size or trailer line */

typedef struct {
    int fd;
    int timeout_ms;
    char *buf; /* BUF_CAP bytes; unread bytes are buf[off..len) */
    size_t off, len;
} conn_t;

/* Where body bytes go; on_body returns KVT_ERR_CLOSED to stop early. */
typedef struct {
    kvt_status_t (*on_head)(void *ctx, unsigned status);
    kvt_status_t (*on_body)(void *ctx, const char *data, size_t n);
    void *ctx;
} sink_t;

/* ------------------------------------------------------------- sockets */

static kvt_status_t addr_parse(const char *host_port, struct sockaddr_in *sin)
{
    char host[256];
    const char *colon = host_port ? strrchr(host_port, ':') : NULL;
    if (!colon || colon == host_port || (size_t)(colon - host_port) >= sizeof(host))
        return KVT_ERR_INVALID;
    size_t hl = (size_t)(colon - host_port);
    memcpy(host, host_port, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port <= 0 || port > 65535)
        return KVT_ERR_INVALID;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0)
        return KVT_ERR_IO;
    memcpy(sin, ai->ai_addr, sizeof(*sin));
    sin->sin_port = htons((uint16_t)port);
    freeaddrinfo(ai);
    return KVT_OK;
}

static kvt_status_t wait_fd(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n;
    do {
        n = poll(&p, 1, timeout_ms);
    } while (n < 0 && errno == EINTR);
    if (n == 0)
        return KVT_ERR_AGAIN;
    return n < 0 ? KVT_ERR_IO : KVT_OK;
}

static kvt_status_t conn_open(const char *host_port, int timeout_ms, int *fd_p)
{
    struct sockaddr_in sin;
    kvt_status_t st = addr_parse(host_port, &sin);
    if (st != KVT_OK)
        return st;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return KVT_ERR_IO;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0) {
        if (errno != EINPROGRESS) {
            close(fd);
            return KVT_ERR_IO;
        }
        st = wait_fd(fd, POLLOUT, timeout_ms);
        int err = 0;
        socklen_t el = sizeof(err);
        if (st == KVT_OK && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0))
            st = KVT_ERR_IO;
        if (st != KVT_OK) {
            close(fd);
            return st;
        }
    }
    *fd_p = fd;
    return KVT_OK;
}

/* KVT_ERR_CLOSED when the peer closed or reset (it may have answered). */
static kvt_status_t send_all(conn_t *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            kvt_status_t st = wait_fd(c->fd, POLLOUT, c->timeout_ms);
            if (st != KVT_OK)
                return st;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return errno == EPIPE || errno == ECONNRESET ? KVT_ERR_CLOSED : KVT_ERR_IO;
        }
    }
    return KVT_OK;
}

/* Read more bytes into the buffer (compacting first).  KVT_ERR_TRUNCATED
 * at end of stream; KVT_ERR_TOO_LARGE when the buffer is full. */
static kvt_status_t conn_fill(conn_t *c)
{
    if (c->off > 0) {
        memmove(c->buf, c->buf + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len == BUF_CAP)
        return KVT_ERR_TOO_LARGE;
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, BUF_CAP - c->len, 0);
        if (n > 0) {
            c->len += (size_t)n;
            return KVT_OK;
        }
        if (n == 0)
            return KVT_ERR_TRUNCATED;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return KVT_ERR_IO;
        kvt_status_t st = wait_fd(c->fd, POLLIN, c->timeout_ms);
        if (st != KVT_OK)
            return st;
    }
}

/* ------------------------------------------------------------ replies */

/* Status line and headers ending at buf[off + head_len]. */
static kvt_status_t head_parse(const char *h, size_t head_len, unsigned *status_p, long long *cl_p,
                               bool *chunked_p)
{
    if (head_len < 12 || strncmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ')
        return KVT_ERR_CORRUPT;
    unsigned status = 0;
    for (int i = 9; i < 12; i++) {
        if (h[i] < '0' || h[i] > '9')
            return KVT_ERR_CORRUPT;
        status = status * 10 + (unsigned)(h[i] - '0');
    }
    *status_p = status;
    *cl_p = -1;
    *chunked_p = false;
    const char *p = memchr(h, '\n', head_len), *end = h + head_len;
    while (p && ++p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            const char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            size_t nl = (size_t)(colon - p);
            if (nl == 14 && strncasecmp(p, "content-length", 14) == 0) {
                char *e;
                long long cl = strtoll(v, &e, 10);
                if (e == v || cl < 0 || (*cl_p >= 0 && *cl_p != cl))
                    return KVT_ERR_CORRUPT;
                *cl_p = cl;
            } else if (nl == 17 && strncasecmp(p, "transfer-encoding", 17) == 0) {
                size_t vl = (size_t)(eol - v);
                *chunked_p = vl >= 7 && memmem(v, vl, "chunked", 7) != NULL;
            }
        }
        p = eol;
    }
    return KVT_OK;
}

/* Read one head (status line + headers), leaving the body in the buffer. */
static kvt_status_t head_read(conn_t *c, unsigned *status_p, long long *cl_p, bool *chunked_p)
{
    for (;;) {
        char *e = c->len > c->off ? memmem(c->buf + c->off, c->len - c->off, "\r\n\r\n", 4) : NULL;
        if (e) {
            size_t hl = (size_t)(e - (c->buf + c->off)) + 4;
            kvt_status_t st = head_parse(c->buf + c->off, hl, status_p, cl_p, chunked_p);
            c->off += hl;
            return st;
        }
        kvt_status_t st = conn_fill(c);
        if (st == KVT_ERR_TRUNCATED)
            return c->len > c->off ? KVT_ERR_CORRUPT : KVT_ERR_IO;
        if (st != KVT_OK)
            return st;
    }
}

/* Hand exactly n body bytes to the sink (n < 0: until the peer closes). */
static kvt_status_t body_pass(conn_t *c, long long n, const sink_t *s)
{
    while (n != 0) {
        if (c->off == c->len) {
            kvt_status_t st = conn_fill(c);
            if (st == KVT_ERR_TRUNCATED)
                return n < 0 ? KVT_OK : KVT_ERR_CORRUPT;
            if (st != KVT_OK)
                return st;
        }
        size_t k = c->len - c->off;
        if (n > 0 && (unsigned long long)n < k)
            k = (size_t)n;
        kvt_status_t st = s->on_body(s->ctx, c->buf + c->off, k);
        c->off += k;
        if (n > 0)
            n -= (long long)k;
        if (st != KVT_OK)
            return st;
    }
    return KVT_OK;
}

/* One CRLF-terminated line (without it) into out[0..MAX_LINE). */
static kvt_status_t line_read(conn_t *c, char *out)
{
    for (;;) {
        char *nl = memchr(c->buf + c->off, '\n', c->len - c->off);
        if (nl) {
            size_t l = (size_t)(nl - (c->buf + c->off));
            if (l >= MAX_LINE)
                return KVT_ERR_CORRUPT;
            memcpy(out, c->buf + c->off, l);
            out[l > 0 && out[l - 1] == '\r' ? l - 1 : l] = '\0';
            c->off += l + 1;
            return KVT_OK;
        }
        if (c->len - c->off >= MAX_LINE)
            return KVT_ERR_CORRUPT;
        kvt_status_t st = conn_fill(c);
        if (st != KVT_OK)
            return st == KVT_ERR_TRUNCATED ? KVT_ERR_CORRUPT : st;
    }
}

static kvt_status_t body_chunked(conn_t *c, const sink_t *s)
{
    char line[MAX_LINE];
    for (;;) {
        kvt_status_t st = line_read(c, line);
        if (st != KVT_OK)
            return st;
        char *e;
        errno = 0;
        unsigned long long n = strtoull(line, &e, 16);
        if (e == line || errno || (*e && *e != ';' && *e != ' ') || n > (1ull << 40))
            return KVT_ERR_CORRUPT;
        if (n == 0)
            break;
        if ((st = body_pass(c, (long long)n, s)) != KVT_OK)
            return st;
        if ((st = line_read(c, line)) != KVT_OK)
            return st;
        if (line[0])
            return KVT_ERR_CORRUPT;
    }
    do { /* trailers, up to the empty line */
        kvt_status_t st = line_read(c, line);
        if (st != KVT_OK)
            return st;
    } while (line[0]);
    return KVT_OK;
}

/* ----------------------------------------------------------- requests */

static char *request_build(const char *host_port, const char *method, const char *path,
                           const char *const *headers, const char *extra, bool with_len,
                           size_t body_len, size_t *len_p)
{
    size_t cap = strlen(host_port) + strlen(method) + strlen(path) + 128 + (extra ? strlen(extra) : 0);
    for (size_t i = 0; headers && headers[i]; i++) {
        if (strpbrk(headers[i], "\r\n") || !strchr(headers[i], ':'))
            return NULL;
        cap += strlen(headers[i]) + 2;
    }
    char *req = kvt_malloc("http client request", cap);
    if (!req)
        return NULL;
    int n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path,
                     host_port);
    if (with_len)
        n += snprintf(req + n, cap - (size_t)n, "Content-Length: %zu\r\n", body_len);
    if (extra)
        n += snprintf(req + n, cap - (size_t)n, "%s\r\n", extra);
    for (size_t i = 0; headers && headers[i]; i++)
        n += snprintf(req + n, cap - (size_t)n, "%s\r\n", headers[i]);
    n += snprintf(req + n, cap - (size_t)n, "\r\n");
    *len_p = (size_t)n;
    return req;
}

static bool token_ok(const char *s)
{
    return s && s[0] && !strpbrk(s, " \r\n");
}

/* Send the request; KVT_OK also when the peer closed mid-send (*closed_p). */
static kvt_status_t request_send(conn_t *c, const char *host_port, const char *method,
                                 const char *path, const char *const *headers, const char *extra,
                                 const void *body, size_t body_len, bool *closed_p)
{
    bool with_len = body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0;
    size_t hl;
    char *head = request_build(host_port, method, path, headers, extra, with_len, body_len, &hl);
    if (!head)
        return KVT_ERR_INVALID;
    kvt_status_t st = send_all(c, head, hl);
    kvt_free(head);
    if (st == KVT_OK && body && body_len)
        st = send_all(c, body, body_len);
    *closed_p = st == KVT_ERR_CLOSED;
    return st == KVT_ERR_CLOSED ? KVT_OK : st;
}

/* Read the reply (after 1xx answers) into the sink. */
static kvt_status_t reply_read(conn_t *c, const char *method, const sink_t *s)
{
    unsigned status;
    long long cl;
    bool chunked;
    kvt_status_t st;
    do {
        if ((st = head_read(c, &status, &cl, &chunked)) != KVT_OK)
            return st;
    } while (status >= 100 && status < 200);
    if ((st = s->on_head(s->ctx, status)) != KVT_OK)
        return st;
    if (strcmp(method, "HEAD") == 0 || status == 204 || status == 304)
        return KVT_OK;
    if (chunked)
        return body_chunked(c, s);
    return body_pass(c, cl, s);
}

static kvt_status_t exchange(const char *host_port, const char *method, const char *path,
                             const char *const *headers, const char *extra, const void *body,
                             size_t body_len, int timeout_ms, const sink_t *s)
{
    if (!host_port || !token_ok(method) || !token_ok(path) || timeout_ms <= 0 ||
        (body_len > 0 && !body))
        return KVT_ERR_INVALID;
    conn_t c = {.fd = -1, .timeout_ms = timeout_ms};
    kvt_status_t st = conn_open(host_port, timeout_ms, &c.fd);
    if (st != KVT_OK)
        return st;
    c.buf = kvt_malloc("http client buffer", BUF_CAP);
    bool closed = false;
    st = c.buf ? request_send(&c, host_port, method, path, headers, extra, body, body_len, &closed)
               : KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = reply_read(&c, method, s);
    if (st == KVT_ERR_CLOSED)
        st = KVT_OK;
    else if (st != KVT_OK && closed)
        st = KVT_ERR_IO;
    close(c.fd);
    kvt_free(c.buf);
    return st;
}

/* ------------------------------------------------------- whole bodies */

typedef struct {
    unsigned status;
    char *buf;
    size_t len, cap, max;
    bool stop_at_max; /* error bodies: keep the first max bytes, then stop */
} collect_t;

static kvt_status_t collect_head(void *ctx, unsigned status)
{
    ((collect_t *)ctx)->status = status;
    return KVT_OK;
}

static kvt_status_t collect_body(void *ctx, const char *data, size_t n)
{
    collect_t *b = ctx;
    if (n > b->max - b->len) {
        if (!b->stop_at_max)
            return KVT_ERR_TOO_LARGE;
        n = b->max - b->len;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = kvt_realloc("http client body", b->buf, cap);
        if (!p)
            return KVT_ERR_NOMEM;
        b->buf = p;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, data, n);
    b->len += n;
    return b->stop_at_max && b->len == b->max ? KVT_ERR_CLOSED : KVT_OK;
}

/* Hand the collected body over as a reply (an empty string when none). */
static kvt_status_t collect_finish(collect_t *b, kvt_http_reply_t *reply_p)
{
    if (!b->buf) {
        b->buf = kvt_malloc("http client body", 1);
        if (!b->buf)
            return KVT_ERR_NOMEM;
    }
    b->buf[b->len] = '\0';
    reply_p->status = b->status;
    reply_p->body = b->buf;
    reply_p->body_len = b->len;
    return KVT_OK;
}

kvt_status_t kvt_http_request(const char *host_port, const char *method, const char *path,
                              const char *const *headers, const void *body, size_t body_len,
                              int timeout_ms, size_t max_body, kvt_http_reply_t *reply_p)
{
    if (!reply_p)
        return KVT_ERR_INVALID;
    collect_t b = {.max = max_body};
    sink_t s = {collect_head, collect_body, &b};
    kvt_status_t st = exchange(host_port, method, path, headers, NULL, body, body_len,
                               timeout_ms, &s);
    if (st == KVT_OK)
        st = collect_finish(&b, reply_p);
    if (st != KVT_OK)
        kvt_free(b.buf);
    return st;
}

void kvt_http_reply_cleanup(kvt_http_reply_t *reply)
{
    if (!reply)
        return;
    kvt_free(reply->body);
    reply->body = NULL;
    reply->body_len = 0;
}

/* ------------------------------------------------------------ streams */

typedef struct {
    unsigned status;
    kvt_http_body_fn fn;
    void *arg;
} stream_t;

static kvt_status_t stream_head(void *ctx, unsigned status)
{
    ((stream_t *)ctx)->status = status;
    return KVT_OK;
}

static kvt_status_t stream_body(void *ctx, const char *data, size_t n)
{
    stream_t *t = ctx;
    return t->fn(t->status, data, n, t->arg) ? KVT_ERR_CLOSED : KVT_OK;
}

kvt_status_t kvt_http_request_stream(const char *host_port, const char *method, const char *path,
                                     const char *const *headers, const void *body,
                                     size_t body_len, int timeout_ms, kvt_http_body_fn fn,
                                     void *arg, unsigned *status_p)
{
    if (!fn)
        return KVT_ERR_INVALID;
    stream_t t = {.fn = fn, .arg = arg};
    sink_t s = {stream_head, stream_body, &t};
    kvt_status_t st = exchange(host_port, method, path, headers, NULL, body, body_len,
                               timeout_ms, &s);
    if (st == KVT_OK && status_p)
        *status_p = t.status;
    return st;
}

/* ---------------------------------------------------------------- SSE */

void kvt_http_sse_init(kvt_http_sse_t *s, size_t max_event, kvt_http_sse_fn fn, void *arg)
{
    memset(s, 0, sizeof(*s));
    s->fn = fn;
    s->arg = arg;
    s->max_event = max_event ? max_event : KVT_HTTP_CLIENT_MAX_EVENT;
}

void kvt_http_sse_cleanup(kvt_http_sse_t *s)
{
    kvt_free(s->line);
    kvt_free(s->data);
    s->line = s->data = NULL;
}

/* The buffers are allocated whole (max_event + 1) on first use. */
static kvt_status_t sse_bufs(kvt_http_sse_t *s)
{
    if (!s->line)
        s->line = kvt_malloc("sse line", s->max_event + 1);
    if (!s->data)
        s->data = kvt_malloc("sse event", s->max_event + 1);
    return s->line && s->data ? KVT_OK : KVT_ERR_NOMEM;
}

/* A complete line in s->line: an event boundary, a comment or a field. */
static kvt_status_t sse_line(kvt_http_sse_t *s)
{
    size_t n = s->line_len;
    s->line_len = 0;
    if (n == 0) {
        if (!s->has_data)
            return KVT_OK;
        s->data[s->data_len] = '\0';
        size_t dl = s->data_len;
        s->data_len = 0;
        s->has_data = false;
        if (s->fn(s->data, dl, s->arg)) {
            s->stopped = true;
            return KVT_ERR_CLOSED;
        }
        return KVT_OK;
    }
    const char *l = s->line;
    const char *colon = memchr(l, ':', n);
    size_t fl = colon ? (size_t)(colon - l) : n;
    if (fl != 4 || memcmp(l, "data", 4) != 0)
        return KVT_OK; /* comments (fl == 0) and other fields */
    const char *v = colon ? colon + 1 : l + n;
    if (v < l + n && *v == ' ')
        v++;
    size_t vl = (size_t)(l + n - v);
    if (s->data_len + (s->has_data ? 1 : 0) + vl > s->max_event)
        return KVT_ERR_TOO_LARGE;
    if (s->has_data)
        s->data[s->data_len++] = '\n';
    memcpy(s->data + s->data_len, v, vl);
    s->data_len += vl;
    s->has_data = true;
    return KVT_OK;
}

kvt_status_t kvt_http_sse_feed(kvt_http_sse_t *s, const char *bytes, size_t len)
{
    if (s->stopped)
        return KVT_ERR_CLOSED;
    kvt_status_t st = sse_bufs(s);
    size_t i = 0;
    while (st == KVT_OK && i < len) {
        if (s->skip_lf) {
            s->skip_lf = false;
            if (bytes[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t j = i;
        while (j < len && bytes[j] != '\n' && bytes[j] != '\r')
            j++;
        if (j - i > s->max_event - s->line_len)
            return KVT_ERR_TOO_LARGE;
        memcpy(s->line + s->line_len, bytes + i, j - i);
        s->line_len += j - i;
        i = j;
        if (i < len) {
            s->skip_lf = bytes[i] == '\r';
            i++;
            st = sse_line(s);
        }
    }
    return st;
}

typedef struct {
    collect_t err;    /* non-2xx: the body */
    kvt_http_sse_t sse;
} sse_call_t;

static kvt_status_t sse_head(void *ctx, unsigned status)
{
    ((sse_call_t *)ctx)->err.status = status;
    return KVT_OK;
}

static kvt_status_t sse_body(void *ctx, const char *data, size_t n)
{
    sse_call_t *t = ctx;
    if (t->err.status < 200 || t->err.status > 299)
        return collect_body(&t->err, data, n);
    return kvt_http_sse_feed(&t->sse, data, n);
}

kvt_status_t kvt_http_request_sse(const char *host_port, const char *path,
                                  const char *const *headers, const void *body, size_t body_len,
                                  int timeout_ms, kvt_http_sse_fn fn, void *arg,
                                  kvt_http_reply_t *reply_p)
{
    if (!fn || !reply_p)
        return KVT_ERR_INVALID;
    sse_call_t t = {.err = {.max = KVT_HTTP_CLIENT_MAX_ERROR_BODY, .stop_at_max = true}};
    kvt_http_sse_init(&t.sse, 0, fn, arg);
    sink_t s = {sse_head, sse_body, &t};
    kvt_status_t st = exchange(host_port, "POST", path, headers, "Accept: text/event-stream", body,
                               body_len, timeout_ms, &s);
    kvt_http_sse_cleanup(&t.sse);
    if (st == KVT_OK)
        st = collect_finish(&t.err, reply_p);
    if (st != KVT_OK)
        kvt_free(t.err.buf);
    return st;
}
