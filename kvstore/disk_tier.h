/* T2: the RocksDB tier on local disk.
 *
 * One DB directory, one column family, three key families
 * (kvstore/disk_tierInt.h):
 *   "identity", "counters"  the tier's layout + model fingerprint (a DB
 *                           holds one model) and lifetime counters;
 *   'b' || key[32]          block image (encoded header || payload), in
 *                           blob files;
 *   'm' || key[32]          meta record (parent, index, bytes, access tick,
 *                           checksum), read at open to rebuild the
 *                           in-memory index without touching the payloads.
 * A block's image and meta are written in one WriteBatch with the WAL on, so
 * a crash leaves both or neither.  One column family because with several
 * RocksDB syncs every closed WAL before a flush, writing payloads twice.
 *
 * Capacity counts image bytes.  Eviction is leaf-first LRU (unpinned blocks
 * with no resident child, oldest access first), so the stored set stays
 * prefix-closed; access ticks are persisted lazily in meta, so the order
 * survives a restart approximately.  Every read checks the header, the
 * key, the identity and the payload checksum; a bad block is reported,
 * dropped with all its descendants (prefix closure) and never returned.
 *
 * Thread-safe: one mutex guards the in-memory index; RocksDB I/O runs
 * outside it. */
#ifndef KVT_KVSTORE_DISK_TIER_H
#define KVT_KVSTORE_DISK_TIER_H

#include "kvstore/events.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvt_disk_tier kvt_disk_tier_t;

typedef struct {
    const char *path;                      /* DB directory */
    const kvt_block_identity_t *identity;  /* NULL: adopt the stored one */
    uint64_t capacity_bytes;               /* 0: unlimited */
    bool create_if_missing;                /* needs identity */
    bool sync_writes;                      /* fsync the WAL on every put */
    bool read_only;                        /* open without the DB lock (tools on a
                                              live node's DB); puts fail, nothing
                                              is written, verify cannot repair */
    kvt_block_event_fn on_event;           /* may be NULL */
    void *event_arg;
} kvt_disk_tier_params_t;

typedef struct {
    uint64_t blocks;
    uint64_t ok;
    uint64_t corrupt;
    uint64_t bytes;     /* image bytes read */
    uint64_t orphans;   /* blocks whose parent is absent (prefix closure broken) */
    uint64_t repaired;  /* blocks removed by --repair */
} kvt_disk_verify_report_t;

/* Open (and with create_if_missing, create) the DB.  KVT_ERR_MISMATCH if
 * the stored identity differs from params->identity, KVT_ERR_NOT_FOUND if
 * there is no DB and create_if_missing is false, KVT_ERR_IO otherwise. */
kvt_status_t kvt_disk_tier_open(const kvt_disk_tier_params_t *params, kvt_disk_tier_t **tier_p);
/* Persists pending access ticks, flushes and closes. */
void kvt_disk_tier_close(kvt_disk_tier_t *tier);

/* Store a block.  KVT_OK also when already present.  KVT_ERR_NO_PARENT if
 * the parent is not stored (block index > 0), KVT_ERR_FULL if the capacity
 * cannot be freed, KVT_ERR_MISMATCH / KVT_ERR_CORRUPT on a bad block. */
kvt_status_t kvt_disk_tier_put(kvt_disk_tier_t *tier, const kvt_block_header_t *hdr,
                               const void *payload);
/* Read and verify a block.  KVT_ERR_NOT_FOUND, KVT_ERR_CORRUPT (dropped),
 * KVT_ERR_TOO_LARGE if cap is short. */
kvt_status_t kvt_disk_tier_get(kvt_disk_tier_t *tier, const kvt_block_key_t *key,
                               kvt_block_header_t *hdr_p, void *dst, size_t cap);
bool kvt_disk_tier_contains(kvt_disk_tier_t *tier, const kvt_block_key_t *key);
/* Pinned blocks are not evicted. */
kvt_status_t kvt_disk_tier_pin(kvt_disk_tier_t *tier, const kvt_block_key_t *key);
void kvt_disk_tier_unpin(kvt_disk_tier_t *tier, const kvt_block_key_t *key);

/* Counters (hits, misses, puts, evictions, corrupt, no_parent) are
 * lifetime totals: persisted in the default column family at flush and
 * close, and loaded at open. */
void kvt_disk_tier_stats(kvt_disk_tier_t *tier, kvt_tier_stats_t *stats_p);
const kvt_block_identity_t *kvt_disk_tier_identity(const kvt_disk_tier_t *tier);

/* Make everything written so far durable (WAL sync + memtable flush). */
kvt_status_t kvt_disk_tier_flush(kvt_disk_tier_t *tier);

/* Visit every stored block's header in key order.  RocksDB 7.8 iterators
 * load blob values, so this reads every payload (it does not check them).
 * Stops early and returns the callback's status if it is not KVT_OK. */
typedef kvt_status_t (*kvt_disk_visit_fn)(const kvt_block_header_t *hdr, uint64_t image_bytes,
                                          void *arg);
kvt_status_t kvt_disk_tier_foreach(kvt_disk_tier_t *tier, kvt_disk_visit_fn fn, void *arg);

/* Visit every resident block's key, parent and index from the in-memory
 * index (no disk reads; tier == KVT_TIER_DISK, kind STORED) -- the
 * snapshot a node sends its coordinator.  fn runs with the tier's lock
 * held: it must be quick and must not call the tier. */
void kvt_disk_tier_resident(kvt_disk_tier_t *tier, kvt_block_event_fn fn, void *arg);

/* Read every block and check header, key, identity, checksum, meta record
 * and prefix closure.  Removes nothing unless repair (then bad blocks and
 * their descendants are deleted).  Returns KVT_OK when the scan ran, even if
 * it found corruption; the report says what it found. */
kvt_status_t kvt_disk_tier_verify(kvt_disk_tier_t *tier, bool repair,
                                  kvt_disk_verify_report_t *report_p);

#endif
