/* kvt_k_xxh3_64 (kernels/xxh3.cu) against libxxhash (kvt_xxh3_64).
 *
 * One random arena (fixed seed) lives on the host and, byte for byte, on
 * the device; each case hashes n images that are ranges of it (they may
 * overlap: the kernel only reads) and compares every out[i] with the host
 * hash of the same bytes.  Covered: every length 0..2048 (all short paths
 * and the first long ones), the boundaries of the long path (240/241,
 * 1024k +- {0, 1, 63, 64, 65} around blocks, ring rounds and the 512 KiB
 * switch of kernel shape, 2 MiB, 2 MiB + 13, 4 MiB - 1), batches of
 * 1, 7 and 64 images, misaligned images (the slow path), single-byte flips
 * at every region of the long path (the hash changes and still matches),
 * and the argument bounds.  Prints the throughput of 64 x 2 MiB beside a
 * device-to-device copy of the same bytes (informative, no threshold).
 * Skipped (exit 77) without a GPU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/hash.h"
#include "kernels/gpu.h"
#include "kernels/kernels.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB ((size_t)1 << 20)
#define MAX_BATCH 64
/* Images start 4104 bytes apart (8-aligned, not a multiple of a block), so
 * a batch of 64 images of up to 4 MiB fits in the arena. */
#define IMG_STRIDE 4104
#define ARENA_BYTES (4 * MIB + MAX_BATCH * IMG_STRIDE + 64)

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static uint8_t *g_host;        /* the arena, host copy */
static uint8_t *g_dev;         /* the arena, device copy */
static const uint8_t **g_dbufs; /* device array of MAX_BATCH pointers */
static uint64_t *g_dout;       /* device array of MAX_BATCH hashes */
static bool g_quick;           /* KVT_TEST_QUICK: no timings */

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void *dmalloc(size_t bytes)
{
    void *p = NULL;
    assert_int_equal(kvt_gpu_malloc(&p, bytes, "test_xxh3"), KVT_OK);
    return p;
}

static int setup(void **state)
{
    (void)state;
    g_host = malloc(ARENA_BYTES);
    if (!g_host)
        return -1;
    for (size_t i = 0; i < ARENA_BYTES; i += 8) {
        uint64_t v = rnd();
        memcpy(g_host + i, &v, ARENA_BYTES - i < 8 ? ARENA_BYTES - i : 8);
    }
    if (kvt_gpu_malloc((void **)&g_dev, ARENA_BYTES, "test_xxh3") != KVT_OK ||
        kvt_gpu_malloc((void **)&g_dbufs, MAX_BATCH * sizeof(void *), "test_xxh3") != KVT_OK ||
        kvt_gpu_malloc((void **)&g_dout, MAX_BATCH * sizeof(uint64_t), "test_xxh3") != KVT_OK)
        return -1;
    if (kvt_gpu_h2d(g_dev, g_host, ARENA_BYTES, NULL) != KVT_OK ||
        kvt_gpu_stream_sync(NULL) != KVT_OK)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kvt_gpu_free(g_dev);
    kvt_gpu_free((void *)g_dbufs);
    kvt_gpu_free(g_dout);
    free(g_host);
    return 0;
}

/* Hash n images of len bytes at arena offsets off[i] on the GPU; out[i]. */
static void gpu_hash(const size_t *off, size_t n, size_t len, uint64_t *out)
{
    const uint8_t *ptrs[MAX_BATCH];
    assert_true(n <= MAX_BATCH);
    for (size_t i = 0; i < n; i++)
        ptrs[i] = g_dev + off[i];
    assert_int_equal(kvt_gpu_h2d((void *)g_dbufs, ptrs, n * sizeof(void *), NULL), KVT_OK);
    assert_int_equal(kvt_gpu_memset(g_dout, 0xa5, n * sizeof(uint64_t), NULL), KVT_OK);
    assert_int_equal(kvt_k_xxh3_64(g_dbufs, n, len, g_dout, NULL), KVT_OK);
    assert_int_equal(kvt_gpu_d2h(out, g_dout, n * sizeof(uint64_t), NULL), KVT_OK);
    assert_int_equal(kvt_gpu_stream_sync(NULL), KVT_OK);
}

/* n images of len bytes, the first at `first`, then IMG_STRIDE apart;
 * every GPU hash must equal libxxhash's. */
static void check_batch(size_t n, size_t len, size_t first)
{
    size_t off[MAX_BATCH];
    uint64_t got[MAX_BATCH];
    for (size_t i = 0; i < n; i++)
        off[i] = first + i * IMG_STRIDE;
    assert_true(off[n - 1] + len <= ARENA_BYTES);
    gpu_hash(off, n, len, got);
    for (size_t i = 0; i < n; i++) {
        uint64_t want = kvt_xxh3_64(g_host + off[i], len);
        if (got[i] != want)
            fail_msg("len %zu image %zu/%zu at %zu: gpu %016llx, libxxhash %016llx", len, i, n,
                     off[i], (unsigned long long)got[i], (unsigned long long)want);
    }
}

static void test_every_short_length(void **state)
{
    (void)state;
    /* 0..2048: the 0, 1-3, 4-8, 9-16, 17-128, 129-240 paths, then the long
     * path with no full block (241..1024) and with one (1025..2048) */
    for (size_t len = 0; len <= 2048; len++)
        check_batch(len % 3 == 0 ? 1 : 7, len, (len * 8) % 1024);
}

static void test_boundaries(void **state)
{
    (void)state;
    const size_t lens[] = {239, 240, 241, 242, 255, 256, 257};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        check_batch(7, lens[i], 0);
    /* around block ends: full blocks vs the partial block, the last stripe
     * alone in the partial block; ring rounds (24 blocks below 512 KiB, 72
     * above) and their wrap-around (4 rounds); the switch of CTA shape at
     * 512 KiB */
    const size_t ks[] = {1,   2,   3,   16,  23,  24,  25,   48,   63,   64,  65,   96,
                         97,  128, 129, 256, 511, 512, 513, 576, 577, 1000, 2048, 4095};
    const long ds[] = {-65, -64, -63, -1, 0, 1, 63, 64, 65};
    for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++)
        for (size_t d = 0; d < sizeof(ds) / sizeof(ds[0]); d++)
            check_batch(ks[i] <= 129 ? 7 : 1, (size_t)((long)(ks[i] * 1024) + ds[d]), 0);
    const size_t big[] = {2 * MIB, 2 * MIB + 13, 4 * MIB - 1, 4 * MIB};
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
        check_batch(1, big[i], 0);
        check_batch(7, big[i], 8);
        check_batch(MAX_BATCH, big[i], 0);
    }
    for (int i = 0; i < 40; i++) /* random lengths and places */
        check_batch(1 + rnd() % 8, 241 + rnd() % (3 * MIB), (rnd() % 4096) * 8);
}

/* Not 8-byte aligned: the byte-load path must give the same hashes. */
static void test_misaligned(void **state)
{
    (void)state;
    const size_t lens[] = {0, 1, 3, 8, 17, 129, 240, 241, 1000, 1024, 1025, 4099, 65536 + 7,
                           MIB + 3};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        for (size_t a = 1; a < 8; a += 2)
            check_batch(3, lens[i], a);
}

/* One byte flipped anywhere (a full block, the partial block, the last
 * stripe, both ends) changes the GPU hash, which still equals the host's. */
static void test_flip(void **state)
{
    (void)state;
    const size_t len = 2 * MIB + 13, off = 8;
    const size_t at[] = {0, 1, 1023, 1024, 777777, len - 1037, len - 100, len - 64, len - 1};
    uint64_t before, after;
    gpu_hash(&off, 1, len, &before);
    assert_int_equal(before, kvt_xxh3_64(g_host + off, len));
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        uint8_t *b = g_host + off + at[i];
        uint8_t old = *b;
        *b ^= (uint8_t)(1u << (i % 8));
        assert_int_equal(kvt_gpu_h2d(g_dev + off + at[i], b, 1, NULL), KVT_OK);
        gpu_hash(&off, 1, len, &after);
        assert_true(after != before);
        assert_int_equal(after, kvt_xxh3_64(g_host + off, len));
        *b = old;
        assert_int_equal(kvt_gpu_h2d(g_dev + off + at[i], b, 1, NULL), KVT_OK);
    }
    gpu_hash(&off, 1, len, &after);
    assert_int_equal(after, before);
}

static void test_bounds(void **state)
{
    (void)state;
    assert_int_equal(kvt_k_xxh3_64(NULL, 0, 100, NULL, NULL), KVT_OK);
    assert_int_equal(kvt_k_xxh3_64(NULL, 1, 100, g_dout, NULL), KVT_ERR_INVALID);
    assert_int_equal(kvt_k_xxh3_64(g_dbufs, 1, 100, NULL, NULL), KVT_ERR_INVALID);
    assert_int_equal(kvt_k_xxh3_64(g_dbufs, KVT_K_XXH3_MAX_N + 1, 100, g_dout, NULL),
                     KVT_ERR_INVALID);
    assert_int_equal(kvt_k_xxh3_64(g_dbufs, 1, KVT_K_XXH3_MAX_LEN + 1, g_dout, NULL),
                     KVT_ERR_INVALID);
    assert_int_equal(kvt_gpu_stream_sync(NULL), KVT_OK);
}

/* Best of `reps` runs, in ms. */
static float time_best(int reps, void (*fn)(void *), void *arg)
{
    kvt_gpu_event_t e0, e1;
    float best = 1e30f;
    assert_int_equal(kvt_gpu_event_create(&e0), KVT_OK);
    assert_int_equal(kvt_gpu_event_create(&e1), KVT_OK);
    for (int r = 0; r < reps; r++) {
        float ms;
        assert_int_equal(kvt_gpu_event_record(e0, NULL), KVT_OK);
        fn(arg);
        assert_int_equal(kvt_gpu_event_record(e1, NULL), KVT_OK);
        assert_int_equal(kvt_gpu_event_elapsed_ms(e0, e1, &ms), KVT_OK);
        if (ms < best)
            best = ms;
    }
    kvt_gpu_event_destroy(e0);
    kvt_gpu_event_destroy(e1);
    return best;
}

typedef struct {
    const uint8_t *const *bufs;
    size_t n, len;
    uint64_t *out;
    void *dst;
    const void *src;
} job_t;

static void run_hash(void *arg)
{
    job_t *j = arg;
    assert_int_equal(kvt_k_xxh3_64(j->bufs, j->n, j->len, j->out, NULL), KVT_OK);
}

static void run_copy(void *arg)
{
    job_t *j = arg;
    assert_int_equal(kvt_gpu_d2d(j->dst, j->src, j->n * j->len, NULL), KVT_OK);
}

/* 64 distinct 2 MiB images (the KV transfer case): checked, then timed. */
static void test_throughput(void **state)
{
    (void)state;
    const size_t n = 64, len = 2 * MIB, total = n * len;
    uint8_t *h = malloc(total);
    assert_non_null(h);
    for (size_t i = 0; i < total; i += 8) {
        uint64_t v = rnd();
        memcpy(h + i, &v, 8);
    }
    uint8_t *src = dmalloc(total), *dst = dmalloc(total);
    assert_int_equal(kvt_gpu_h2d(src, h, total, NULL), KVT_OK);
    const uint8_t *ptrs[MAX_BATCH];
    for (size_t i = 0; i < n; i++)
        ptrs[i] = src + i * len;
    assert_int_equal(kvt_gpu_h2d((void *)g_dbufs, ptrs, n * sizeof(void *), NULL), KVT_OK);
    job_t j = {g_dbufs, n, len, g_dout, dst, src};
    run_hash(&j);
    uint64_t got[MAX_BATCH];
    assert_int_equal(kvt_gpu_d2h(got, g_dout, n * sizeof(uint64_t), NULL), KVT_OK);
    assert_int_equal(kvt_gpu_stream_sync(NULL), KVT_OK);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(got[i], kvt_xxh3_64(h + i * len, len));
    if (!g_quick) {
        run_copy(&j); /* warm-up */
        float ms_hash = time_best(5, run_hash, &j);
        float ms_copy = time_best(5, run_copy, &j);
        print_message("64 x 2 MiB: xxh3 %.0f GB/s, d2d copy %.0f GB/s (read+write)\n",
                      total / (ms_hash * 1e6), 2.0 * total / (ms_copy * 1e6));
        job_t one = {g_dbufs, 1, len, g_dout, NULL, NULL};
        float ms_one = time_best(5, run_hash, &one);
        print_message("1 x 2 MiB: xxh3 %.0f GB/s (one image: the sequential chain)\n",
                      len / (ms_one * 1e6));
    }
    kvt_gpu_free(src);
    kvt_gpu_free(dst);
    free(h);
}

int main(void)
{
    if (kvt_gpu_device_count() == 0) {
        printf("test_xxh3: no GPU, skipped\n");
        return 77;
    }
    g_quick = getenv("KVT_TEST_QUICK") != NULL;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_short_length), cmocka_unit_test(test_boundaries),
        cmocka_unit_test(test_misaligned),         cmocka_unit_test(test_flip),
        cmocka_unit_test(test_bounds),             cmocka_unit_test(test_throughput),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
