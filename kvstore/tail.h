/* The partial tail of a prompt: the KV of its last t = n % B tokens
 * (1 <= t < B), which no full block covers (invariant 1: only full blocks
 * have keys and live in the tiers).  The prefill node computes it and holds
 * it for the decode node for a short time under a lease, so the decode
 * node need not compute it again (DESIGN.md section 4, step 3).
 *
 * A tail is named by the key formula of invariant 1 applied to its t tokens:
 *     tail_key = SHA-256(parent || u32le(t) || tokens as u32le)
 * where parent is the key of the prompt's last full block (the root key
 * when there is none).  Since t < B and B is part of the model fingerprint
 * (so of every root key), a tail key never equals a block key; and since
 * the chain starts at the tenant's root, tenants never share tails
 * (invariant 6).  Both nodes compute the key from the request's tokens:
 * the decode node asks for the key it expects and checks what comes back.
 *
 * Its payload is the compact image `[layer][K,V][t][kv_head][head_dim]` in
 * the KV dtype: the first t token rows of each (layer, K/V) section of a
 * block image (invariant 2), so a tail is never larger than a block.
 *
 * The tail store holds tails for the block server (kvstore/block_server.h)
 * to hand to decode nodes.  It owns a copy of every tail put into it.
 * There are no lease ids: the lease is the store's hold plus its TTL.
 * Each put is one hold (and restarts the TTL); a get with release drops
 * one, and the tail is freed when none is left.  A tail that was not put
 * again for ttl_ms is gone whatever its holds (a decode node that died
 * cannot keep memory forever), and when the store is full the least
 * recently put tails are dropped to make room, held or not: a tail is an
 * optimisation, and the decode node recomputes what it cannot fetch
 * (invariant 3).  Expiry is lazy: every call first drops what has expired;
 * there is no thread.
 *
 * Thread-safe: one mutex; payload copies and checksums on put run outside
 * it, a get's visitor runs under it. */
#ifndef KVT_KVSTORE_TAIL_H
#define KVT_KVSTORE_TAIL_H

#include "kvstore/block.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of the image of a t-token tail of this layout; 0 when the layout
 * is invalid or t is not in [1, B). */
uint64_t kvt_tail_bytes(const kvt_block_layout_t *layout, uint32_t t);

/* The key of the tail tokens[0..t) after parent.  KVT_ERR_INVALID when t
 * is 0 or not below KVT_BLOCK_MAX_TOKENS. */
kvt_status_t kvt_tail_key(const kvt_block_key_t *parent, uint32_t t, const uint32_t *tokens,
                          kvt_block_key_t *key_p);

/* --- the tail store --- */

#define KVT_TAIL_STORE_MAX_TAILS 65536 /* the largest max_tails accepted */

typedef struct kvt_tail_store kvt_tail_store_t;

typedef struct {
    uint64_t max_bytes;         /* payload bytes held at once; 0: 256 MiB */
    uint32_t max_tails;         /* tails held at once; 0: 4096; at most
                                   KVT_TAIL_STORE_MAX_TAILS */
    uint32_t ttl_ms;            /* the lease: a tail lives this long after its
                                   last put; 0: 30000 */
} kvt_tail_store_params_t;

typedef struct {
    uint64_t tails;             /* held now */
    uint64_t bytes;             /* payload bytes held now */
    uint64_t puts;              /* successful puts (new tails and new holds) */
    uint64_t hits;              /* gets that found their key */
    uint64_t misses;            /* gets that did not (absent or expired) */
    uint64_t expired;           /* tails dropped at the end of their TTL */
    uint64_t dropped;           /* tails dropped to make room for a put */
    uint64_t released;          /* tails freed because their last hold was released */
} kvt_tail_store_stats_t;

/* What a get shows its visitor: the store's own copy, valid only during
 * the call (the store's lock is held: the visitor must not call into the
 * store, and should be quick -- encode a reply, copy out). */
typedef struct {
    const kvt_block_key_t *key;
    const kvt_block_key_t *parent;
    uint32_t t;
    const uint32_t *tokens;     /* t tokens */
    uint64_t checksum;          /* xxh3-64 of payload, computed on put */
    const void *payload;
    size_t len;
} kvt_tail_view_t;

/* Returns what the get reports (KVT_OK, or a failure of its own such as
 * KVT_ERR_NOMEM or KVT_ERR_TOO_LARGE). */
typedef kvt_status_t (*kvt_tail_visit_fn)(const kvt_tail_view_t *tail, void *arg);

/* KVT_ERR_INVALID (p NULL is fine: every default; max_tails over the
 * bound), KVT_ERR_NOMEM. */
kvt_status_t kvt_tail_store_create(const kvt_tail_store_params_t *p, kvt_tail_store_t **s_p);
/* Frees every tail, held or not.  NULL is a no-op. */
void kvt_tail_store_destroy(kvt_tail_store_t *s);

/* Hold the tail tokens[0..t) after parent, whose image is payload[0..len),
 * under key.  The store copies tokens and payload (the caller keeps its
 * buffers) and computes the checksum.  If key is held already, this adds a
 * hold and restarts its TTL without copying (the image of the same tokens
 * is the same).  Room is made by dropping expired tails, then the least
 * recently put ones.  KVT_ERR_INVALID (t not in [1, KVT_BLOCK_MAX_TOKENS),
 * len 0, NULL pointers), KVT_ERR_CORRUPT (key is not kvt_tail_key(parent,
 * t, tokens)), KVT_ERR_TOO_LARGE (len over max_bytes or
 * KVT_BLOCK_MAX_PAYLOAD), KVT_ERR_MISMATCH
 * (key held already with another length), KVT_ERR_NOMEM; the store is
 * unchanged on failure. */
kvt_status_t kvt_tail_store_put(kvt_tail_store_t *s, const kvt_block_key_t *key,
                                const kvt_block_key_t *parent, uint32_t t,
                                const uint32_t *tokens, const void *payload, size_t len);

/* Look key up and, when held, run visit (may be NULL) on it under the
 * store's lock; then, if release and visit returned KVT_OK, drop one hold
 * (the tail is freed at zero).  Returns KVT_ERR_NOT_FOUND when the key is
 * absent or expired (visit is not called), else what visit returned
 * (KVT_OK without a visitor). */
kvt_status_t kvt_tail_store_get(kvt_tail_store_t *s, const kvt_block_key_t *key, bool release,
                                kvt_tail_visit_fn visit, void *arg);

void kvt_tail_store_stats(kvt_tail_store_t *s, kvt_tail_store_stats_t *stats_p);

#endif
