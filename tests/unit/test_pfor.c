/* Tests for common/pfor: every index runs exactly once, on more than one
 * thread when helpers exist, in loops started right after create (a
 * helper that starts late must still take part) and many times in a row;
 * no helpers and NULL run everything on the caller. */
#include "common/pfor.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>

#define N_MAX 4096

typedef struct {
    _Atomic int hits[N_MAX];
    _Atomic int off_caller; /* items run on a thread other than the caller's */
    pthread_t caller;
    int sleep_us;           /* per item, so helpers get a share */
} loop_t;

static void item(void *arg, size_t i)
{
    loop_t *l = arg;
    atomic_fetch_add(&l->hits[i], 1);
    if (!pthread_equal(pthread_self(), l->caller))
        atomic_fetch_add(&l->off_caller, 1);
    if (l->sleep_us)
        usleep((useconds_t)l->sleep_us);
}

static void run_and_check(kvt_pfor_t *pf, loop_t *l, size_t n)
{
    for (size_t i = 0; i < N_MAX; i++)
        atomic_store(&l->hits[i], 0);
    atomic_store(&l->off_caller, 0);
    l->caller = pthread_self();
    kvt_pfor_run(pf, n, item, l);
    for (size_t i = 0; i < N_MAX; i++)
        assert_int_equal(atomic_load(&l->hits[i]), i < n ? 1 : 0);
}

static void test_every_item_once(void **state)
{
    (void)state;
    loop_t *l = calloc(1, sizeof(*l));
    static const unsigned helpers[] = {0, 1, 3};
    for (size_t h = 0; h < 3; h++) {
        kvt_pfor_t *pf;
        assert_int_equal(kvt_pfor_create(helpers[h], &pf), KVT_OK);
        static const size_t sizes[] = {0, 1, 2, 7, 100, N_MAX};
        for (int rep = 0; rep < 50; rep++)
            run_and_check(pf, l, sizes[rep % 6]);
        kvt_pfor_destroy(pf);
    }
    run_and_check(NULL, l, 33);
    assert_int_equal(atomic_load(&l->off_caller), 0);
    free(l);
}

/* Right after create (the helpers may not have run yet), with items slow
 * enough that the caller cannot take them all: the helpers take some. */
static void test_helpers_take_part(void **state)
{
    (void)state;
    loop_t *l = calloc(1, sizeof(*l));
    l->sleep_us = 2000;
    int off = 0;
    for (int rep = 0; rep < 5; rep++) {
        kvt_pfor_t *pf;
        assert_int_equal(kvt_pfor_create(2, &pf), KVT_OK);
        run_and_check(pf, l, 30);
        off += atomic_load(&l->off_caller);
        kvt_pfor_destroy(pf);
    }
    assert_true(off > 0);
    kvt_pfor_t *none;
    assert_int_equal(kvt_pfor_create(0, &none), KVT_OK);
    l->sleep_us = 0;
    run_and_check(none, l, 30);
    assert_int_equal(atomic_load(&l->off_caller), 0);
    kvt_pfor_destroy(none);
    kvt_pfor_destroy(NULL);
    free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_item_once),
        cmocka_unit_test(test_helpers_take_part),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
