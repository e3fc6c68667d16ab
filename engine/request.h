/* One request's prompt on the engine: bring in the blocks that are cached
 * somewhere (the pool T0, the node's tier T1/T2, a peer's block server),
 * compute the rest, return the last position's logits.  Shared by
 * `kvtier generate`, the prefill node and the decode node, so a prompt is
 * processed the same way wherever it runs.
 *
 * Invariant 3: a block that cannot be read or fails verification (tier or
 * peer) stops the import there; it and everything after it are computed,
 * and the failure is counted.  Storing is best effort (tier_io.h).
 *
 * The partial tail (kvstore/tail.h): a prefill node holds it for the
 * decode node (kvt_engine_tail_hold); a decode node, which has the first
 * token already and so needs no logits, pulls it and adopts the whole
 * prompt without any pass when its pool holds every full block.  Any
 * failure on that path falls back to computing what is missing. */
#ifndef KVT_ENGINE_REQUEST_H
#define KVT_ENGINE_REQUEST_H

#include "engine/engine.h"
#include "engine/sample.h"
#include "kvstore/block_client.h"
#include "kvstore/tail.h"
#include "kvstore/tier.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    bool reuse;                 /* false: compute every token, store nothing
                                   (the no-cache baseline) */
    kvt_tier_t *tier;           /* the node's tier to load from, or NULL */
    bool store;                 /* put the prompt's full blocks (and pulled
                                   ones) into tier after prefill */
    kvt_block_client_t *peer;   /* a peer's block server, or NULL */
    size_t peer_blocks;         /* leading full blocks the peer holds */
    int peer_timeout_ms;        /* 0: 10000 */
    uint32_t peer_tail;         /* the peer holds the prompt's partial tail
                                   (its n % B tokens) under a lease */
} kvt_prompt_src_t;

typedef struct {
    size_t cached_tokens;       /* prompt tokens not computed */
    size_t pool_blocks;         /* full blocks the pool held already */
    size_t tier_blocks;         /* loaded from the tier */
    size_t peer_blocks;         /* pulled from the peer */
    size_t failed_blocks;       /* tier or peer blocks refused (recomputed) */
    size_t stored_blocks;       /* leading full blocks the tier holds after */
    size_t tail_tokens;         /* the partial tail's tokens pulled from the peer */
    bool adopted;               /* no pass ran: every token's KV was imported */
} kvt_prompt_stats_t;

/* A request as the coordinator sends it to a node (PrefillRequest or
 * DecodeRequest), copied out of the message, which lives only for its
 * callback.  Caller-owned storage: init copies, cleanup frees. */
#define KVT_NODE_REQ_ID_MAX 128
#define KVT_NODE_REQ_SALT_MAX 4096
#define KVT_NODE_REQ_ADDR_MAX 256
typedef struct {
    char id[KVT_NODE_REQ_ID_MAX];
    uint32_t *tokens;
    size_t n;
    uint8_t salt[KVT_NODE_REQ_SALT_MAX]; /* the tenant's (invariant 6) */
    size_t salt_len;
    kvt_sample_params_t sp;
    bool cache;
    char peer[KVT_NODE_REQ_ADDR_MAX];    /* block server to pull from, or "" */
    uint32_t peer_blocks;
} kvt_node_req_t;

/* KVT_ERR_TOO_LARGE for a salt over KVT_NODE_REQ_SALT_MAX, KVT_ERR_NOMEM.
 * Longer ids and addresses are cut (the codec bounds them anyway). */
kvt_status_t kvt_node_req_init(kvt_node_req_t *r, const char *id, const uint32_t *tokens,
                               size_t n, const void *salt, size_t salt_len, float temperature,
                               float top_p, uint64_t seed, bool cache, const char *peer,
                               uint32_t peer_blocks);
void kvt_node_req_cleanup(kvt_node_req_t *r);
/* The request's root key on this engine (fingerprint + tenant salt). */
kvt_status_t kvt_node_req_root(const kvt_engine_t *engine, const kvt_node_req_t *r,
                               kvt_block_key_t *root_p);

/* A new sequence (root: the tenant's root key) holding tokens[0..n) with
 * its KV computed or imported; logits[vocab] gets the last position's.
 * logits NULL: the caller needs none, so the prompt may be adopted whole
 * (every full block in the pool after the imports, the tail pulled from
 * src->peer when src->peer_tail says it holds it): no pass runs then.
 * On error nothing is left referenced (*seq_p untouched); the engine's
 * errors pass through (KVT_ERR_FULL, KVT_ERR_TOO_LARGE, KVT_ERR_IO). */
kvt_status_t kvt_engine_run_prompt(kvt_engine_t *engine, const kvt_block_key_t *root,
                                   const uint32_t *tokens, size_t n,
                                   const kvt_prompt_src_t *src, kvt_seq_t **seq_p,
                                   float *logits, kvt_prompt_stats_t *stats_p);

/* Prefill side: copy seq's partial tail into tails (kvstore/tail.h), one
 * hold under the store's lease, for the decode node to pull; *t_p = its
 * tokens (0 when the sequence has no partial tail: nothing is held).
 * root: the sequence's root key.  The engine's and the store's errors
 * pass through (KVT_ERR_NOMEM, KVT_ERR_IO, KVT_ERR_TOO_LARGE). */
kvt_status_t kvt_engine_tail_hold(kvt_engine_t *engine, const kvt_seq_t *seq,
                                  const kvt_block_key_t *root, kvt_tail_store_t *tails,
                                  uint32_t *t_p);

/* Import blocks [from, to) of keys from a peer into the pool (and into
 * tier when it is not NULL), in batches; *imported_p = how many leading
 * ones made it (a missing or bad block stops there; *failed_p = 1 then). */
kvt_status_t kvt_engine_peer_load(kvt_engine_t *engine, kvt_block_client_t *peer,
                                  const kvt_block_key_t *keys, size_t from, size_t to,
                                  kvt_tier_t *tier, int timeout_ms, size_t *imported_p,
                                  size_t *failed_p);

#endif
