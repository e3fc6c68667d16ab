/* The prefill node (DESIGN.md section 4, step 3).
 *
 * Threads: the engine thread runs one PrefillRequest at a time from a
 * bounded queue; the link thread (kvstore/node_link.h) talks to the
 * coordinator; the block server thread (kvstore/block_server.h) lets
 * decode nodes and other prefill nodes pull blocks out of this node's T1.
 *
 * A request: its key chain from the tenant's root; the longest prefix
 * cached in the pool (T0), else the tier (T1/T2), else pulled from the peer
 * the coordinator named (PrefillRequest.peer) -- every imported block
 * verified (invariant 3) -- the rest computed; the first token sampled;
 * every full block of the prompt put into the tier, so the decode node can
 * pull them from this node's block server, and the partial tail held in a
 * tail store (kvstore/tail.h) under a lease (30 s, or until the decode node
 * says it has it) that the same server serves.  The answer is a
 * PrefillResult (first token and its sampler draws, cached tokens, how
 * many leading blocks are served here, the tail's tokens) or an Error
 * naming the request.
 *
 * The node publishes T0, T1 and T2 events through the link.  A request
 * for another model cannot arrive: the coordinator routes by the
 * fingerprint each node registers with. */
#ifndef KVT_PREFILL_PREFILL_H
#define KVT_PREFILL_PREFILL_H

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

typedef struct kvt_prefill kvt_prefill_t;

typedef struct {
    const kvt_model_t *model;     /* borrowed; outlives the node */
    const kvt_tokenizer_t *tok;   /* borrowed */
    kvt_engine_opts_t engine;
    const char *data_dir;         /* the node's tier */
    uint64_t host_capacity_bytes; /* T1; 0: 1 GiB */
    uint64_t disk_capacity_bytes; /* T2; 0: unlimited */
    const char *listen;           /* block server HOST:PORT (port 0: any) */
    const char *advertise_host;   /* host peers reach it at; NULL: listen's */
    const char *coord;            /* the coordinator's UCX HOST:PORT */
    const char *node_id;
    uint32_t heartbeat_ms;        /* 0: 1000 */
    uint32_t max_queue;           /* queued requests; 0: 256 */
} kvt_prefill_params_t;

typedef struct {
    uint64_t requests, failed, cached_tokens, computed_tokens, peer_blocks, failed_blocks;
    uint64_t held_tails;          /* partial tails held for a decode node */
    uint32_t queued;
} kvt_prefill_stats_t;

/* Open the tier, create the engine, start the block server, the link and
 * the engine thread.  KVT_ERR_IO (tier or listen address), the engine's
 * errors. */
kvt_status_t kvt_prefill_start(const kvt_prefill_params_t *params, kvt_prefill_t **node_p);
/* Stop taking requests, finish the running one, stop every thread, flush
 * and close the tier. */
void kvt_prefill_stop(kvt_prefill_t *node);
void kvt_prefill_stats(kvt_prefill_t *node, kvt_prefill_stats_t *stats_p);
/* The block server's port (useful with port 0). */
uint16_t kvt_prefill_port(const kvt_prefill_t *node);
/* The node is registered with the coordinator now. */
bool kvt_prefill_ready(kvt_prefill_t *node);

#endif
