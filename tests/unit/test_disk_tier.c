/* Tests for kvstore/disk_tier: round trips, the parent rule, reopen and
 * identity checks, leaf-first LRU eviction with parent reservation and pins,
 * corruption written straight into RocksDB (bit flips, truncation, lost meta
 * records) found by get and verify and dropped with descendants, read-only
 * opens, persisted counters and access order, and concurrent puts/gets.
 * Every test runs in its own directory under a mkdtemp'd root in
 * $KVT_TEST_TMP (or /tmp) that is removed at the end. */
#include "kvstore/disk_tier.h"

#include "common/log.h"

#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* 2 layers x K,V x 4 tokens x 2 heads x 64 dims x f32 = 8 KiB: above the
 * 4 KiB min_blob_size, so the images go through blob files. */
static const kvt_block_layout_t g_layout = {
    .n_layers = 2, .n_kv_heads = 2, .head_dim = 64, .block_tokens = 4, .dtype = KVT_DTYPE_F32};

static char g_root[PATH_MAX];
static unsigned g_seq;

typedef struct {
    kvt_block_header_t hdr;
    uint8_t *payload;
} tblock_t;

typedef struct {
    char dir[PATH_MAX];
    kvt_block_identity_t id;
    kvt_block_key_t root;
    kvt_disk_tier_t *tier;
    uint64_t image_len;
    unsigned events[4];
} fx_t;

static uint64_t g_rng = 0x6469736b5f746965ull;

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void on_event(const kvt_block_event_t *ev, void *arg)
{
    fx_t *fx = arg;
    assert_int_equal(ev->tier, KVT_TIER_DISK);
    __atomic_fetch_add(&fx->events[ev->kind], 1, __ATOMIC_RELAXED); /* from any thread */
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    (void)state;
    const char *base = getenv("KVT_TEST_TMP");
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0700); /* ctest's KVT_TEST_TMP may not exist yet */
    snprintf(g_root, sizeof(g_root), "%s/kvt_disk_tier_XXXXXX", base);
    if (!mkdtemp(g_root))
        return -1;
    kvt_log_set_level(getenv("KVT_TEST_VERBOSE") ? KVT_LOG_DEBUG : KVT_LOG_ERROR);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return nftw(g_root, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static kvt_disk_tier_params_t params_of(fx_t *fx, uint64_t capacity)
{
    return (kvt_disk_tier_params_t){.path = fx->dir, .identity = &fx->id,
                                    .capacity_bytes = capacity, .create_if_missing = true,
                                    .on_event = on_event, .event_arg = fx};
}

static void fx_open(fx_t *fx, uint64_t capacity)
{
    kvt_disk_tier_params_t p = params_of(fx, capacity);
    assert_int_equal(kvt_disk_tier_open(&p, &fx->tier), KVT_OK);
}

static void fx_close(fx_t *fx)
{
    kvt_disk_tier_close(fx->tier);
    fx->tier = NULL;
}

static int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    if (!fx)
        return -1;
    if (snprintf(fx->dir, sizeof(fx->dir), "%.*s/db%u", PATH_MAX - 32, g_root, g_seq++) < 0)
        return -1;
    fx->id.layout = g_layout;
    for (int i = 0; i < KVT_FINGERPRINT_LEN; i++)
        fx->id.fingerprint[i] = (uint8_t)(0xa0 + i);
    if (kvt_block_key_root(fx->id.fingerprint, "t", 1, &fx->root) != KVT_OK)
        return -1;
    fx->image_len = kvt_block_header_size(g_layout.block_tokens) +
                    kvt_block_layout_payload_bytes(&g_layout);
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *fx = *state;
    if (fx->tier)
        kvt_disk_tier_close(fx->tier);
    free(fx);
    return 0;
}

/* A block after `parent` (NULL: the root) with random tokens and payload. */
static void tb_make(const fx_t *fx, const tblock_t *parent, tblock_t *b)
{
    uint32_t tokens[KVT_BLOCK_MAX_TOKENS];
    size_t len = kvt_block_layout_payload_bytes(&fx->id.layout);
    for (uint32_t i = 0; i < fx->id.layout.block_tokens; i++)
        tokens[i] = (uint32_t)rnd();
    b->payload = malloc(len);
    assert_non_null(b->payload);
    for (size_t i = 0; i < len; i++)
        b->payload[i] = (uint8_t)rnd();
    assert_int_equal(kvt_block_header_make(&b->hdr, &fx->id, parent ? &parent->hdr.key : &fx->root,
                                           parent ? parent->hdr.index + 1 : 0, tokens, b->payload),
                     KVT_OK);
}

/* chain[0..n): chain[0] after `from` (NULL: the root). */
static void chain_make(const fx_t *fx, const tblock_t *from, tblock_t *chain, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tb_make(fx, i ? &chain[i - 1] : from, &chain[i]);
}

static void tb_free(tblock_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(b[i].payload);
}

static kvt_status_t put(fx_t *fx, const tblock_t *b)
{
    return kvt_disk_tier_put(fx->tier, &b->hdr, b->payload);
}

static void put_all(fx_t *fx, const tblock_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        assert_int_equal(put(fx, &b[i]), KVT_OK);
}

static void expect_block(fx_t *fx, const tblock_t *b)
{
    size_t len = b->hdr.payload_len;
    uint8_t *dst = malloc(len);
    kvt_block_header_t hdr;
    assert_non_null(dst);
    assert_int_equal(kvt_disk_tier_get(fx->tier, &b->hdr.key, &hdr, dst, len), KVT_OK);
    assert_true(kvt_block_key_eq(&hdr.key, &b->hdr.key));
    assert_true(kvt_block_key_eq(&hdr.parent, &b->hdr.parent));
    assert_int_equal(hdr.index, b->hdr.index);
    assert_memory_equal(dst, b->payload, len);
    free(dst);
}

static bool has(fx_t *fx, const tblock_t *b)
{
    return kvt_disk_tier_contains(fx->tier, &b->hdr.key);
}

static kvt_tier_stats_t stats(fx_t *fx)
{
    kvt_tier_stats_t s;
    kvt_disk_tier_stats(fx->tier, &s);
    return s;
}

/* --- prefix closure, checked from disk --- */

typedef struct {
    fx_t *fx;
    uint64_t n;
    kvt_block_key_t last;
    bool ordered;
} walk_t;

static kvt_status_t closure_visit(const kvt_block_header_t *hdr, uint64_t image_bytes, void *arg)
{
    walk_t *w = arg;
    assert_int_equal(image_bytes, w->fx->image_len);
    assert_true(kvt_disk_tier_contains(w->fx->tier, &hdr->key));
    if (hdr->index > 0)
        assert_true(kvt_disk_tier_contains(w->fx->tier, &hdr->parent));
    if (w->n > 0 && memcmp(w->last.b, hdr->key.b, KVT_KEY_LEN) >= 0)
        w->ordered = false;
    w->last = hdr->key;
    w->n++;
    return KVT_OK;
}

/* Every stored block is indexed, in key order, and has its parent stored. */
static void expect_closed(fx_t *fx)
{
    walk_t w = {.fx = fx, .ordered = true};
    assert_int_equal(kvt_disk_tier_foreach(fx->tier, closure_visit, &w), KVT_OK);
    assert_true(w.ordered);
    assert_int_equal(w.n, stats(fx).blocks);
}

/* --- raw RocksDB access, to damage a closed tier --- */

typedef struct {
    rocksdb_options_t *opts;
    rocksdb_t *db;
    rocksdb_writeoptions_t *wo;
} raw_t;

/* The tier's key families (kvstore/disk_tierInt.h): images and meta. */
enum { RAW_BLOCKS = 'b', RAW_META = 'm' };

static void raw_key(char out[1 + KVT_KEY_LEN], int fam, const kvt_block_key_t *key)
{
    out[0] = (char)fam;
    memcpy(out + 1, key->b, KVT_KEY_LEN);
}

static void raw_open(raw_t *r, const char *path)
{
    char *err = NULL;
    r->opts = rocksdb_options_create();
    r->db = rocksdb_open(r->opts, path, &err);
    assert_null(err);
    r->wo = rocksdb_writeoptions_create();
}

static void raw_put(raw_t *r, int fam, const kvt_block_key_t *key, const void *val, size_t len)
{
    char *err = NULL, k[1 + KVT_KEY_LEN];
    raw_key(k, fam, key);
    rocksdb_put(r->db, r->wo, k, sizeof(k), val, len, &err);
    assert_null(err);
}

static void raw_del(raw_t *r, int fam, const kvt_block_key_t *key)
{
    char *err = NULL, k[1 + KVT_KEY_LEN];
    raw_key(k, fam, key);
    rocksdb_delete(r->db, r->wo, k, sizeof(k), &err);
    assert_null(err);
}

/* The stored image of key (malloc'd). */
static uint8_t *raw_get(raw_t *r, const kvt_block_key_t *key, size_t *len_p)
{
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    char *err = NULL, k[1 + KVT_KEY_LEN];
    raw_key(k, RAW_BLOCKS, key);
    char *v = rocksdb_get(r->db, ro, k, sizeof(k), len_p, &err);
    rocksdb_readoptions_destroy(ro);
    assert_null(err);
    assert_non_null(v);
    uint8_t *copy = malloc(*len_p);
    memcpy(copy, v, *len_p);
    rocksdb_free(v);
    return copy;
}

static void raw_close(raw_t *r)
{
    rocksdb_close(r->db);
    rocksdb_writeoptions_destroy(r->wo);
    rocksdb_options_destroy(r->opts);
}

/* Flip one payload byte of key's image. */
static void raw_flip(fx_t *fx, const kvt_block_key_t *key)
{
    raw_t r;
    size_t len;
    raw_open(&r, fx->dir);
    uint8_t *img = raw_get(&r, key, &len);
    img[len - 7] ^= 0x10;
    raw_put(&r, RAW_BLOCKS, key, img, len);
    free(img);
    raw_close(&r);
}

/* --- tests --- */

static void test_round_trip(void **state)
{
    fx_t *fx = *state;
    tblock_t c[3];
    chain_make(fx, NULL, c, 3);
    fx_open(fx, 0);
    put_all(fx, c, 3);
    for (int i = 0; i < 3; i++)
        expect_block(fx, &c[i]);
    assert_int_equal(put(fx, &c[1]), KVT_OK); /* duplicate: touched, not stored again */
    kvt_tier_stats_t s = stats(fx);
    assert_int_equal(s.blocks, 3);
    assert_int_equal(s.puts, 3);
    assert_int_equal(s.hits, 3);
    assert_int_equal(s.bytes, 3 * fx->image_len);
    assert_int_equal(fx->events[KVT_EVENT_STORED], 3);

    tblock_t other;
    tb_make(fx, NULL, &other);
    uint8_t small[16];
    assert_false(has(fx, &other));
    assert_int_equal(kvt_disk_tier_get(fx->tier, &other.hdr.key, NULL, small, 0),
                     KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_disk_tier_get(fx->tier, &c[0].hdr.key, NULL, small, sizeof(small)),
                     KVT_ERR_TOO_LARGE);
    assert_int_equal(stats(fx).misses, 1);
    assert_true(kvt_block_layout_eq(&kvt_disk_tier_identity(fx->tier)->layout, &g_layout));
    assert_int_equal(kvt_disk_tier_flush(fx->tier), KVT_OK);
    expect_closed(fx);
    tb_free(c, 3);
    tb_free(&other, 1);
}

static void test_put_rejects(void **state)
{
    fx_t *fx = *state;
    tblock_t c[2];
    chain_make(fx, NULL, c, 2);
    fx_open(fx, 0);
    assert_int_equal(put(fx, &c[1]), KVT_ERR_NO_PARENT);
    assert_int_equal(stats(fx).no_parent, 1);
    assert_false(has(fx, &c[1]));

    c[0].payload[3] ^= 1; /* checksum no longer matches */
    assert_int_equal(put(fx, &c[0]), KVT_ERR_CORRUPT);
    c[0].payload[3] ^= 1;
    tblock_t bad = c[0];
    bad.hdr.tokens[0]++; /* key no longer names the tokens */
    assert_int_equal(put(fx, &bad), KVT_ERR_CORRUPT);
    bad = c[0];
    bad.hdr.fingerprint[0] ^= 1;
    assert_int_equal(put(fx, &bad), KVT_ERR_MISMATCH);
    assert_int_equal(stats(fx).blocks, 0);
    put_all(fx, c, 2);
    assert_int_equal(stats(fx).blocks, 2);
    tb_free(c, 2);
}

static void test_reopen_and_identity(void **state)
{
    fx_t *fx = *state;
    tblock_t a[4], b[2];
    chain_make(fx, NULL, a, 4);
    chain_make(fx, &a[1], b, 2); /* a branch off a[1] */
    kvt_disk_tier_params_t p = params_of(fx, 0);
    p.create_if_missing = false;
    assert_int_equal(kvt_disk_tier_open(&p, &fx->tier), KVT_ERR_NOT_FOUND);
    p.create_if_missing = true;
    p.identity = NULL;
    assert_int_equal(kvt_disk_tier_open(&p, &fx->tier), KVT_ERR_INVALID);

    fx_open(fx, 0);
    put_all(fx, a, 4);
    put_all(fx, b, 2);
    fx_close(fx);

    fx_open(fx, 0);
    assert_int_equal(stats(fx).blocks, 6);
    assert_int_equal(stats(fx).bytes, 6 * fx->image_len);
    for (int i = 0; i < 4; i++)
        expect_block(fx, &a[i]);
    for (int i = 0; i < 2; i++)
        expect_block(fx, &b[i]);
    expect_closed(fx);
    fx_close(fx);

    p.identity = NULL; /* adopt */
    p.create_if_missing = false;
    assert_int_equal(kvt_disk_tier_open(&p, &fx->tier), KVT_OK);
    assert_memory_equal(kvt_disk_tier_identity(fx->tier), &fx->id, sizeof(fx->id));
    expect_block(fx, &b[1]);
    fx_close(fx);

    kvt_block_identity_t other = fx->id;
    other.fingerprint[5] ^= 0xff;
    p.identity = &other;
    assert_int_equal(kvt_disk_tier_open(&p, &fx->tier), KVT_ERR_MISMATCH);
    other = fx->id;
    other.layout.head_dim = 32;
    assert_int_equal(kvt_disk_tier_open(&p, &fx->tier), KVT_ERR_MISMATCH);
    assert_null(fx->tier);
    tb_free(a, 4);
    tb_free(b, 2);
}

static void test_capacity_lru(void **state)
{
    fx_t *fx = *state;
    tblock_t a[3], b[2], c[3];
    chain_make(fx, NULL, a, 3);
    chain_make(fx, NULL, b, 2);
    chain_make(fx, NULL, c, 3);
    fx_open(fx, 5 * fx->image_len);
    put_all(fx, a, 3);
    put_all(fx, b, 2);
    /* Leaves a2 (older) and b1: a2 goes. */
    assert_int_equal(put(fx, &c[0]), KVT_OK);
    assert_false(has(fx, &a[2]));
    assert_true(has(fx, &a[1]) && has(fx, &b[1]) && has(fx, &c[0]));
    expect_closed(fx);
    /* a1 is now the least recent leaf; c0 is reserved as c1's parent. */
    assert_int_equal(put(fx, &c[1]), KVT_OK);
    assert_false(has(fx, &a[1]));
    assert_true(has(fx, &a[0]) && has(fx, &c[0]));
    expect_closed(fx);
    /* Touch a0: b1 becomes the least recent leaf. */
    expect_block(fx, &a[0]);
    assert_int_equal(put(fx, &c[2]), KVT_OK);
    assert_false(has(fx, &b[1]));
    assert_true(has(fx, &a[0]) && has(fx, &b[0]));
    expect_closed(fx);
    kvt_tier_stats_t s = stats(fx);
    assert_int_equal(s.evictions, 3);
    assert_int_equal(fx->events[KVT_EVENT_EVICTED], 3);
    assert_true(s.bytes <= s.capacity_bytes);
    assert_int_equal(s.blocks, 5);
    tb_free(a, 3);
    tb_free(b, 2);
    tb_free(c, 3);
}

static void test_parent_reserved(void **state)
{
    fx_t *fx = *state;
    tblock_t a[3];
    chain_make(fx, NULL, a, 3);
    fx_open(fx, 2 * fx->image_len);
    put_all(fx, a, 2);
    /* The only leaf is a1, a2's own parent: nothing may go. */
    assert_int_equal(put(fx, &a[2]), KVT_ERR_FULL);
    assert_true(has(fx, &a[0]) && has(fx, &a[1]));
    assert_int_equal(stats(fx).evictions, 0);
    expect_block(fx, &a[1]);
    expect_closed(fx);
    tb_free(a, 3);
}

static void test_pins(void **state)
{
    fx_t *fx = *state;
    tblock_t a, b, c;
    tb_make(fx, NULL, &a);
    tb_make(fx, NULL, &b);
    tb_make(fx, NULL, &c);
    fx_open(fx, 2 * fx->image_len);
    put_all(fx, &a, 1);
    put_all(fx, &b, 1);
    assert_int_equal(kvt_disk_tier_pin(fx->tier, &a.hdr.key), KVT_OK);
    assert_int_equal(kvt_disk_tier_pin(fx->tier, &b.hdr.key), KVT_OK);
    assert_int_equal(kvt_disk_tier_pin(fx->tier, &c.hdr.key), KVT_ERR_NOT_FOUND);
    assert_int_equal(stats(fx).pinned, 2);
    assert_int_equal(put(fx, &c), KVT_ERR_FULL);
    assert_true(has(fx, &a) && has(fx, &b));
    kvt_disk_tier_unpin(fx->tier, &b.hdr.key);
    assert_int_equal(put(fx, &c), KVT_OK);
    assert_false(has(fx, &b));
    assert_true(has(fx, &a) && has(fx, &c));
    assert_int_equal(stats(fx).pinned, 1);
    tb_free(&a, 1);
    tb_free(&b, 1);
    tb_free(&c, 1);
}

/* a0-a1-a2-a3 with a branch a1-x2; a1 gets a flipped payload bit. */
static void corrupt_setup(fx_t *fx, tblock_t *a, tblock_t *x)
{
    chain_make(fx, NULL, a, 4);
    tb_make(fx, &a[1], x);
    fx_open(fx, 0);
    put_all(fx, a, 4);
    put_all(fx, x, 1);
    fx_close(fx);
    raw_flip(fx, &a[1].hdr.key);
    fx_open(fx, 0);
    assert_int_equal(stats(fx).blocks, 5); /* open reads meta only */
}

static void test_corrupt_get_drops_descendants(void **state)
{
    fx_t *fx = *state;
    tblock_t a[4], x;
    corrupt_setup(fx, a, &x);
    kvt_disk_verify_report_t rep;
    assert_int_equal(kvt_disk_tier_verify(fx->tier, false, &rep), KVT_OK);
    assert_int_equal(rep.blocks, 5);
    assert_int_equal(rep.corrupt, 1);
    assert_int_equal(rep.orphans, 3); /* a2, a3, x2 hang off the bad a1 */
    assert_int_equal(rep.ok, 1);
    assert_int_equal(rep.repaired, 0);
    assert_int_equal(stats(fx).blocks, 5);

    uint8_t *dst = malloc(a[1].hdr.payload_len);
    assert_int_equal(kvt_disk_tier_get(fx->tier, &a[1].hdr.key, NULL, dst, a[1].hdr.payload_len),
                     KVT_ERR_CORRUPT);
    free(dst);
    assert_false(has(fx, &a[1]) || has(fx, &a[2]) || has(fx, &a[3]) || has(fx, &x));
    assert_int_equal(fx->events[KVT_EVENT_DROPPED], 4);
    kvt_tier_stats_t s = stats(fx);
    assert_int_equal(s.corrupt, 1);
    assert_int_equal(s.blocks, 1);
    expect_block(fx, &a[0]);
    expect_closed(fx);
    assert_int_equal(kvt_disk_tier_verify(fx->tier, false, &rep), KVT_OK);
    assert_int_equal(rep.blocks, 1);
    assert_int_equal(rep.ok, 1);
    assert_int_equal(rep.corrupt + rep.orphans, 0);
    /* The chain can be stored again. */
    put_all(fx, &a[1], 3);
    expect_block(fx, &a[3]);
    tb_free(a, 4);
    tb_free(&x, 1);
}

static void test_verify_repair(void **state)
{
    fx_t *fx = *state;
    tblock_t a[4], x;
    corrupt_setup(fx, a, &x);
    kvt_disk_verify_report_t rep;
    assert_int_equal(kvt_disk_tier_verify(fx->tier, true, &rep), KVT_OK);
    assert_int_equal(rep.corrupt, 1);
    assert_int_equal(rep.orphans, 3);
    assert_int_equal(rep.repaired, 4);
    assert_int_equal(stats(fx).blocks, 1);
    assert_int_equal(fx->events[KVT_EVENT_DROPPED], 4);
    assert_false(has(fx, &a[1]) || has(fx, &a[2]) || has(fx, &a[3]) || has(fx, &x));
    fx_close(fx);
    fx_open(fx, 0);
    assert_int_equal(stats(fx).blocks, 1);
    assert_int_equal(kvt_disk_tier_verify(fx->tier, false, &rep), KVT_OK);
    assert_int_equal(rep.blocks, 1);
    assert_int_equal(rep.ok, 1);
    expect_closed(fx);
    tb_free(a, 4);
    tb_free(&x, 1);
}

static void test_truncated(void **state)
{
    fx_t *fx = *state;
    tblock_t a[3], b;
    chain_make(fx, NULL, a, 3);
    tb_make(fx, NULL, &b);
    fx_open(fx, 0);
    put_all(fx, a, 3);
    put_all(fx, &b, 1);
    fx_close(fx);
    raw_t r;
    size_t len;
    raw_open(&r, fx->dir);
    uint8_t *img = raw_get(&r, &a[1].hdr.key, &len);
    raw_put(&r, RAW_BLOCKS, &a[1].hdr.key, img, len - 100); /* header intact, payload short */
    raw_put(&r, RAW_BLOCKS, &b.hdr.key, img, 40);           /* shorter than any header */
    free(img);
    raw_close(&r);

    fx_open(fx, 0);
    kvt_disk_verify_report_t rep;
    assert_int_equal(kvt_disk_tier_verify(fx->tier, false, &rep), KVT_OK);
    assert_int_equal(rep.blocks, 4);
    assert_int_equal(rep.corrupt, 2);
    assert_int_equal(rep.orphans, 1);
    uint8_t *dst = malloc(a[0].hdr.payload_len);
    assert_int_equal(kvt_disk_tier_get(fx->tier, &a[1].hdr.key, NULL, dst, a[0].hdr.payload_len),
                     KVT_ERR_CORRUPT);
    assert_int_equal(kvt_disk_tier_get(fx->tier, &b.hdr.key, NULL, dst, a[0].hdr.payload_len),
                     KVT_ERR_CORRUPT);
    free(dst);
    assert_false(has(fx, &a[1]) || has(fx, &a[2]) || has(fx, &b));
    assert_int_equal(stats(fx).corrupt, 2);
    expect_block(fx, &a[0]);
    expect_closed(fx);
    tb_free(a, 3);
    tb_free(&b, 1);
}

/* Lost and damaged meta records: open drops what breaks prefix closure;
 * verify finds the block left without meta, repair removes it. */
static void test_meta_damage(void **state)
{
    fx_t *fx = *state;
    tblock_t a[3], b;
    chain_make(fx, NULL, a, 3);
    tb_make(fx, NULL, &b);
    fx_open(fx, 0);
    put_all(fx, a, 3);
    put_all(fx, &b, 1);
    fx_close(fx);
    raw_t r;
    raw_open(&r, fx->dir);
    raw_del(&r, RAW_META, &a[1].hdr.key);
    raw_put(&r, RAW_META, &b.hdr.key, "garbage", 7);
    raw_close(&r);

    fx_open(fx, 0);
    assert_true(has(fx, &a[0]));
    assert_false(has(fx, &a[1]) || has(fx, &a[2]) || has(fx, &b));
    assert_int_equal(stats(fx).blocks, 1);
    kvt_disk_verify_report_t rep;
    assert_int_equal(kvt_disk_tier_verify(fx->tier, true, &rep), KVT_OK);
    assert_int_equal(rep.blocks, 2); /* a0 and a1's image, left without meta */
    assert_int_equal(rep.corrupt, 1);
    assert_int_equal(rep.repaired, 1);
    assert_int_equal(kvt_disk_tier_verify(fx->tier, false, &rep), KVT_OK);
    assert_int_equal(rep.blocks, 1);
    assert_int_equal(rep.ok, 1);
    put_all(fx, &a[1], 2);
    put_all(fx, &b, 1);
    expect_block(fx, &a[2]);
    expect_block(fx, &b);
    tb_free(a, 3);
    tb_free(&b, 1);
}

static void test_read_only(void **state)
{
    fx_t *fx = *state;
    tblock_t a[2], c;
    chain_make(fx, NULL, a, 2);
    tb_make(fx, NULL, &c);
    kvt_disk_tier_params_t p = params_of(fx, 0);
    p.read_only = true;
    assert_int_equal(kvt_disk_tier_open(&p, &fx->tier), KVT_ERR_NOT_FOUND);
    fx_open(fx, 0);
    put_all(fx, a, 2);
    assert_int_equal(kvt_disk_tier_flush(fx->tier), KVT_OK);

    /* A tool reading a live node's DB. */
    fx_t ro = *fx;
    ro.tier = NULL;
    p.identity = NULL;
    assert_int_equal(kvt_disk_tier_open(&p, &ro.tier), KVT_OK);
    expect_block(&ro, &a[1]);
    assert_int_equal(put(&ro, &c), KVT_ERR_INVALID);
    assert_int_equal(kvt_disk_tier_pin(ro.tier, &a[0].hdr.key), KVT_ERR_INVALID);
    kvt_disk_verify_report_t rep;
    assert_int_equal(kvt_disk_tier_verify(ro.tier, true, &rep), KVT_ERR_INVALID);
    assert_int_equal(kvt_disk_tier_verify(ro.tier, false, &rep), KVT_OK);
    assert_int_equal(rep.ok, 2);
    assert_int_equal(kvt_disk_tier_flush(ro.tier), KVT_OK);
    expect_closed(&ro);
    kvt_disk_tier_close(ro.tier);

    fx_close(fx);
    fx_open(fx, 0);
    assert_false(has(fx, &c));
    assert_int_equal(stats(fx).blocks, 2);
    tb_free(a, 2);
    tb_free(&c, 1);
}

static void test_counters_persist(void **state)
{
    fx_t *fx = *state;
    tblock_t a[2], x;
    chain_make(fx, NULL, a, 2);
    tb_make(fx, &a[0], &x);
    fx_open(fx, 0);
    put_all(fx, a, 1);
    assert_int_equal(put(fx, &a[1]), KVT_OK);
    tblock_t orphan;
    tb_make(fx, &a[1], &orphan);
    tblock_t far;
    tb_make(fx, &orphan, &far);
    assert_int_equal(put(fx, &far), KVT_ERR_NO_PARENT);
    expect_block(fx, &a[0]);
    expect_block(fx, &a[1]);
    uint8_t dst[8];
    assert_int_equal(kvt_disk_tier_get(fx->tier, &x.hdr.key, NULL, dst, 0), KVT_ERR_NOT_FOUND);
    kvt_tier_stats_t before = stats(fx);
    fx_close(fx);
    fx_open(fx, 0);
    kvt_tier_stats_t after = stats(fx);
    assert_int_equal(after.hits, 2);
    assert_int_equal(after.misses, 1);
    assert_int_equal(after.puts, 2);
    assert_int_equal(after.no_parent, 1);
    assert_memory_equal(&before, &after, sizeof(before));
    tb_free(a, 2);
    tb_free(&x, 1);
    tb_free(&orphan, 1);
    tb_free(&far, 1);
}

static void test_access_order_survives_restart(void **state)
{
    fx_t *fx = *state;
    tblock_t a, b, c, d;
    tb_make(fx, NULL, &a);
    tb_make(fx, NULL, &b);
    tb_make(fx, NULL, &c);
    tb_make(fx, NULL, &d);
    fx_open(fx, 3 * fx->image_len);
    put_all(fx, &a, 1);
    put_all(fx, &b, 1);
    put_all(fx, &c, 1);
    expect_block(fx, &a); /* a is now the most recent */
    fx_close(fx);
    fx_open(fx, 3 * fx->image_len);
    assert_int_equal(put(fx, &d), KVT_OK);
    assert_true(has(fx, &a));
    assert_false(has(fx, &b));
    assert_true(has(fx, &c) && has(fx, &d));
    tb_free(&a, 1);
    tb_free(&b, 1);
    tb_free(&c, 1);
    tb_free(&d, 1);
}

/* --- concurrency: threads put and read their own chains under eviction --- */

#define N_THREADS 4
#define CHAIN_LEN 24

typedef struct {
    fx_t *fx;
    tblock_t *chain;
    int bad;
} worker_t;

static void *worker(void *arg)
{
    worker_t *w = arg;
    size_t len = w->chain[0].hdr.payload_len;
    uint8_t *dst = malloc(len);
    for (int i = 0; i < CHAIN_LEN && dst; i++) {
        kvt_status_t st = kvt_disk_tier_put(w->fx->tier, &w->chain[i].hdr, w->chain[i].payload);
        /* NO_PARENT: another thread evicted our tip.  FULL: every leaf is
         * some thread's reserved parent, which must not be evicted. */
        if (st != KVT_OK && st != KVT_ERR_NO_PARENT && st != KVT_ERR_FULL)
            w->bad++;
        for (int j = 0; j <= i; j++) {
            st = kvt_disk_tier_get(w->fx->tier, &w->chain[j].hdr.key, NULL, dst, len);
            if (st == KVT_OK && memcmp(dst, w->chain[j].payload, len) != 0)
                w->bad++;
            else if (st != KVT_OK && st != KVT_ERR_NOT_FOUND)
                w->bad++;
        }
    }
    free(dst);
    return NULL;
}

static void test_concurrent(void **state)
{
    fx_t *fx = *state;
    tblock_t chains[N_THREADS][CHAIN_LEN];
    worker_t w[N_THREADS];
    pthread_t th[N_THREADS];
    for (int t = 0; t < N_THREADS; t++)
        chain_make(fx, NULL, chains[t], CHAIN_LEN);
    fx_open(fx, 20 * fx->image_len);
    for (int t = 0; t < N_THREADS; t++) {
        w[t] = (worker_t){.fx = fx, .chain = chains[t]};
        assert_int_equal(pthread_create(&th[t], NULL, worker, &w[t]), 0);
    }
    for (int t = 0; t < N_THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(w[t].bad, 0);
    }
    kvt_tier_stats_t s = stats(fx);
    assert_true(s.bytes <= s.capacity_bytes);
    assert_int_equal(s.corrupt, 0);
    assert_int_equal(s.puts - s.evictions, s.blocks);
    expect_closed(fx);
    kvt_disk_verify_report_t rep;
    assert_int_equal(kvt_disk_tier_verify(fx->tier, false, &rep), KVT_OK);
    assert_int_equal(rep.ok, s.blocks);
    assert_int_equal(rep.blocks, s.blocks);
    for (int t = 0; t < N_THREADS; t++)
        tb_free(chains[t], CHAIN_LEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_put_rejects, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reopen_and_identity, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_capacity_lru, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_parent_reserved, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_pins, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_get_drops_descendants, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_verify_repair, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_truncated, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_meta_damage, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_read_only, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_counters_persist, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_access_order_survives_restart, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
