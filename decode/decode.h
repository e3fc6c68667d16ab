/* The decode node (DESIGN.md section 4, step 4).
 *
 * Threads: the engine thread runs continuous batching -- it admits new
 * DecodeRequests between steps and runs one decode step for every running
 * sequence at a time; the link thread (kvstore/node_link.h) talks to the
 * coordinator.
 *
 * A request: its key chain from the tenant's root; the leading blocks its
 * pool (T0) holds already are reused, the ones the prefill node serves
 * (DecodeRequest.peer, peer_blocks) are pulled from its block server and
 * verified (invariant 3: a block that fails is recomputed, never used),
 * and so is the partial tail the prefill node holds (tail_tokens).  When
 * every full block and the tail are in, the prompt is adopted without any
 * pass; otherwise what is missing is computed here.  The first token is
 * the prefill node's (the coordinator has sent it already): the node
 * advances its sampler by the draws the prefill node made for it
 * (first_draws), so every later token is the one a single-process run
 * samples.  Without a first token (UINT32_MAX) it is sampled here.
 * Tokens go back as TokenStream messages, one per step, the last one with
 * done and finish_reason ("stop", "length", or "error" with the reason).
 * Pulled blocks stay in the pool for later requests (content-indexed,
 * published as T0 events).  With cache false nothing is reused or pulled: every
 * prompt token is computed here.
 *
 * A node that loses the coordinator drops its running requests (the
 * coordinator retries them elsewhere). */
#ifndef KVT_DECODE_DECODE_H
#define KVT_DECODE_DECODE_H

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

#define KVT_DECODE_NO_FIRST_TOKEN UINT32_MAX /* DecodeRequest.first_token: sample it here */

typedef struct kvt_decode kvt_decode_t;

typedef struct {
    const kvt_model_t *model;     /* borrowed; outlives the node */
    const kvt_tokenizer_t *tok;   /* borrowed */
    kvt_engine_opts_t engine;
    const char *coord;            /* the coordinator's UCX HOST:PORT */
    const char *node_id;
    uint32_t max_seqs;            /* sequences decoded together; 0: 16 */
    uint32_t heartbeat_ms;        /* 0: 1000 */
} kvt_decode_params_t;

typedef struct {
    uint64_t requests, failed, tokens, steps, pulled_blocks, reused_blocks, failed_blocks;
    uint64_t pulled_tails;        /* partial tails pulled from a prefill node */
    uint64_t adopted;             /* prompts taken whole: no token computed here */
    uint32_t active, queued;
} kvt_decode_stats_t;

kvt_status_t kvt_decode_start(const kvt_decode_params_t *params, kvt_decode_t **node_p);
void kvt_decode_stop(kvt_decode_t *node);
void kvt_decode_stats(kvt_decode_t *node, kvt_decode_stats_t *stats_p);
bool kvt_decode_ready(kvt_decode_t *node);

#endif
