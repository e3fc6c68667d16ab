/* The node's block store: T1 host pool over T2 RocksDB, with write-behind.
 *
 * Write path: put copies the block into T1, holds it there (a pin that is
 * no access) and queues the hold for the writer thread, which persists the
 * block to T2 and releases the hold.  The queue is a bounded ring; a full
 * ring makes put wait (backpressure), so at most `depth` blocks of T1 are
 * held for writing at any time.  A block that T1 cannot take (no room, or
 * its parent was evicted from T1 while it is still in T2) is written to T2
 * directly, so storing never depends on T1 having room.
 *
 * Read path: T1 hit, else T2 read (verified there) and promotion into T1.
 * Promotion needs the parent in T1 (prefix closure); callers walk chains
 * root first, so it normally is.  When it is not, the data is still
 * returned, just not promoted. */
#include "kvstore/tier.h"

#include "common/alloc.h"
#include "common/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_QUEUE_DEPTH 64

struct kvt_tier {
    kvt_host_pool_t *host;
    kvt_disk_tier_t *disk;
    pthread_t writer;
    bool writer_started;
    pthread_mutex_t lock; /* guards the ring and the counters below */
    pthread_cond_t changed;
    kvt_block_view_t *ring;
    uint32_t depth, head, count;
    uint32_t waiting;     /* puts blocked on a full ring; close waits for them */
    bool closing;
    /* Tickets: a drain waits for the blocks queued before it, not for an
     * empty ring, which a busy node may never have. */
    uint64_t enqueued, persisted;
    uint64_t written, write_failed, waits;
};

/* --- write-behind --- */

/* Ancestors of a block that T2 lacks, nearest first, each held in T1 (T1
 * is prefix-closed and the block itself is held, so they are resident). */
typedef struct {
    kvt_block_view_t *views;
    size_t n, cap;
} lineage_t;

static kvt_status_t lineage_collect(kvt_tier_t *tier, const kvt_block_header_t *hdr,
                                    lineage_t *lin)
{
    kvt_block_header_t cur = *hdr;
    while (cur.index > 0 && !kvt_disk_tier_contains(tier->disk, &cur.parent)) {
        if (lin->n == lin->cap) {
            size_t cap = lin->cap ? 2 * lin->cap : 16;
            kvt_block_view_t *v = kvt_realloc("tier.lineage", lin->views, cap * sizeof(*v));
            if (!v)
                return KVT_ERR_NOMEM;
            lin->views = v;
            lin->cap = cap;
        }
        kvt_block_view_t *view = &lin->views[lin->n];
        kvt_status_t st = kvt_host_pool_hold(tier->host, &cur.parent, view);
        if (st != KVT_OK)
            return KVT_ERR_NO_PARENT; /* neither tier has it: the chain is broken */
        lin->n++;
        size_t len;
        if ((st = kvt_block_header_decode(view->header, view->header_len, &cur, &len)) != KVT_OK)
            return st;
    }
    return KVT_OK;
}

/* T2 takes a block only after its parent.  Puts of one chain can reach
 * the ring out of order (a thread that stored the parent in T1 may not
 * have queued it yet), so a block whose parent T2 lacks brings its
 * missing ancestors along, root first. */
static kvt_status_t persist_with_ancestors(kvt_tier_t *tier, const kvt_block_header_t *hdr,
                                           const void *payload)
{
    kvt_status_t st = kvt_disk_tier_put(tier->disk, hdr, payload);
    if (st != KVT_ERR_NO_PARENT)
        return st;
    lineage_t lin = {0};
    st = lineage_collect(tier, hdr, &lin);
    for (size_t i = lin.n; st == KVT_OK && i-- > 0;) {
        kvt_block_header_t anc;
        size_t len;
        st = kvt_block_header_decode(lin.views[i].header, lin.views[i].header_len, &anc, &len);
        if (st == KVT_OK)
            st = kvt_disk_tier_put(tier->disk, &anc, lin.views[i].payload);
    }
    for (size_t i = 0; i < lin.n; i++)
        kvt_host_pool_unpin(tier->host, &lin.views[i]);
    kvt_free(lin.views);
    return st == KVT_OK ? kvt_disk_tier_put(tier->disk, hdr, payload) : st;
}

static void persist(kvt_tier_t *tier, const kvt_block_view_t *view)
{
    kvt_block_header_t hdr;
    size_t len;
    kvt_status_t st = kvt_block_header_decode(view->header, view->header_len, &hdr, &len);
    if (st == KVT_OK)
        st = persist_with_ancestors(tier, &hdr, view->payload);
    else
        memset(&hdr, 0, sizeof(hdr.key));
    kvt_host_pool_unpin(tier->host, view);
    pthread_mutex_lock(&tier->lock);
    if (st == KVT_OK)
        tier->written++;
    else
        tier->write_failed++;
    pthread_mutex_unlock(&tier->lock);
    if (st != KVT_OK) {
        char hex[2 * KVT_KEY_LEN + 1];
        kvt_block_key_hex(&hdr.key, hex);
        kvt_log_warn("write-behind to disk failed key=%s err=\"%s\"", hex, kvt_status_str(st));
    }
}

static void *writer_main(void *arg)
{
    kvt_tier_t *tier = arg;
    pthread_mutex_lock(&tier->lock);
    for (;;) {
        while (tier->count == 0 && !tier->closing)
            pthread_cond_wait(&tier->changed, &tier->lock);
        if (tier->count == 0)
            break; /* closing and drained */
        kvt_block_view_t view = tier->ring[tier->head];
        tier->head = (tier->head + 1) % tier->depth;
        tier->count--;
        pthread_cond_broadcast(&tier->changed);
        pthread_mutex_unlock(&tier->lock);
        persist(tier, &view);
        pthread_mutex_lock(&tier->lock);
        tier->persisted++;
        pthread_cond_broadcast(&tier->changed);
    }
    pthread_mutex_unlock(&tier->lock);
    return NULL;
}

/* Queues the hold in view; on KVT_ERR_CLOSED the hold is released here,
 * before close is told this put is gone. */
static kvt_status_t enqueue(kvt_tier_t *tier, const kvt_block_view_t *view)
{
    pthread_mutex_lock(&tier->lock);
    if (tier->count == tier->depth)
        tier->waits++;
    tier->waiting++;
    while (tier->count == tier->depth && !tier->closing)
        pthread_cond_wait(&tier->changed, &tier->lock);
    tier->waiting--;
    if (tier->closing) {
        kvt_host_pool_unpin(tier->host, view);
        pthread_cond_broadcast(&tier->changed);
        pthread_mutex_unlock(&tier->lock);
        return KVT_ERR_CLOSED;
    }
    tier->ring[(tier->head + tier->count) % tier->depth] = *view;
    tier->count++;
    tier->enqueued++;
    pthread_cond_broadcast(&tier->changed);
    pthread_mutex_unlock(&tier->lock);
    return KVT_OK;
}

/* --- open / close --- */

static kvt_status_t make_dir(const char *path)
{
    if (mkdir(path, 0755) == 0 || errno == EEXIST)
        return KVT_OK;
    kvt_log_error("cannot create directory path=%s err=\"%s\"", path, strerror(errno));
    return KVT_ERR_IO;
}

static kvt_status_t open_tiers(kvt_tier_t *tier, const kvt_tier_params_t *params)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/t2", params->data_dir) >= (int)sizeof(path))
        return KVT_ERR_TOO_LARGE;
    kvt_status_t st = make_dir(params->data_dir);
    if (st != KVT_OK)
        return st;
    kvt_disk_tier_params_t dp = {
        .path = path, .identity = params->identity,
        .capacity_bytes = params->disk_capacity_bytes,
        .create_if_missing = params->identity != NULL, .sync_writes = params->sync_writes,
        .on_event = params->on_event, .event_arg = params->event_arg,
    };
    if ((st = kvt_disk_tier_open(&dp, &tier->disk)) != KVT_OK)
        return st;
    kvt_host_pool_params_t hp = {
        .identity = *kvt_disk_tier_identity(tier->disk),
        .capacity_bytes = params->host_capacity_bytes,
        .on_event = params->on_event, .event_arg = params->event_arg,
    };
    return kvt_host_pool_create(&hp, &tier->host);
}

kvt_status_t kvt_tier_open(const kvt_tier_params_t *params, kvt_tier_t **tier_p)
{
    if (!params->data_dir || !params->host_capacity_bytes) {
        kvt_log_error("tier needs a data directory and a host pool capacity");
        return KVT_ERR_INVALID;
    }
    kvt_tier_t *tier = kvt_calloc("tier", 1, sizeof(*tier));
    if (!tier)
        return KVT_ERR_NOMEM;
    pthread_mutex_init(&tier->lock, NULL);
    pthread_cond_init(&tier->changed, NULL);
    tier->depth = params->write_queue_depth ? params->write_queue_depth : DEFAULT_QUEUE_DEPTH;
    tier->ring = kvt_calloc("tier.ring", tier->depth, sizeof(*tier->ring));
    kvt_status_t st = tier->ring ? open_tiers(tier, params) : KVT_ERR_NOMEM;
    if (st == KVT_OK) {
        int rc = pthread_create(&tier->writer, NULL, writer_main, tier);
        tier->writer_started = rc == 0;
        if (rc) {
            kvt_log_error("cannot start the write-behind thread err=\"%s\"", strerror(rc));
            st = KVT_ERR_NOMEM;
        }
    }
    if (st != KVT_OK) {
        kvt_tier_close(tier);
        return st;
    }
    *tier_p = tier;
    return KVT_OK;
}

void kvt_tier_close(kvt_tier_t *tier)
{
    if (!tier)
        return;
    if (tier->writer_started) {
        /* The writer drains the ring before it sees `closing` with count 0. */
        pthread_mutex_lock(&tier->lock);
        tier->closing = true;
        pthread_cond_broadcast(&tier->changed);
        while (tier->waiting > 0) /* puts woken by `closing` leave first */
            pthread_cond_wait(&tier->changed, &tier->lock);
        pthread_mutex_unlock(&tier->lock);
        pthread_join(tier->writer, NULL);
    }
    kvt_disk_tier_close(tier->disk);
    kvt_host_pool_destroy(tier->host);
    kvt_free(tier->ring);
    pthread_cond_destroy(&tier->changed);
    pthread_mutex_destroy(&tier->lock);
    kvt_free(tier);
}

/* --- operations --- */

/* Waits until every block queued before this call is persisted. */
static void wait_drained(kvt_tier_t *tier)
{
    pthread_mutex_lock(&tier->lock);
    uint64_t ticket = tier->enqueued;
    while (tier->persisted < ticket)
        pthread_cond_wait(&tier->changed, &tier->lock);
    pthread_mutex_unlock(&tier->lock);
}

/* Straight to T2, after the queue: the block's parent may still be queued,
 * and T2 takes a block only after its parent. */
static kvt_status_t put_direct(kvt_tier_t *tier, const kvt_block_header_t *hdr,
                               const void *payload)
{
    wait_drained(tier);
    return kvt_disk_tier_put(tier->disk, hdr, payload);
}

kvt_status_t kvt_tier_put(kvt_tier_t *tier, const kvt_block_header_t *hdr, const void *payload)
{
    kvt_status_t st = kvt_host_pool_put(tier->host, hdr, payload);
    if (st == KVT_ERR_FULL || st == KVT_ERR_NO_PARENT)
        return put_direct(tier, hdr, payload);
    if (st != KVT_OK || kvt_disk_tier_contains(tier->disk, &hdr->key))
        return st;
    kvt_block_view_t view;
    if (kvt_host_pool_hold(tier->host, &hdr->key, &view) != KVT_OK)
        return put_direct(tier, hdr, payload); /* evicted already */
    return enqueue(tier, &view);
}

kvt_status_t kvt_tier_get(kvt_tier_t *tier, const kvt_block_key_t *key, kvt_block_header_t *hdr_p,
                          void *dst, size_t cap, kvt_tier_id_t *from_p)
{
    kvt_status_t st = kvt_host_pool_get(tier->host, key, hdr_p, dst, cap);
    if (st == KVT_OK) {
        if (from_p)
            *from_p = KVT_TIER_HOST;
        return KVT_OK;
    }
    if (st != KVT_ERR_NOT_FOUND)
        return st;
    st = kvt_disk_tier_get(tier->disk, key, hdr_p, dst, cap);
    if (st != KVT_OK)
        return st;
    /* Promotion is best effort: the data is good either way. */
    (void)kvt_host_pool_put(tier->host, hdr_p, dst);
    if (from_p)
        *from_p = KVT_TIER_DISK;
    return KVT_OK;
}

/* Both tiers are prefix-closed, so presence along a chain is monotone:
 * binary search for the first absent key. */
static size_t resident_prefix(kvt_tier_t *tier, kvt_tier_id_t which, const kvt_block_key_t *keys,
                              size_t n)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        bool in = which == KVT_TIER_HOST ? kvt_host_pool_contains(tier->host, &keys[mid])
                                         : kvt_disk_tier_contains(tier->disk, &keys[mid]);
        if (in)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

kvt_status_t kvt_tier_longest_prefix(kvt_tier_t *tier, const kvt_block_key_t *keys, size_t n_keys,
                                     kvt_tier_id_t *where, size_t *n_p)
{
    size_t in_host = resident_prefix(tier, KVT_TIER_HOST, keys, n_keys);
    size_t in_disk = resident_prefix(tier, KVT_TIER_DISK, keys, n_keys);
    size_t n = in_host > in_disk ? in_host : in_disk;
    for (size_t i = 0; where && i < n; i++)
        where[i] = i < in_host ? KVT_TIER_HOST : KVT_TIER_DISK;
    *n_p = n;
    return KVT_OK;
}

/* A T1 miss: read the block from T2 (checked there), put it in T1, pin it. */
static kvt_status_t promote_pin(kvt_tier_t *tier, const kvt_block_key_t *key,
                                kvt_block_view_t *view_p)
{
    const kvt_block_identity_t *id = kvt_host_pool_identity(tier->host);
    size_t len = kvt_block_layout_payload_bytes(&id->layout);
    void *buf = kvt_malloc("tier.promote", len);
    kvt_block_header_t *hdr = kvt_malloc("tier.promote.header", sizeof(*hdr));
    kvt_status_t st = buf && hdr ? kvt_disk_tier_get(tier->disk, key, hdr, buf, len)
                                 : KVT_ERR_NOMEM;
    if (st == KVT_OK)
        st = kvt_host_pool_put(tier->host, hdr, buf);
    if (st == KVT_OK)
        st = kvt_host_pool_pin(tier->host, key, view_p);
    kvt_free(buf);
    kvt_free(hdr);
    return st;
}

kvt_status_t kvt_tier_pin(kvt_tier_t *tier, const kvt_block_key_t *key, kvt_block_view_t *view_p)
{
    kvt_status_t st = kvt_host_pool_pin(tier->host, key, view_p);
    return st == KVT_ERR_NOT_FOUND ? promote_pin(tier, key, view_p) : st;
}

kvt_status_t kvt_tier_pin_resident(kvt_tier_t *tier, const kvt_block_key_t *key,
                                   kvt_block_view_t *view_p)
{
    kvt_status_t st = kvt_host_pool_pin(tier->host, key, view_p);
    if (st != KVT_ERR_NOT_FOUND)
        return st;
    return kvt_disk_tier_contains(tier->disk, key) ? KVT_ERR_AGAIN : KVT_ERR_NOT_FOUND;
}

/* The T1 look-up is a hold, no access: pin_resident counted this read's
 * miss already. */
kvt_status_t kvt_tier_pin_promote(kvt_tier_t *tier, const kvt_block_key_t *key,
                                  kvt_block_view_t *view_p)
{
    kvt_status_t st = kvt_host_pool_hold(tier->host, key, view_p);
    return st == KVT_ERR_NOT_FOUND ? promote_pin(tier, key, view_p) : st;
}

void kvt_tier_unpin(kvt_tier_t *tier, const kvt_block_view_t *view)
{
    kvt_host_pool_unpin(tier->host, view);
}

kvt_status_t kvt_tier_flush(kvt_tier_t *tier)
{
    wait_drained(tier);
    return kvt_disk_tier_flush(tier->disk);
}

void kvt_tier_stats(kvt_tier_t *tier, kvt_tier_stats_all_t *stats_p)
{
    kvt_tier_stats_all_t s = {0};
    kvt_host_pool_stats(tier->host, &s.host);
    kvt_disk_tier_stats(tier->disk, &s.disk);
    pthread_mutex_lock(&tier->lock);
    s.queued = tier->enqueued - tier->persisted;
    s.written = tier->written;
    s.write_failed = tier->write_failed;
    s.waits = tier->waits;
    pthread_mutex_unlock(&tier->lock);
    *stats_p = s;
}

const kvt_block_identity_t *kvt_tier_identity(const kvt_tier_t *tier)
{
    return kvt_host_pool_identity(tier->host);
}

kvt_host_pool_t *kvt_tier_host(kvt_tier_t *tier) { return tier->host; }

kvt_disk_tier_t *kvt_tier_disk(kvt_tier_t *tier) { return tier->disk; }
