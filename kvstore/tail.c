/* Partial tails: key and image size, and the tail store (tail.h).
 *
 * The store keeps every tail in one allocation (the entry, its payload,
 * then its tokens), found through a keymap (key -> slot) sized for
 * max_tails once, so inserting never allocates under the lock.  Tails sit
 * on a list in put order: a put moves its tail to the newest end.  Every
 * tail has the same TTL counted from its last put, so the oldest end is
 * also the first to expire: expiry and making room both drop from there,
 * in O(1) per tail. */
#include "kvstore/tail.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "kvstore/keymap.h"

#include <pthread.h>
#include <string.h>

#define DEFAULT_MAX_BYTES (256ull << 20)
#define DEFAULT_MAX_TAILS 4096
#define DEFAULT_TTL_MS 30000

uint64_t kvt_tail_bytes(const kvt_block_layout_t *layout, uint32_t t)
{
    uint64_t block = kvt_block_layout_payload_bytes(layout);
    if (block == 0 || t == 0 || t >= layout->block_tokens)
        return 0;
    return block / layout->block_tokens * t;
}

kvt_status_t kvt_tail_key(const kvt_block_key_t *parent, uint32_t t, const uint32_t *tokens,
                          kvt_block_key_t *key_p)
{
    if (t == 0 || t >= KVT_BLOCK_MAX_TOKENS)
        return KVT_ERR_INVALID;
    return kvt_block_key_next(parent, t, tokens, key_p);
}

/* --- the store --- */

typedef struct tail {
    kvt_block_key_t key;
    kvt_block_key_t parent;
    uint32_t t;
    uint32_t holds;
    uint32_t slot;
    uint64_t put_ns;            /* last put: the TTL runs from here */
    uint64_t checksum;
    size_t len;
    uint8_t *payload;           /* right after the entry */
    uint32_t *tokens;           /* after the payload */
    struct tail *older, *newer; /* put order */
} tail_t;

struct kvt_tail_store {
    pthread_mutex_t lock;
    uint64_t max_bytes;
    uint64_t ttl_ns;
    uint32_t max_tails;
    kvt_keymap_t map;           /* key -> slot */
    tail_t **slots;             /* [max_tails] */
    uint32_t *free_slots;       /* stack of unused slots */
    uint32_t n_free;
    tail_t *oldest, *newest;
    kvt_tail_store_stats_t stats; /* tails and bytes are kept current */
};

kvt_status_t kvt_tail_store_create(const kvt_tail_store_params_t *p, kvt_tail_store_t **s_p)
{
    kvt_tail_store_params_t d = p ? *p : (kvt_tail_store_params_t){0};
    if (!s_p || d.max_tails > KVT_TAIL_STORE_MAX_TAILS)
        return KVT_ERR_INVALID;
    kvt_tail_store_t *s = kvt_calloc("tail store", 1, sizeof(*s));
    if (!s)
        return KVT_ERR_NOMEM;
    s->max_bytes = d.max_bytes ? d.max_bytes : DEFAULT_MAX_BYTES;
    s->max_tails = d.max_tails ? d.max_tails : DEFAULT_MAX_TAILS;
    s->ttl_ns = (uint64_t)(d.ttl_ms ? d.ttl_ms : DEFAULT_TTL_MS) * 1000000;
    s->slots = kvt_calloc("tail store slots", s->max_tails, sizeof(*s->slots));
    s->free_slots = kvt_malloc("tail store free slots", s->max_tails * sizeof(*s->free_slots));
    if (!s->slots || !s->free_slots || kvt_keymap_init(&s->map, s->max_tails) != KVT_OK)
        goto err_free_store;
    for (uint32_t i = 0; i < s->max_tails; i++)
        s->free_slots[i] = s->max_tails - 1 - i;
    s->n_free = s->max_tails;
    pthread_mutex_init(&s->lock, NULL);
    *s_p = s;
    return KVT_OK;

err_free_store:
    kvt_free(s->slots);
    kvt_free(s->free_slots);
    kvt_free(s);
    return KVT_ERR_NOMEM;
}

void kvt_tail_store_destroy(kvt_tail_store_t *s)
{
    if (!s)
        return;
    for (tail_t *e = s->oldest, *next; e; e = next) {
        next = e->newer;
        kvt_free(e);
    }
    kvt_keymap_cleanup(&s->map);
    kvt_free(s->slots);
    kvt_free(s->free_slots);
    pthread_mutex_destroy(&s->lock);
    kvt_free(s);
}

static void unlink_tail(kvt_tail_store_t *s, tail_t *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        s->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        s->newest = e->older;
    e->older = e->newer = NULL;
}

static void link_newest(kvt_tail_store_t *s, tail_t *e)
{
    e->older = s->newest;
    e->newer = NULL;
    if (s->newest)
        s->newest->newer = e;
    else
        s->oldest = e;
    s->newest = e;
}

static void drop(kvt_tail_store_t *s, tail_t *e)
{
    unlink_tail(s, e);
    kvt_keymap_del(&s->map, &e->key);
    s->slots[e->slot] = NULL;
    s->free_slots[s->n_free++] = e->slot;
    s->stats.tails--;
    s->stats.bytes -= e->len;
    kvt_free(e);
}

/* Lazy expiry: the oldest end of the put order expires first. */
static void expire(kvt_tail_store_t *s, uint64_t now)
{
    while (s->oldest && now - s->oldest->put_ns >= s->ttl_ns) {
        drop(s, s->oldest);
        s->stats.expired++;
    }
}

static tail_t *find(kvt_tail_store_t *s, const kvt_block_key_t *key)
{
    uint32_t slot;
    return kvt_keymap_get(&s->map, key, &slot) ? s->slots[slot] : NULL;
}

/* A put of a key held already: one more hold, the TTL starts again. */
static kvt_status_t hold(kvt_tail_store_t *s, tail_t *e, size_t len, uint64_t now)
{
    if (e->len != len)
        return KVT_ERR_MISMATCH;
    if (e->holds < UINT32_MAX)
        e->holds++;
    e->put_ns = now;
    unlink_tail(s, e);
    link_newest(s, e);
    s->stats.puts++;
    return KVT_OK;
}

/* Makes room (expired tails are gone already), then takes e. */
static kvt_status_t insert(kvt_tail_store_t *s, tail_t *e)
{
    while (s->oldest && (s->n_free == 0 || s->stats.bytes + e->len > s->max_bytes)) {
        drop(s, s->oldest);
        s->stats.dropped++;
    }
    e->slot = s->free_slots[--s->n_free];
    kvt_status_t st = kvt_keymap_put(&s->map, &e->key, e->slot);
    if (st != KVT_OK) { /* the map was sized for max_tails: not expected */
        s->n_free++;
        return st;
    }
    s->slots[e->slot] = e;
    link_newest(s, e);
    s->stats.tails++;
    s->stats.bytes += e->len;
    s->stats.puts++;
    return KVT_OK;
}

/* A new entry holding copies of tokens and payload, with one hold. */
static tail_t *tail_new(const kvt_block_key_t *key, const kvt_block_key_t *parent, uint32_t t,
                        const uint32_t *tokens, const void *payload, size_t len)
{
    size_t payload_room = (len + 3) & ~(size_t)3; /* tokens stay aligned */
    tail_t *e = kvt_malloc("tail", sizeof(*e) + payload_room + (size_t)t * sizeof(uint32_t));
    if (!e)
        return NULL;
    memset(e, 0, sizeof(*e));
    e->key = *key;
    e->parent = *parent;
    e->t = t;
    e->holds = 1;
    e->len = len;
    e->payload = (uint8_t *)(e + 1);
    e->tokens = (uint32_t *)(e->payload + payload_room);
    memcpy(e->payload, payload, len);
    memcpy(e->tokens, tokens, (size_t)t * sizeof(uint32_t));
    e->checksum = kvt_xxh3_64(payload, len);
    return e;
}

static kvt_status_t put_check(const kvt_tail_store_t *s, const kvt_block_key_t *key,
                              const kvt_block_key_t *parent, uint32_t t, const uint32_t *tokens,
                              const void *payload, size_t len)
{
    if (!s || !key || !parent || !tokens || !payload || len == 0)
        return KVT_ERR_INVALID;
    kvt_block_key_t want;
    kvt_status_t st = kvt_tail_key(parent, t, tokens, &want);
    if (st != KVT_OK)
        return st;
    if (!kvt_block_key_eq(&want, key)) {
        kvt_log_warn("tail store refused a tail whose key does not name its tokens t=%u", t);
        return KVT_ERR_CORRUPT;
    }
    /* A tail is never larger than a block (tail.h). */
    return len > s->max_bytes || len > KVT_BLOCK_MAX_PAYLOAD ? KVT_ERR_TOO_LARGE : KVT_OK;
}

kvt_status_t kvt_tail_store_put(kvt_tail_store_t *s, const kvt_block_key_t *key,
                                const kvt_block_key_t *parent, uint32_t t,
                                const uint32_t *tokens, const void *payload, size_t len)
{
    kvt_status_t st = put_check(s, key, parent, t, tokens, payload, len);
    if (st != KVT_OK)
        return st;
    pthread_mutex_lock(&s->lock);
    uint64_t now = kvt_time_ns();
    expire(s, now);
    tail_t *held = find(s, key);
    if (held)
        st = hold(s, held, len, now);
    pthread_mutex_unlock(&s->lock);
    if (held)
        return st;
    tail_t *e = tail_new(key, parent, t, tokens, payload, len); /* copy outside the lock */
    if (!e)
        return KVT_ERR_NOMEM;
    pthread_mutex_lock(&s->lock);
    now = kvt_time_ns();
    expire(s, now);
    held = find(s, key); /* another thread may have put it meanwhile */
    e->put_ns = now;
    st = held ? hold(s, held, len, now) : insert(s, e);
    pthread_mutex_unlock(&s->lock);
    if (held || st != KVT_OK)
        kvt_free(e);
    return st;
}

kvt_status_t kvt_tail_store_get(kvt_tail_store_t *s, const kvt_block_key_t *key, bool release,
                                kvt_tail_visit_fn visit, void *arg)
{
    if (!s || !key)
        return KVT_ERR_INVALID;
    pthread_mutex_lock(&s->lock);
    expire(s, kvt_time_ns());
    tail_t *e = find(s, key);
    if (!e) {
        s->stats.misses++;
        pthread_mutex_unlock(&s->lock);
        return KVT_ERR_NOT_FOUND;
    }
    s->stats.hits++;
    kvt_status_t st = KVT_OK;
    if (visit) {
        kvt_tail_view_t v = {.key = &e->key, .parent = &e->parent, .t = e->t,
                             .tokens = e->tokens, .checksum = e->checksum,
                             .payload = e->payload, .len = e->len};
        st = visit(&v, arg);
    }
    if (st == KVT_OK && release && --e->holds == 0) {
        drop(s, e);
        s->stats.released++;
    }
    pthread_mutex_unlock(&s->lock);
    return st;
}

void kvt_tail_store_stats(kvt_tail_store_t *s, kvt_tail_store_stats_t *stats_p)
{
    pthread_mutex_lock(&s->lock);
    expire(s, kvt_time_ns());
    *stats_p = s->stats;
    pthread_mutex_unlock(&s->lock);
}
