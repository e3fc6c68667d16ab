/* The engine's paged KV pool (T0): block slots, the content index and the
 * eviction order.  Engine-internal (the public face is engine.h's pool_*
 * calls); single-threaded -- the engine is driven by one caller at a time.
 *
 * Slots: n_slots block images in one page-aligned region, each in the
 * layout of invariant 2 ([layer][K,V][token][kv_head][head_dim], KV dtype),
 * `stride` bytes apart.  A slot is
 *   FREE     on the free stack;
 *   PRIVATE  a sequence's partial tail block: unkeyed, refs == 1, written
 *            only by its sequence, freed when released;
 *   INDEXED  a full block under its content key, shared by refcount; with
 *            refs == 0 it is a cached block, evictable once it has no
 *            resident child.
 * The eviction heap holds exactly the INDEXED slots with refs == 0 and
 * n_children == 0 (unreferenced leaves), least recently used first, so
 * eviction removes leaves before their parents and the indexed set stays
 * prefix-closed (invariant 4).
 *
 * Nothing here fails after init except alloc (KVT_ERR_FULL: every slot is
 * referenced or an interior block) and put: the index and the heap are
 * sized for n_slots entries at init, so they never grow later. */
#ifndef KVT_ENGINE_KV_POOL_INT_H
#define KVT_ENGINE_KV_POOL_INT_H

#include "kvstore/block.h"
#include "kvstore/events.h"
#include "kvstore/keymap.h"
#include "kvstore/lru_heap.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVT_SLOT_NONE UINT32_MAX

enum { KVT_SLOT_FREE = 0, KVT_SLOT_PRIVATE = 1, KVT_SLOT_INDEXED = 2 };

typedef struct {
    kvt_block_key_t key;    /* INDEXED: its content key */
    kvt_block_key_t parent; /* INDEXED: the parent's key (the root for block 0) */
    uint64_t tick;          /* last access, for LRU */
    uint32_t index;         /* INDEXED: block index in its chain */
    uint32_t refs;
    uint32_t n_children;    /* INDEXED children resident in the pool */
    uint32_t parent_slot;   /* the parent's slot while this block is indexed, or NONE */
    uint8_t state;
} kvt_kv_slot_t;

typedef struct {
    kvt_block_layout_t layout;
    uint64_t payload_len; /* bytes of one block image */
    size_t stride;        /* bytes between slots (payload_len rounded up to 64) */
    uint32_t n_slots;
    uint8_t *region;      /* host memory, or device memory when region_external */
    size_t region_len;
    bool region_external; /* region belongs to the caller (the GPU engine) */
    kvt_kv_slot_t *slots;
    uint32_t *heap_pos;   /* per slot: position in lru, KVT_LRU_NONE if absent */
    kvt_keymap_t index;   /* key -> slot of INDEXED blocks */
    kvt_lru_heap_t lru;   /* unreferenced indexed leaves */
    uint32_t *free_stack;
    uint32_t n_free;
    uint64_t clock;
    uint64_t evictions;
    kvt_block_event_fn on_event; /* may be NULL: keys entering/leaving the index */
    void *event_arg;
} kvt_kv_pool_t;

/* KVT_ERR_INVALID (bad layout, n_slots 0), KVT_ERR_TOO_LARGE (region over
 * the address space), KVT_ERR_NOMEM. */
kvt_status_t kvt_kv_pool_init(kvt_kv_pool_t *pool, const kvt_block_layout_t *layout,
                              uint32_t n_slots);
/* The same without the region: region stays NULL and region_external is
 * set; the caller points region at region_len bytes it owns (the GPU
 * engine: device memory, which this module never dereferences except in
 * kvt_kv_pool_put, which the GPU engine does not call). */
kvt_status_t kvt_kv_pool_init_meta(kvt_kv_pool_t *pool, const kvt_block_layout_t *layout,
                                   uint32_t n_slots);
void kvt_kv_pool_cleanup(kvt_kv_pool_t *pool);

static inline uint8_t *kvt_kv_pool_data(const kvt_kv_pool_t *pool, uint32_t slot)
{
    return pool->region + (size_t)slot * pool->stride;
}

/* A PRIVATE slot with refs 1: a free one, else the least recently used
 * unreferenced leaf is evicted for it.  KVT_ERR_FULL when neither exists. */
kvt_status_t kvt_kv_pool_alloc(kvt_kv_pool_t *pool, uint32_t *slot_p);
/* The slot of an indexed key, or KVT_SLOT_NONE.  No side effects. */
uint32_t kvt_kv_pool_find(const kvt_kv_pool_t *pool, const kvt_block_key_t *key);
/* Take / drop a reference.  Dropping the last one frees a PRIVATE slot and
 * makes an INDEXED leaf evictable. */
void kvt_kv_pool_ref(kvt_kv_pool_t *pool, uint32_t slot);
void kvt_kv_pool_unref(kvt_kv_pool_t *pool, uint32_t slot);
/* Give a filled PRIVATE slot (held by the caller) its key.  Block `index`
 * > 0 must have its parent indexed.  If the key is indexed already (another
 * sequence computed the same block), the private slot is freed and the
 * caller holds a reference on the indexed one instead.  Returns the slot
 * the caller now holds. */
uint32_t kvt_kv_pool_publish(kvt_kv_pool_t *pool, uint32_t slot, const kvt_block_key_t *key,
                             const kvt_block_key_t *parent, uint32_t index);
/* Copy a block image in as an unreferenced cached block (engine.h's
 * kvt_engine_pool_put: identity, key, checksum and parent are verified). */
kvt_status_t kvt_kv_pool_put(kvt_kv_pool_t *pool, const kvt_block_identity_t *id,
                             const kvt_block_header_t *hdr, const void *payload,
                             size_t payload_len);
/* kvt_kv_pool_put in three steps, for callers that copy the payload
 * themselves (the GPU engine, batches): begin checks as put does, holds
 * the parent (*parent_p, or KVT_SLOT_NONE), allocates and publishes the
 * slot and returns it referenced (*slot_p) -- its bytes are not written.
 * payload NULL skips kvt_kv_pool_put_verify (the caller ran it).
 * Then either end (the copy is done: drop both references) or abort (the
 * copy failed: unpublish the slot and free it, drop the parent; a batch
 * aborts in reverse order, children before parents). */
/* The checks of put that need no pool state: identity, the key naming its
 * tokens, the payload length and checksum.  Pure, so callers may run it on
 * many blocks in parallel before put_begin(payload NULL). */
kvt_status_t kvt_kv_pool_put_verify(const kvt_kv_pool_t *pool, const kvt_block_identity_t *id,
                                    const kvt_block_header_t *hdr, const void *payload,
                                    size_t payload_len);
kvt_status_t kvt_kv_pool_put_begin(kvt_kv_pool_t *pool, const kvt_block_identity_t *id,
                                   const kvt_block_header_t *hdr, const void *payload,
                                   size_t payload_len, uint32_t *slot_p, uint32_t *parent_p);
void kvt_kv_pool_put_end(kvt_kv_pool_t *pool, uint32_t slot, uint32_t parent);
void kvt_kv_pool_put_abort(kvt_kv_pool_t *pool, uint32_t slot, uint32_t parent);
/* How many leading keys of keys[0..n) are indexed. */
size_t kvt_kv_pool_match(const kvt_kv_pool_t *pool, const kvt_block_key_t *keys, size_t n);
/* Slots not free / total / indexed. */
void kvt_kv_pool_stats(const kvt_kv_pool_t *pool, uint32_t *used_p, uint32_t *total_p,
                       uint32_t *indexed_p);
/* Check every invariant above (tests): refs, children counts, heap
 * membership, free stack, index; false with a log line on the first
 * violation. */
bool kvt_kv_pool_check(const kvt_kv_pool_t *pool);

#endif
