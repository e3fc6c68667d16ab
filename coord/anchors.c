/* EFIM anchors; see anchors.h for the contract.
 *
 * Layout: a chained hash table maps the SHA-256 group digest of (tenant,
 * model, suffix) to a group, which lists its anchors (doubly linked, so an
 * eviction unlinks in O(1)).  Every anchor is also on one global LRU list
 * (head = most recently used), which both bounds evict from.  Buckets are
 * picked by a per-table seeded xxh3 of the digest, so a client that grinds
 * suffixes cannot line its groups up in one chain without knowing the seed.
 * The bucket array doubles at load 1, up to a cap derived from max_anchors;
 * a group count above the cap (or a failed doubling) only lengthens chains.
 *
 * Owned by the coordinator; one mutex guards everything below. */
#include "coord/anchors.h"

#include "common/alloc.h"
#include "common/hash.h"
#include "common/log.h"

#include <pthread.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#define MIN_BUCKETS 16u
#define MAX_BUCKETS (1u << 22)

typedef struct anchor anchor_t;
typedef struct group group_t;

struct anchor {
    anchor_t *lru_prev, *lru_next; /* global LRU; lru_prev is more recent */
    anchor_t *grp_prev, *grp_next; /* the anchors of one group */
    group_t *group;
    size_t len; /* prefix0 bytes in text */
    char text[];
};

struct group {
    group_t *bucket_next;
    anchor_t *anchors; /* never empty while the group is in the table */
    uint8_t digest[KVT_SHA256_LEN];
};

struct kvt_anchors {
    pthread_mutex_t lock;
    size_t max_anchors, max_bytes;
    uint64_t seed;
    group_t **buckets;
    size_t n_buckets, max_buckets, n_groups;
    anchor_t *lru_head, *lru_tail;
    kvt_anchors_stats_t st;
};

/* SHA-256 over "kvtier-anchor-v1" and the three fields, each behind its u64le
 * length, so ("ab","c") and ("a","bc") give different digests. */
static void update_field(kvt_sha256_t *ctx, const void *data, size_t len)
{
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)((uint64_t)len >> (8 * i));
    kvt_sha256_update(ctx, le, sizeof(le));
    if (len)
        kvt_sha256_update(ctx, data, len);
}

static kvt_status_t group_digest(const char *tenant, const char *model, const char *suffix,
                                 size_t suffix_len, uint8_t out[KVT_SHA256_LEN])
{
    static const char tag[] = "kvtier-anchor-v1";
    kvt_sha256_t ctx;
    kvt_status_t st = kvt_sha256_init(&ctx);
    if (st != KVT_OK)
        return st;
    kvt_sha256_update(&ctx, tag, sizeof(tag) - 1);
    update_field(&ctx, tenant, strlen(tenant));
    update_field(&ctx, model, strlen(model));
    update_field(&ctx, suffix, suffix_len);
    kvt_sha256_final(&ctx, out);
    return KVT_OK;
}

static size_t bucket_of(const kvt_anchors_t *a, const uint8_t digest[KVT_SHA256_LEN],
                        size_t n_buckets)
{
    return (size_t)XXH3_64bits_withSeed(digest, KVT_SHA256_LEN, a->seed) & (n_buckets - 1);
}

static group_t *group_lookup(const kvt_anchors_t *a, const uint8_t digest[KVT_SHA256_LEN])
{
    group_t *g = a->buckets[bucket_of(a, digest, a->n_buckets)];
    while (g && memcmp(g->digest, digest, KVT_SHA256_LEN) != 0)
        g = g->bucket_next;
    return g;
}

/* Double the bucket array; on failure keep the old one (longer chains). */
static void grow(kvt_anchors_t *a)
{
    size_t n = a->n_buckets * 2;
    group_t **b = kvt_calloc("anchors.buckets", n, sizeof(*b));
    if (!b) {
        kvt_log_warn("anchors bucket growth failed buckets=%zu groups=%zu", a->n_buckets,
                     a->n_groups);
        return;
    }
    for (size_t i = 0; i < a->n_buckets; i++) {
        group_t *g = a->buckets[i];
        while (g) {
            group_t *next = g->bucket_next;
            size_t j = bucket_of(a, g->digest, n);
            g->bucket_next = b[j];
            b[j] = g;
            g = next;
        }
    }
    kvt_free(a->buckets);
    a->buckets = b;
    a->n_buckets = n;
}

static void group_insert(kvt_anchors_t *a, group_t *g)
{
    if (a->n_groups + 1 > a->n_buckets && a->n_buckets < a->max_buckets)
        grow(a);
    size_t i = bucket_of(a, g->digest, a->n_buckets);
    g->bucket_next = a->buckets[i];
    a->buckets[i] = g;
    a->n_groups++;
}

static void group_remove(kvt_anchors_t *a, group_t *g)
{
    group_t **pp = &a->buckets[bucket_of(a, g->digest, a->n_buckets)];
    while (*pp != g)
        pp = &(*pp)->bucket_next;
    *pp = g->bucket_next;
    a->n_groups--;
    kvt_free(g);
}

static void lru_unlink(kvt_anchors_t *a, anchor_t *an)
{
    if (an->lru_prev)
        an->lru_prev->lru_next = an->lru_next;
    else
        a->lru_head = an->lru_next;
    if (an->lru_next)
        an->lru_next->lru_prev = an->lru_prev;
    else
        a->lru_tail = an->lru_prev;
    an->lru_prev = an->lru_next = NULL;
}

static void lru_push_front(kvt_anchors_t *a, anchor_t *an)
{
    an->lru_prev = NULL;
    an->lru_next = a->lru_head;
    if (a->lru_head)
        a->lru_head->lru_prev = an;
    else
        a->lru_tail = an;
    a->lru_head = an;
}

static void lru_touch(kvt_anchors_t *a, anchor_t *an)
{
    if (a->lru_head == an)
        return;
    lru_unlink(a, an);
    lru_push_front(a, an);
}

/* Unlink and free one anchor; its group goes too when it empties, unless it
 * is `keep` (the group an add is about to put an anchor in). */
static void anchor_remove(kvt_anchors_t *a, anchor_t *an, group_t *keep)
{
    group_t *g = an->group;
    lru_unlink(a, an);
    if (an->grp_prev)
        an->grp_prev->grp_next = an->grp_next;
    else
        g->anchors = an->grp_next;
    if (an->grp_next)
        an->grp_next->grp_prev = an->grp_prev;
    a->st.anchors--;
    a->st.bytes -= an->len;
    kvt_free(an);
    if (!g->anchors && g != keep)
        group_remove(a, g);
}

kvt_status_t kvt_anchors_create(size_t max_anchors, size_t max_bytes, kvt_anchors_t **anchors_p)
{
    if (max_anchors < 1 || max_bytes < 1 || !anchors_p)
        return KVT_ERR_INVALID;
    kvt_anchors_t *a = kvt_calloc("anchors", 1, sizeof(*a));
    if (!a)
        return KVT_ERR_NOMEM;
    a->buckets = kvt_calloc("anchors.buckets", MIN_BUCKETS, sizeof(*a->buckets));
    if (!a->buckets)
        goto err_free_anchors;
    if (pthread_mutex_init(&a->lock, NULL) != 0) {
        kvt_log_error("anchors mutex init failed");
        goto err_free_buckets;
    }
    a->max_anchors = max_anchors;
    a->max_bytes = max_bytes;
    a->n_buckets = MIN_BUCKETS;
    a->max_buckets = MIN_BUCKETS;
    while (a->max_buckets < max_anchors && a->max_buckets < MAX_BUCKETS)
        a->max_buckets *= 2;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t parts[3] = {(uint64_t)ts.tv_nsec, (uint64_t)ts.tv_sec, (uint64_t)(uintptr_t)a};
    a->seed = XXH3_64bits(parts, sizeof(parts));
    *anchors_p = a;
    return KVT_OK;

err_free_buckets:
    kvt_free(a->buckets);
err_free_anchors:
    kvt_free(a);
    return KVT_ERR_NOMEM;
}

void kvt_anchors_destroy(kvt_anchors_t *a)
{
    if (!a)
        return;
    anchor_t *an = a->lru_head;
    while (an) {
        anchor_t *next = an->lru_next;
        kvt_free(an);
        an = next;
    }
    for (size_t i = 0; i < a->n_buckets; i++) {
        group_t *g = a->buckets[i];
        while (g) {
            group_t *next = g->bucket_next;
            kvt_free(g);
            g = next;
        }
    }
    kvt_free(a->buckets);
    pthread_mutex_destroy(&a->lock);
    kvt_free(a);
}

static bool is_prefix(const anchor_t *an, const char *prompt, size_t prompt_len)
{
    return an->len <= prompt_len && (an->len == 0 || memcmp(an->text, prompt, an->len) == 0);
}

bool kvt_anchors_find(kvt_anchors_t *a, const char *tenant, const char *model, const char *suffix,
                      size_t suffix_len, const char *prompt, size_t prompt_len,
                      size_t *prefix0_len_p)
{
    uint8_t digest[KVT_SHA256_LEN];
    bool have_digest = group_digest(tenant, model, suffix, suffix_len, digest) == KVT_OK;
    anchor_t *best = NULL;

    pthread_mutex_lock(&a->lock);
    group_t *g = have_digest ? group_lookup(a, digest) : NULL;
    for (anchor_t *an = g ? g->anchors : NULL; an; an = an->grp_next) {
        if ((!best || an->len > best->len) && is_prefix(an, prompt, prompt_len))
            best = an;
    }
    if (best) {
        lru_touch(a, best);
        a->st.hits++;
        *prefix0_len_p = best->len;
    } else {
        a->st.misses++;
    }
    pthread_mutex_unlock(&a->lock);
    return best != NULL;
}

static anchor_t *find_identical(group_t *g, const char *prompt, size_t prompt_len)
{
    for (anchor_t *an = g->anchors; an; an = an->grp_next) {
        if (an->len == prompt_len && is_prefix(an, prompt, prompt_len))
            return an;
    }
    return NULL;
}

/* Evict from the LRU tail until one more anchor of `len` bytes fits.  The
 * caller checked len <= max_bytes, so an empty table always has room. */
static void evict_for(kvt_anchors_t *a, size_t len, group_t *keep)
{
    while (a->lru_tail &&
           (a->st.anchors + 1 > a->max_anchors || a->st.bytes + len > a->max_bytes)) {
        anchor_remove(a, a->lru_tail, keep);
        a->st.evicted++;
    }
}

static void link_anchor(kvt_anchors_t *a, group_t *g, anchor_t *an)
{
    an->group = g;
    an->grp_prev = NULL;
    an->grp_next = g->anchors;
    if (g->anchors)
        g->anchors->grp_prev = an;
    g->anchors = an;
    lru_push_front(a, an);
    a->st.anchors++;
    a->st.bytes += an->len;
    a->st.added++;
}

kvt_status_t kvt_anchors_add(kvt_anchors_t *a, const char *tenant, const char *model,
                             const char *suffix, size_t suffix_len, const char *prompt,
                             size_t prompt_len)
{
    if (prompt_len > a->max_bytes)
        return KVT_ERR_TOO_LARGE;
    uint8_t digest[KVT_SHA256_LEN];
    if (group_digest(tenant, model, suffix, suffix_len, digest) != KVT_OK)
        return KVT_ERR_NOMEM;
    /* Allocate before taking the lock (and before evicting anything). */
    anchor_t *an = kvt_malloc("anchors.anchor", sizeof(*an) + prompt_len);
    if (!an)
        return KVT_ERR_NOMEM;
    memset(an, 0, sizeof(*an));
    an->len = prompt_len;
    if (prompt_len)
        memcpy(an->text, prompt, prompt_len);

    pthread_mutex_lock(&a->lock);
    group_t *g = group_lookup(a, digest);
    bool fresh = false;
    if (g) {
        anchor_t *same = find_identical(g, prompt, prompt_len);
        if (same) {
            lru_touch(a, same);
            pthread_mutex_unlock(&a->lock);
            kvt_free(an);
            return KVT_OK;
        }
    } else {
        g = kvt_calloc("anchors.group", 1, sizeof(*g));
        if (!g) {
            pthread_mutex_unlock(&a->lock);
            kvt_free(an);
            return KVT_ERR_NOMEM;
        }
        memcpy(g->digest, digest, KVT_SHA256_LEN);
        fresh = true;
    }
    evict_for(a, prompt_len, g);
    if (fresh)
        group_insert(a, g);
    link_anchor(a, g, an);
    pthread_mutex_unlock(&a->lock);
    return KVT_OK;
}

void kvt_anchors_stats(kvt_anchors_t *a, kvt_anchors_stats_t *stats_p)
{
    pthread_mutex_lock(&a->lock);
    *stats_p = a->st;
    pthread_mutex_unlock(&a->lock);
}
