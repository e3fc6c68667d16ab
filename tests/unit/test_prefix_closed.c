/* Property test: over random forests of key chains and random operations,
 * every tier stays prefix-closed (a resident block's parent is resident)
 * and within its capacity, and every block read back is the one stored.
 * Runs T1 alone, T2 alone and the tier (T1 over T2), with capacities small
 * enough that eviction is constant.  KVT_PROP_SEED replays one seed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kvstore/tier.h"
#include "tests/support/testutil.h"

#define N_CHAINS 40
#define CHAIN_LEN 12
#define OPS 600

static kvt_block_identity_t g_id;
static tu_chain_t *g_chains;

/* A forest: each chain branches off a random earlier one at a random depth. */
static void make_forest(unsigned *seed)
{
    g_chains = calloc(N_CHAINS, sizeof(tu_chain_t));
    for (int c = 0; c < N_CHAINS; c++) {
        int len = 1 + rand_r(seed) % CHAIN_LEN;
        const tu_chain_t *base = c ? &g_chains[rand_r(seed) % c] : NULL;
        int share = base ? rand_r(seed) % (base->n + 1) : 0;
        if (share > len)
            share = len;
        tu_chain_make(&g_chains[c], &g_id, len, 1000u + (uint32_t)c, base, share);
    }
}

static void free_forest(void)
{
    for (int c = 0; c < N_CHAINS; c++)
        tu_chain_free(&g_chains[c]);
    free(g_chains);
}

typedef bool (*contains_fn)(void *tier, const kvt_block_key_t *key);

static bool host_contains(void *t, const kvt_block_key_t *k) { return kvt_host_pool_contains(t, k); }
static bool disk_contains(void *t, const kvt_block_key_t *k) { return kvt_disk_tier_contains(t, k); }

static void assert_closed(void *tier, contains_fn contains)
{
    for (int c = 0; c < N_CHAINS; c++)
        for (int i = 1; i < g_chains[c].n; i++)
            if (contains(tier, &g_chains[c].hdr[i].key))
                assert_true(contains(tier, &g_chains[c].hdr[i - 1].key));
}

static unsigned seed_for_run(void)
{
    const char *s = getenv("KVT_PROP_SEED");
    return s ? (unsigned)strtoul(s, NULL, 10) : 20261122u;
}

static void test_host_pool_closed(void **state)
{
    (void)state;
    unsigned seed = seed_for_run();
    kvt_host_pool_params_t p = {.identity = g_id, .capacity_bytes = 16 * tu_payload_len(&g_id)};
    kvt_host_pool_t *pool = NULL;
    assert_int_equal(kvt_host_pool_create(&p, &pool), KVT_OK);
    uint8_t *buf = malloc(tu_payload_len(&g_id));
    kvt_block_header_t h;
    for (int op = 0; op < OPS; op++) {
        tu_chain_t *c = &g_chains[rand_r(&seed) % N_CHAINS];
        int depth = 1 + rand_r(&seed) % c->n;
        for (int i = 0; i < depth; i++) {
            kvt_status_t st = kvt_host_pool_put(pool, &c->hdr[i], c->payload[i]);
            assert_true(st == KVT_OK || st == KVT_ERR_FULL);
        }
        int i = rand_r(&seed) % c->n;
        if (kvt_host_pool_get(pool, &c->hdr[i].key, &h, buf, tu_payload_len(&g_id)) == KVT_OK)
            assert_true(tu_payload_ok(&g_id, &c->hdr[i].key, buf));
        assert_closed(pool, host_contains);
        kvt_tier_stats_t s;
        kvt_host_pool_stats(pool, &s);
        assert_true(s.blocks <= 16);
    }
    free(buf);
    kvt_host_pool_destroy(pool);
}

static void test_disk_tier_closed(void **state)
{
    (void)state;
    unsigned seed = seed_for_run() + 1;
    char *dir = tu_tmpdir("prop-disk");
    uint64_t image = kvt_block_header_size(g_id.layout.block_tokens) + tu_payload_len(&g_id);
    kvt_disk_tier_params_t p = {.path = dir, .identity = &g_id, .capacity_bytes = 20 * image,
                                .create_if_missing = true};
    kvt_disk_tier_t *disk = NULL;
    assert_int_equal(kvt_disk_tier_open(&p, &disk), KVT_OK);
    uint8_t *buf = malloc(tu_payload_len(&g_id));
    kvt_block_header_t h;
    for (int op = 0; op < OPS / 2; op++) {
        tu_chain_t *c = &g_chains[rand_r(&seed) % N_CHAINS];
        int depth = 1 + rand_r(&seed) % c->n;
        for (int i = 0; i < depth; i++) {
            kvt_status_t st = kvt_disk_tier_put(disk, &c->hdr[i], c->payload[i]);
            assert_true(st == KVT_OK || st == KVT_ERR_FULL);
        }
        int i = rand_r(&seed) % c->n;
        if (kvt_disk_tier_get(disk, &c->hdr[i].key, &h, buf, tu_payload_len(&g_id)) == KVT_OK)
            assert_true(tu_payload_ok(&g_id, &c->hdr[i].key, buf));
        assert_closed(disk, disk_contains);
        kvt_tier_stats_t s;
        kvt_disk_tier_stats(disk, &s);
        assert_true(s.bytes <= 20 * image);
        if (op % 100 == 99) { /* the order and closure survive a reopen */
            kvt_disk_tier_close(disk);
            assert_int_equal(kvt_disk_tier_open(&p, &disk), KVT_OK);
            assert_closed(disk, disk_contains);
        }
    }
    free(buf);
    kvt_disk_tier_close(disk);
    tu_rmtree(dir);
    free(dir);
}

static void test_tier_closed(void **state)
{
    (void)state;
    unsigned seed = seed_for_run() + 2;
    char *dir = tu_tmpdir("prop-tier");
    uint64_t image = kvt_block_header_size(g_id.layout.block_tokens) + tu_payload_len(&g_id);
    kvt_tier_params_t p = {.data_dir = dir, .identity = &g_id,
                           .host_capacity_bytes = 8 * tu_payload_len(&g_id),
                           .disk_capacity_bytes = 24 * image, .write_queue_depth = 4};
    kvt_tier_t *tier = NULL;
    assert_int_equal(kvt_tier_open(&p, &tier), KVT_OK);
    uint8_t *buf = malloc(tu_payload_len(&g_id));
    kvt_block_header_t h;
    for (int op = 0; op < OPS / 2; op++) {
        tu_chain_t *c = &g_chains[rand_r(&seed) % N_CHAINS];
        int depth = 1 + rand_r(&seed) % c->n;
        for (int i = 0; i < depth; i++) {
            kvt_status_t st = kvt_tier_put(tier, &c->hdr[i], c->payload[i]);
            assert_true(st == KVT_OK || st == KVT_ERR_FULL || st == KVT_ERR_NO_PARENT);
        }
        int i = rand_r(&seed) % c->n;
        if (kvt_tier_get(tier, &c->hdr[i].key, &h, buf, tu_payload_len(&g_id), NULL) == KVT_OK)
            assert_true(tu_payload_ok(&g_id, &c->hdr[i].key, buf));
        assert_int_equal(kvt_tier_flush(tier), KVT_OK);
        assert_closed(kvt_tier_host(tier), host_contains);
        assert_closed(kvt_tier_disk(tier), disk_contains);
        kvt_tier_stats_all_t s;
        kvt_tier_stats(tier, &s);
        assert_true(s.host.blocks <= 8);
        assert_true(s.disk.bytes <= 24 * image);
    }
    free(buf);
    kvt_tier_close(tier);
    tu_rmtree(dir);
    free(dir);
}

int main(void)
{
    g_id = tu_identity();
    unsigned seed = seed_for_run();
    make_forest(&seed);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_pool_closed),
        cmocka_unit_test(test_disk_tier_closed),
        cmocka_unit_test(test_tier_closed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free_forest();
    return rc;
}
