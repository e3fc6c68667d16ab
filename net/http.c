/* net/http: the HTTP/1.1 server (http.h) over libmicrohttpd.
 *
 * Owner: net/.  MHD runs one accept thread and one thread per connection;
 * every callback here (on_request, stream_read, on_completed) runs on the
 * connection's thread, so a request's state (kvt_http_req_t, MHD's
 * per-request con_cls) is touched by one thread only.  The server struct is
 * read-only after start except the atomic stopping flag.
 *
 * A request's life: the first on_request call allocates the req and checks
 * a declared Content-Length against the cap; the following calls hand body
 * bytes, copied into a buffer that never grows past max_body; the final
 * call (no more data) runs the handler, or sends 413 when the body crossed
 * the cap.  on_completed frees the req once MHD is done with the request,
 * and first reports a stream's end to its done_fn.
 *
 * Failure: a response MHD refuses to queue makes on_request return MHD_NO,
 * which closes the connection; nothing here aborts on client input. */
#include "net/http.h"

#include "common/alloc.h"
#include "common/log.h"

#include <microhttpd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_EXTRA_HEADERS 16
#define STREAM_BLOCK 16384          /* MHD's buffer for one next_fn call */
#define STREAM_WAIT_MS 10           /* pause after next_fn returned 0 */
#define DISCARD_LIMIT ((size_t)64 << 20) /* excess body bytes read before closing */

static const char TOO_LARGE_JSON[] =
    "{\"error\":{\"message\":\"request body too large\",\"type\":\"invalid_request_error\","
    "\"param\":null,\"code\":\"body_too_large\"}}";
static const char NO_ANSWER_JSON[] =
    "{\"error\":{\"message\":\"internal error: the request was not answered\","
    "\"type\":\"server_error\",\"param\":null,\"code\":null}}";

struct kvt_http_server {
    struct MHD_Daemon *mhd;
    kvt_http_handler_fn handler;
    void *arg;
    size_t max_body;
    uint16_t port;
    atomic_bool stopping;
    char listen[128];
};

struct kvt_http_req {
    kvt_http_server_t *srv;
    struct MHD_Connection *conn;
    const char *method, *path; /* MHD's, valid for the request */
    char *body;
    size_t len, cap;
    size_t discarded;  /* body bytes dropped after the cap was crossed */
    bool too_large;
    bool answered;
    unsigned n_hdr;
    char *hdr_name[MAX_EXTRA_HEADERS], *hdr_value[MAX_EXTRA_HEADERS];
    /* streaming */
    bool streaming;
    bool stream_ended; /* next_fn returned END or ERROR */
    int fd;
    kvt_http_stream_fn next_fn;
    kvt_http_stream_done_fn done_fn;
    void *stream_arg;
};

/* ----------------------------------------------------------- responses */

static bool has_crlf(const char *s) { return strpbrk(s, "\r\n") != NULL; }

/* Content-Type and the headers added by kvt_http_add_header. */
static bool resp_add_headers(struct MHD_Response *resp, const kvt_http_req_t *r,
                             const char *content_type)
{
    if (content_type && MHD_add_response_header(resp, "Content-Type", content_type) != MHD_YES)
        return false;
    for (unsigned i = 0; i < r->n_hdr; i++)
        if (MHD_add_response_header(resp, r->hdr_name[i], r->hdr_value[i]) != MHD_YES)
            return false;
    return true;
}

/* Queue resp (and drop our reference).  Quiet on failure: callers decide
 * whether a refusal is an error. */
static kvt_status_t resp_queue(kvt_http_req_t *r, unsigned status, struct MHD_Response *resp,
                               const char *content_type)
{
    bool ok = resp_add_headers(resp, r, content_type) &&
              MHD_queue_response(r->conn, status, resp) == MHD_YES;
    MHD_destroy_response(resp);
    if (!ok)
        return KVT_ERR_IO;
    r->answered = true;
    return KVT_OK;
}

static kvt_status_t respond_quiet(kvt_http_req_t *r, unsigned status, const char *content_type,
                                  const void *body, size_t len)
{
    if (r->answered || (len > 0 && !body))
        return KVT_ERR_INVALID;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return KVT_ERR_NOMEM;
    return resp_queue(r, status, resp, content_type);
}

kvt_status_t kvt_http_respond(kvt_http_req_t *r, unsigned status, const char *content_type,
                              const void *body, size_t len)
{
    kvt_status_t st = respond_quiet(r, status, content_type, body, len);
    if (st != KVT_OK)
        kvt_log_warn("http respond failed path=%s status=%u cause=%s", r->path, status,
                     kvt_status_str(st));
    return st;
}

kvt_status_t kvt_http_add_header(kvt_http_req_t *r, const char *name, const char *value)
{
    if (r->answered || !name || !value || !name[0] || has_crlf(name) || has_crlf(value))
        return KVT_ERR_INVALID;
    if (r->n_hdr == MAX_EXTRA_HEADERS)
        return KVT_ERR_FULL;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return KVT_ERR_NOMEM;
    }
    r->hdr_name[r->n_hdr] = n;
    r->hdr_value[r->n_hdr] = v;
    r->n_hdr++;
    return KVT_OK;
}

/* ----------------------------------------------------------- streaming */

/* Wait up to STREAM_WAIT_MS; true if the peer hung up (or the socket
 * failed) meanwhile.  Only hang-ups wake the poll: bytes the client sends
 * (a pipelined request) do not. */
static bool peer_gone(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLRDHUP};
    int n = poll(&pfd, 1, STREAM_WAIT_MS);
    return n > 0 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    kvt_http_req_t *r = cls;
    for (;;) {
        if (atomic_load(&r->srv->stopping))
            return MHD_CONTENT_READER_END_WITH_ERROR;
        long n = r->next_fn(r->stream_arg, buf, max);
        if (n > 0 && (size_t)n <= max)
            return (ssize_t)n;
        if (n == KVT_HTTP_STREAM_END) {
            r->stream_ended = true;
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (n != 0) {
            if (n != KVT_HTTP_STREAM_ERROR)
                kvt_log_error("http stream next_fn bad return path=%s n=%ld cap=%zu", r->path, n,
                              max);
            r->stream_ended = true;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (r->fd >= 0 && peer_gone(r->fd))
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

kvt_status_t kvt_http_respond_stream(kvt_http_req_t *r, unsigned status, const char *content_type,
                                     kvt_http_stream_fn next_fn, kvt_http_stream_done_fn done_fn,
                                     void *arg)
{
    if (r->answered || !next_fn || !done_fn)
        return KVT_ERR_INVALID;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, r, NULL);
    if (!resp)
        return KVT_ERR_NOMEM;
    if (MHD_add_response_header(resp, "Cache-Control", "no-cache") != MHD_YES) {
        MHD_destroy_response(resp);
        return KVT_ERR_NOMEM;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    r->next_fn = next_fn;
    r->done_fn = done_fn;
    r->stream_arg = arg;
    kvt_status_t st = resp_queue(r, status, resp, content_type);
    if (st != KVT_OK) {
        kvt_log_warn("http respond stream failed path=%s status=%u", r->path, status);
        return st;
    }
    r->streaming = true;
    return KVT_OK;
}

/* ------------------------------------------------------------ requests */

static void req_free(kvt_http_req_t *r)
{
    for (unsigned i = 0; i < r->n_hdr; i++) {
        free(r->hdr_name[i]);
        free(r->hdr_value[i]);
    }
    kvt_free(r->body);
    kvt_free(r);
}

/* First call: allocate, and refuse a declared body over the cap at once. */
static enum MHD_Result req_begin(kvt_http_server_t *srv, struct MHD_Connection *conn,
                                 const char *url, const char *method, void **con_cls)
{
    kvt_http_req_t *r = kvt_calloc("http request", 1, sizeof(*r));
    if (!r)
        return MHD_NO;
    r->srv = srv;
    r->conn = conn;
    r->method = method;
    r->path = url;
    r->fd = -1;
    *con_cls = r;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (!cl)
        return MHD_YES;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    if (errno || end == cl || n <= srv->max_body) {
        if (!errno && end != cl && n > 0) {
            r->body = kvt_malloc("http request body", (size_t)n + 1);
            r->cap = r->body ? (size_t)n + 1 : 0;
        }
        return MHD_YES;
    }
    r->too_large = true;
    kvt_log_info("http body too large path=%s declared=%llu max=%zu", url, n, srv->max_body);
    return respond_quiet(r, 413, "application/json", TOO_LARGE_JSON, sizeof(TOO_LARGE_JSON) - 1) ==
                   KVT_OK
               ? MHD_YES
               : MHD_NO;
}

/* Body bytes: copied while under the cap, counted and dropped after. */
static enum MHD_Result req_take_body(kvt_http_req_t *r, const char *data, size_t n)
{
    if (!r->too_large && r->len + n > r->srv->max_body) {
        r->too_large = true;
        kvt_free(r->body);
        r->body = NULL;
        r->len = r->cap = 0;
        kvt_log_info("http body too large path=%s max=%zu", r->path, r->srv->max_body);
        /* MHD may not take a response in the middle of a body; then it goes
         * out at the end (req_finish). */
        respond_quiet(r, 413, "application/json", TOO_LARGE_JSON, sizeof(TOO_LARGE_JSON) - 1);
    }
    if (r->too_large || r->answered) {
        r->discarded += n;
        return r->discarded > DISCARD_LIMIT ? MHD_NO : MHD_YES;
    }
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1)
            cap *= 2;
        if (cap > r->srv->max_body + 1)
            cap = r->srv->max_body + 1;
        char *b = kvt_realloc("http request body", r->body, cap);
        if (!b)
            return MHD_NO;
        r->body = b;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    return MHD_YES;
}

/* The whole request is in: run the handler (or send 413 / 500). */
static enum MHD_Result req_finish(kvt_http_req_t *r)
{
    if (r->answered)
        return MHD_YES;
    if (r->too_large)
        return respond_quiet(r, 413, "application/json", TOO_LARGE_JSON,
                             sizeof(TOO_LARGE_JSON) - 1) == KVT_OK ? MHD_YES : MHD_NO;
    if (r->body)
        r->body[r->len] = '\0';
    r->srv->handler(r, r->srv->arg);
    if (r->answered)
        return MHD_YES;
    kvt_log_warn("http handler did not answer method=%s path=%s", r->method, r->path);
    return respond_quiet(r, 500, "application/json", NO_ANSWER_JSON, sizeof(NO_ANSWER_JSON) - 1) ==
                   KVT_OK
               ? MHD_YES
               : MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    kvt_http_req_t *r = *con_cls;
    if (!r)
        return req_begin(cls, conn, url, method, con_cls);
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return req_take_body(r, upload_data, n);
    }
    return req_finish(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    kvt_http_req_t *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    if (r->streaming) {
        if (!r->stream_ended)
            kvt_log_info("http stream cut path=%s reason=%d", r->path, (int)toe);
        r->done_fn(r->stream_arg, !r->stream_ended);
    }
    req_free(r);
}

/* --------------------------------------------------------------- server */

const char *kvt_http_req_method(const kvt_http_req_t *r) { return r->method; }
const char *kvt_http_req_path(const kvt_http_req_t *r) { return r->path; }
kvt_http_server_t *kvt_http_req_server(const kvt_http_req_t *r) { return r->srv; }

const char *kvt_http_req_header(const kvt_http_req_t *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *kvt_http_req_body(const kvt_http_req_t *r, size_t *len_p)
{
    if (len_p)
        *len_p = r->body ? r->len : 0;
    return r->body ? r->body : "";
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    kvt_log_info("http mhd msg=\"%s\"", line);
}

/* "HOST:PORT", IPv4 only (names resolve to IPv4). */
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
    if (!colon[1] || *end || port < 0 || port > 65535)
        return KVT_ERR_INVALID;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, NULL, &hints, &ai);
    if (rc != 0) {
        kvt_log_error("http address not resolved addr=%s cause=%s", host_port, gai_strerror(rc));
        return KVT_ERR_IO;
    }
    memcpy(sin, ai->ai_addr, sizeof(*sin));
    sin->sin_port = htons((uint16_t)port);
    freeaddrinfo(ai);
    return KVT_OK;
}

kvt_status_t kvt_http_start(const kvt_http_params_t *p, kvt_http_server_t **srv_p)
{
    struct sockaddr_in sin;
    if (!p || !p->handler || !srv_p)
        return KVT_ERR_INVALID;
    kvt_status_t st = addr_parse(p->listen, &sin);
    if (st != KVT_OK) {
        if (st == KVT_ERR_INVALID)
            kvt_log_error("http bad listen address addr=%s", p->listen ? p->listen : "(null)");
        return st;
    }
    kvt_http_server_t *srv = kvt_calloc("http server", 1, sizeof(*srv));
    if (!srv)
        return KVT_ERR_NOMEM;
    srv->handler = p->handler;
    srv->arg = p->arg;
    srv->max_body = p->max_body ? p->max_body : KVT_HTTP_DEFAULT_MAX_BODY;
    snprintf(srv->listen, sizeof(srv->listen), "%s", p->listen);
    atomic_init(&srv->stopping, false);
    unsigned max_conn = p->max_connections ? p->max_connections : KVT_HTTP_DEFAULT_MAX_CONNECTIONS;
    unsigned timeout = p->timeout_s ? p->timeout_s : KVT_HTTP_DEFAULT_TIMEOUT_S;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    errno = 0;
    srv->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, srv,
                                MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sin,
                                MHD_OPTION_CONNECTION_LIMIT, max_conn,
                                MHD_OPTION_CONNECTION_TIMEOUT, timeout,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv, MHD_OPTION_END);
    if (!srv->mhd) {
        kvt_log_error("http listen failed addr=%s cause=%s", p->listen,
                      errno ? strerror(errno) : "microhttpd refused");
        kvt_free(srv);
        return KVT_ERR_IO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = di ? di->port : ntohs(sin.sin_port);
    kvt_log_info("http listening addr=%s port=%u max_body=%zu max_connections=%u timeout_s=%u",
                 p->listen, srv->port, srv->max_body, max_conn, timeout);
    *srv_p = srv;
    return KVT_OK;
}

uint16_t kvt_http_port(const kvt_http_server_t *srv) { return srv->port; }

bool kvt_http_stopping(const kvt_http_server_t *srv) { return atomic_load(&srv->stopping); }

void kvt_http_stop(kvt_http_server_t *srv)
{
    if (!srv)
        return;
    atomic_store(&srv->stopping, true);
    MHD_stop_daemon(srv->mhd);
    kvt_log_info("http stopped addr=%s port=%u", srv->listen, srv->port);
    kvt_free(srv);
}
