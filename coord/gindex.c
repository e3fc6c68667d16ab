/* The coordinator's global block index; see gindex.h for the contract.
 *
 * One open-addressing table (linear probing, backward-shift deletion, no
 * tombstones) of {key, node mask per tier}; a slot whose three masks are
 * zero is empty, so "remove the key when no node holds it" is the same act
 * as freeing its slot.  The probe hash is xxh3 of the key with a per-index
 * random seed (keys are SHA-256 outputs, but a client grinding token
 * sequences should not be able to line keys up in one probe run).  The table
 * doubles at 70% load up to the capacity max_entries needs, so memory stays
 * bounded by max_entries.  Per node it keeps the last applied sequence
 * number and whether it is stale.
 *
 * Owned by the coordinator; one rwlock guards everything below. */
#include "coord/gindex.h"

#include "common/alloc.h"
#include "common/log.h"

#include <pthread.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#define N_TIERS 3
#define MIN_CAP 16u

typedef struct {
    kvt_block_key_t key;
    uint64_t mask[N_TIERS]; /* indexed by kvt_tier_id_t; all zero: empty */
} slot_t;

typedef struct {
    uint64_t last_seq;  /* of the snapshot or the last applied delta */
    bool has_snapshot;
    bool stale;
} node_state_t;

struct kvt_gindex {
    pthread_rwlock_t lock;
    uint64_t seed;
    slot_t *slots;
    size_t cap;     /* power of two */
    size_t max_cap; /* smallest power of two holding max_entries at 70% */
    size_t max_entries;
    size_t count;
    node_state_t nodes[KVT_GINDEX_MAX_NODES];
    kvt_gindex_stats_t st; /* entries is filled from count on read */
};

static bool slot_empty(const slot_t *s) { return (s->mask[0] | s->mask[1] | s->mask[2]) == 0; }

static size_t home_of(const kvt_gindex_t *g, const kvt_block_key_t *key, size_t cap)
{
    return (size_t)XXH3_64bits_withSeed(key->b, KVT_KEY_LEN, g->seed) & (cap - 1);
}

/* The slot holding key (true), or the empty slot where it would go. */
static bool find(const kvt_gindex_t *g, const kvt_block_key_t *key, size_t *pos_p)
{
    size_t mask = g->cap - 1;
    for (size_t i = home_of(g, key, g->cap);; i = (i + 1) & mask) {
        if (slot_empty(&g->slots[i])) {
            *pos_p = i;
            return false;
        }
        if (kvt_block_key_eq(&g->slots[i].key, key)) {
            *pos_p = i;
            return true;
        }
    }
}

static kvt_status_t grow(kvt_gindex_t *g)
{
    size_t cap = g->cap * 2;
    slot_t *slots = kvt_calloc("gindex.slots", cap, sizeof(*slots));
    if (!slots)
        return KVT_ERR_NOMEM;
    for (size_t i = 0; i < g->cap; i++) {
        if (slot_empty(&g->slots[i]))
            continue;
        size_t j = home_of(g, &g->slots[i].key, cap);
        while (!slot_empty(&slots[j]))
            j = (j + 1) & (cap - 1);
        slots[j] = g->slots[i];
    }
    kvt_free(g->slots);
    g->slots = slots;
    g->cap = cap;
    return KVT_OK;
}

/* Free slot i (its masks may already be zero) by shifting later members of
 * its probe run back, so lookups never need tombstones. */
static void delete_at(kvt_gindex_t *g, size_t i)
{
    size_t mask = g->cap - 1;
    for (size_t j = (i + 1) & mask; !slot_empty(&g->slots[j]); j = (j + 1) & mask) {
        size_t h = home_of(g, &g->slots[j].key, g->cap);
        if (((j - h) & mask) >= ((j - i) & mask)) {
            g->slots[i] = g->slots[j];
            i = j;
        }
    }
    memset(&g->slots[i], 0, sizeof(g->slots[i]));
    g->count--;
}

static void count_dropped(kvt_gindex_t *g)
{
    g->st.dropped_full++;
    if ((g->st.dropped_full & (g->st.dropped_full - 1)) == 0)
        kvt_log_warn("gindex full: stored event dropped entries=%zu max=%zu dropped=%llu",
                     g->count, g->max_entries, (unsigned long long)g->st.dropped_full);
}

static void set_bit(kvt_gindex_t *g, const kvt_block_key_t *key, int tier, uint64_t bit)
{
    size_t pos;
    if (!find(g, key, &pos)) {
        if (g->count >= g->max_entries) {
            count_dropped(g);
            return;
        }
        if ((g->count + 1) * 10 > g->cap * 7) {
            if (g->cap >= g->max_cap || grow(g) != KVT_OK) {
                count_dropped(g);
                return;
            }
            find(g, key, &pos);
        }
        g->slots[pos].key = *key;
        g->count++;
    }
    g->slots[pos].mask[tier] |= bit;
}

static void clear_bit(kvt_gindex_t *g, const kvt_block_key_t *key, int tier, uint64_t bit)
{
    size_t pos;
    if (!find(g, key, &pos))
        return;
    g->slots[pos].mask[tier] &= ~bit;
    if (slot_empty(&g->slots[pos]))
        delete_at(g, pos);
}

/* Take `bit` out of every slot.  A deletion shifts later members of the run
 * into slot i, so slot i is looked at again; members only move backwards
 * into the hole, so none is skipped (those wrapping in from the start were
 * already cleared). */
static void clear_node(kvt_gindex_t *g, uint64_t bit)
{
    size_t i = 0;
    while (i < g->cap) {
        slot_t *s = &g->slots[i];
        if (slot_empty(s) || ((s->mask[0] | s->mask[1] | s->mask[2]) & bit) == 0) {
            i++;
            continue;
        }
        for (int t = 0; t < N_TIERS; t++)
            s->mask[t] &= ~bit;
        if (slot_empty(s))
            delete_at(g, i);
        else
            i++;
    }
}

static bool events_valid(const kvt_gindex_event_t *ev, size_t n, bool stored_only)
{
    if (n && !ev)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (ev[i].tier != KVT_TIER_GPU && ev[i].tier != KVT_TIER_HOST &&
            ev[i].tier != KVT_TIER_DISK)
            return false;
        if (ev[i].kind == KVT_EVENT_STORED)
            continue;
        if (stored_only || (ev[i].kind != KVT_EVENT_EVICTED && ev[i].kind != KVT_EVENT_DROPPED))
            return false;
    }
    return true;
}

static void apply(kvt_gindex_t *g, uint32_t node, const kvt_gindex_event_t *ev, size_t n)
{
    uint64_t bit = 1ull << node;
    for (size_t i = 0; i < n; i++) {
        if (ev[i].kind == KVT_EVENT_STORED)
            set_bit(g, &ev[i].key, (int)ev[i].tier, bit);
        else
            clear_bit(g, &ev[i].key, (int)ev[i].tier, bit);
    }
}

kvt_status_t kvt_gindex_create(size_t max_entries, kvt_gindex_t **g_p)
{
    if (max_entries < 1 || max_entries > KVT_GINDEX_MAX_ENTRIES || !g_p)
        return KVT_ERR_INVALID;
    kvt_gindex_t *g = kvt_calloc("gindex", 1, sizeof(*g));
    if (!g)
        return KVT_ERR_NOMEM;
    g->max_entries = max_entries;
    g->max_cap = MIN_CAP;
    while ((uint64_t)max_entries * 10 > (uint64_t)g->max_cap * 7)
        g->max_cap *= 2;
    g->cap = g->max_cap < 1024 ? g->max_cap : 1024;
    g->slots = kvt_calloc("gindex.slots", g->cap, sizeof(*g->slots));
    if (!g->slots)
        goto err_free_g;
    if (pthread_rwlock_init(&g->lock, NULL) != 0) {
        kvt_log_error("gindex rwlock init failed");
        goto err_free_slots;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t parts[3] = {(uint64_t)ts.tv_nsec, (uint64_t)ts.tv_sec, (uint64_t)(uintptr_t)g};
    g->seed = XXH3_64bits(parts, sizeof(parts));
    *g_p = g;
    return KVT_OK;

err_free_slots:
    kvt_free(g->slots);
err_free_g:
    kvt_free(g);
    return KVT_ERR_NOMEM;
}

void kvt_gindex_destroy(kvt_gindex_t *g)
{
    if (!g)
        return;
    pthread_rwlock_destroy(&g->lock);
    kvt_free(g->slots);
    kvt_free(g);
}

kvt_status_t kvt_gindex_snapshot(kvt_gindex_t *g, uint32_t node, uint64_t seq,
                                 const kvt_gindex_event_t *ev, size_t n)
{
    if (node >= KVT_GINDEX_MAX_NODES || !events_valid(ev, n, true))
        return KVT_ERR_INVALID;
    pthread_rwlock_wrlock(&g->lock);
    clear_node(g, 1ull << node);
    apply(g, node, ev, n);
    g->nodes[node] = (node_state_t){.last_seq = seq, .has_snapshot = true, .stale = false};
    g->st.snapshots++;
    pthread_rwlock_unlock(&g->lock);
    kvt_log_debug("gindex snapshot node=%u seq=%llu blocks=%zu", node, (unsigned long long)seq, n);
    return KVT_OK;
}

kvt_status_t kvt_gindex_delta(kvt_gindex_t *g, uint32_t node, uint64_t seq,
                              const kvt_gindex_event_t *ev, size_t n)
{
    if (node >= KVT_GINDEX_MAX_NODES || !events_valid(ev, n, false))
        return KVT_ERR_INVALID;
    pthread_rwlock_wrlock(&g->lock);
    node_state_t *ns = &g->nodes[node];
    if (!ns->has_snapshot || ns->stale || seq != ns->last_seq + 1) {
        if (!ns->stale)
            kvt_log_warn("gindex delta refused, node stale until snapshot node=%u seq=%llu "
                         "expected=%llu snapshot=%d",
                         node, (unsigned long long)seq, (unsigned long long)(ns->last_seq + 1),
                         (int)ns->has_snapshot);
        ns->stale = true;
        g->st.gaps++;
        pthread_rwlock_unlock(&g->lock);
        return KVT_ERR_AGAIN;
    }
    apply(g, node, ev, n);
    ns->last_seq = seq;
    g->st.deltas++;
    pthread_rwlock_unlock(&g->lock);
    return KVT_OK;
}

void kvt_gindex_drop_node(kvt_gindex_t *g, uint32_t node)
{
    if (node >= KVT_GINDEX_MAX_NODES)
        return;
    pthread_rwlock_wrlock(&g->lock);
    clear_node(g, 1ull << node);
    g->nodes[node] = (node_state_t){0};
    pthread_rwlock_unlock(&g->lock);
}

static void count_tier(kvt_gindex_match_t *out, uint64_t nodes, int tier)
{
    while (nodes) {
        int n = __builtin_ctzll(nodes);
        nodes &= nodes - 1;
        out[n].prefix++;
        if (tier == KVT_TIER_GPU)
            out[n].n_gpu++;
        else if (tier == KVT_TIER_HOST)
            out[n].n_host++;
        else
            out[n].n_disk++;
    }
}

void kvt_gindex_match(kvt_gindex_t *g, const kvt_block_key_t *keys, size_t n_keys,
                      kvt_gindex_match_t *out)
{
    memset(out, 0, KVT_GINDEX_MAX_NODES * sizeof(*out));
    uint64_t alive = ~0ull;
    pthread_rwlock_rdlock(&g->lock);
    for (size_t k = 0; k < n_keys && alive; k++) {
        size_t pos;
        if (!find(g, &keys[k], &pos))
            break;
        const uint64_t *m = g->slots[pos].mask;
        alive &= m[0] | m[1] | m[2];
        uint64_t gpu = m[0] & alive;
        uint64_t host = m[1] & alive & ~gpu;
        uint64_t disk = alive & ~(gpu | host);
        count_tier(out, gpu, KVT_TIER_GPU);
        count_tier(out, host, KVT_TIER_HOST);
        count_tier(out, disk, KVT_TIER_DISK);
    }
    pthread_rwlock_unlock(&g->lock);
}

void kvt_gindex_stats(kvt_gindex_t *g, kvt_gindex_stats_t *stats_p)
{
    pthread_rwlock_rdlock(&g->lock);
    *stats_p = g->st;
    stats_p->entries = g->count;
    pthread_rwlock_unlock(&g->lock);
}

bool kvt_gindex_node_stale(kvt_gindex_t *g, uint32_t node)
{
    if (node >= KVT_GINDEX_MAX_NODES)
        return false;
    pthread_rwlock_rdlock(&g->lock);
    bool stale = g->nodes[node].stale;
    pthread_rwlock_unlock(&g->lock);
    return stale;
}
