/* Tests for coord/anchors: find after add, longest prefix0 wins, misses for
 * non-extending prompts and for any other tenant/model/suffix (including the
 * length-prefix boundary), LRU eviction by count and by bytes with touches,
 * oversized prefix0, stats, allocation failures (fault injection) that leave
 * the table usable, and a 4-thread smoke test followed by invariant checks. */
#include "coord/anchors.h"

#include "common/alloc.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#define MISS ((size_t)-1)

static kvt_anchors_t *make(size_t max_anchors, size_t max_bytes)
{
    kvt_anchors_t *a = NULL;
    assert_int_equal(kvt_anchors_create(max_anchors, max_bytes, &a), KVT_OK);
    assert_non_null(a);
    return a;
}

static kvt_status_t add(kvt_anchors_t *a, const char *tenant, const char *model,
                        const char *suffix, const char *prompt)
{
    return kvt_anchors_add(a, tenant, model, suffix, strlen(suffix), prompt, strlen(prompt));
}

/* The matched prefix0 length, or MISS. */
static size_t find(kvt_anchors_t *a, const char *tenant, const char *model, const char *suffix,
                   const char *prompt)
{
    size_t len = MISS;
    bool hit = kvt_anchors_find(a, tenant, model, suffix, strlen(suffix), prompt, strlen(prompt),
                                &len);
    assert_true(hit == (len != MISS));
    return len;
}

static void assert_stats(kvt_anchors_t *a, uint64_t anchors, uint64_t bytes, uint64_t added,
                         uint64_t evicted)
{
    kvt_anchors_stats_t st;
    kvt_anchors_stats(a, &st);
    assert_int_equal(st.anchors, anchors);
    assert_int_equal(st.bytes, bytes);
    assert_int_equal(st.added, added);
    assert_int_equal(st.evicted, evicted);
}

static void test_find_after_add(void **state)
{
    kvt_anchors_t *a = make(16, 1024);
    assert_int_equal(find(a, "t", "m", "}\n", "def f():"), MISS);
    assert_int_equal(add(a, "t", "m", "}\n", "def f():"), KVT_OK);
    assert_int_equal(find(a, "t", "m", "}\n", "def f():"), 8);
    assert_int_equal(find(a, "t", "m", "}\n", "def f():\n    return 1"), 8);
    assert_int_equal(find(a, "t", "m", "}\n", "def f("), MISS);     /* shorter */
    assert_int_equal(find(a, "t", "m", "}\n", "def g():\n"), MISS); /* does not extend */
    assert_int_equal(find(a, "t", "m", "}\n", ""), MISS);

    /* An empty prefix0 is a prefix of every prompt, but a longer one wins. */
    assert_int_equal(add(a, "t", "m", "s", ""), KVT_OK);
    assert_int_equal(find(a, "t", "m", "s", "anything"), 0);
    assert_int_equal(find(a, "t", "m", "s", ""), 0);
    assert_stats(a, 2, 8, 2, 0);

    kvt_anchors_stats_t st;
    kvt_anchors_stats(a, &st);
    assert_int_equal(st.hits, 4);
    assert_int_equal(st.misses, 4);
    kvt_anchors_destroy(a);
    kvt_anchors_destroy(NULL);
}

static void test_longest_wins(void **state)
{
    kvt_anchors_t *a = make(16, 1024);
    /* Not added in length order, so neither the oldest nor the newest
     * match is the longest. */
    const char *p0[] = {"abcdef", "ab", "abcdefghij", "abcd", "abx"};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(add(a, "t", "m", "sfx", p0[i]), KVT_OK);
    assert_int_equal(find(a, "t", "m", "sfx", "abcdeZ"), 4);
    assert_int_equal(find(a, "t", "m", "sfx", "abcdefgh"), 6);
    assert_int_equal(find(a, "t", "m", "sfx", "abcdefghij!"), 10);
    assert_int_equal(find(a, "t", "m", "sfx", "abxy"), 3);
    assert_int_equal(find(a, "t", "m", "sfx", "abZ"), 2);
    assert_int_equal(find(a, "t", "m", "sfx", "a"), MISS);
    assert_int_equal(find(a, "t", "m", "sfx", "xabcdef"), MISS);
    kvt_anchors_destroy(a);
}

static void test_isolation(void **state)
{
    kvt_anchors_t *a = make(16, 1024);
    assert_int_equal(add(a, "tenant1", "m", "suffix", "prefix"), KVT_OK);
    assert_int_equal(find(a, "tenant1", "m", "suffix", "prefix more"), 6);
    assert_int_equal(find(a, "tenant2", "m", "suffix", "prefix more"), MISS);
    assert_int_equal(find(a, "tenant1", "m2", "suffix", "prefix more"), MISS);
    assert_int_equal(find(a, "tenant1", "m", "suffix2", "prefix more"), MISS);
    assert_int_equal(find(a, "tenant1", "m", "", "prefix more"), MISS);

    /* Field boundaries are part of the identity. */
    assert_int_equal(add(a, "ab", "c", "x", "p"), KVT_OK);
    assert_int_equal(find(a, "ab", "c", "x", "pq"), 1);
    assert_int_equal(find(a, "a", "bc", "x", "pq"), MISS);
    assert_int_equal(find(a, "abc", "", "x", "pq"), MISS);
    assert_int_equal(find(a, "ab", "cx", "", "pq"), MISS);

    /* The suffix is bytes: NULs count. */
    const char s1[] = {'a', 0, 'b'}, s2[] = {'a', 0, 'c'};
    assert_int_equal(kvt_anchors_add(a, "t", "m", s1, 3, "pp", 2), KVT_OK);
    size_t len = 0;
    assert_true(kvt_anchors_find(a, "t", "m", s1, 3, "ppp", 3, &len));
    assert_int_equal(len, 2);
    assert_false(kvt_anchors_find(a, "t", "m", s2, 3, "ppp", 3, &len));
    assert_false(kvt_anchors_find(a, "t", "m", s1, 1, "ppp", 3, &len));
    kvt_anchors_destroy(a);
}

static void test_lru_by_count(void **state)
{
    kvt_anchors_t *a = make(3, 1024);
    assert_int_equal(add(a, "t", "m", "A", "aaa"), KVT_OK);
    assert_int_equal(add(a, "t", "m", "B", "bbb"), KVT_OK);
    assert_int_equal(add(a, "t", "m", "C", "ccc"), KVT_OK);
    assert_int_equal(find(a, "t", "m", "A", "aaa"), 3); /* touch: B is now the LRU */
    assert_int_equal(add(a, "t", "m", "D", "ddd"), KVT_OK);
    assert_stats(a, 3, 9, 4, 1);
    assert_int_equal(find(a, "t", "m", "B", "bbb"), MISS);
    assert_int_equal(find(a, "t", "m", "A", "aaa"), 3);
    assert_int_equal(find(a, "t", "m", "C", "ccc"), 3);
    assert_int_equal(find(a, "t", "m", "D", "ddd"), 3);

    /* Re-adding an identical anchor is a touch, not a new anchor. */
    assert_int_equal(add(a, "t", "m", "A", "aaa"), KVT_OK);
    assert_stats(a, 3, 9, 4, 1);
    assert_int_equal(add(a, "t", "m", "E", "eee"), KVT_OK); /* evicts C */
    assert_int_equal(find(a, "t", "m", "C", "ccc"), MISS);
    assert_int_equal(find(a, "t", "m", "A", "aaa"), 3);

    /* A rebase in the same group adds a second anchor; eviction can take
     * the group's older one and keep the group. */
    assert_int_equal(add(a, "t", "m", "A", "aaaa"), KVT_OK); /* evicts D */
    assert_int_equal(find(a, "t", "m", "A", "aaaaa"), 4);
    assert_int_equal(add(a, "t", "m", "F", "fff"), KVT_OK); /* evicts E */
    assert_int_equal(add(a, "t", "m", "G", "ggg"), KVT_OK); /* evicts A "aaa" */
    assert_int_equal(find(a, "t", "m", "A", "aaaZ"), MISS);
    assert_int_equal(find(a, "t", "m", "A", "aaaa"), 4);
    assert_stats(a, 3, 10, 8, 5);
    kvt_anchors_destroy(a);

    /* max 1: a rebase evicts the only anchor of its own group, which must
     * survive for the new one. */
    a = make(1, 100);
    assert_int_equal(add(a, "t", "m", "A", "a"), KVT_OK);
    assert_int_equal(add(a, "t", "m", "A", "ab"), KVT_OK);
    assert_int_equal(find(a, "t", "m", "A", "abc"), 2);
    assert_int_equal(find(a, "t", "m", "A", "aZ"), MISS);
    assert_stats(a, 1, 2, 2, 1);
    kvt_anchors_destroy(a);
}

static void test_lru_by_bytes(void **state)
{
    kvt_anchors_t *a = make(100, 10);
    assert_int_equal(add(a, "t", "m", "A", "aaaa"), KVT_OK);
    assert_int_equal(add(a, "t", "m", "B", "bbbb"), KVT_OK);
    assert_int_equal(find(a, "t", "m", "A", "aaaa"), 4);
    assert_int_equal(add(a, "t", "m", "C", "cccc"), KVT_OK); /* 12 > 10: evicts B */
    assert_stats(a, 2, 8, 3, 1);
    assert_int_equal(find(a, "t", "m", "B", "bbbb"), MISS);
    assert_int_equal(find(a, "t", "m", "A", "aaaa"), 4);
    assert_int_equal(find(a, "t", "m", "C", "cccc"), 4);

    assert_int_equal(add(a, "t", "m", "D", "dd"), KVT_OK); /* exactly 10 */
    assert_stats(a, 3, 10, 4, 1);
    assert_int_equal(add(a, "t", "m", "E", "0123456789"), KVT_OK); /* takes all */
    assert_stats(a, 1, 10, 5, 4);
    assert_int_equal(find(a, "t", "m", "E", "0123456789"), 10);
    kvt_anchors_destroy(a);
}

static void test_oversized(void **state)
{
    kvt_anchors_t *a = make(10, 10);
    assert_int_equal(add(a, "t", "m", "A", "aaaa"), KVT_OK);
    assert_int_equal(add(a, "t", "m", "B", "01234567890"), KVT_ERR_TOO_LARGE);
    assert_stats(a, 1, 4, 1, 0); /* nothing evicted for it */
    assert_int_equal(find(a, "t", "m", "A", "aaaa"), 4);
    assert_int_equal(find(a, "t", "m", "B", "01234567890"), MISS);

    kvt_anchors_t *b = NULL;
    assert_int_equal(kvt_anchors_create(0, 10, &b), KVT_ERR_INVALID);
    assert_int_equal(kvt_anchors_create(10, 0, &b), KVT_ERR_INVALID);
    assert_null(b);
    kvt_anchors_destroy(a);
}

static void test_alloc_failure(void **state)
{
    kvt_anchors_t *a = make(3, 1024);
    assert_int_equal(add(a, "t", "m", "A", "aaa"), KVT_OK);
    assert_int_equal(add(a, "t", "m", "B", "bbb"), KVT_OK);
    assert_int_equal(add(a, "t", "m", "C", "ccc"), KVT_OK);
    /* A new group in a full table: the anchor, then the group allocation
     * fails; neither may evict anything. */
    for (long n = 0; n < 2; n++) {
        kvt_alloc_fail_after(n);
        assert_int_equal(add(a, "t", "m", "D", "ddd"), KVT_ERR_NOMEM);
        kvt_alloc_fail_after(-1);
        assert_stats(a, 3, 9, 3, 0);
        assert_int_equal(find(a, "t", "m", "A", "aaa"), 3);
        assert_int_equal(find(a, "t", "m", "B", "bbb"), 3);
        assert_int_equal(find(a, "t", "m", "C", "ccc"), 3);
        assert_int_equal(find(a, "t", "m", "D", "ddd"), MISS);
    }
    /* An existing group only needs the anchor. */
    kvt_alloc_fail_after(0);
    assert_int_equal(add(a, "t", "m", "A", "aaaa"), KVT_ERR_NOMEM);
    kvt_alloc_fail_after(-1);
    assert_stats(a, 3, 9, 3, 0);
    assert_int_equal(add(a, "t", "m", "D", "ddd"), KVT_OK);
    assert_int_equal(find(a, "t", "m", "D", "ddd"), 3);
    assert_stats(a, 3, 9, 4, 1);
    assert_int_equal(find(a, "t", "m", "A", "aaa"), MISS);
    kvt_anchors_destroy(a);

    /* A failed bucket growth (the 17th group) only lengthens chains. */
    a = make(1000, 100000);
    char sfx[16];
    for (int i = 0; i < 16; i++) {
        snprintf(sfx, sizeof(sfx), "s%d", i);
        assert_int_equal(add(a, "t", "m", sfx, "p"), KVT_OK);
    }
    kvt_alloc_fail_after(2); /* anchor, group, then the buckets */
    assert_int_equal(add(a, "t", "m", "s16", "p"), KVT_OK);
    kvt_alloc_fail_after(-1);
    for (int i = 17; i < 200; i++) {
        snprintf(sfx, sizeof(sfx), "s%d", i);
        assert_int_equal(add(a, "t", "m", sfx, "p"), KVT_OK);
    }
    for (int i = 0; i < 200; i++) {
        snprintf(sfx, sizeof(sfx), "s%d", i);
        assert_int_equal(find(a, "t", "m", sfx, "pq"), 1);
    }
    assert_stats(a, 200, 200, 200, 0);
    kvt_anchors_destroy(a);
}

/* ---- threads ---- */

#define T_THREADS 4
#define T_OPS 10000
#define T_MAX 50
#define T_BYTES 2000

static const char g_base[] = "import os\nimport sys\n\ndef main(argv):\n    for a in argv:\n"
                             "        print(a)\n    return 0\n\nif __name__ == '__main__':\n";

typedef struct {
    kvt_anchors_t *a;
    uint64_t rng;
    uint64_t finds, bad;
} worker_t;

static uint64_t wrnd(worker_t *w)
{
    uint64_t z = (w->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Every prefix0 is a multiple of 8 bytes of g_base, every prompt a prefix of
 * g_base: a hit must report a multiple of 8 no longer than the prompt. */
static void *worker(void *arg)
{
    worker_t *w = arg;
    char tenant[8], sfx[8];
    size_t base_len = sizeof(g_base) - 1;
    for (int i = 0; i < T_OPS; i++) {
        uint64_t r = wrnd(w);
        snprintf(tenant, sizeof(tenant), "t%u", (unsigned)(r % 4));
        snprintf(sfx, sizeof(sfx), "s%u", (unsigned)((r >> 8) % 16));
        size_t len = (size_t)((r >> 16) % base_len);
        if ((r >> 40) % 3 == 0) {
            len -= len % 8;
            if (kvt_anchors_add(w->a, tenant, "m", sfx, strlen(sfx), g_base, len) != KVT_OK)
                w->bad++;
        } else {
            size_t got = MISS;
            w->finds++;
            if (kvt_anchors_find(w->a, tenant, "m", sfx, strlen(sfx), g_base, len, &got) &&
                (got > len || got % 8 != 0))
                w->bad++;
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    kvt_anchors_t *a = make(T_MAX, T_BYTES);
    pthread_t th[T_THREADS];
    worker_t w[T_THREADS];
    for (int i = 0; i < T_THREADS; i++) {
        w[i] = (worker_t){.a = a, .rng = 0x616e63686f72ull + (uint64_t)i};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &w[i]), 0);
    }
    uint64_t finds = 0;
    for (int i = 0; i < T_THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].bad, 0);
        finds += w[i].finds;
    }
    kvt_anchors_stats_t st;
    kvt_anchors_stats(a, &st);
    assert_true(st.anchors <= T_MAX && st.anchors > 0);
    assert_true(st.bytes <= T_BYTES);
    assert_int_equal(st.hits + st.misses, finds);
    assert_true(st.hits > 0 && st.misses > 0);
    assert_int_equal(st.added - st.evicted, st.anchors);

    /* Flush with T_MAX fresh 1-byte anchors: the LRU must evict exactly the
     * old ones and the byte count must come back to exactly T_MAX. */
    char sfx[16];
    for (int i = 0; i < T_MAX; i++) {
        snprintf(sfx, sizeof(sfx), "fresh%d", i);
        assert_int_equal(add(a, "t0", "m", sfx, "x"), KVT_OK);
    }
    kvt_anchors_stats_t after;
    kvt_anchors_stats(a, &after);
    assert_int_equal(after.anchors, T_MAX);
    assert_int_equal(after.bytes, T_MAX);
    assert_int_equal(after.evicted, st.evicted + st.anchors);
    for (int i = 0; i < T_MAX; i++) {
        snprintf(sfx, sizeof(sfx), "fresh%d", i);
        assert_int_equal(find(a, "t0", "m", sfx, "xy"), 1);
    }
    kvt_anchors_destroy(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find_after_add),
        cmocka_unit_test(test_longest_wins),
        cmocka_unit_test(test_isolation),
        cmocka_unit_test(test_lru_by_count),
        cmocka_unit_test(test_lru_by_bytes),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
