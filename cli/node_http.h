/* The HTTP face of a prefill or decode node (`--http HOST:PORT`):
 * /healthz (200 while the process runs), /readyz (200 while the node is
 * registered with the coordinator), /metrics (Prometheus text of the
 * node's counters).  Used by `kvtier prefill` and `kvtier decode`. */
#ifndef KVT_CLI_NODE_HTTP_H
#define KVT_CLI_NODE_HTTP_H

#include "decode/decode.h"
#include "net/http.h"
#include "prefill/prefill.h"

/* Exactly one of prefill / decode is set. */
kvt_status_t kvt_node_http_start(const char *listen, kvt_prefill_t *prefill,
                                 kvt_decode_t *decode, kvt_http_server_t **srv_p);

#endif
