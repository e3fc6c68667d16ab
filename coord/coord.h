/* The coordinator (DESIGN.md sections 4 and 5): the OpenAI-compatible HTTP
 * API, EFIM anchors, the global block index and routing.
 *
 * Threads: libmicrohttpd runs one thread per HTTP connection; they parse,
 * authenticate, build the prompt's tokens and wait for the answer.  One
 * network thread owns the UCX listener the nodes connect to, the node
 * table, the global index and every request in flight: it routes, sends
 * PrefillRequest / DecodeRequest, takes results and token streams, and
 * retries a request on other nodes when a node dies, errs or times out.
 *
 * Never a wrong or silently truncated answer: tokens of a retried attempt
 * must equal the ones the client already has (the engines are
 * deterministic); a retry that diverges, or a request out of attempts or
 * time, ends with an error (503 before the first byte, an error event in
 * a stream). */
#ifndef KVT_COORD_COORD_H
#define KVT_COORD_COORD_H

#include "common/status.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct kvt_coord kvt_coord_t;

typedef struct {
    const char *model_dir;       /* tokenizer.json (+ tokenizer_config.json), config.json */
    const char *model_name;      /* the id clients name; NULL: the directory's base name */
    const char *http;            /* HTTP HOST:PORT (port 0: any) */
    const char *listen;          /* UCX HOST:PORT the nodes connect to (port 0: any) */
    const char *api_keys;        /* "KEY=TENANT,...", "@FILE" (a KEY=TENANT per line),
                                    or NULL: no keys, one tenant "" */
    const char *fim_tokens;      /* "PRE,SUF,MID" or NULL: the tokenizer's */
    uint32_t rebase_tokens;      /* EFIM: new anchor when inc grows past it; 0: 512 */
    uint32_t max_anchors;        /* 0: 65536 */
    uint32_t max_tokens;         /* largest max_tokens accepted; 0: 4096 */
    uint32_t attempt_timeout_ms; /* a node silent this long fails the attempt; 0: 60000 */
    uint32_t request_timeout_ms; /* whole request; 0: 300000 */
    uint32_t max_attempts;       /* 0: 3 */
    double temperature;          /* default when a request names none (0: greedy) */
} kvt_coord_params_t;

kvt_status_t kvt_coord_start(const kvt_coord_params_t *params, kvt_coord_t **coord_p);
/* Stop serving; requests in flight end with an error. */
void kvt_coord_stop(kvt_coord_t *coord);
uint16_t kvt_coord_http_port(const kvt_coord_t *coord);
uint16_t kvt_coord_ucx_port(const kvt_coord_t *coord);
/* At least one prefill and one decode node are registered and alive. */
bool kvt_coord_ready(kvt_coord_t *coord);

#endif
