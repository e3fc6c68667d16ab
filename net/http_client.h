/* net/http_client: a minimal blocking HTTP/1.1 client over POSIX sockets,
 * for tests and `kvtier bench efim`; no dependency beyond libc.
 *
 * Owner: net/ (http_client.c).  One connection per request (Connection:
 * close), no TLS, no redirects, no proxies.  Every call is self-contained
 * and may run on any thread; calls on different threads are independent.
 *
 * Timeouts: timeout_ms bounds every wait (connecting, each send, each
 * receive), not the whole exchange, so a slow stream that keeps sending
 * never times out while a silent peer does: KVT_ERR_AGAIN.  Other failures:
 * KVT_ERR_INVALID (bad arguments: address, headers with CR/LF),
 * KVT_ERR_IO (refused, reset, unresolvable), KVT_ERR_CORRUPT (not HTTP, a
 * bad chunk, a body shorter than its Content-Length), KVT_ERR_TOO_LARGE
 * (headers over 64 KiB, a body over its cap), KVT_ERR_NOMEM.  A server that
 * answers early and closes while the request body is still going out (a
 * 413) is read normally: its answer is returned, not the send error.
 * Output arguments are set only on success. */
#ifndef KVT_NET_HTTP_CLIENT_H
#define KVT_NET_HTTP_CLIENT_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>

#define KVT_HTTP_CLIENT_MAX_HEAD ((size_t)64 << 10)  /* status line + headers */
#define KVT_HTTP_CLIENT_MAX_EVENT ((size_t)1 << 20)  /* one SSE event */
#define KVT_HTTP_CLIENT_MAX_ERROR_BODY ((size_t)64 << 10)

typedef struct {
    unsigned status;
    char *body;      /* malloc'd (kvt_malloc), NUL-terminated; never NULL after success */
    size_t body_len; /* without the NUL */
} kvt_http_reply_t;

/* One request; the whole reply body (at most max_body bytes, else
 * KVT_ERR_TOO_LARGE) comes back in *reply_p.  headers: NULL or a
 * NULL-terminated list of "Name: value" lines.  body may be NULL (then no
 * Content-Length is sent unless the method is POST or PUT).  Free with
 * kvt_http_reply_cleanup. */
kvt_status_t kvt_http_request(const char *host_port, const char *method, const char *path,
                              const char *const *headers, const void *body, size_t body_len,
                              int timeout_ms, size_t max_body, kvt_http_reply_t *reply_p);
void kvt_http_reply_cleanup(kvt_http_reply_t *reply);

/* Streaming: fn gets the status and each piece of body bytes as it arrives
 * (de-chunked; pieces are as the socket delivers them, never empty), so a
 * caller can parse incrementally and time the first byte.  Return nonzero
 * from fn to stop reading (the connection is closed; the call returns
 * KVT_OK).  *status_p (may be NULL) gets the status. */
typedef int (*kvt_http_body_fn)(unsigned status, const char *data, size_t len, void *arg);
kvt_status_t kvt_http_request_stream(const char *host_port, const char *method, const char *path,
                                     const char *const *headers, const void *body,
                                     size_t body_len, int timeout_ms, kvt_http_body_fn fn,
                                     void *arg, unsigned *status_p);

/* --- server-sent events --- */

/* One event's data: the event's "data:" lines joined with '\n' (one space
 * after the colon dropped), NUL-terminated at data[len].  Events without
 * data lines are not reported.  Return nonzero to stop. */
typedef int (*kvt_http_sse_fn)(const char *data, size_t len, void *arg);

/* An incremental SSE parser: feed it body bytes split anywhere (inside a
 * line, inside a CRLF); it calls fn once per complete event.  Lines end in
 * LF, CRLF or CR; lines starting with ':' are comments; fields other than
 * data are ignored. */
typedef struct {
    kvt_http_sse_fn fn;
    void *arg;
    size_t max_event;    /* bound on one line and one event's data */
    char *line;          /* the line being read */
    size_t line_len;
    char *data;          /* the event's data so far */
    size_t data_len;
    bool has_data;
    bool skip_lf;        /* the last byte was CR: a following LF is its pair */
    bool stopped;        /* fn returned nonzero */
} kvt_http_sse_t;

/* max_event 0: KVT_HTTP_CLIENT_MAX_EVENT. */
void kvt_http_sse_init(kvt_http_sse_t *s, size_t max_event, kvt_http_sse_fn fn, void *arg);
/* KVT_OK; KVT_ERR_CLOSED once fn asked to stop (the rest is ignored);
 * KVT_ERR_TOO_LARGE for a line or event over max_event; KVT_ERR_NOMEM. */
kvt_status_t kvt_http_sse_feed(kvt_http_sse_t *s, const char *bytes, size_t len);
void kvt_http_sse_cleanup(kvt_http_sse_t *s);

/* POST body to path and read the reply as SSE.  Headers get "Accept:
 * text/event-stream" added.  For a 2xx reply fn gets each event (and the
 * literal "[DONE]" as one too) and reply_p->body is an empty string; for any
 * other status fn is never called and the body (at most 64 KiB) comes back
 * in reply_p->body, since errors come as JSON, not as events.  Either way the
 * call returns KVT_OK: the HTTP status is not a transport error.  Free with
 * kvt_http_reply_cleanup. */
kvt_status_t kvt_http_request_sse(const char *host_port, const char *path,
                                  const char *const *headers, const void *body, size_t body_len,
                                  int timeout_ms, kvt_http_sse_fn fn, void *arg,
                                  kvt_http_reply_t *reply_p);

#endif
