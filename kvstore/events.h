/* Types shared by the tiers: tier ids, stored/evicted events and stats.
 *
 * Event callbacks run on the thread that caused the event, with no tier lock
 * held; they must be quick and must not call back into the same tier. */
#ifndef KVT_KVSTORE_EVENTS_H
#define KVT_KVSTORE_EVENTS_H

#include "kvstore/block.h"

#include <stdint.h>

typedef enum {
    KVT_TIER_NONE = -1,
    KVT_TIER_GPU = 0,  /* T0 */
    KVT_TIER_HOST = 1, /* T1 */
    KVT_TIER_DISK = 2, /* T2 */
} kvt_tier_id_t;

typedef enum {
    KVT_EVENT_STORED = 1,
    KVT_EVENT_EVICTED = 2, /* removed for capacity */
    KVT_EVENT_DROPPED = 3, /* removed because it (or an ancestor) was corrupt */
} kvt_event_kind_t;

typedef struct {
    uint64_t seq; /* process-wide, taken under the lock that orders changes to
                     this key in its tier: callbacks may run out of order
                     across threads, so consumers order one key's events by
                     seq (kvt_event_seq_next) */
    kvt_event_kind_t kind;
    kvt_tier_id_t tier;
    kvt_block_key_t key;
    kvt_block_key_t parent;
    uint32_t index;
} kvt_block_event_t;

typedef void (*kvt_block_event_fn)(const kvt_block_event_t *event, void *arg);

typedef struct {
    uint64_t blocks;
    uint64_t bytes;          /* header + payload bytes held */
    uint64_t capacity_bytes;
    uint64_t hits;
    uint64_t misses;
    uint64_t puts;           /* blocks newly stored */
    uint64_t evictions;
    uint64_t corrupt;        /* blocks found corrupt and dropped */
    uint64_t no_parent;      /* puts refused: parent not resident */
    uint64_t pinned;         /* blocks currently pinned */
} kvt_tier_stats_t;

const char *kvt_tier_name(kvt_tier_id_t tier);
/* The next event sequence number (atomic). */
uint64_t kvt_event_seq_next(void);

#endif
