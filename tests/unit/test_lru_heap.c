/* Tests for kvstore/lru_heap: random push/remove/update/pop checked against
 * a reference (tick and presence per id, minimum found by a linear scan),
 * pop order by (tick, id), the caller-held position array, and a failed
 * growth that must leave the heap unchanged. */
#include "kvstore/lru_heap.h"

#include "common/alloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define MAX_IDS 2048

static uint64_t g_rng = 0x6c72755f68656170ull;

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct {
    kvt_lru_heap_t heap;
    uint32_t pos[MAX_IDS];
    /* reference */
    bool present[MAX_IDS];
    uint64_t tick[MAX_IDS];
    uint32_t count;
    uint32_t n_ids;
} fx_t;

static void fx_init(fx_t *fx, uint32_t n_ids)
{
    memset(fx, 0, sizeof(*fx));
    kvt_lru_heap_init(&fx->heap);
    for (uint32_t i = 0; i < MAX_IDS; i++)
        fx->pos[i] = KVT_LRU_NONE;
    fx->n_ids = n_ids;
}

/* Reference minimum by (tick, id); false when empty. */
static bool ref_min(const fx_t *fx, uint32_t *id_p)
{
    bool found = false;
    for (uint32_t i = 0; i < fx->n_ids; i++) {
        if (!fx->present[i])
            continue;
        if (!found || fx->tick[i] < fx->tick[*id_p]) {
            *id_p = i;
            found = true;
        }
    }
    return found;
}

/* pos[] agrees with presence, and every item is no smaller than its parent.
 * Reads the private item array: this is the module's own white-box test. */
static void check_consistent(const fx_t *fx)
{
    const kvt_lru_heap_t *h = &fx->heap;
    assert_int_equal(h->n, fx->count);
    for (uint32_t i = 0; i < fx->n_ids; i++) {
        if (!fx->present[i]) {
            assert_int_equal(fx->pos[i], KVT_LRU_NONE);
            continue;
        }
        assert_true(fx->pos[i] < h->n);
        assert_int_equal(h->items[fx->pos[i]].id, i);
        assert_int_equal(h->items[fx->pos[i]].tick, fx->tick[i]);
    }
    for (uint32_t k = 1; k < h->n; k++) {
        const kvt_lru_item_t *c = &h->items[k], *p = &h->items[(k - 1) / 2];
        assert_true(p->tick < c->tick || (p->tick == c->tick && p->id < c->id));
    }
}

static void do_push(fx_t *fx, uint32_t id, uint64_t tick)
{
    assert_int_equal(kvt_lru_heap_push(&fx->heap, fx->pos, id, tick), KVT_OK);
    fx->present[id] = true;
    fx->tick[id] = tick;
    fx->count++;
}

static void do_pop(fx_t *fx)
{
    uint32_t want = 0, got = 0xffffffffu;
    bool any = ref_min(fx, &want);
    assert_int_equal(kvt_lru_heap_pop(&fx->heap, fx->pos, &got), any);
    if (!any) {
        assert_int_equal(got, 0xffffffffu);
        return;
    }
    if (got != want)
        fail_msg("popped id %u tick %llu, want id %u tick %llu", got,
                 (unsigned long long)fx->tick[got], want, (unsigned long long)fx->tick[want]);
    fx->present[got] = false;
    fx->count--;
    assert_int_equal(fx->pos[got], KVT_LRU_NONE);
}

static void random_op(fx_t *fx, uint64_t tick_range)
{
    uint32_t id = (uint32_t)(rnd() % fx->n_ids);
    uint64_t tick = rnd() % tick_range;
    switch (rnd() % 5) {
    case 0:
    case 1:
        if (!fx->present[id])
            do_push(fx, id, tick);
        break;
    case 2: /* remove, present or not */
        kvt_lru_heap_remove(&fx->heap, fx->pos, id);
        fx->count -= fx->present[id];
        fx->present[id] = false;
        break;
    case 3: /* update; absent ids are ignored */
        kvt_lru_heap_update(&fx->heap, fx->pos, id, tick);
        if (fx->present[id])
            fx->tick[id] = tick;
        break;
    default:
        do_pop(fx);
        break;
    }
}

static void run_random(uint32_t n_ids, uint64_t tick_range, uint32_t ops)
{
    fx_t *fx = malloc(sizeof(*fx));
    assert_non_null(fx);
    fx_init(fx, n_ids);
    for (uint32_t n = 0; n < ops; n++) {
        random_op(fx, tick_range);
        if (n % 97 == 0)
            check_consistent(fx);
    }
    check_consistent(fx);
    while (fx->count)
        do_pop(fx);
    do_pop(fx); /* empty */
    check_consistent(fx);
    kvt_lru_heap_cleanup(&fx->heap);
    free(fx);
}

static void test_empty(void **state)
{
    kvt_lru_heap_t heap;
    uint32_t pos[4] = {KVT_LRU_NONE, KVT_LRU_NONE, KVT_LRU_NONE, KVT_LRU_NONE}, id = 9;
    kvt_lru_heap_init(&heap);
    assert_int_equal(heap.n, 0);
    assert_false(kvt_lru_heap_pop(&heap, pos, &id));
    assert_int_equal(id, 9);
    kvt_lru_heap_remove(&heap, pos, 2);
    kvt_lru_heap_update(&heap, pos, 2, 5);
    assert_int_equal(heap.n, 0);
    assert_int_equal(pos[2], KVT_LRU_NONE);
    kvt_lru_heap_cleanup(&heap);
}

static void test_pop_order_by_tick(void **state)
{
    fx_t *fx = malloc(sizeof(*fx));
    assert_non_null(fx);
    fx_init(fx, 1000);
    for (uint32_t i = 0; i < 1000; i++)
        do_push(fx, i, rnd() % 300); /* many ties */
    check_consistent(fx);
    uint64_t last_tick = 0;
    uint32_t last_id = 0, id, popped = 0;
    while (kvt_lru_heap_pop(&fx->heap, fx->pos, &id)) {
        if (popped)
            assert_true(fx->tick[id] > last_tick ||
                        (fx->tick[id] == last_tick && id > last_id));
        last_tick = fx->tick[id];
        last_id = id;
        assert_int_equal(fx->pos[id], KVT_LRU_NONE);
        popped++;
    }
    assert_int_equal(popped, 1000);
    assert_int_equal(fx->heap.n, 0);
    kvt_lru_heap_cleanup(&fx->heap);
    free(fx);
}

static void test_update_moves_both_ways(void **state)
{
    fx_t *fx = malloc(sizeof(*fx));
    assert_non_null(fx);
    fx_init(fx, 8);
    for (uint32_t i = 0; i < 8; i++)
        do_push(fx, i, 10 + i);
    /* Touch the oldest: it becomes the newest. */
    kvt_lru_heap_update(&fx->heap, fx->pos, 0, 100);
    fx->tick[0] = 100;
    check_consistent(fx);
    /* Age the newest: it becomes the oldest. */
    kvt_lru_heap_update(&fx->heap, fx->pos, 7, 1);
    fx->tick[7] = 1;
    check_consistent(fx);
    const uint32_t order[8] = {7, 1, 2, 3, 4, 5, 6, 0};
    for (uint32_t i = 0; i < 8; i++) {
        uint32_t id;
        assert_true(kvt_lru_heap_pop(&fx->heap, fx->pos, &id));
        assert_int_equal(id, order[i]);
    }
    kvt_lru_heap_cleanup(&fx->heap);
    free(fx);
}

static void test_remove_middle_and_last(void **state)
{
    fx_t *fx = malloc(sizeof(*fx));
    assert_non_null(fx);
    fx_init(fx, 100);
    for (uint32_t i = 0; i < 100; i++)
        do_push(fx, i, (i * 37) % 100);
    uint32_t last = fx->heap.items[fx->heap.n - 1].id;
    kvt_lru_heap_remove(&fx->heap, fx->pos, last);
    fx->present[last] = false;
    fx->count--;
    check_consistent(fx);
    for (uint32_t i = 0; i < 100; i += 3) {
        kvt_lru_heap_remove(&fx->heap, fx->pos, i);
        fx->count -= fx->present[i];
        fx->present[i] = false;
        check_consistent(fx);
    }
    while (fx->count)
        do_pop(fx);
    kvt_lru_heap_cleanup(&fx->heap);
    free(fx);
}

static void test_random_small(void **state) { run_random(16, 8, 50000); }

static void test_random_large(void **state) { run_random(MAX_IDS, 1000000, 60000); }

static void test_random_ties(void **state) { run_random(500, 3, 40000); }

/* A push that cannot grow the array returns NOMEM and changes nothing. */
static void test_push_nomem(void **state)
{
    fx_t *fx = malloc(sizeof(*fx));
    assert_non_null(fx);
    fx_init(fx, 200);
    kvt_alloc_fail_after(0);
    assert_int_equal(kvt_lru_heap_push(&fx->heap, fx->pos, 0, 1), KVT_ERR_NOMEM);
    kvt_alloc_fail_after(-1);
    check_consistent(fx);
    uint32_t i = 0;
    while (fx->heap.n == 0 || fx->heap.n < fx->heap.cap)
        do_push(fx, i++, rnd() % 50);
    kvt_alloc_fail_after(0);
    assert_int_equal(kvt_lru_heap_push(&fx->heap, fx->pos, i, 0), KVT_ERR_NOMEM);
    kvt_alloc_fail_after(-1);
    check_consistent(fx);
    do_push(fx, i, 0);
    check_consistent(fx);
    while (fx->count)
        do_pop(fx);
    kvt_lru_heap_cleanup(&fx->heap);
    free(fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_pop_order_by_tick),
        cmocka_unit_test(test_update_moves_both_ways),
        cmocka_unit_test(test_remove_middle_and_last),
        cmocka_unit_test(test_random_small),
        cmocka_unit_test(test_random_large),
        cmocka_unit_test(test_random_ties),
        cmocka_unit_test(test_push_nomem),
    };
    return cmocka_run_group_tests_name("lru_heap", tests, NULL, NULL);
}
