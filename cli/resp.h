/* A minimal Redis (RESP2) client over TCP on loopback, for benchmarks that
 * compare kvtier with a Redis server holding the same blocks.
 *
 * Commands are queued with kvt_resp_cmd (small arguments are copied into a
 * bounded send buffer; large ones are written straight from the caller's
 * memory, so a SET of a block copies nothing) and sent by kvt_resp_flush
 * or the next read, so a batch of commands is pipelined.  Replies are read
 * one at a time: simple strings and integers, bulk strings (read straight
 * into the caller's buffer past what the receive buffer already held) and
 * errors.  Every length on the wire is checked against a bound before use;
 * a reply that cannot be read leaves the connection unusable (the stream
 * position is lost), which every later call reports.  Socket send and
 * receive timeouts bound every wait. */
#ifndef KVT_CLI_RESP_H
#define KVT_CLI_RESP_H

#include "common/status.h"

#include <stddef.h>
#include <stdint.h>

typedef struct kvt_resp kvt_resp_t;

#define KVT_RESP_MAX_ARGS 8

/* Connect to 127.0.0.1:port; each socket wait gives up after timeout_ms.
 * KVT_ERR_IO (logged at debug: callers retry while a server starts). */
kvt_status_t kvt_resp_connect(uint16_t port, int timeout_ms, kvt_resp_t **resp_p);
void kvt_resp_close(kvt_resp_t *resp);

/* Queue one command of argc (<= KVT_RESP_MAX_ARGS) binary-safe arguments.
 * Arguments over the send buffer's free space are written at once, so the
 * caller's memory is not referenced after return.  KVT_ERR_IO if a write
 * fails, KVT_ERR_INVALID on a bad argc. */
kvt_status_t kvt_resp_cmd(kvt_resp_t *resp, int argc, const void *const argv[],
                          const size_t lens[]);
/* Send what is queued. */
kvt_status_t kvt_resp_flush(kvt_resp_t *resp);

/* Read the next reply (flushing first).  A bulk string goes to dst (at most
 * cap bytes) and its length to *len_p; a simple string or integer sets
 * *len_p to 0.  KVT_ERR_NOT_FOUND for a nil bulk, KVT_ERR_TOO_LARGE for a
 * bulk over cap, KVT_ERR_IO for an error reply (its text logged) or a
 * broken connection, KVT_ERR_CORRUPT for a malformed or unsupported reply
 * (arrays are not read).  dst and len_p may be NULL when no bulk is
 * expected. */
kvt_status_t kvt_resp_read(kvt_resp_t *resp, void *dst, size_t cap, size_t *len_p);

#endif
