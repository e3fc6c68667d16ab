/* Min-heap of (tick, id) used as the eviction order of a tier.
 *
 * A tier keeps in it exactly the blocks that may be evicted now: unpinned
 * leaves (no resident child).  The smallest tick is the least recently used
 * such block.  Positions live in an array the caller owns (`pos[id]`,
 * KVT_LRU_NONE when absent), so the tier can keep them in its per-block
 * metadata.  Not thread-safe. */
#ifndef KVT_KVSTORE_LRU_HEAP_H
#define KVT_KVSTORE_LRU_HEAP_H

#include "common/status.h"

#include <stdbool.h>
#include <stdint.h>

#define KVT_LRU_NONE UINT32_MAX

typedef struct {
    uint64_t tick;
    uint32_t id;
} kvt_lru_item_t;

typedef struct {
    kvt_lru_item_t *items; /* private */
    uint32_t n;            /* read-only */
    uint32_t cap;          /* private */
} kvt_lru_heap_t;

void kvt_lru_heap_init(kvt_lru_heap_t *heap);
void kvt_lru_heap_cleanup(kvt_lru_heap_t *heap);
/* Insert id (must be absent); KVT_ERR_NOMEM if growing fails. */
kvt_status_t kvt_lru_heap_push(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t id, uint64_t tick);
/* Remove id if present. */
void kvt_lru_heap_remove(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t id);
/* Pop the least recent id; false when empty. */
bool kvt_lru_heap_pop(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t *id_p);
/* Change the tick of a present id. */
void kvt_lru_heap_update(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t id, uint64_t tick);

#endif
