/* Routing decisions (DESIGN.md section 4, step 2): which prefill node
 * computes a request, which peer it pulls stored blocks from, and which
 * decode node generates.
 *
 * Pure functions of their arguments: the caller gathers each node's state
 * (kvt_gindex_match for what it holds, its queue, its slots) and calls these
 * with it.  Every cost is in one unit (the defaults use microseconds) and
 * compares uncached tokens x compute cost, blocks to fetch x fetch cost and
 * queued work; it is a ranking, not a latency prediction.
 *
 * Ownership: nothing is allocated or kept; arrays are borrowed for the call.
 * Thread-safety: no state, no locks, no I/O; callable from any thread.
 * Failure: none; "no usable node" is reported as node == -1. */
#ifndef KVT_COORD_ROUTE_H
#define KVT_COORD_ROUTE_H

#include "coord/gindex.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    double compute_per_token;    /* computing one uncached prompt token */
    double fetch_host_per_block; /* loading one block from the node's T1 */
    double fetch_disk_per_block; /* loading one block from the node's T2 */
    double fetch_peer_per_block; /* pulling one block from a peer */
    double decode_per_active;    /* decode: cost per sequence already running */
} kvt_route_costs_t;

typedef struct {
    bool usable;              /* alive, registered, right model */
    kvt_gindex_match_t local; /* what this node holds of the request's chain */
    uint64_t queued_tokens;   /* prefill tokens already queued on it */
} kvt_route_prefill_node_t;

typedef struct {
    int node;              /* index into the array, -1 when none usable */
    int peer;              /* node to pull the blocks past the local prefix
                              from, -1: none */
    uint32_t reuse_blocks; /* blocks loaded locally or from the peer */
    uint32_t peer_blocks;  /* of those, pulled from the peer */
    double cost, compute_cost, fetch_cost, queue_cost; /* cost = the sum of the other three */
} kvt_route_prefill_t;

/* Choose the prefill node.  n_tokens: prompt tokens; block_tokens: B (0 is
 * read as "no block can be reused").  At most (n_tokens-1)/B blocks can be
 * reused: one token is always computed, to produce the first output token.
 * For each usable node p: local = min(p.local.prefix, max_reuse); when the
 * cap cuts blocks off, they come off the deepest tier first (tiers are
 * prefix-closed, invariant 4, so the trailing blocks are the ones held only
 * in slower tiers).  The best peer q != p among ALL entries (usable or not:
 * a peer only needs its block server; the caller marks unreachable peers by
 * zeroing local.prefix) has the longest capped prefix (ties: lower index);
 * when it is longer than local, the extra blocks are pulled from q if
 * fetch_peer_per_block < B * compute_per_token.
 *     cost = uncached_tokens * compute_per_token
 *          + local host blocks * fetch_host + local disk blocks * fetch_disk
 *            (GPU blocks are free) + peer_blocks * fetch_peer
 *          + queued_tokens * compute_per_token
 * Lowest cost wins; ties -> fewer queued tokens, then lower index.  *out is
 * always written. */
void kvt_route_prefill(const kvt_route_costs_t *costs, const kvt_route_prefill_node_t *nodes,
                       size_t n_nodes, size_t n_tokens, uint32_t block_tokens,
                       kvt_route_prefill_t *out);

typedef struct {
    bool usable;
    uint32_t active;      /* sequences running on it */
    uint32_t free_slots;  /* sequences it can still take */
    uint32_t pool_prefix; /* leading blocks of the chain already in its GPU/T0 pool */
} kvt_route_decode_node_t;

typedef struct {
    int node;             /* index into the array, -1 when none fits */
    uint32_t pull_blocks; /* blocks it must pull */
    double cost;
} kvt_route_decode_t;

/* Choose the decode node among usable nodes with free_slots >= need_slots:
 *     cost = (full_blocks - min(pool_prefix, full_blocks)) * fetch_peer_per_block
 *          + active * decode_per_active
 * Lowest wins; ties -> more free slots, then lower index; node -1 (pull 0,
 * cost 0) when none fits.  *out is always written. */
void kvt_route_decode(const kvt_route_costs_t *costs, const kvt_route_decode_node_t *nodes,
                      size_t n_nodes, size_t full_blocks, uint32_t need_slots,
                      kvt_route_decode_t *out);

/* One log-ready line "node=.. cost=.. compute=.. fetch=.. queue=.. reuse=..
 * peer=.. peer_blocks=.." into buf (always NUL-terminated when cap >= 1,
 * truncated to fit). */
void kvt_route_prefill_describe(const kvt_route_prefill_t *d, char *buf, size_t cap);

/* Default costs, in microseconds, for a CPU (gpu false) or GPU engine; see
 * route.c for where each figure comes from.  Operators should calibrate them
 * with `kvtier bench engine` and `kvtier bench pull`. */
void kvt_route_costs_default(kvt_route_costs_t *costs, bool gpu);

#endif
