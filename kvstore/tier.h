/* The node's block store: T1 host pool over T2 RocksDB.
 *
 * put stores into T1 and queues the block for a write-behind thread that
 * persists it to T2.  The queue is bounded (queued blocks stay pinned in
 * T1); when it is full, put waits: that is the backpressure.  get serves T1
 * hits, else reads T2 and promotes the block into T1.  Both tiers are
 * prefix-closed, so the longest stored prefix of a key chain is found by a
 * binary search in each tier.
 *
 * Data layout: <data_dir>/t2 is the RocksDB directory.  T1 is in memory.
 * Thread-safe. */
#ifndef KVT_KVSTORE_TIER_H
#define KVT_KVSTORE_TIER_H

#include "kvstore/disk_tier.h"
#include "kvstore/host_pool.h"

typedef struct kvt_tier kvt_tier_t;

typedef struct {
    const char *data_dir;
    const kvt_block_identity_t *identity; /* NULL: adopt T2's stored identity */
    uint64_t host_capacity_bytes;
    uint64_t disk_capacity_bytes;         /* 0: unlimited */
    uint32_t write_queue_depth;           /* 0: 64 */
    bool sync_writes;
    kvt_block_event_fn on_event;          /* may be NULL; T1 and T2 events */
    void *event_arg;
} kvt_tier_params_t;

typedef struct {
    kvt_tier_stats_t host;
    kvt_tier_stats_t disk;
    uint64_t queued;        /* write-behind blocks waiting now */
    uint64_t written;       /* blocks persisted by write-behind */
    uint64_t write_failed;  /* write-behind puts that T2 refused */
    uint64_t waits;         /* puts that waited on a full queue */
} kvt_tier_stats_all_t;

kvt_status_t kvt_tier_open(const kvt_tier_params_t *params, kvt_tier_t **tier_p);
/* Drains the write-behind queue, then closes both tiers.  Puts blocked on
 * the full queue wake with KVT_ERR_CLOSED and close waits for them to
 * leave; any other call must not run concurrently with close. */
void kvt_tier_close(kvt_tier_t *tier);

/* Store a block in T1 and queue it for T2; waits while the queue is full.
 * A block whose parent T2 lacks (puts of one chain racing in different
 * threads) is persisted after its missing ancestors, taken from T1. */
kvt_status_t kvt_tier_put(kvt_tier_t *tier, const kvt_block_header_t *hdr, const void *payload);
/* Copy a block out; *from_p says which tier served it. */
kvt_status_t kvt_tier_get(kvt_tier_t *tier, const kvt_block_key_t *key, kvt_block_header_t *hdr_p,
                          void *dst, size_t cap, kvt_tier_id_t *from_p);
/* How many leading keys are resident; where[i] gets the tier of key i (the
 * fastest one holding it) for i < *n_p.  where may be NULL. */
kvt_status_t kvt_tier_longest_prefix(kvt_tier_t *tier, const kvt_block_key_t *keys, size_t n_keys,
                                     kvt_tier_id_t *where, size_t *n_p);
/* Pin in T1, promoting from T2 first when needed (a disk read). */
kvt_status_t kvt_tier_pin(kvt_tier_t *tier, const kvt_block_key_t *key, kvt_block_view_t *view_p);
/* Pin in T1 only; never reads the disk, so a network thread may call it.
 * KVT_OK pinned; KVT_ERR_AGAIN when only T2 holds the block (promote it
 * with kvt_tier_pin_promote, off that thread); KVT_ERR_NOT_FOUND when
 * neither tier does. */
kvt_status_t kvt_tier_pin_resident(kvt_tier_t *tier, const kvt_block_key_t *key,
                                   kvt_block_view_t *view_p);
/* kvt_tier_pin for a block that kvt_tier_pin_resident found only in T2:
 * the same, except that the T1 miss is not counted again (a block that
 * reached T1 meanwhile is pinned as it is). */
kvt_status_t kvt_tier_pin_promote(kvt_tier_t *tier, const kvt_block_key_t *key,
                                  kvt_block_view_t *view_p);
void kvt_tier_unpin(kvt_tier_t *tier, const kvt_block_view_t *view);
/* Wait until the write-behind queue is empty and T2 is durable. */
kvt_status_t kvt_tier_flush(kvt_tier_t *tier);
void kvt_tier_stats(kvt_tier_t *tier, kvt_tier_stats_all_t *stats_p);
const kvt_block_identity_t *kvt_tier_identity(const kvt_tier_t *tier);
kvt_host_pool_t *kvt_tier_host(kvt_tier_t *tier);
kvt_disk_tier_t *kvt_tier_disk(kvt_tier_t *tier);

#endif
