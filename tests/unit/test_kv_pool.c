/* The engine's KV pool (engine/kv_poolInt.h): put / match / refcounts,
 * leaf-first LRU eviction, duplicate keys, rejected blocks, a full pool,
 * prefix closure under a random workload (every invariant re-checked after
 * every step by kvt_kv_pool_check), and allocation failures at init. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/alloc.h"
#include "engine/kv_poolInt.h"
#include "tests/support/testutil.h"

#include <stdlib.h>
#include <string.h>

static kvt_block_identity_t g_id;

static void pool_open(kvt_kv_pool_t *p, uint32_t slots)
{
    g_id = tu_identity();
    assert_int_equal(kvt_kv_pool_init(p, &g_id.layout, slots), KVT_OK);
}

static void put_ok(kvt_kv_pool_t *p, const tu_chain_t *c, int i)
{
    assert_int_equal(kvt_kv_pool_put(p, &g_id, &c->hdr[i], c->payload[i], tu_payload_len(&g_id)),
                     KVT_OK);
    assert_true(kvt_kv_pool_check(p));
}

static bool has(const kvt_kv_pool_t *p, const tu_chain_t *c, int i)
{
    return kvt_kv_pool_find(p, &c->hdr[i].key) != KVT_SLOT_NONE;
}

static void test_put_match(void **state)
{
    (void)state;
    kvt_kv_pool_t p;
    pool_open(&p, 8);
    tu_chain_t c;
    tu_chain_make(&c, &g_id, 5, 1, NULL, 0);
    kvt_block_key_t keys[5];
    for (int i = 0; i < 5; i++) {
        keys[i] = c.hdr[i].key;
        put_ok(&p, &c, i);
    }
    assert_int_equal(kvt_kv_pool_match(&p, keys, 5), 5);
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &c.hdr[2], c.payload[2], tu_payload_len(&g_id)),
                     KVT_ERR_EXISTS);
    uint32_t used, total, indexed;
    kvt_kv_pool_stats(&p, &used, &total, &indexed);
    assert_int_equal(used, 5);
    assert_int_equal(total, 8);
    assert_int_equal(indexed, 5);
    uint32_t s = kvt_kv_pool_find(&p, &keys[3]);
    assert_memory_equal(kvt_kv_pool_data(&p, s), c.payload[3], tu_payload_len(&g_id));
    /* A chain that branches after block 1 matches two blocks. */
    tu_chain_t d;
    tu_chain_make(&d, &g_id, 4, 2, &c, 2);
    kvt_block_key_t dk[4];
    for (int i = 0; i < 4; i++)
        dk[i] = d.hdr[i].key;
    assert_int_equal(kvt_kv_pool_match(&p, dk, 4), 2);
    tu_chain_free(&d);
    tu_chain_free(&c);
    kvt_kv_pool_cleanup(&p);
}

static void test_rejects(void **state)
{
    (void)state;
    kvt_kv_pool_t p;
    pool_open(&p, 8);
    tu_chain_t c;
    tu_chain_make(&c, &g_id, 3, 3, NULL, 0);
    size_t len = tu_payload_len(&g_id);
    /* Parent absent: block 1 before block 0. */
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &c.hdr[1], c.payload[1], len), KVT_ERR_NO_PARENT);
    put_ok(&p, &c, 0);
    kvt_block_header_t h = c.hdr[1];
    h.fingerprint[0] ^= 1;
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &h, c.payload[1], len), KVT_ERR_MISMATCH);
    h = c.hdr[1];
    h.layout.head_dim = 16;
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &h, c.payload[1], len), KVT_ERR_MISMATCH);
    h = c.hdr[1];
    h.tokens[0] ^= 1; /* the key no longer names the tokens */
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &h, c.payload[1], len), KVT_ERR_CORRUPT);
    c.payload[1][7] ^= 0x40; /* bad checksum */
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &c.hdr[1], c.payload[1], len), KVT_ERR_CORRUPT);
    c.payload[1][7] ^= 0x40;
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &c.hdr[1], c.payload[1], len - 1), KVT_ERR_CORRUPT);
    /* Index 2 claiming block 0 as its parent (key consistent, index not). */
    h = c.hdr[1];
    h.index = 2;
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &h, c.payload[1], len), KVT_ERR_CORRUPT);
    uint32_t used, indexed;
    kvt_kv_pool_stats(&p, &used, NULL, &indexed);
    assert_int_equal(used, 1);
    assert_int_equal(indexed, 1);
    put_ok(&p, &c, 1);
    put_ok(&p, &c, 2);
    tu_chain_free(&c);
    kvt_kv_pool_cleanup(&p);
}

/* 4 slots: chain a (3 blocks) and b (1 block) fill them; new blocks evict
 * the least recent leaf each time, never an interior block. */
static void test_evict_leaves_first(void **state)
{
    (void)state;
    kvt_kv_pool_t p;
    pool_open(&p, 4);
    tu_chain_t a, b, c;
    tu_chain_make(&a, &g_id, 3, 10, NULL, 0);
    tu_chain_make(&b, &g_id, 1, 11, NULL, 0);
    tu_chain_make(&c, &g_id, 3, 12, NULL, 0);
    for (int i = 0; i < 3; i++)
        put_ok(&p, &a, i);
    put_ok(&p, &b, 0);
    /* Touch a0 (interior): recency must not make it a victim before a2. */
    uint32_t a0 = kvt_kv_pool_find(&p, &a.hdr[0].key);
    kvt_kv_pool_ref(&p, a0);
    kvt_kv_pool_unref(&p, a0);
    put_ok(&p, &c, 0); /* leaves: a2 (older), b0 -> a2 goes */
    assert_false(has(&p, &a, 2));
    assert_true(has(&p, &a, 1) && has(&p, &b, 0));
    put_ok(&p, &c, 1); /* leaves: a1, b0, c0 is interior now -> a1 (older than b0) */
    assert_false(has(&p, &a, 1));
    assert_true(has(&p, &a, 0) && has(&p, &b, 0));
    /* A referenced block is never a victim. */
    uint32_t b0 = kvt_kv_pool_find(&p, &b.hdr[0].key);
    kvt_kv_pool_ref(&p, b0);
    put_ok(&p, &c, 2); /* a0 (leaf), c1 (held as c2's parent), b0 (referenced) */
    assert_true(has(&p, &b, 0));
    assert_false(has(&p, &a, 0));
    kvt_kv_pool_unref(&p, b0);
    assert_true(kvt_kv_pool_check(&p));
    tu_chain_free(&a);
    tu_chain_free(&b);
    tu_chain_free(&c);
    kvt_kv_pool_cleanup(&p);
}

static void test_full(void **state)
{
    (void)state;
    kvt_kv_pool_t p;
    pool_open(&p, 3);
    tu_chain_t a, b;
    tu_chain_make(&a, &g_id, 3, 20, NULL, 0);
    tu_chain_make(&b, &g_id, 1, 21, NULL, 0);
    for (int i = 0; i < 3; i++)
        put_ok(&p, &a, i);
    /* Only the leaf is evictable; hold it and nothing is. */
    uint32_t leaf = kvt_kv_pool_find(&p, &a.hdr[2].key), s;
    kvt_kv_pool_ref(&p, leaf);
    assert_int_equal(kvt_kv_pool_alloc(&p, &s), KVT_ERR_FULL);
    assert_int_equal(kvt_kv_pool_put(&p, &g_id, &b.hdr[0], b.payload[0], tu_payload_len(&g_id)),
                     KVT_ERR_FULL);
    assert_true(has(&p, &a, 0) && has(&p, &a, 1) && has(&p, &a, 2));
    assert_true(kvt_kv_pool_check(&p));
    kvt_kv_pool_unref(&p, leaf);
    /* Private slots are never evicted. */
    uint32_t priv[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(kvt_kv_pool_alloc(&p, &priv[i]), KVT_OK);
    assert_false(has(&p, &a, 0));
    assert_int_equal(kvt_kv_pool_alloc(&p, &s), KVT_ERR_FULL);
    for (int i = 0; i < 3; i++)
        kvt_kv_pool_unref(&p, priv[i]);
    uint32_t used;
    kvt_kv_pool_stats(&p, &used, NULL, NULL);
    assert_int_equal(used, 0);
    assert_true(kvt_kv_pool_check(&p));
    tu_chain_free(&a);
    tu_chain_free(&b);
    kvt_kv_pool_cleanup(&p);
}

/* Publishing a key that is indexed already hands back the indexed slot
 * and frees the private duplicate. */
static void test_publish_duplicate(void **state)
{
    (void)state;
    kvt_kv_pool_t p;
    pool_open(&p, 4);
    tu_chain_t c;
    tu_chain_make(&c, &g_id, 2, 30, NULL, 0);
    kvt_block_key_t root;
    kvt_block_key_root(g_id.fingerprint, NULL, 0, &root);
    uint32_t s0, s1, d0;
    assert_int_equal(kvt_kv_pool_alloc(&p, &s0), KVT_OK);
    assert_int_equal(kvt_kv_pool_publish(&p, s0, &c.hdr[0].key, &root, 0), s0);
    assert_int_equal(kvt_kv_pool_alloc(&p, &s1), KVT_OK);
    assert_int_equal(kvt_kv_pool_publish(&p, s1, &c.hdr[1].key, &c.hdr[0].key, 1), s1);
    assert_int_equal(kvt_kv_pool_alloc(&p, &d0), KVT_OK);
    assert_int_equal(kvt_kv_pool_publish(&p, d0, &c.hdr[0].key, &root, 0), s0);
    assert_int_equal(p.slots[s0].refs, 2);
    assert_int_equal(p.slots[s0].n_children, 1);
    uint32_t used;
    kvt_kv_pool_stats(&p, &used, NULL, NULL);
    assert_int_equal(used, 2);
    assert_true(kvt_kv_pool_check(&p));
    kvt_kv_pool_unref(&p, s0);
    kvt_kv_pool_unref(&p, s0);
    kvt_kv_pool_unref(&p, s1);
    assert_true(kvt_kv_pool_check(&p));
    tu_chain_free(&c);
    kvt_kv_pool_cleanup(&p);
}

/* --- random workload --- */

#define R_CHAINS 6
#define R_LEN 8
#define R_SEQS 4

typedef struct {
    int chain;
    int n;                 /* blocks held */
    uint32_t slots[R_LEN];
} rseq_t;

static uint64_t g_rng = 0x6b765f706f6f6cull;

static uint32_t rnd(uint32_t n)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) % n);
}

/* Like the engine: reuse the cached prefix, compute (alloc + fill +
 * publish) a few more blocks; stop at the first KVT_ERR_FULL. */
static void seq_start(kvt_kv_pool_t *p, tu_chain_t *ch, rseq_t *s, int chain)
{
    tu_chain_t *c = &ch[chain];
    kvt_block_key_t root;
    kvt_block_key_root(g_id.fingerprint, NULL, 0, &root);
    s->chain = chain;
    s->n = 0;
    int want = 1 + (int)rnd(R_LEN);
    while (s->n < want) {
        uint32_t slot = kvt_kv_pool_find(p, &c->hdr[s->n].key);
        if (slot != KVT_SLOT_NONE) {
            kvt_kv_pool_ref(p, slot);
        } else {
            if (kvt_kv_pool_alloc(p, &slot) != KVT_OK)
                break;
            memcpy(kvt_kv_pool_data(p, slot), c->payload[s->n], tu_payload_len(&g_id));
            const kvt_block_key_t *parent = s->n ? &c->hdr[s->n - 1].key : &root;
            slot = kvt_kv_pool_publish(p, slot, &c->hdr[s->n].key, parent, (uint32_t)s->n);
        }
        s->slots[s->n++] = slot;
    }
}

static void seq_stop(kvt_kv_pool_t *p, rseq_t *s)
{
    for (int i = 0; i < s->n; i++) {
        assert_true(tu_payload_ok(&g_id, &p->slots[s->slots[i]].key,
                                  kvt_kv_pool_data(p, s->slots[i])));
        kvt_kv_pool_unref(p, s->slots[i]);
    }
    s->n = 0;
}

static void random_put(kvt_kv_pool_t *p, tu_chain_t *ch)
{
    tu_chain_t *c = &ch[rnd(R_CHAINS)];
    int i = (int)rnd(R_LEN);
    bool present = has(p, c, i), parent = i == 0 || has(p, c, i - 1);
    kvt_status_t st = kvt_kv_pool_put(p, &g_id, &c->hdr[i], c->payload[i], tu_payload_len(&g_id));
    if (present)
        assert_int_equal(st, KVT_ERR_EXISTS);
    else if (!parent)
        assert_int_equal(st, KVT_ERR_NO_PARENT);
    else
        assert_true(st == KVT_OK || st == KVT_ERR_FULL);
}

static void test_random_prefix_closed(void **state)
{
    (void)state;
    kvt_kv_pool_t p;
    pool_open(&p, 12);
    tu_chain_t ch[R_CHAINS];
    tu_chain_make(&ch[0], &g_id, R_LEN, 40, NULL, 0);
    for (int j = 1; j < R_CHAINS; j++) /* branches off chain 0 at 0..3 blocks */
        tu_chain_make(&ch[j], &g_id, R_LEN, 40 + (uint32_t)j, &ch[0], j % 4);
    rseq_t seqs[R_SEQS] = {0};
    for (int step = 0; step < 4000; step++) {
        uint32_t op = rnd(10);
        rseq_t *s = &seqs[rnd(R_SEQS)];
        if (op < 5)
            random_put(&p, ch);
        else if (s->n == 0)
            seq_start(&p, ch, s, (int)rnd(R_CHAINS));
        else
            seq_stop(&p, s);
        if (!kvt_kv_pool_check(&p))
            fail_msg("pool invariant broken at step %d", step);
    }
    for (int i = 0; i < R_SEQS; i++)
        seq_stop(&p, &seqs[i]);
    uint32_t used, indexed;
    kvt_kv_pool_stats(&p, &used, NULL, &indexed);
    assert_int_equal(used, indexed); /* no private slot left behind */
    assert_true(p.evictions > 100);
    for (int j = 0; j < R_CHAINS; j++)
        tu_chain_free(&ch[j]);
    kvt_kv_pool_cleanup(&p);
}

static void test_init_failures(void **state)
{
    (void)state;
    g_id = tu_identity();
    kvt_kv_pool_t p;
    for (long n = 0; n < 64; n++) {
        kvt_alloc_fail_after(n);
        kvt_status_t st = kvt_kv_pool_init(&p, &g_id.layout, 200);
        kvt_alloc_fail_after(-1);
        if (st == KVT_OK) {
            assert_true(n > 4);
            kvt_kv_pool_cleanup(&p);
            return;
        }
        assert_int_equal(st, KVT_ERR_NOMEM);
    }
    fail_msg("init never succeeded");
}

static void test_bad_params(void **state)
{
    (void)state;
    g_id = tu_identity();
    kvt_kv_pool_t p;
    assert_int_equal(kvt_kv_pool_init(&p, &g_id.layout, 0), KVT_ERR_INVALID);
    kvt_block_layout_t bad = g_id.layout;
    bad.dtype = (kvt_dtype_t)99;
    assert_int_equal(kvt_kv_pool_init(&p, &bad, 4), KVT_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_match),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_evict_leaves_first),
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_publish_duplicate),
        cmocka_unit_test(test_random_prefix_closed),
        cmocka_unit_test(test_init_failures),
        cmocka_unit_test(test_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
