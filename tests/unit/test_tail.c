/* Tests for kvstore/tail: the tail store.  Puts are checked against the
 * key formula; holds, release and the TTL (short TTLs and real sleeps);
 * the byte and count bounds (least recently put dropped first, expired
 * before them, a tail over max_bytes refused); a key put twice; fault
 * injection on create and put (the store unchanged after a failed put);
 * and threads putting, getting and releasing over a small store, every
 * payload seen checked against its key. */
#include "kvstore/tail.h"

#include "common/alloc.h"
#include "common/time.h"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define MAX_T 16

/* One tail: tokens from seed, payload bytes a function of the key. */
typedef struct {
    kvt_block_key_t parent, key;
    uint32_t t;
    uint32_t tokens[MAX_T];
    uint8_t payload[4096];
    size_t len;
} sample_t;

static void fill_payload(const kvt_block_key_t *key, uint8_t *out, size_t len)
{
    uint64_t x = kvt_xxh3_64(key->b, KVT_KEY_LEN);
    for (size_t i = 0; i < len; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        out[i] = (uint8_t)(x >> 56);
    }
}

static void sample_make(sample_t *s, uint32_t seed, uint32_t t, size_t len)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < KVT_KEY_LEN; i++)
        s->parent.b[i] = (uint8_t)(seed * 31 + (uint32_t)i);
    s->t = t;
    for (uint32_t i = 0; i < t; i++)
        s->tokens[i] = seed * 1000 + i;
    assert_int_equal(kvt_tail_key(&s->parent, t, s->tokens, &s->key), KVT_OK);
    s->len = len;
    fill_payload(&s->key, s->payload, len);
}

static kvt_status_t put(kvt_tail_store_t *st, const sample_t *s)
{
    return kvt_tail_store_put(st, &s->key, &s->parent, s->t, s->tokens, s->payload, s->len);
}

static kvt_tail_store_stats_t stats(kvt_tail_store_t *st)
{
    kvt_tail_store_stats_t s;
    kvt_tail_store_stats(st, &s);
    return s;
}

/* A visitor that checks the view against the sample in arg. */
static kvt_status_t visit_check(const kvt_tail_view_t *v, void *arg)
{
    const sample_t *s = arg;
    if (!kvt_block_key_eq(v->key, &s->key) || !kvt_block_key_eq(v->parent, &s->parent) ||
        v->t != s->t || memcmp(v->tokens, s->tokens, s->t * sizeof(uint32_t)) != 0 ||
        v->len != s->len || memcmp(v->payload, s->payload, s->len) != 0 ||
        v->checksum != kvt_xxh3_64(s->payload, s->len))
        return KVT_ERR_CORRUPT;
    return KVT_OK;
}

static kvt_status_t visit_fail(const kvt_tail_view_t *v, void *arg)
{
    (void)v;
    (void)arg;
    return KVT_ERR_NOMEM;
}

static kvt_tail_store_t *store(uint64_t max_bytes, uint32_t max_tails, uint32_t ttl_ms)
{
    kvt_tail_store_params_t p = {.max_bytes = max_bytes, .max_tails = max_tails, .ttl_ms = ttl_ms};
    kvt_tail_store_t *s = NULL;
    assert_int_equal(kvt_tail_store_create(&p, &s), KVT_OK);
    return s;
}

static void test_create(void **state)
{
    kvt_tail_store_t *s = NULL;
    assert_int_equal(kvt_tail_store_create(NULL, &s), KVT_OK); /* every default */
    kvt_tail_store_destroy(s);
    kvt_tail_store_params_t p = {.max_tails = KVT_TAIL_STORE_MAX_TAILS};
    assert_int_equal(kvt_tail_store_create(&p, &s), KVT_OK);
    kvt_tail_store_destroy(s);
    s = NULL;
    p.max_tails++;
    assert_int_equal(kvt_tail_store_create(&p, &s), KVT_ERR_INVALID);
    assert_null(s);
    assert_int_equal(kvt_tail_store_create(NULL, NULL), KVT_ERR_INVALID);
    kvt_tail_store_destroy(NULL);
}

/* The store takes only a tail whose key names its parent and tokens, and
 * keeps its own copy. */
static void test_put_checks_key(void **state)
{
    kvt_tail_store_t *s = store(0, 0, 0);
    static sample_t a, b;
    sample_make(&a, 1, 5, 640);
    sample_make(&b, 1, 5, 640);
    b.tokens[4]++; /* b's key no longer names its tokens */
    assert_int_equal(put(s, &b), KVT_ERR_CORRUPT);
    b = a;
    b.parent.b[0] ^= 1; /* nor its parent */
    assert_int_equal(put(s, &b), KVT_ERR_CORRUPT);
    b = a;
    b.t = 4; /* nor its length */
    assert_int_equal(put(s, &b), KVT_ERR_CORRUPT);
    b = a;
    b.t = 0;
    assert_int_equal(put(s, &b), KVT_ERR_INVALID);
    b.t = KVT_BLOCK_MAX_TOKENS;
    assert_int_equal(put(s, &b), KVT_ERR_INVALID);
    b = a;
    b.len = 0;
    assert_int_equal(put(s, &b), KVT_ERR_INVALID);
    assert_int_equal(kvt_tail_store_put(s, &a.key, &a.parent, a.t, NULL, a.payload, a.len),
                     KVT_ERR_INVALID);
    assert_int_equal(stats(s).tails, 0);
    assert_int_equal(stats(s).puts, 0);

    assert_int_equal(put(s, &a), KVT_OK);
    b = a;
    memset(b.payload, 0, sizeof(b.payload)); /* the caller's buffer: not the store's */
    assert_int_equal(kvt_tail_store_get(s, &a.key, false, visit_check, &a), KVT_OK);
    assert_int_equal(kvt_tail_store_get(s, &a.key, false, visit_check, &b), KVT_ERR_CORRUPT);
    assert_int_equal(kvt_tail_store_get(s, &b.parent, false, visit_check, &a),
                     KVT_ERR_NOT_FOUND); /* the parent's key is not the tail's */
    kvt_tail_store_stats_t st = stats(s);
    assert_int_equal(st.tails, 1);
    assert_int_equal(st.bytes, 640);
    assert_int_equal(st.puts, 1);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 1);
    kvt_tail_store_destroy(s);
}

/* Each put is a hold; a release drops one; the last frees the tail. */
static void test_holds_and_release(void **state)
{
    kvt_tail_store_t *s = store(0, 0, 0);
    static sample_t a, b;
    sample_make(&a, 2, 3, 300);
    sample_make(&b, 3, 3, 300);
    assert_int_equal(put(s, &a), KVT_OK);
    assert_int_equal(put(s, &a), KVT_OK); /* same key: a second hold, no copy */
    assert_int_equal(put(s, &b), KVT_OK);
    assert_int_equal(stats(s).tails, 2);
    assert_int_equal(stats(s).bytes, 600);
    assert_int_equal(stats(s).puts, 3);
    /* The same key with another length is refused, and changes nothing. */
    sample_t c = a;
    c.len = 200;
    assert_int_equal(put(s, &c), KVT_ERR_MISMATCH);
    assert_int_equal(stats(s).puts, 3);

    assert_int_equal(kvt_tail_store_get(s, &a.key, false, visit_check, &a), KVT_OK);
    /* A visitor that fails keeps the hold. */
    assert_int_equal(kvt_tail_store_get(s, &a.key, true, visit_fail, NULL), KVT_ERR_NOMEM);
    assert_int_equal(kvt_tail_store_get(s, &a.key, true, visit_check, &a), KVT_OK);
    assert_int_equal(stats(s).tails, 2); /* one hold left */
    assert_int_equal(kvt_tail_store_get(s, &a.key, true, NULL, NULL), KVT_OK);
    assert_int_equal(stats(s).tails, 1);
    assert_int_equal(stats(s).released, 1);
    assert_int_equal(stats(s).bytes, 300);
    assert_int_equal(kvt_tail_store_get(s, &a.key, true, visit_check, &a), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_tail_store_get(s, &a.key, false, NULL, NULL), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_tail_store_get(s, &b.key, false, visit_check, &b), KVT_OK);
    /* Put again after the release: a fresh tail. */
    assert_int_equal(put(s, &a), KVT_OK);
    assert_int_equal(kvt_tail_store_get(s, &a.key, true, visit_check, &a), KVT_OK);
    assert_int_equal(kvt_tail_store_get(s, &a.key, false, NULL, NULL), KVT_ERR_NOT_FOUND);
    assert_int_equal(stats(s).released, 2);
    kvt_tail_store_destroy(s); /* b still held: freed here (ASan checks) */
}

/* The TTL runs from the last put, holds or not. */
static void test_ttl(void **state)
{
    kvt_tail_store_t *s = store(0, 0, 200);
    static sample_t a, b;
    sample_make(&a, 4, 7, 100);
    sample_make(&b, 5, 7, 100);
    assert_int_equal(put(s, &a), KVT_OK);
    assert_int_equal(put(s, &a), KVT_OK); /* two holds */
    assert_int_equal(kvt_tail_store_get(s, &a.key, false, visit_check, &a), KVT_OK);
    usleep(300000);
    assert_int_equal(kvt_tail_store_get(s, &a.key, false, visit_check, &a), KVT_ERR_NOT_FOUND);
    kvt_tail_store_stats_t st = stats(s);
    assert_int_equal(st.expired, 1);
    assert_int_equal(st.tails, 0);
    assert_int_equal(st.bytes, 0);

    /* A put restarts the lease. */
    uint64_t t0 = kvt_time_ns();
    assert_int_equal(put(s, &b), KVT_OK);
    usleep(120000);
    assert_int_equal(put(s, &b), KVT_OK);
    usleep(120000);
    if (kvt_time_ns() - t0 < 350000000ull) /* not when the machine stalled */
        assert_int_equal(kvt_tail_store_get(s, &b.key, false, NULL, NULL), KVT_OK);
    usleep(200000);
    assert_int_equal(kvt_tail_store_get(s, &b.key, false, NULL, NULL), KVT_ERR_NOT_FOUND);
    assert_int_equal(stats(s).expired, 2);
    assert_int_equal(stats(s).dropped, 0);
    kvt_tail_store_destroy(s);
}

/* Byte bound: the least recently put tail goes first; one put again counts
 * as recent.  A tail over max_bytes is refused. */
static void test_byte_bound(void **state)
{
    kvt_tail_store_t *s = store(3000, 0, 0);
    static sample_t a[5];
    for (uint32_t i = 0; i < 5; i++)
        sample_make(&a[i], 10 + i, 5, 1000);
    for (int i = 0; i < 3; i++)
        assert_int_equal(put(s, &a[i]), KVT_OK);
    assert_int_equal(stats(s).bytes, 3000);
    assert_int_equal(put(s, &a[0]), KVT_OK); /* a0 is now the most recent */
    assert_int_equal(put(s, &a[3]), KVT_OK); /* drops a1 */
    assert_int_equal(kvt_tail_store_get(s, &a[1].key, false, NULL, NULL), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_tail_store_get(s, &a[0].key, false, visit_check, &a[0]), KVT_OK);
    assert_int_equal(kvt_tail_store_get(s, &a[2].key, false, visit_check, &a[2]), KVT_OK);
    assert_int_equal(kvt_tail_store_get(s, &a[3].key, false, visit_check, &a[3]), KVT_OK);
    kvt_tail_store_stats_t st = stats(s);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.tails, 3);
    assert_int_equal(st.bytes, 3000);
    /* A bigger tail drops as many as it needs (a2, then a0). */
    sample_make(&a[4], 14, 5, 2000);
    assert_int_equal(put(s, &a[4]), KVT_OK);
    assert_int_equal(stats(s).dropped, 3);
    assert_int_equal(kvt_tail_store_get(s, &a[3].key, false, visit_check, &a[3]), KVT_OK);
    assert_int_equal(kvt_tail_store_get(s, &a[4].key, false, visit_check, &a[4]), KVT_OK);
    assert_int_equal(stats(s).bytes, 3000);
    /* Exactly max_bytes fits (everything else goes); one byte more never. */
    static sample_t big;
    sample_make(&big, 20, 9, 3001);
    assert_int_equal(put(s, &big), KVT_ERR_TOO_LARGE);
    assert_int_equal(stats(s).tails, 2);
    big.len = 3000;
    assert_int_equal(put(s, &big), KVT_OK);
    assert_int_equal(stats(s).tails, 1);
    assert_int_equal(stats(s).dropped, 5);
    kvt_tail_store_destroy(s);
}

/* Count bound: expired tails go before the least recently put live ones. */
static void test_count_bound(void **state)
{
    kvt_tail_store_t *s = store(0, 2, 150);
    static sample_t a[4];
    for (uint32_t i = 0; i < 4; i++)
        sample_make(&a[i], 30 + i, 2, 64);
    assert_int_equal(put(s, &a[0]), KVT_OK);
    assert_int_equal(put(s, &a[1]), KVT_OK);
    assert_int_equal(put(s, &a[2]), KVT_OK); /* drops a0, live */
    assert_int_equal(kvt_tail_store_get(s, &a[0].key, false, NULL, NULL), KVT_ERR_NOT_FOUND);
    assert_int_equal(stats(s).dropped, 1);
    assert_int_equal(stats(s).tails, 2);
    usleep(250000); /* a1 and a2 expire */
    assert_int_equal(put(s, &a[3]), KVT_OK);
    assert_int_equal(put(s, &a[0]), KVT_OK);
    kvt_tail_store_stats_t st = stats(s);
    assert_int_equal(st.expired, 2);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.tails, 2);
    assert_int_equal(kvt_tail_store_get(s, &a[3].key, false, visit_check, &a[3]), KVT_OK);
    assert_int_equal(kvt_tail_store_get(s, &a[0].key, false, visit_check, &a[0]), KVT_OK);
    kvt_tail_store_destroy(s);
}

/* Every allocation of create and of a new tail's put can fail cleanly; a
 * put that fails leaves the store as it was. */
static void test_nomem(void **state)
{
    kvt_tail_store_t *s = NULL;
    int fails = 0;
    for (long n = 0;; n++) {
        kvt_alloc_fail_after(n);
        kvt_status_t st = kvt_tail_store_create(NULL, &s);
        kvt_alloc_fail_after(-1);
        if (st == KVT_OK)
            break;
        assert_int_equal(st, KVT_ERR_NOMEM);
        assert_null(s);
        fails++;
    }
    assert_true(fails >= 3); /* the store, its slots, its free list, its map */
    static sample_t a, b;
    sample_make(&a, 40, 6, 500);
    sample_make(&b, 41, 6, 500);
    assert_int_equal(put(s, &a), KVT_OK);
    kvt_alloc_fail_after(0);
    assert_int_equal(put(s, &b), KVT_ERR_NOMEM);
    kvt_alloc_fail_after(-1);
    kvt_tail_store_stats_t st = stats(s);
    assert_int_equal(st.tails, 1);
    assert_int_equal(st.bytes, 500);
    assert_int_equal(st.puts, 1);
    assert_int_equal(kvt_tail_store_get(s, &b.key, false, NULL, NULL), KVT_ERR_NOT_FOUND);
    /* A hold on a present key allocates nothing. */
    kvt_alloc_fail_after(0);
    assert_int_equal(put(s, &a), KVT_OK);
    kvt_alloc_fail_after(-1);
    assert_int_equal(put(s, &b), KVT_OK);
    assert_int_equal(stats(s).tails, 2);
    kvt_tail_store_destroy(s);
}

/* --- threads --- */

#define N_THREADS 4
#define N_KEYS 24
#define N_ROUNDS 20000

typedef struct {
    kvt_tail_store_t *s;
    const sample_t *keys;
    uint64_t seed;
    uint64_t puts, hits, misses, bad;
} worker_t;

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    uint64_t x = w->seed;
    for (int i = 0; i < N_ROUNDS; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        const sample_t *k = &w->keys[(x >> 33) % N_KEYS];
        switch ((x >> 20) % 4) {
        case 0:
            w->bad += put(w->s, k) != KVT_OK;
            w->puts++;
            break;
        default: {
            kvt_status_t st = kvt_tail_store_get(w->s, &k->key, (x >> 24) % 2, visit_check,
                                                 (void *)k);
            w->hits += st == KVT_OK;
            w->misses += st == KVT_ERR_NOT_FOUND;
            w->bad += st != KVT_OK && st != KVT_ERR_NOT_FOUND;
        }
        }
    }
    return NULL;
}

/* Puts, gets and releases of shared keys over a store with room for a
 * third of them: every tail seen is the one asked for, and the counts add
 * up. */
static void test_threads(void **state)
{
    static sample_t keys[N_KEYS];
    for (uint32_t i = 0; i < N_KEYS; i++)
        sample_make(&keys[i], 100 + i, 1 + i % 15, 256 + 64 * (i % 8));
    kvt_tail_store_t *s = store(4096, N_KEYS / 3, 0);
    pthread_t th[N_THREADS];
    worker_t w[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        w[i] = (worker_t){.s = s, .keys = keys, .seed = 0x1234567ull * (uint64_t)(i + 1)};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    uint64_t puts = 0, hits = 0, misses = 0;
    for (int i = 0; i < N_THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(w[i].bad, 0);
        puts += w[i].puts;
        hits += w[i].hits;
        misses += w[i].misses;
    }
    kvt_tail_store_stats_t st = stats(s);
    assert_int_equal(st.puts, puts);
    assert_int_equal(st.hits, hits);
    assert_int_equal(st.misses, misses);
    assert_true(hits > 0 && misses > 0 && st.dropped > 0 && st.released > 0);
    assert_true(st.tails <= N_KEYS / 3);
    assert_true(st.bytes <= 4096);
    /* What is left is exactly what get finds, with the bytes it counts. */
    uint64_t found = 0, bytes = 0;
    for (int i = 0; i < N_KEYS; i++)
        if (kvt_tail_store_get(s, &keys[i].key, false, visit_check, &keys[i]) == KVT_OK) {
            found++;
            bytes += keys[i].len;
        }
    assert_int_equal(found, st.tails);
    assert_int_equal(bytes, st.bytes);
    kvt_tail_store_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create),
        cmocka_unit_test(test_put_checks_key),
        cmocka_unit_test(test_holds_and_release),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_byte_bound),
        cmocka_unit_test(test_count_bound),
        cmocka_unit_test(test_nomem),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
