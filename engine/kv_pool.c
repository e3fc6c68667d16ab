/* The engine's paged KV pool; see kv_poolInt.h for the slot states.
 *
 * Bookkeeping that keeps the pool prefix-closed: an indexed block records
 * its parent's slot and the parent counts its resident children.  Only a
 * block with refs == 0 and no resident child sits in the eviction heap;
 * evicting it decrements its parent's count, which may make the parent
 * the next evictable leaf.  A parent can therefore never leave before its
 * children, and a child is only indexed when its parent is (publish and
 * put check it). */
#include "engine/kv_poolInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <string.h>

static uint64_t tick(kvt_kv_pool_t *pool) { return ++pool->clock; }

static bool evictable(const kvt_kv_slot_t *s)
{
    return s->state == KVT_SLOT_INDEXED && s->refs == 0 && s->n_children == 0;
}

/* The heap never grows after init (it was reserved for n_slots), so push
 * cannot fail here. */
static void heap_add(kvt_kv_pool_t *pool, uint32_t slot)
{
    (void)kvt_lru_heap_push(&pool->lru, pool->heap_pos, slot, pool->slots[slot].tick);
}

/* Grow the heap's array to n entries once, through its own API. */
static kvt_status_t heap_reserve(kvt_kv_pool_t *pool, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        kvt_status_t st = kvt_lru_heap_push(&pool->lru, pool->heap_pos, i, 0);
        if (st != KVT_OK)
            return st;
    }
    uint32_t id;
    while (kvt_lru_heap_pop(&pool->lru, pool->heap_pos, &id))
        ;
    return KVT_OK;
}

static kvt_status_t pool_init(kvt_kv_pool_t *pool, const kvt_block_layout_t *layout,
                              uint32_t n_slots, bool external)
{
    memset(pool, 0, sizeof(*pool));
    uint64_t payload = kvt_block_layout_payload_bytes(layout);
    if (payload == 0 || n_slots == 0)
        return KVT_ERR_INVALID;
    pool->layout = *layout;
    pool->payload_len = payload;
    pool->stride = (size_t)((payload + 63) & ~(uint64_t)63);
    if ((uint64_t)n_slots > SIZE_MAX / 2 / pool->stride)
        return KVT_ERR_TOO_LARGE;
    pool->n_slots = n_slots;
    pool->region_len = (size_t)n_slots * pool->stride;
    pool->region_external = external;
    pool->region = external ? NULL : kvt_alloc_large("kv_pool.region", pool->region_len);
    pool->slots = kvt_calloc("kv_pool.slots", n_slots, sizeof(*pool->slots));
    pool->heap_pos = kvt_malloc("kv_pool.heap_pos", (size_t)n_slots * sizeof(uint32_t));
    pool->free_stack = kvt_malloc("kv_pool.free", (size_t)n_slots * sizeof(uint32_t));
    kvt_lru_heap_init(&pool->lru);
    if ((!pool->region && !external) || !pool->slots || !pool->heap_pos || !pool->free_stack)
        goto err_free;
    for (uint32_t i = 0; i < n_slots; i++) {
        pool->heap_pos[i] = KVT_LRU_NONE;
        pool->slots[i].parent_slot = KVT_SLOT_NONE;
        /* Pop order 0, 1, 2...: the first slots are used first. */
        pool->free_stack[i] = n_slots - 1 - i;
    }
    pool->n_free = n_slots;
    if (heap_reserve(pool, n_slots) != KVT_OK)
        goto err_free;
    if (kvt_keymap_init(&pool->index, n_slots) != KVT_OK)
        goto err_free;
    return KVT_OK;

err_free:
    kvt_lru_heap_cleanup(&pool->lru);
    kvt_free(pool->free_stack);
    kvt_free(pool->heap_pos);
    kvt_free(pool->slots);
    if (!external)
        kvt_free_large(pool->region, pool->region_len);
    memset(pool, 0, sizeof(*pool));
    return KVT_ERR_NOMEM;
}

kvt_status_t kvt_kv_pool_init(kvt_kv_pool_t *pool, const kvt_block_layout_t *layout,
                              uint32_t n_slots)
{
    return pool_init(pool, layout, n_slots, false);
}

kvt_status_t kvt_kv_pool_init_meta(kvt_kv_pool_t *pool, const kvt_block_layout_t *layout,
                                   uint32_t n_slots)
{
    return pool_init(pool, layout, n_slots, true);
}

void kvt_kv_pool_cleanup(kvt_kv_pool_t *pool)
{
    if (!pool->slots)
        return;
    kvt_keymap_cleanup(&pool->index);
    kvt_lru_heap_cleanup(&pool->lru);
    kvt_free(pool->free_stack);
    kvt_free(pool->heap_pos);
    kvt_free(pool->slots);
    if (!pool->region_external)
        kvt_free_large(pool->region, pool->region_len);
    memset(pool, 0, sizeof(*pool));
}

/* Tell the owner (a node publishing KV events) that a key entered or left
 * the index (tier T0). */
static void emit(const kvt_kv_pool_t *pool, kvt_event_kind_t kind, const kvt_kv_slot_t *s)
{
    if (!pool->on_event)
        return;
    kvt_block_event_t ev = {.seq = kvt_event_seq_next(), .kind = kind, .tier = KVT_TIER_GPU,
                            .key = s->key, .parent = s->parent, .index = s->index};
    pool->on_event(&ev, pool->event_arg);
}

/* Remove an evictable leaf from the index; its parent may become one. */
static void evict(kvt_kv_pool_t *pool, uint32_t slot)
{
    kvt_kv_slot_t *s = &pool->slots[slot];
    emit(pool, KVT_EVENT_EVICTED, s);
    kvt_keymap_del(&pool->index, &s->key);
    if (s->parent_slot != KVT_SLOT_NONE) {
        kvt_kv_slot_t *p = &pool->slots[s->parent_slot];
        p->n_children--;
        if (evictable(p))
            heap_add(pool, s->parent_slot);
    }
    s->parent_slot = KVT_SLOT_NONE;
    s->state = KVT_SLOT_FREE;
    pool->evictions++;
}

kvt_status_t kvt_kv_pool_alloc(kvt_kv_pool_t *pool, uint32_t *slot_p)
{
    uint32_t slot;
    if (pool->n_free > 0) {
        slot = pool->free_stack[--pool->n_free];
    } else if (kvt_lru_heap_pop(&pool->lru, pool->heap_pos, &slot)) {
        evict(pool, slot);
    } else {
        return KVT_ERR_FULL;
    }
    kvt_kv_slot_t *s = &pool->slots[slot];
    memset(s, 0, sizeof(*s));
    s->state = KVT_SLOT_PRIVATE;
    s->refs = 1;
    s->parent_slot = KVT_SLOT_NONE;
    s->tick = tick(pool);
    *slot_p = slot;
    return KVT_OK;
}

uint32_t kvt_kv_pool_find(const kvt_kv_pool_t *pool, const kvt_block_key_t *key)
{
    uint32_t slot;
    return kvt_keymap_get(&pool->index, key, &slot) ? slot : KVT_SLOT_NONE;
}

void kvt_kv_pool_ref(kvt_kv_pool_t *pool, uint32_t slot)
{
    kvt_kv_slot_t *s = &pool->slots[slot];
    if (s->refs++ == 0)
        kvt_lru_heap_remove(&pool->lru, pool->heap_pos, slot);
    s->tick = tick(pool);
}

void kvt_kv_pool_unref(kvt_kv_pool_t *pool, uint32_t slot)
{
    kvt_kv_slot_t *s = &pool->slots[slot];
    if (--s->refs > 0)
        return;
    s->tick = tick(pool);
    if (s->state == KVT_SLOT_PRIVATE) {
        s->state = KVT_SLOT_FREE;
        pool->free_stack[pool->n_free++] = slot;
    } else if (evictable(s)) {
        heap_add(pool, slot);
    }
}

uint32_t kvt_kv_pool_publish(kvt_kv_pool_t *pool, uint32_t slot, const kvt_block_key_t *key,
                             const kvt_block_key_t *parent, uint32_t index)
{
    uint32_t existing = kvt_kv_pool_find(pool, key);
    if (existing != KVT_SLOT_NONE) {
        kvt_kv_pool_ref(pool, existing);
        kvt_kv_pool_unref(pool, slot);
        return existing;
    }
    kvt_kv_slot_t *s = &pool->slots[slot];
    s->state = KVT_SLOT_INDEXED;
    s->key = *key;
    s->parent = *parent;
    s->index = index;
    s->n_children = 0;
    /* Sized for n_slots at init: cannot grow, cannot fail. */
    (void)kvt_keymap_put(&pool->index, key, slot);
    emit(pool, KVT_EVENT_STORED, s);
    s->parent_slot = index > 0 ? kvt_kv_pool_find(pool, parent) : KVT_SLOT_NONE;
    if (s->parent_slot != KVT_SLOT_NONE) {
        kvt_kv_slot_t *p = &pool->slots[s->parent_slot];
        if (p->n_children++ == 0 && p->refs == 0)
            kvt_lru_heap_remove(&pool->lru, pool->heap_pos, s->parent_slot);
    }
    return slot;
}

kvt_status_t kvt_kv_pool_put_verify(const kvt_kv_pool_t *pool, const kvt_block_identity_t *id,
                                    const kvt_block_header_t *hdr, const void *payload,
                                    size_t payload_len)
{
    kvt_status_t st = kvt_block_header_check_identity(hdr, id);
    if (st == KVT_OK)
        st = kvt_block_header_check_key(hdr);
    /* The slot takes payload_len bytes of the layout: a header that claims
     * fewer must not make the copy read past the caller's image. */
    if (st == KVT_OK && hdr->payload_len != pool->payload_len)
        st = KVT_ERR_CORRUPT;
    if (st == KVT_OK)
        st = kvt_block_payload_verify(hdr, payload, payload_len);
    return st;
}

static kvt_status_t put_check(const kvt_kv_pool_t *pool, const kvt_block_identity_t *id,
                              const kvt_block_header_t *hdr, const void *payload,
                              size_t payload_len, uint32_t *parent_slot_p)
{
    /* payload NULL: the caller ran these checks (kvt_kv_pool_put_begin). */
    kvt_status_t st = payload ? kvt_kv_pool_put_verify(pool, id, hdr, payload, payload_len)
                              : KVT_OK;
    if (st != KVT_OK) {
        kvt_log_warn("kv pool put rejected index=%u err=%s", hdr->index, kvt_status_str(st));
        return st;
    }
    if (kvt_kv_pool_find(pool, &hdr->key) != KVT_SLOT_NONE)
        return KVT_ERR_EXISTS;
    *parent_slot_p = KVT_SLOT_NONE;
    if (hdr->index > 0) {
        uint32_t ps = kvt_kv_pool_find(pool, &hdr->parent);
        if (ps == KVT_SLOT_NONE)
            return KVT_ERR_NO_PARENT;
        if (pool->slots[ps].index + 1 != hdr->index) {
            kvt_log_warn("kv pool put rejected: index does not follow the parent's index=%u "
                         "parent_index=%u", hdr->index, pool->slots[ps].index);
            return KVT_ERR_CORRUPT;
        }
        *parent_slot_p = ps;
    }
    return KVT_OK;
}

kvt_status_t kvt_kv_pool_put_begin(kvt_kv_pool_t *pool, const kvt_block_identity_t *id,
                                   const kvt_block_header_t *hdr, const void *payload,
                                   size_t payload_len, uint32_t *slot_p, uint32_t *parent_p)
{
    uint32_t ps, slot;
    kvt_status_t st = put_check(pool, id, hdr, payload, payload_len, &ps);
    if (st != KVT_OK)
        return st;
    /* Hold the parent so that making room cannot evict it. */
    if (ps != KVT_SLOT_NONE)
        kvt_kv_pool_ref(pool, ps);
    st = kvt_kv_pool_alloc(pool, &slot);
    if (st != KVT_OK) {
        if (ps != KVT_SLOT_NONE)
            kvt_kv_pool_unref(pool, ps);
        return st;
    }
    kvt_kv_pool_publish(pool, slot, &hdr->key, &hdr->parent, hdr->index);
    *slot_p = slot;
    *parent_p = ps;
    return KVT_OK;
}

void kvt_kv_pool_put_end(kvt_kv_pool_t *pool, uint32_t slot, uint32_t parent)
{
    kvt_kv_pool_unref(pool, slot);
    if (parent != KVT_SLOT_NONE)
        kvt_kv_pool_unref(pool, parent);
}

void kvt_kv_pool_put_abort(kvt_kv_pool_t *pool, uint32_t slot, uint32_t parent)
{
    kvt_kv_slot_t *s = &pool->slots[slot];
    /* Published by begin, still held (refs 1) and childless: it leaves the
     * index as an eviction would, then goes back to the free stack. */
    emit(pool, KVT_EVENT_DROPPED, s);
    kvt_keymap_del(&pool->index, &s->key);
    if (s->parent_slot != KVT_SLOT_NONE) {
        kvt_kv_slot_t *p = &pool->slots[s->parent_slot];
        p->n_children--;
        if (evictable(p))
            heap_add(pool, s->parent_slot);
    }
    s->parent_slot = KVT_SLOT_NONE;
    s->refs = 0;
    s->state = KVT_SLOT_FREE;
    pool->free_stack[pool->n_free++] = slot;
    if (parent != KVT_SLOT_NONE)
        kvt_kv_pool_unref(pool, parent);
}

kvt_status_t kvt_kv_pool_put(kvt_kv_pool_t *pool, const kvt_block_identity_t *id,
                             const kvt_block_header_t *hdr, const void *payload,
                             size_t payload_len)
{
    uint32_t ps, slot;
    if (!payload)
        return KVT_ERR_INVALID;
    kvt_status_t st = kvt_kv_pool_put_begin(pool, id, hdr, payload, payload_len, &slot, &ps);
    if (st != KVT_OK)
        return st;
    memcpy(kvt_kv_pool_data(pool, slot), payload, pool->payload_len);
    kvt_kv_pool_put_end(pool, slot, ps);
    return KVT_OK;
}

size_t kvt_kv_pool_match(const kvt_kv_pool_t *pool, const kvt_block_key_t *keys, size_t n)
{
    size_t i = 0;
    while (i < n && kvt_kv_pool_find(pool, &keys[i]) != KVT_SLOT_NONE)
        i++;
    return i;
}

void kvt_kv_pool_stats(const kvt_kv_pool_t *pool, uint32_t *used_p, uint32_t *total_p,
                       uint32_t *indexed_p)
{
    if (used_p)
        *used_p = pool->n_slots - pool->n_free;
    if (total_p)
        *total_p = pool->n_slots;
    if (indexed_p)
        *indexed_p = pool->index.count;
}

static bool check_slot(const kvt_kv_pool_t *pool, uint32_t i, uint32_t *children)
{
    const kvt_kv_slot_t *s = &pool->slots[i];
    bool in_heap = pool->heap_pos[i] != KVT_LRU_NONE;
    if (in_heap != evictable(s)) {
        kvt_log_error("kv pool check: heap membership slot=%u refs=%u children=%u in_heap=%d", i,
                      s->refs, s->n_children, in_heap);
        return false;
    }
    if (s->state == KVT_SLOT_PRIVATE && s->refs != 1) {
        kvt_log_error("kv pool check: private slot=%u refs=%u", i, s->refs);
        return false;
    }
    if (s->state != KVT_SLOT_INDEXED)
        return true;
    if (kvt_kv_pool_find(pool, &s->key) != i) {
        kvt_log_error("kv pool check: index does not map key to slot=%u", i);
        return false;
    }
    if (s->index > 0) {
        uint32_t ps = kvt_kv_pool_find(pool, &s->parent);
        if (ps == KVT_SLOT_NONE || ps != s->parent_slot) {
            kvt_log_error("kv pool check: parent of slot=%u not resident (prefix closure)", i);
            return false;
        }
        children[ps]++;
    }
    return true;
}

bool kvt_kv_pool_check(const kvt_kv_pool_t *pool)
{
    uint32_t *children = kvt_calloc("kv_pool.check", pool->n_slots, sizeof(uint32_t));
    if (!children)
        return false;
    bool ok = true;
    uint32_t n_free = 0, n_indexed = 0;
    for (uint32_t i = 0; i < pool->n_slots && ok; i++) {
        ok = check_slot(pool, i, children);
        n_free += pool->slots[i].state == KVT_SLOT_FREE;
        n_indexed += pool->slots[i].state == KVT_SLOT_INDEXED;
    }
    for (uint32_t i = 0; i < pool->n_slots && ok; i++) {
        if (children[i] != pool->slots[i].n_children) {
            kvt_log_error("kv pool check: slot=%u children=%u counted=%u", i,
                          pool->slots[i].n_children, children[i]);
            ok = false;
        }
    }
    if (ok && (n_free != pool->n_free || n_indexed != pool->index.count)) {
        kvt_log_error("kv pool check: free=%u/%u indexed=%u/%u", n_free, pool->n_free, n_indexed,
                      pool->index.count);
        ok = false;
    }
    kvt_free(children);
    return ok;
}
