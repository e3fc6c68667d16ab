/* T1 host pool: put/get, dedup, prefix closure, leaf-first LRU eviction,
 * pins, reserve/commit/abort, and a multi-threaded stress run whose every
 * read is checked against content derived from the key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/alloc.h"
#include "kvstore/host_pool.h"
#include "tests/support/testutil.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static kvt_block_identity_t g_id;

typedef tu_chain_t chain_t;

static size_t payload_len(void) { return tu_payload_len(&g_id); }

static void fill_payload(const kvt_block_key_t *key, uint8_t *out) { tu_fill_payload(&g_id, key, out); }

static void check_payload(const kvt_block_key_t *key, const uint8_t *got)
{
    assert_true(tu_payload_ok(&g_id, key, got));
}

static void make_chain(chain_t *c, int n, uint32_t seed, const chain_t *base, int share)
{
    tu_chain_make(c, &g_id, n, seed, base, share);
}

static void free_chain(chain_t *c) { tu_chain_free(c); }

static kvt_host_pool_t *make_pool(uint32_t slots, uint32_t shards)
{
    kvt_host_pool_params_t p = {.identity = g_id, .capacity_bytes = (uint64_t)slots * payload_len(),
                                .n_shards = shards};
    kvt_host_pool_t *pool = NULL;
    assert_int_equal(kvt_host_pool_create(&p, &pool), KVT_OK);
    return pool;
}

static void test_put_get(void **state)
{
    (void)state;
    kvt_host_pool_t *pool = make_pool(16, 0);
    chain_t c;
    make_chain(&c, 5, 1, NULL, 0);
    for (int i = 0; i < c.n; i++)
        assert_int_equal(kvt_host_pool_put(pool, &c.hdr[i], c.payload[i]), KVT_OK);
    assert_int_equal(kvt_host_pool_put(pool, &c.hdr[2], c.payload[2]), KVT_OK); /* dedup */
    uint8_t *buf = malloc(payload_len());
    kvt_block_header_t h;
    for (int i = 0; i < c.n; i++) {
        assert_int_equal(kvt_host_pool_get(pool, &c.hdr[i].key, &h, buf, payload_len()), KVT_OK);
        assert_true(kvt_block_key_eq(&h.key, &c.hdr[i].key));
        assert_int_equal(h.index, (uint32_t)i);
        check_payload(&h.key, buf);
    }
    assert_int_equal(kvt_host_pool_get(pool, &c.hdr[0].key, &h, buf, payload_len() - 1),
                     KVT_ERR_TOO_LARGE);
    kvt_block_key_t absent = {{1}};
    assert_int_equal(kvt_host_pool_get(pool, &absent, &h, buf, payload_len()), KVT_ERR_NOT_FOUND);
    kvt_tier_stats_t s;
    kvt_host_pool_stats(pool, &s);
    assert_int_equal(s.blocks, 5);
    assert_int_equal(s.puts, 5);
    assert_int_equal(s.hits, 5);
    assert_int_equal(s.misses, 1);
    free(buf);
    free_chain(&c);
    kvt_host_pool_destroy(pool);
}

static void test_rejects(void **state)
{
    (void)state;
    kvt_host_pool_t *pool = make_pool(8, 1);
    chain_t c;
    make_chain(&c, 3, 2, NULL, 0);
    /* Block 1 without block 0: refused, prefix closure. */
    assert_int_equal(kvt_host_pool_put(pool, &c.hdr[1], c.payload[1]), KVT_ERR_NO_PARENT);
    /* Wrong fingerprint or layout. */
    kvt_block_header_t bad = c.hdr[0];
    bad.fingerprint[0] ^= 1;
    assert_int_equal(kvt_host_pool_put(pool, &bad, c.payload[0]), KVT_ERR_MISMATCH);
    bad = c.hdr[0];
    bad.layout.head_dim = 16;
    assert_int_equal(kvt_host_pool_put(pool, &bad, c.payload[0]), KVT_ERR_MISMATCH);
    /* A header whose key does not name its tokens. */
    bad = c.hdr[0];
    bad.tokens[0]++;
    assert_int_equal(kvt_host_pool_put(pool, &bad, c.payload[0]), KVT_ERR_CORRUPT);
    /* A header whose index does not follow its parent's. */
    assert_int_equal(kvt_host_pool_put(pool, &c.hdr[0], c.payload[0]), KVT_OK);
    kvt_block_header_t skewed;
    assert_int_equal(kvt_block_header_make(&skewed, &g_id, &c.hdr[0].key, 5, c.hdr[1].tokens,
                                           c.payload[1]), KVT_OK);
    assert_int_equal(kvt_host_pool_put(pool, &skewed, c.payload[1]), KVT_ERR_CORRUPT);
    kvt_tier_stats_t s;
    kvt_host_pool_stats(pool, &s);
    assert_int_equal(s.blocks, 1);
    assert_int_equal(s.no_parent, 1);
    assert_int_equal(s.corrupt, 1);
    free_chain(&c);
    kvt_host_pool_destroy(pool);
}

static void test_commit_checks_payload(void **state)
{
    (void)state;
    kvt_host_pool_t *pool = make_pool(4, 1);
    chain_t c;
    make_chain(&c, 2, 3, NULL, 0);
    kvt_block_view_t v;
    assert_int_equal(kvt_host_pool_reserve(pool, &c.hdr[0], &v), KVT_OK);
    memcpy(v.payload, c.payload[0], payload_len());
    v.payload[7] ^= 0x40; /* a bit flipped "in flight" */
    assert_int_equal(kvt_host_pool_commit(pool, &v), KVT_ERR_CORRUPT);
    assert_false(kvt_host_pool_contains(pool, &c.hdr[0].key));
    assert_int_equal(kvt_host_pool_reserve(pool, &c.hdr[0], &v), KVT_OK);
    memcpy(v.payload, c.payload[0], payload_len());
    assert_int_equal(kvt_host_pool_commit(pool, &v), KVT_OK);
    assert_int_equal(kvt_host_pool_reserve(pool, &c.hdr[0], &v), KVT_ERR_EXISTS);
    /* Abort returns the slot and the parent reservation. */
    assert_int_equal(kvt_host_pool_reserve(pool, &c.hdr[1], &v), KVT_OK);
    kvt_host_pool_abort(pool, &v);
    kvt_host_pool_abort(pool, &v); /* refused: must not free the slot twice */
    assert_false(kvt_host_pool_contains(pool, &c.hdr[1].key));
    kvt_tier_stats_t s;
    kvt_host_pool_stats(pool, &s);
    assert_int_equal(s.corrupt, 1);
    assert_int_equal(s.blocks, 1);
    /* All 4 slots usable again: fill them with a chain of 4 after block 0. */
    chain_t d;
    make_chain(&d, 4, 3, &c, 1);
    for (int i = 1; i < 4; i++)
        assert_int_equal(kvt_host_pool_put(pool, &d.hdr[i], d.payload[i]), KVT_OK);
    kvt_host_pool_stats(pool, &s);
    assert_int_equal(s.blocks, 4);
    assert_int_equal(s.evictions, 0);
    free_chain(&c);
    free_chain(&d);
    kvt_host_pool_destroy(pool);
}

static void test_leaf_first_lru(void **state)
{
    (void)state;
    kvt_host_pool_t *pool = make_pool(6, 1);
    chain_t a, b;
    make_chain(&a, 4, 10, NULL, 0);
    make_chain(&b, 4, 13, &a, 2); /* shares a's first two blocks */
    for (int i = 0; i < 4; i++)
        assert_int_equal(kvt_host_pool_put(pool, &a.hdr[i], a.payload[i]), KVT_OK);
    for (int i = 2; i < 4; i++)
        assert_int_equal(kvt_host_pool_put(pool, &b.hdr[i], b.payload[i]), KVT_OK);
    /* Pool is full (6).  Touch chain a so chain b's tail is least recent. */
    kvt_block_view_t v;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(kvt_host_pool_pin(pool, &a.hdr[i].key, &v), KVT_OK);
        kvt_host_pool_unpin(pool, &v);
    }
    chain_t c;
    make_chain(&c, 1, 11, NULL, 0);
    assert_int_equal(kvt_host_pool_put(pool, &c.hdr[0], c.payload[0]), KVT_OK);
    /* b[3] is the least recent leaf; b[2] is older but not a leaf. */
    assert_false(kvt_host_pool_contains(pool, &b.hdr[3].key));
    assert_true(kvt_host_pool_contains(pool, &b.hdr[2].key));
    chain_t d;
    make_chain(&d, 1, 12, NULL, 0);
    assert_int_equal(kvt_host_pool_put(pool, &d.hdr[0], d.payload[0]), KVT_OK);
    assert_false(kvt_host_pool_contains(pool, &b.hdr[2].key));
    for (int i = 0; i < 4; i++)
        assert_true(kvt_host_pool_contains(pool, &a.hdr[i].key));
    free_chain(&a);
    free_chain(&b);
    free_chain(&c);
    free_chain(&d);
    kvt_host_pool_destroy(pool);
}

static void test_pins_block_eviction(void **state)
{
    (void)state;
    kvt_host_pool_t *pool = make_pool(2, 1);
    chain_t a, b;
    make_chain(&a, 2, 20, NULL, 0);
    make_chain(&b, 1, 21, NULL, 0);
    assert_int_equal(kvt_host_pool_put(pool, &a.hdr[0], a.payload[0]), KVT_OK);
    assert_int_equal(kvt_host_pool_put(pool, &a.hdr[1], a.payload[1]), KVT_OK);
    kvt_block_view_t v;
    assert_int_equal(kvt_host_pool_pin(pool, &a.hdr[1].key, &v), KVT_OK);
    /* a[1] pinned, a[0] interior: nothing evictable. */
    assert_int_equal(kvt_host_pool_put(pool, &b.hdr[0], b.payload[0]), KVT_ERR_FULL);
    check_payload(&a.hdr[1].key, v.payload);
    kvt_host_pool_unpin(pool, &v);
    assert_int_equal(kvt_host_pool_put(pool, &b.hdr[0], b.payload[0]), KVT_OK);
    assert_false(kvt_host_pool_contains(pool, &a.hdr[1].key));
    assert_true(kvt_host_pool_contains(pool, &a.hdr[0].key));
    free_chain(&a);
    free_chain(&b);
    kvt_host_pool_destroy(pool);
}

/* --- multi-threaded stress --- */

#define N_CHAINS 24
#define N_THREADS 4

typedef struct {
    kvt_host_pool_t *pool;
    chain_t *chains;
    unsigned seed;
    int errors;
} worker_t;

static void *stress_worker(void *arg)
{
    worker_t *w = arg;
    uint8_t *buf = malloc(payload_len());
    kvt_block_header_t h;
    for (int op = 0; op < 4000; op++) {
        chain_t *c = &w->chains[rand_r(&w->seed) % N_CHAINS];
        int depth = 1 + rand_r(&w->seed) % c->n;
        for (int i = 0; i < depth; i++) {
            kvt_status_t st = kvt_host_pool_put(w->pool, &c->hdr[i], c->payload[i]);
            if (st == KVT_ERR_FULL || st == KVT_ERR_NO_PARENT)
                break; /* racing evictions: legal outcomes */
            w->errors += st != KVT_OK;
        }
        int i = rand_r(&w->seed) % c->n;
        kvt_status_t st = kvt_host_pool_get(w->pool, &c->hdr[i].key, &h, buf, payload_len());
        if (st == KVT_OK) {
            uint8_t *want = malloc(payload_len());
            fill_payload(&c->hdr[i].key, want);
            w->errors += memcmp(want, buf, payload_len()) != 0;
            w->errors += !kvt_block_key_eq(&h.key, &c->hdr[i].key);
            free(want);
        } else {
            w->errors += st != KVT_ERR_NOT_FOUND;
        }
    }
    free(buf);
    return NULL;
}

static void assert_prefix_closed(kvt_host_pool_t *pool, chain_t *chains, int n)
{
    for (int c = 0; c < n; c++)
        for (int i = 1; i < chains[c].n; i++)
            if (kvt_host_pool_contains(pool, &chains[c].hdr[i].key))
                assert_true(kvt_host_pool_contains(pool, &chains[c].hdr[i - 1].key));
}

static void test_concurrent_stress(void **state)
{
    (void)state;
    kvt_host_pool_t *pool = make_pool(64, 4);
    chain_t *chains = calloc(N_CHAINS, sizeof(chain_t));
    for (int c = 0; c < N_CHAINS; c++)
        make_chain(&chains[c], 8, 100 + (uint32_t)c, c ? &chains[c - 1] : NULL, c % 3);
    pthread_t th[N_THREADS];
    worker_t w[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        w[t] = (worker_t){.pool = pool, .chains = chains, .seed = 7u + (unsigned)t};
        pthread_create(&th[t], NULL, stress_worker, &w[t]);
    }
    for (int t = 0; t < N_THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(w[t].errors, 0);
    }
    assert_prefix_closed(pool, chains, N_CHAINS);
    kvt_tier_stats_t s;
    kvt_host_pool_stats(pool, &s);
    assert_true(s.blocks <= 64);
    assert_int_equal(s.pinned, 0);
    assert_true(s.evictions > 0);
    for (int c = 0; c < N_CHAINS; c++)
        free_chain(&chains[c]);
    free(chains);
    kvt_host_pool_destroy(pool);
}

static void test_create_fails_cleanly(void **state)
{
    (void)state;
    kvt_host_pool_params_t p = {.identity = g_id, .capacity_bytes = payload_len() - 1};
    kvt_host_pool_t *pool = NULL;
    assert_int_equal(kvt_host_pool_create(&p, &pool), KVT_ERR_INVALID);
    p.capacity_bytes = 64 * payload_len();
    for (long n = 0; n < 8; n++) { /* out of memory at each allocation in turn */
        kvt_alloc_fail_after(n);
        kvt_status_t st = kvt_host_pool_create(&p, &pool);
        kvt_alloc_fail_after(-1);
        if (st == KVT_OK)
            kvt_host_pool_destroy(pool);
        else
            assert_int_equal(st, KVT_ERR_NOMEM);
    }
}

int main(void)
{
    g_id = tu_identity();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_commit_checks_payload),
        cmocka_unit_test(test_leaf_first_lru),
        cmocka_unit_test(test_pins_block_eviction),
        cmocka_unit_test(test_concurrent_stress),
        cmocka_unit_test(test_create_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
