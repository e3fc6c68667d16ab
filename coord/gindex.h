/* The coordinator's global block index (DESIGN.md invariant 7, section 4).
 *
 * Soft state: for each block key, which nodes hold it in which tier, as a
 * 64-bit node mask per tier.  Nodes own their blocks; each sends a snapshot
 * when it connects and ordered deltas after it, and the index is rebuilt from
 * those alone (a restarted coordinator asks every node for a snapshot).
 * Nodes are small slots 0..KVT_GINDEX_MAX_NODES-1 assigned by the
 * coordinator.  Because it is only a hint for routing, the index never fails
 * a node: a STORED event for a new key past max_entries is dropped and
 * counted, and a delta that does not follow on marks the node stale (its
 * entries stay as hints) until its next snapshot.
 *
 * Ownership: the index owns its table; event arrays are borrowed for a call.
 * Memory is bounded by max_entries keys; a key whose masks are all zero is
 * removed and its memory reused.
 *
 * Thread-safety: one rwlock; match, stats and node_stale share it, the
 * mutating calls take it exclusively.  create/destroy are not concurrent with
 * anything else on the same index. */
#ifndef KVT_COORD_GINDEX_H
#define KVT_COORD_GINDEX_H

#include "common/status.h"
#include "kvstore/block.h"
#include "kvstore/events.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVT_GINDEX_MAX_NODES 64
/* Upper bound on max_entries (the table stays below 2^29 slots). */
#define KVT_GINDEX_MAX_ENTRIES (1u << 28)

typedef struct kvt_gindex kvt_gindex_t;

/* One block event of a node: kind STORED, EVICTED or DROPPED (EVICTED and
 * DROPPED both remove the node from that tier of the key); tier GPU, HOST or
 * DISK. */
typedef struct {
    kvt_event_kind_t kind;
    kvt_tier_id_t tier;
    kvt_block_key_t key;
} kvt_gindex_event_t;

/* Create an empty index holding at most max_entries keys (1 ..
 * KVT_GINDEX_MAX_ENTRIES, else KVT_ERR_INVALID); KVT_ERR_NOMEM.  *g_p is set
 * only on success; release with kvt_gindex_destroy. */
kvt_status_t kvt_gindex_create(size_t max_entries, kvt_gindex_t **g_p);

/* Free the index.  NULL is a no-op. */
void kvt_gindex_destroy(kvt_gindex_t *g);

/* Replace everything node `node` holds by the snapshot's blocks (kind STORED
 * each); deltas must continue from seq + 1, and the node is no longer stale.
 * KVT_ERR_INVALID (nothing changed) for node >= KVT_GINDEX_MAX_NODES, a kind
 * other than STORED, or a bad tier.  Keys past max_entries are dropped and
 * counted, not an error.  ev may be NULL when n == 0 (the node holds
 * nothing). */
kvt_status_t kvt_gindex_snapshot(kvt_gindex_t *g, uint32_t node, uint64_t seq,
                                 const kvt_gindex_event_t *ev, size_t n);

/* Apply ordered events.  seq is the delta's sequence number: it must be
 * last + 1 (the first delta after a snapshot at seq S has seq S + 1).  A gap,
 * a delta for a node with no snapshot yet, or any delta while the node is
 * stale -> KVT_ERR_AGAIN and nothing is applied; the node is marked stale
 * (its entries stay as hints) until its next snapshot, which the caller asks
 * the node for.  KVT_ERR_INVALID (nothing applied, staleness unchanged) for
 * node >= KVT_GINDEX_MAX_NODES or a bad kind/tier in any event.  New keys
 * past max_entries are dropped and counted, not an error. */
kvt_status_t kvt_gindex_delta(kvt_gindex_t *g, uint32_t node, uint64_t seq,
                              const kvt_gindex_event_t *ev, size_t n);

/* Forget everything of a node (it died or left); it needs a new snapshot
 * before its deltas apply again.  Out-of-range nodes are ignored. */
void kvt_gindex_drop_node(kvt_gindex_t *g, uint32_t node);

/* What one node holds of a chain: `prefix` leading keys held in any tier; of
 * those, how many are best served from each tier (GPU < HOST < DISK in
 * preference), so n_gpu + n_host + n_disk == prefix. */
typedef struct {
    uint32_t prefix;
    uint32_t n_gpu, n_host, n_disk;
} kvt_gindex_match_t;

/* For every node slot n: out[n] = how many leading keys of keys[0..n_keys)
 * node n holds (in any tier), with the per-tier counts.  out has
 * KVT_GINDEX_MAX_NODES entries, all written.  O(n_keys) lookups: walks the
 * chain keeping the mask of nodes still matching and stops when it empties.
 * Cannot fail. */
void kvt_gindex_match(kvt_gindex_t *g, const kvt_block_key_t *keys, size_t n_keys,
                      kvt_gindex_match_t *out);

typedef struct {
    uint64_t entries;      /* keys held now */
    uint64_t dropped_full; /* STORED events for new keys dropped: max_entries
                              reached (or the table could not grow) */
    uint64_t gaps;         /* deltas refused with KVT_ERR_AGAIN */
    uint64_t snapshots;    /* snapshots applied */
    uint64_t deltas;       /* deltas applied */
} kvt_gindex_stats_t;

/* A consistent snapshot of the counters. */
void kvt_gindex_stats(kvt_gindex_t *g, kvt_gindex_stats_t *stats_p);

/* true while the node's deltas are refused after a gap (or a delta before
 * its first snapshot) and no snapshot has come since.  false for a node never
 * heard of, a dropped node, and out-of-range nodes. */
bool kvt_gindex_node_stale(kvt_gindex_t *g, uint32_t node);

#endif
