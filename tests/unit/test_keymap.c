/* Tests for kvstore/keymap: random put/get/del sequences checked against a
 * plain array of (key, value, present), in a small table (long probe runs,
 * wrap-around, backward-shift deletion) and through many growths; fault
 * injection on growth must leave the map unchanged. */
#include "kvstore/keymap.h"

#include "common/alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* Deterministic PRNG (splitmix64) so a failure replays. */
static uint64_t g_rng = 0x6b7674696572ull;

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct {
    kvt_block_key_t *keys;
    uint32_t *vals;
    bool *present;
    uint32_t n;     /* pool size */
    uint32_t count; /* present keys */
} ref_t;

/* A pool of distinct random keys; some differ from another in one bit. */
static void ref_init(ref_t *ref, uint32_t n)
{
    ref->keys = calloc(n, sizeof(*ref->keys));
    ref->vals = calloc(n, sizeof(*ref->vals));
    ref->present = calloc(n, sizeof(*ref->present));
    assert_true(ref->keys && ref->vals && ref->present);
    ref->n = n;
    ref->count = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i % 8 == 7) {
            ref->keys[i] = ref->keys[i - 1];
            ref->keys[i].b[i % KVT_KEY_LEN] ^= 1;
            continue;
        }
        for (int j = 0; j < KVT_KEY_LEN; j += 8) {
            uint64_t r = rnd();
            memcpy(ref->keys[i].b + j, &r, 8);
        }
    }
}

static void ref_cleanup(ref_t *ref)
{
    free(ref->keys);
    free(ref->vals);
    free(ref->present);
}

/* Every pool key: present ones map to their value, absent ones miss. */
static void check_all(const kvt_keymap_t *map, const ref_t *ref)
{
    assert_int_equal(map->count, ref->count);
    for (uint32_t i = 0; i < ref->n; i++) {
        uint32_t v = 0xdeadbeef;
        bool hit = kvt_keymap_get(map, &ref->keys[i], &v);
        if (hit != ref->present[i])
            fail_msg("key %u: hit=%d present=%d", i, hit, ref->present[i]);
        assert_int_equal(v, hit ? ref->vals[i] : 0xdeadbeef);
    }
}

static void random_op(kvt_keymap_t *map, ref_t *ref)
{
    uint32_t i = (uint32_t)(rnd() % ref->n);
    uint32_t op = (uint32_t)(rnd() % 10), v;
    if (op < 5) {
        uint32_t val = (uint32_t)rnd();
        assert_int_equal(kvt_keymap_put(map, &ref->keys[i], val), KVT_OK);
        ref->count += !ref->present[i];
        ref->present[i] = true;
        ref->vals[i] = val;
    } else if (op < 8) {
        assert_int_equal(kvt_keymap_del(map, &ref->keys[i]), ref->present[i]);
        ref->count -= ref->present[i];
        ref->present[i] = false;
    } else {
        bool hit = kvt_keymap_get(map, &ref->keys[i], &v);
        assert_int_equal(hit, ref->present[i]);
        if (hit)
            assert_int_equal(v, ref->vals[i]);
    }
    assert_int_equal(map->count, ref->count);
}

static void run_random(uint32_t pool, uint32_t expected, uint32_t ops, uint32_t check_every)
{
    ref_t ref;
    kvt_keymap_t map;
    ref_init(&ref, pool);
    assert_int_equal(kvt_keymap_init(&map, expected), KVT_OK);
    for (uint32_t n = 0; n < ops; n++) {
        random_op(&map, &ref);
        if (n % check_every == 0)
            check_all(&map, &ref);
    }
    check_all(&map, &ref);
    kvt_keymap_cleanup(&map);
    ref_cleanup(&ref);
}

static void test_empty(void **state)
{
    kvt_keymap_t map;
    kvt_block_key_t k;
    uint32_t v = 7;
    memset(&k, 0, sizeof(k));
    assert_int_equal(kvt_keymap_init(&map, 0), KVT_OK);
    assert_int_equal(map.count, 0);
    assert_false(kvt_keymap_get(&map, &k, &v));
    assert_false(kvt_keymap_del(&map, &k));
    assert_int_equal(v, 7);
    kvt_keymap_cleanup(&map);
    kvt_keymap_cleanup(&map); /* cleanup twice is harmless */
}

static void test_put_get_overwrite_del(void **state)
{
    kvt_keymap_t map;
    kvt_block_key_t a, b;
    uint32_t v;
    memset(&a, 0x11, sizeof(a));
    b = a;
    b.b[31] ^= 0x80;
    assert_int_equal(kvt_keymap_init(&map, 4), KVT_OK);
    assert_int_equal(kvt_keymap_put(&map, &a, 1), KVT_OK);
    assert_false(kvt_keymap_get(&map, &b, &v));
    assert_int_equal(kvt_keymap_put(&map, &b, 2), KVT_OK);
    assert_int_equal(kvt_keymap_put(&map, &a, 3), KVT_OK);
    assert_int_equal(map.count, 2);
    assert_true(kvt_keymap_get(&map, &a, &v));
    assert_int_equal(v, 3);
    assert_true(kvt_keymap_get(&map, &b, &v));
    assert_int_equal(v, 2);
    assert_true(kvt_keymap_del(&map, &a));
    assert_false(kvt_keymap_del(&map, &a));
    assert_false(kvt_keymap_get(&map, &a, &v));
    assert_true(kvt_keymap_get(&map, &b, &v));
    assert_int_equal(map.count, 1);
    kvt_keymap_cleanup(&map);
}

/* At most 11 live keys: the table stays at 16 slots, so probe runs are
 * long and wrap around the end, which is what backward shift must get right. */
static void test_random_small_table(void **state) { run_random(11, 0, 60000, 7); }

static void test_random_medium(void **state) { run_random(3000, 0, 100000, 5000); }

static void test_random_presized(void **state) { run_random(5000, 5000, 60000, 10000); }

static void test_growth_then_drain(void **state)
{
    const uint32_t n = 100000;
    ref_t ref;
    kvt_keymap_t map;
    ref_init(&ref, n);
    assert_int_equal(kvt_keymap_init(&map, 1), KVT_OK);
    uint32_t cap0 = map.cap;
    for (uint32_t i = 0; i < n; i++) {
        assert_int_equal(kvt_keymap_put(&map, &ref.keys[i], i * 3), KVT_OK);
        ref.present[i] = true;
        ref.vals[i] = i * 3;
        ref.count++;
    }
    assert_true(map.cap > cap0);
    assert_true((uint64_t)map.count * 10 <= (uint64_t)map.cap * 7);
    check_all(&map, &ref);
    /* Drain in a shuffled order, checking the rest along the way. */
    uint32_t *order = malloc(n * sizeof(*order));
    assert_non_null(order);
    for (uint32_t i = 0; i < n; i++)
        order[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % (i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (uint32_t i = 0; i < n; i++) {
        assert_true(kvt_keymap_del(&map, &ref.keys[order[i]]));
        ref.present[order[i]] = false;
        ref.count--;
        if (i % 20000 == 0)
            check_all(&map, &ref);
    }
    check_all(&map, &ref);
    free(order);
    kvt_keymap_cleanup(&map);
    ref_cleanup(&ref);
}

static void test_init_sizes_for_expected(void **state)
{
    kvt_keymap_t map;
    assert_int_equal(kvt_keymap_init(&map, 1000), KVT_OK);
    assert_true(map.cap * 7ull / 10 >= 1000);
    assert_int_equal(map.cap & (map.cap - 1), 0);
    uint32_t cap = map.cap;
    /* 1000 puts fit without a growth. */
    for (uint32_t i = 0; i < 1000; i++) {
        kvt_block_key_t k;
        memset(&k, 0, sizeof(k));
        memcpy(k.b, &i, sizeof(i));
        assert_int_equal(kvt_keymap_put(&map, &k, i), KVT_OK);
    }
    assert_int_equal(map.cap, cap);
    kvt_keymap_cleanup(&map);
}

/* A failed growth returns NOMEM and leaves every entry in place. */
static void test_grow_failure_leaves_map(void **state)
{
    ref_t ref;
    kvt_keymap_t map;
    ref_init(&ref, 64);
    assert_int_equal(kvt_keymap_init(&map, 0), KVT_OK);
    uint32_t i = 0;
    for (; (uint64_t)(map.count + 1) * 10 <= (uint64_t)map.cap * 7; i++) {
        assert_int_equal(kvt_keymap_put(&map, &ref.keys[i], i), KVT_OK);
        ref.present[i] = true;
        ref.vals[i] = i;
        ref.count++;
    }
    uint32_t cap = map.cap;
    for (long nth = 0; nth < 3; nth++) {
        kvt_alloc_fail_after(nth);
        assert_int_equal(kvt_keymap_put(&map, &ref.keys[i], 99), KVT_ERR_NOMEM);
        kvt_alloc_fail_after(-1);
        assert_int_equal(map.cap, cap);
        check_all(&map, &ref);
    }
    /* Overwriting an existing key never allocates. */
    kvt_alloc_fail_after(0);
    assert_int_equal(kvt_keymap_put(&map, &ref.keys[0], 1234), KVT_OK);
    kvt_alloc_fail_after(-1);
    ref.vals[0] = 1234;
    assert_int_equal(kvt_keymap_put(&map, &ref.keys[i], 99), KVT_OK);
    ref.present[i] = true;
    ref.vals[i] = 99;
    ref.count++;
    assert_true(map.cap > cap);
    check_all(&map, &ref);
    kvt_keymap_cleanup(&map);
    ref_cleanup(&ref);
}

/* A failed init leaves a map that cleanup may still be called on. */
static void test_init_failure(void **state)
{
    for (long nth = 0; nth < 3; nth++) {
        kvt_keymap_t map;
        kvt_alloc_fail_after(nth);
        assert_int_equal(kvt_keymap_init(&map, 100), KVT_ERR_NOMEM);
        kvt_alloc_fail_after(-1);
        kvt_keymap_cleanup(&map);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_put_get_overwrite_del),
        cmocka_unit_test(test_random_small_table),
        cmocka_unit_test(test_random_medium),
        cmocka_unit_test(test_random_presized),
        cmocka_unit_test(test_growth_then_drain),
        cmocka_unit_test(test_init_sizes_for_expected),
        cmocka_unit_test(test_grow_failure_leaves_map),
        cmocka_unit_test(test_init_failure),
    };
    return cmocka_run_group_tests_name("keymap", tests, NULL, NULL);
}
