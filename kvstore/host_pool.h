/* T1: the host pool.
 *
 * A pool of equal-size slots in one page-aligned region (later pinned and
 * registered with UCX, so peers read payloads straight out of it).  The
 * region is a sealed memfd where the system has memfd (kvt_alloc_shared),
 * so that a same-host block client can map it and copy pinned payloads
 * itself (kvstore/block_client.c, net/peer_map.c).  Each
 * slot holds one block's payload; its encoded header sits in a parallel
 * header arena.  A content index maps key -> slot.
 *
 * Concurrency: the index is split into shards by key, each with its own
 * mutex, eviction heap and free-slot list, so lookups, pins and copies of
 * different blocks do not contend on one lock.  Payload copies happen
 * outside every lock: a slot being filled is owned by its writer, a
 * resident slot is read under a pin.  No thread ever holds two shard locks.
 *
 * Prefix closure (invariant 4): a block is accepted only when its parent is
 * resident (or it is block 0), and only unpinned leaves -- blocks with no
 * resident child -- are evicted, least recently used first.  So the pool
 * always holds a prefix-closed set.  Eviction order is per shard (like
 * RocksDB's sharded LRU cache): approximately global LRU.
 *
 * Failure: put returns KVT_ERR_NO_PARENT, KVT_ERR_FULL (everything pinned
 * or interior), KVT_ERR_MISMATCH (wrong identity) or KVT_ERR_CORRUPT (the
 * key does not name the tokens, the index does not follow the parent's,
 * or -- commit -- the checksum); the pool is unchanged then.  A block 0
 * is taken as a chain's first block on its header's word: the pool cannot
 * check root keys (they hold the tenant salt). */
#ifndef KVT_KVSTORE_HOST_POOL_H
#define KVT_KVSTORE_HOST_POOL_H

#include "kvstore/events.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvt_host_pool kvt_host_pool_t;

typedef struct {
    kvt_block_identity_t identity;
    uint64_t capacity_bytes;   /* payload bytes; slots = capacity / payload size */
    uint32_t n_shards;         /* 0: chosen from the slot count */
    kvt_block_event_fn on_event; /* may be NULL */
    void *event_arg;
} kvt_host_pool_params_t;

/* A pinned (or reserved) slot.  Valid until unpin (or commit/abort). */
typedef struct {
    uint32_t slot;
    uint8_t *header;        /* encoded header bytes */
    size_t header_len;
    uint8_t *payload;
    uint64_t payload_len;
} kvt_block_view_t;

kvt_status_t kvt_host_pool_create(const kvt_host_pool_params_t *params, kvt_host_pool_t **pool_p);
/* All pins must be released first; pinned slots are reported and freed. */
void kvt_host_pool_destroy(kvt_host_pool_t *pool);

/* Copy a block in.  KVT_OK also when it was already resident (then it only
 * counts as an access).  Checks the identity and that the key names the
 * header's tokens; the payload checksum is the caller's to get right (it
 * made the header from these bytes) -- commit, whose bytes arrive from
 * elsewhere, verifies it. */
kvt_status_t kvt_host_pool_put(kvt_host_pool_t *pool, const kvt_block_header_t *hdr,
                               const void *payload);

/* Two-step put for writers that fill the payload in place (RMA reads, GPU
 * copies): reserve a slot for hdr, write view->payload, then commit (which
 * verifies the checksum and indexes the block) or abort.  Reserve holds a
 * reservation on the parent so it cannot be evicted meanwhile.  Reserve
 * returns KVT_ERR_EXISTS when the block is already resident; commit returns
 * KVT_OK when another writer committed the same block first (the view's
 * slot is released either way) and KVT_ERR_CORRUPT on a bad checksum. */
kvt_status_t kvt_host_pool_reserve(kvt_host_pool_t *pool, const kvt_block_header_t *hdr,
                                   kvt_block_view_t *view_p);
kvt_status_t kvt_host_pool_commit(kvt_host_pool_t *pool, kvt_block_view_t *view);
void kvt_host_pool_abort(kvt_host_pool_t *pool, kvt_block_view_t *view);

/* Copy a block out (header decoded into *hdr_p, payload into dst[cap]).
 * KVT_ERR_NOT_FOUND on a miss, KVT_ERR_TOO_LARGE when cap is short. */
kvt_status_t kvt_host_pool_get(kvt_host_pool_t *pool, const kvt_block_key_t *key,
                               kvt_block_header_t *hdr_p, void *dst, size_t cap);

/* Pin a resident block: it is not evicted until unpinned.  Pins nest. */
kvt_status_t kvt_host_pool_pin(kvt_host_pool_t *pool, const kvt_block_key_t *key,
                               kvt_block_view_t *view_p);
void kvt_host_pool_unpin(kvt_host_pool_t *pool, const kvt_block_view_t *view);
/* Pin for internal bookkeeping (write-behind, moves between tiers): like
 * pin, but it is no access -- no hit or miss, no change to the LRU order. */
kvt_status_t kvt_host_pool_hold(kvt_host_pool_t *pool, const kvt_block_key_t *key,
                                kvt_block_view_t *view_p);

bool kvt_host_pool_contains(kvt_host_pool_t *pool, const kvt_block_key_t *key);
void kvt_host_pool_stats(kvt_host_pool_t *pool, kvt_tier_stats_t *stats_p);
const kvt_block_identity_t *kvt_host_pool_identity(const kvt_host_pool_t *pool);
/* The payload region, for memory registration (UCX, cudaHostRegister). */
void *kvt_host_pool_region(kvt_host_pool_t *pool, size_t *len_p);
/* The sealed memfd the region is mapped from (a same-host block client
 * maps it to read pinned payloads), or -1 where the region is private. */
int kvt_host_pool_region_fd(const kvt_host_pool_t *pool);

#endif
