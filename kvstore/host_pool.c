/* T1 host pool: sharded content index over one region of equal-size slots.
 *
 * Memory: `region` holds n_slots payloads of `stride` bytes (page-aligned
 * mapping of a sealed memfd, so it can be pinned and registered later and
 * mapped by a same-host client); `headers` holds each
 * slot's encoded header; `meta` the per-slot bookkeeping.  A slot is FREE
 * (on the free stack), RESERVED (owned by one writer or being recycled) or
 * RESIDENT (in exactly one shard's index, chosen by its key).
 *
 * Locks: each shard's mutex guards its index, its eviction heap and the
 * meta of the slots resident in it; the free stack has its own mutex.  No
 * thread holds two locks at once: operations that touch a parent in another
 * shard (reserving it, releasing it after an eviction) drop their own lock
 * first.  Reserving the parent before a child is indexed keeps the parent
 * from being evicted in between, which is what keeps the pool prefix-closed.
 *
 * Eviction: the victim is the least recent unpinned leaf among all shards'
 * heap minima, so the order is close to a global LRU. */
#include "kvstore/host_pool.h"

#include "common/alloc.h"
#include "common/log.h"
#include "kvstore/keymap.h"
#include "kvstore/lru_heap.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

enum { SLOT_FREE = 0, SLOT_RESERVED = 1, SLOT_RESIDENT = 2 };

typedef struct {
    kvt_block_key_t key;
    kvt_block_key_t parent;
    uint64_t tick;
    uint64_t checksum;
    uint32_t index;
    uint32_t pins;
    uint32_t n_children; /* resident children */
    uint8_t state;
} slot_meta_t;

typedef struct {
    pthread_mutex_t lock;
    kvt_keymap_t index;  /* key -> slot */
    kvt_lru_heap_t lru;  /* unpinned resident leaves */
    uint64_t hits, misses, puts, evictions, no_parent, corrupt, pinned;
} shard_t;

struct kvt_host_pool {
    kvt_block_identity_t identity;
    uint64_t payload_len;
    size_t header_len;
    size_t stride;
    uint32_t n_slots;
    uint32_t shard_mask;
    shard_t *shards;
    uint8_t *region;
    size_t region_len;
    int region_fd; /* the memfd behind region, or -1 (kvt_alloc_shared) */
    uint8_t *headers;
    slot_meta_t *meta;
    uint32_t *heap_pos; /* per slot: position in its shard's heap */
    pthread_mutex_t free_lock;
    uint32_t *free_stack;
    uint32_t n_free;
    _Atomic uint64_t clock;
    kvt_block_event_fn on_event;
    void *event_arg;
};

static uint64_t next_tick(kvt_host_pool_t *pool)
{
    return atomic_fetch_add_explicit(&pool->clock, 1, memory_order_relaxed) + 1;
}

static shard_t *shard_of(kvt_host_pool_t *pool, const kvt_block_key_t *key)
{
    uint32_t h = (uint32_t)key->b[28] | (uint32_t)key->b[29] << 8 | (uint32_t)key->b[30] << 16 |
                 (uint32_t)key->b[31] << 24;
    return &pool->shards[h & pool->shard_mask];
}

/* Events are made under the shard lock (a snapshot of the slot, which may
 * be reused as soon as the lock is dropped, and an ordered seq) and sent
 * after it is released. */
static kvt_block_event_t event_of(kvt_event_kind_t kind, const slot_meta_t *m)
{
    return (kvt_block_event_t){.seq = kvt_event_seq_next(), .kind = kind, .tier = KVT_TIER_HOST,
                               .key = m->key, .parent = m->parent, .index = m->index};
}

static void emit(kvt_host_pool_t *pool, const kvt_block_event_t *ev)
{
    if (pool->on_event)
        pool->on_event(ev, pool->event_arg);
}

/* Called with the shard locked: the slot may be evicted now iff it is an
 * unpinned resident leaf. */
static void update_evictable(kvt_host_pool_t *pool, shard_t *sh, uint32_t slot)
{
    slot_meta_t *m = &pool->meta[slot];
    bool evictable = m->state == SLOT_RESIDENT && m->pins == 0 && m->n_children == 0;
    bool queued = pool->heap_pos[slot] != KVT_LRU_NONE;
    if (evictable && !queued) {
        if (kvt_lru_heap_push(&sh->lru, pool->heap_pos, slot, m->tick) != KVT_OK)
            kvt_log_warn("host pool block stays unevictable slot=%u reason=heap allocation", slot);
    } else if (!evictable && queued) {
        kvt_lru_heap_remove(&sh->lru, pool->heap_pos, slot);
    }
}

/* --- free slots --- */

static void free_push(kvt_host_pool_t *pool, uint32_t slot)
{
    pool->meta[slot].state = SLOT_FREE;
    pthread_mutex_lock(&pool->free_lock);
    pool->free_stack[pool->n_free++] = slot;
    pthread_mutex_unlock(&pool->free_lock);
}

static bool free_pop(kvt_host_pool_t *pool, uint32_t *slot_p)
{
    pthread_mutex_lock(&pool->free_lock);
    bool ok = pool->n_free > 0;
    if (ok)
        *slot_p = pool->free_stack[--pool->n_free];
    pthread_mutex_unlock(&pool->free_lock);
    return ok;
}

/* --- parent reservations (a child counts as a reservation from reserve on) --- */

/* A child's position must follow its parent's: a header that claims
 * otherwise is refused rather than let it bend the chain. */
static kvt_status_t parent_hold(kvt_host_pool_t *pool, const kvt_block_key_t *parent,
                                uint32_t child_index)
{
    shard_t *sh = shard_of(pool, parent);
    uint32_t slot;
    kvt_status_t st = KVT_OK;
    pthread_mutex_lock(&sh->lock);
    if (!kvt_keymap_get(&sh->index, parent, &slot)) {
        sh->no_parent++;
        st = KVT_ERR_NO_PARENT;
    } else if (pool->meta[slot].index + 1 != child_index) {
        sh->corrupt++;
        st = KVT_ERR_CORRUPT;
    } else {
        pool->meta[slot].n_children++;
        update_evictable(pool, sh, slot);
    }
    pthread_mutex_unlock(&sh->lock);
    return st;
}

static void parent_release(kvt_host_pool_t *pool, const kvt_block_key_t *parent)
{
    shard_t *sh = shard_of(pool, parent);
    uint32_t slot;
    pthread_mutex_lock(&sh->lock);
    if (kvt_keymap_get(&sh->index, parent, &slot) && pool->meta[slot].n_children > 0) {
        pool->meta[slot].n_children--;
        update_evictable(pool, sh, slot);
    }
    pthread_mutex_unlock(&sh->lock);
}

/* --- eviction --- */

/* The shard whose least recent evictable block is the oldest, or NULL. */
static shard_t *oldest_shard(kvt_host_pool_t *pool)
{
    shard_t *best = NULL;
    uint64_t best_tick = UINT64_MAX;
    for (uint32_t i = 0; i <= pool->shard_mask; i++) {
        shard_t *sh = &pool->shards[i];
        pthread_mutex_lock(&sh->lock);
        if (sh->lru.n > 0 && sh->lru.items[0].tick < best_tick) {
            best_tick = sh->lru.items[0].tick;
            best = sh;
        }
        pthread_mutex_unlock(&sh->lock);
    }
    return best;
}

/* Evict one block and hand its slot to the caller (state RESERVED). */
static bool evict_one(kvt_host_pool_t *pool, uint32_t *slot_p)
{
    /* Another thread may empty the chosen shard first: retry a few times. */
    for (int attempt = 0; attempt < 4; attempt++) {
        shard_t *sh = oldest_shard(pool);
        if (!sh)
            return false;
        uint32_t slot;
        pthread_mutex_lock(&sh->lock);
        bool got = kvt_lru_heap_pop(&sh->lru, pool->heap_pos, &slot);
        slot_meta_t victim = {0};
        kvt_block_event_t ev;
        if (got) {
            victim = pool->meta[slot];
            kvt_keymap_del(&sh->index, &victim.key);
            pool->meta[slot].state = SLOT_RESERVED;
            sh->evictions++;
            ev = event_of(KVT_EVENT_EVICTED, &victim);
        }
        pthread_mutex_unlock(&sh->lock);
        if (!got)
            continue;
        if (victim.index > 0)
            parent_release(pool, &victim.parent);
        emit(pool, &ev);
        *slot_p = slot;
        return true;
    }
    return false;
}

static kvt_status_t slot_alloc(kvt_host_pool_t *pool, uint32_t *slot_p)
{
    if (free_pop(pool, slot_p) || evict_one(pool, slot_p)) {
        pool->meta[*slot_p].state = SLOT_RESERVED;
        return KVT_OK;
    }
    return KVT_ERR_FULL;
}

/* --- create / destroy --- */

static kvt_status_t shards_init(kvt_host_pool_t *pool, uint32_t n_shards)
{
    pool->shards = kvt_calloc("host_pool.shards", n_shards, sizeof(shard_t));
    if (!pool->shards)
        return KVT_ERR_NOMEM;
    pool->shard_mask = n_shards - 1;
    for (uint32_t i = 0; i < n_shards; i++) {
        shard_t *sh = &pool->shards[i];
        pthread_mutex_init(&sh->lock, NULL);
        kvt_lru_heap_init(&sh->lru);
        if (kvt_keymap_init(&sh->index, pool->n_slots / n_shards + 1) != KVT_OK)
            return KVT_ERR_NOMEM;
    }
    return KVT_OK;
}

static uint32_t pick_shards(uint32_t requested, uint32_t n_slots)
{
    uint32_t n = 1;
    uint32_t want = requested ? requested : 16;
    /* Power of two, at most `want`, and at least 8 slots per shard. */
    while (n * 2 <= want && (uint64_t)n * 2 * 8 <= n_slots)
        n *= 2;
    return n;
}

static kvt_status_t arenas_init(kvt_host_pool_t *pool)
{
    pool->region_len = pool->stride * pool->n_slots;
    pool->region = kvt_alloc_shared("kvtier-t1", pool->region_len, &pool->region_fd);
    pool->headers = kvt_malloc("host_pool.headers", pool->header_len * pool->n_slots);
    pool->meta = kvt_calloc("host_pool.meta", pool->n_slots, sizeof(slot_meta_t));
    pool->heap_pos = kvt_malloc("host_pool.heap_pos", sizeof(uint32_t) * pool->n_slots);
    pool->free_stack = kvt_malloc("host_pool.free", sizeof(uint32_t) * pool->n_slots);
    if (!pool->region || !pool->headers || !pool->meta || !pool->heap_pos || !pool->free_stack)
        return KVT_ERR_NOMEM;
    for (uint32_t i = 0; i < pool->n_slots; i++) {
        pool->heap_pos[i] = KVT_LRU_NONE;
        /* Stack order makes slot 0 the first handed out. */
        pool->free_stack[i] = pool->n_slots - 1 - i;
    }
    pool->n_free = pool->n_slots;
    return KVT_OK;
}

kvt_status_t kvt_host_pool_create(const kvt_host_pool_params_t *params, kvt_host_pool_t **pool_p)
{
    uint64_t payload = kvt_block_layout_payload_bytes(&params->identity.layout);
    if (!payload) {
        kvt_log_error("host pool: invalid block layout");
        return KVT_ERR_INVALID;
    }
    uint64_t stride = (payload + 63) & ~63ull;
    uint64_t n_slots = params->capacity_bytes / stride;
    if (n_slots == 0 || n_slots >= UINT32_MAX) {
        kvt_log_error("host pool: capacity gives no usable slot count capacity=%llu block_bytes=%llu",
                      (unsigned long long)params->capacity_bytes, (unsigned long long)payload);
        return KVT_ERR_INVALID;
    }
    kvt_host_pool_t *pool = kvt_calloc("host_pool", 1, sizeof(*pool));
    if (!pool)
        return KVT_ERR_NOMEM;
    pool->identity = params->identity;
    pool->payload_len = payload;
    pool->header_len = kvt_block_header_size(params->identity.layout.block_tokens);
    pool->stride = stride;
    pool->n_slots = (uint32_t)n_slots;
    pool->on_event = params->on_event;
    pool->event_arg = params->event_arg;
    pthread_mutex_init(&pool->free_lock, NULL);
    kvt_status_t st = arenas_init(pool);
    if (st == KVT_OK)
        st = shards_init(pool, pick_shards(params->n_shards, pool->n_slots));
    if (st != KVT_OK) {
        kvt_host_pool_destroy(pool);
        return st;
    }
    *pool_p = pool;
    return KVT_OK;
}

void kvt_host_pool_destroy(kvt_host_pool_t *pool)
{
    if (!pool)
        return;
    for (uint32_t i = 0; pool->meta && i < pool->n_slots; i++)
        if (pool->meta[i].pins)
            kvt_log_warn("host pool destroyed with a pinned block slot=%u pins=%u", i,
                         pool->meta[i].pins);
    for (uint32_t i = 0; pool->shards && i <= pool->shard_mask; i++) {
        kvt_keymap_cleanup(&pool->shards[i].index);
        kvt_lru_heap_cleanup(&pool->shards[i].lru);
        pthread_mutex_destroy(&pool->shards[i].lock);
    }
    kvt_free(pool->shards);
    kvt_free_shared(pool->region, pool->region_len, pool->region_fd);
    kvt_free(pool->headers);
    kvt_free(pool->meta);
    kvt_free(pool->heap_pos);
    kvt_free(pool->free_stack);
    pthread_mutex_destroy(&pool->free_lock);
    kvt_free(pool);
}

/* --- put path --- */

static void view_of(kvt_host_pool_t *pool, uint32_t slot, kvt_block_view_t *view)
{
    view->slot = slot;
    view->header = pool->headers + (size_t)slot * pool->header_len;
    view->header_len = pool->header_len;
    view->payload = pool->region + (size_t)slot * pool->stride;
    view->payload_len = pool->payload_len;
}

/* Already resident: count the access.  Returns true if found. */
static bool touch_if_resident(kvt_host_pool_t *pool, const kvt_block_key_t *key)
{
    shard_t *sh = shard_of(pool, key);
    uint32_t slot;
    pthread_mutex_lock(&sh->lock);
    bool found = kvt_keymap_get(&sh->index, key, &slot);
    if (found) {
        pool->meta[slot].tick = next_tick(pool);
        kvt_lru_heap_update(&sh->lru, pool->heap_pos, slot, pool->meta[slot].tick);
    }
    pthread_mutex_unlock(&sh->lock);
    return found;
}

kvt_status_t kvt_host_pool_reserve(kvt_host_pool_t *pool, const kvt_block_header_t *hdr,
                                   kvt_block_view_t *view_p)
{
    kvt_status_t st = kvt_block_header_check_identity(hdr, &pool->identity);
    if (st == KVT_OK)
        st = kvt_block_header_check_key(hdr);
    if (st != KVT_OK)
        return st == KVT_ERR_MISMATCH ? st : KVT_ERR_CORRUPT;
    if (touch_if_resident(pool, &hdr->key))
        return KVT_ERR_EXISTS;
    if (hdr->index > 0 && (st = parent_hold(pool, &hdr->parent, hdr->index)) != KVT_OK)
        return st;
    uint32_t slot;
    if ((st = slot_alloc(pool, &slot)) != KVT_OK) {
        if (hdr->index > 0)
            parent_release(pool, &hdr->parent);
        return st;
    }
    slot_meta_t *m = &pool->meta[slot];
    m->key = hdr->key;
    m->parent = hdr->parent;
    m->index = hdr->index;
    m->checksum = hdr->checksum;
    m->pins = 0;
    m->n_children = 0;
    kvt_block_view_t view;
    view_of(pool, slot, &view);
    size_t len;
    kvt_block_header_encode(hdr, view.header, view.header_len, &len);
    *view_p = view;
    return KVT_OK;
}

void kvt_host_pool_abort(kvt_host_pool_t *pool, kvt_block_view_t *view)
{
    slot_meta_t *m = &pool->meta[view->slot];
    if (m->state != SLOT_RESERVED) {
        /* Aborting twice, or after a commit, would free the slot twice. */
        kvt_log_error("host pool abort of a slot that is not reserved slot=%u", view->slot);
        return;
    }
    if (m->index > 0)
        parent_release(pool, &m->parent);
    free_push(pool, view->slot);
}

/* Index a reserved slot.  KVT_OK when it or an equal block is resident. */
static kvt_status_t publish(kvt_host_pool_t *pool, uint32_t slot)
{
    slot_meta_t *m = &pool->meta[slot];
    shard_t *sh = shard_of(pool, &m->key);
    uint32_t other;
    pthread_mutex_lock(&sh->lock);
    if (kvt_keymap_get(&sh->index, &m->key, &other)) {
        pthread_mutex_unlock(&sh->lock);
        kvt_block_view_t v = {.slot = slot};
        kvt_host_pool_abort(pool, &v);
        return KVT_OK;
    }
    kvt_status_t st = kvt_keymap_put(&sh->index, &m->key, slot);
    kvt_block_event_t ev;
    if (st == KVT_OK) {
        m->tick = next_tick(pool);
        m->state = SLOT_RESIDENT;
        update_evictable(pool, sh, slot);
        sh->puts++;
        ev = event_of(KVT_EVENT_STORED, m);
    }
    pthread_mutex_unlock(&sh->lock);
    if (st != KVT_OK) {
        kvt_block_view_t v = {.slot = slot};
        kvt_host_pool_abort(pool, &v);
        return st;
    }
    emit(pool, &ev);
    return KVT_OK;
}

kvt_status_t kvt_host_pool_commit(kvt_host_pool_t *pool, kvt_block_view_t *view)
{
    slot_meta_t *m = &pool->meta[view->slot];
    if (kvt_xxh3_64(view->payload, pool->payload_len) != m->checksum) {
        char hex[2 * KVT_KEY_LEN + 1];
        kvt_block_key_hex(&m->key, hex);
        kvt_log_error("host pool commit refused key=%s reason=payload checksum mismatch", hex);
        shard_t *sh = shard_of(pool, &m->key);
        pthread_mutex_lock(&sh->lock);
        sh->corrupt++;
        pthread_mutex_unlock(&sh->lock);
        kvt_host_pool_abort(pool, view);
        return KVT_ERR_CORRUPT;
    }
    return publish(pool, view->slot);
}

kvt_status_t kvt_host_pool_put(kvt_host_pool_t *pool, const kvt_block_header_t *hdr,
                               const void *payload)
{
    kvt_block_view_t view;
    kvt_status_t st = kvt_host_pool_reserve(pool, hdr, &view);
    if (st == KVT_ERR_EXISTS)
        return KVT_OK;
    if (st != KVT_OK)
        return st;
    memcpy(view.payload, payload, pool->payload_len);
    return publish(pool, view.slot);
}

/* --- read path --- */

static kvt_status_t pin_slot(kvt_host_pool_t *pool, const kvt_block_key_t *key, bool access,
                             kvt_block_view_t *view_p)
{
    shard_t *sh = shard_of(pool, key);
    uint32_t slot;
    pthread_mutex_lock(&sh->lock);
    if (!kvt_keymap_get(&sh->index, key, &slot)) {
        sh->misses += access;
        pthread_mutex_unlock(&sh->lock);
        return KVT_ERR_NOT_FOUND;
    }
    slot_meta_t *m = &pool->meta[slot];
    if (m->pins++ == 0)
        sh->pinned++;
    if (access) {
        m->tick = next_tick(pool);
        sh->hits++;
    }
    update_evictable(pool, sh, slot);
    pthread_mutex_unlock(&sh->lock);
    view_of(pool, slot, view_p);
    return KVT_OK;
}

kvt_status_t kvt_host_pool_pin(kvt_host_pool_t *pool, const kvt_block_key_t *key,
                               kvt_block_view_t *view_p)
{
    return pin_slot(pool, key, true, view_p);
}

kvt_status_t kvt_host_pool_hold(kvt_host_pool_t *pool, const kvt_block_key_t *key,
                                kvt_block_view_t *view_p)
{
    return pin_slot(pool, key, false, view_p);
}

void kvt_host_pool_unpin(kvt_host_pool_t *pool, const kvt_block_view_t *view)
{
    slot_meta_t *m = &pool->meta[view->slot];
    shard_t *sh = shard_of(pool, &m->key);
    pthread_mutex_lock(&sh->lock);
    if (m->pins > 0 && --m->pins == 0) {
        sh->pinned--;
        update_evictable(pool, sh, view->slot);
    }
    pthread_mutex_unlock(&sh->lock);
}

kvt_status_t kvt_host_pool_get(kvt_host_pool_t *pool, const kvt_block_key_t *key,
                               kvt_block_header_t *hdr_p, void *dst, size_t cap)
{
    if (cap < pool->payload_len)
        return KVT_ERR_TOO_LARGE;
    kvt_block_view_t view;
    kvt_status_t st = kvt_host_pool_pin(pool, key, &view);
    if (st != KVT_OK)
        return st;
    size_t len;
    st = kvt_block_header_decode(view.header, view.header_len, hdr_p, &len);
    if (st == KVT_OK)
        memcpy(dst, view.payload, pool->payload_len);
    kvt_host_pool_unpin(pool, &view);
    return st;
}

bool kvt_host_pool_contains(kvt_host_pool_t *pool, const kvt_block_key_t *key)
{
    shard_t *sh = shard_of(pool, key);
    uint32_t slot;
    pthread_mutex_lock(&sh->lock);
    bool found = kvt_keymap_get(&sh->index, key, &slot);
    pthread_mutex_unlock(&sh->lock);
    return found;
}

void kvt_host_pool_stats(kvt_host_pool_t *pool, kvt_tier_stats_t *stats_p)
{
    kvt_tier_stats_t s = {0};
    for (uint32_t i = 0; i <= pool->shard_mask; i++) {
        shard_t *sh = &pool->shards[i];
        pthread_mutex_lock(&sh->lock);
        s.blocks += sh->index.count;
        s.hits += sh->hits;
        s.misses += sh->misses;
        s.puts += sh->puts;
        s.evictions += sh->evictions;
        s.corrupt += sh->corrupt;
        s.no_parent += sh->no_parent;
        s.pinned += sh->pinned;
        pthread_mutex_unlock(&sh->lock);
    }
    s.bytes = s.blocks * (pool->payload_len + pool->header_len);
    s.capacity_bytes = (uint64_t)pool->n_slots * (pool->payload_len + pool->header_len);
    *stats_p = s;
}

const kvt_block_identity_t *kvt_host_pool_identity(const kvt_host_pool_t *pool)
{
    return &pool->identity;
}

void *kvt_host_pool_region(kvt_host_pool_t *pool, size_t *len_p)
{
    *len_p = pool->region_len;
    return pool->region;
}

int kvt_host_pool_region_fd(const kvt_host_pool_t *pool) { return pool->region_fd; }
