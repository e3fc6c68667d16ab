/* net/http: a small HTTP/1.1 server over libmicrohttpd for the coordinator's
 * API (DESIGN.md section 5) and every node's health endpoints.
 *
 * Owner: net/ (http.c).  One thread per connection (MHD's
 * MHD_USE_THREAD_PER_CONNECTION plus its internal accept thread), so a
 * handler may block for as long as the work takes: it runs on the
 * connection's own thread, once per request, after the whole body arrived.
 * Handlers for different connections run concurrently; the handler and its
 * arg must be thread-safe.
 *
 * Bounds: a request body over max_body is answered 413 with an OpenAI-style
 * JSON error and never buffered past the cap (a declared Content-Length over
 * the cap is refused before the body is read; a chunked body is cut off where
 * it crosses the cap); at most max_connections connections are open (MHD
 * refuses more at accept); a connection idle for timeout_s is closed.
 * Malformed HTTP is answered (400 etc.) or closed by MHD; nothing a client
 * sends reaches the handler unparsed.  MHD's own error messages go to
 * kvt_log_warn.
 *
 * Failure: kvt_http_start logs and returns KVT_ERR_IO when the address
 * cannot be bound.  A handler that returns without answering gets a 500
 * sent for it (and a warning logged).
 *
 * Stopping: kvt_http_stop stops accepting, closes every connection (idle
 * keep-alive ones included) and joins every connection thread, so it waits
 * for running handlers.  An owner whose handlers block (on a queue, or in a
 * stream's next_fn) must wake them first: set its own "stopping" flag (or
 * poll kvt_http_stopping, which turns true at the start of kvt_http_stop)
 * and have the blocked code return.  Streams are also cut by the server
 * itself between next_fn calls once stopping is set. */
#ifndef KVT_NET_HTTP_H
#define KVT_NET_HTTP_H

#include "common/status.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvt_http_server kvt_http_server_t;
typedef struct kvt_http_req kvt_http_req_t;

/* Called once per request, after the whole body arrived, on the
 * connection's own thread; may block.  It must answer exactly once with
 * kvt_http_respond or kvt_http_respond_stream; if it returns without
 * answering, the server sends 500.  req is valid only during the call
 * (and, for a stream, until done_fn). */
typedef void (*kvt_http_handler_fn)(kvt_http_req_t *req, void *arg);

typedef struct {
    const char *listen;          /* "IPV4:PORT" (a name resolves to IPv4); port 0: any free */
    kvt_http_handler_fn handler; /* required */
    void *arg;                   /* passed to handler */
    size_t max_body;             /* 0: 1 MiB */
    unsigned max_connections;    /* 0: 256 */
    unsigned timeout_s;          /* idle timeout per connection; 0: 300 s */
} kvt_http_params_t;

#define KVT_HTTP_DEFAULT_MAX_BODY ((size_t)1 << 20)
#define KVT_HTTP_DEFAULT_MAX_CONNECTIONS 256u
#define KVT_HTTP_DEFAULT_TIMEOUT_S 300u

/* Bind and start serving.  KVT_ERR_INVALID for a bad address or missing
 * handler, KVT_ERR_IO if the address cannot be bound (logged), KVT_ERR_NOMEM.
 * *srv_p is set only on success. */
kvt_status_t kvt_http_start(const kvt_http_params_t *p, kvt_http_server_t **srv_p);
/* The bound port (the real one when the listen port was 0). */
uint16_t kvt_http_port(const kvt_http_server_t *srv);
/* True once kvt_http_stop has begun; any thread may ask. */
bool kvt_http_stopping(const kvt_http_server_t *srv);
/* Stop accepting, close all connections, join all threads, free.  See the
 * header comment: blocked handlers must be woken by their owner.  NULL is a
 * no-op. */
void kvt_http_stop(kvt_http_server_t *srv);

/* --- the request (valid during the handler call) --- */

const char *kvt_http_req_method(const kvt_http_req_t *r);
/* Percent-decoded by MHD, without the query string. */
const char *kvt_http_req_path(const kvt_http_req_t *r);
/* Case-insensitive; NULL if absent. */
const char *kvt_http_req_header(const kvt_http_req_t *r, const char *name);
/* The body as a NUL-terminated copy owned by the request ("" when there is
 * none); *len_p (may be NULL) gets its length without the NUL. */
const char *kvt_http_req_body(const kvt_http_req_t *r, size_t *len_p);
/* The server the request came to (for kvt_http_stopping). */
kvt_http_server_t *kvt_http_req_server(const kvt_http_req_t *r);

/* Add a header to the response that follows (e.g. WWW-Authenticate,
 * Retry-After).  Copied.  KVT_ERR_INVALID for names or values holding CR or
 * LF, or after the answer; KVT_ERR_FULL past 16 headers. */
kvt_status_t kvt_http_add_header(kvt_http_req_t *r, const char *name, const char *value);

/* Answer with a whole body (copied).  content_type may be NULL (none).
 * KVT_ERR_INVALID if the request was already answered; KVT_ERR_IO if MHD
 * refuses it (the connection is then closed). */
kvt_status_t kvt_http_respond(kvt_http_req_t *r, unsigned status, const char *content_type,
                              const void *body, size_t len);

/* Streaming (SSE): the response goes out chunked with Cache-Control:
 * no-cache.  After the handler returns, next_fn is called repeatedly on the
 * connection thread to fill buf[0..cap); it returns the bytes written
 * (1..cap), 0 to be called again after a short wait (about 10 ms; the server
 * checks meanwhile whether the client hung up or the server is stopping),
 * KVT_HTTP_STREAM_END to finish the response, or KVT_HTTP_STREAM_ERROR to
 * abort the connection.  next_fn may block, but then only its owner can wake
 * it (see kvt_http_stop).  done_fn(arg, client_gone) is called exactly once
 * when the stream is over, on the connection thread, after the last next_fn
 * call: client_gone is false when next_fn ended the stream (END or ERROR)
 * and true when it ended otherwise (the client disconnected or timed out,
 * or the server stopped), so the owner can cancel its work; done_fn is where
 * arg may be freed.  If this call fails (KVT_ERR_INVALID: already answered;
 * KVT_ERR_NOMEM / KVT_ERR_IO), neither callback is ever called. */
#define KVT_HTTP_STREAM_END (-1L)
#define KVT_HTTP_STREAM_ERROR (-2L)
typedef long (*kvt_http_stream_fn)(void *arg, char *buf, size_t cap);
typedef void (*kvt_http_stream_done_fn)(void *arg, bool client_gone);
kvt_status_t kvt_http_respond_stream(kvt_http_req_t *r, unsigned status, const char *content_type,
                                     kvt_http_stream_fn next_fn, kvt_http_stream_done_fn done_fn,
                                     void *arg);

#endif
