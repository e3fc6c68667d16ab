/* GPU attention (kernels.h: kvt_k_attn_prefill, kvt_k_attn_decode) against
 * the double-precision reference kvt_k_attn_ref.
 *
 * Random pools with shuffled slots, several groups of mixed lengths in one
 * pass (prefill groups from position 0 and after a cached prefix of whole
 * blocks, odd n, single rows; decode groups of one row at contexts 1 ..
 * 8192), head_dim 16/24/64/128, GQA ratios 1/4/8, bf16 and f32 KV, block
 * sizes 16 and 24, layer 1 of 2.  Both launchers run on every case (decode
 * must take n > 1, prefill n = 1).  The output is poisoned (bf16 NaN)
 * before each launch; every (row, head) vector must be written, and its
 * relative L2 error against the reference must stay under 1e-2; the worst
 * is printed.  test_timing prints (never asserts) prefill TFLOP/s and
 * decode KV GB/s.  KVT_TEST_SMALL=1 shrinks the shapes (for
 * compute-sanitizer), KVT_TEST_FILTER=<name> runs one test.  Exit 77
 * without a GPU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kernels/gpu.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool g_small;
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double g_worst[2]; /* prefill, decode */

static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static float rndf(float amp) /* uniform in [-amp, amp) */
{
    return amp * (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

typedef struct {
    uint32_t n, pos0;
} gspec_t;

typedef struct {
    uint32_t hd, n_heads, n_kv, B;
    bool f32;
    float q_amp;
} shape_t;

/* A pass on the host and its copy on the device. */
typedef struct {
    shape_t sh;
    kvt_k_kv_t kv_h, kv_d;
    uint32_t n_groups, max_n, max_ctx;
    size_t rows, n_table, q_elems;
    kvt_k_group_t *groups;
    uint32_t *tables;
    uint16_t *q, *ref, *got;
    void *pool_d, *q_d, *out_d, *groups_d, *tables_d;
} pass_t;

static void dev_copy(void **d, const void *h, size_t bytes)
{
    assert_int_equal(kvt_gpu_malloc(d, bytes, "test"), KVT_OK);
    assert_int_equal(kvt_gpu_h2d(*d, h, bytes, NULL), KVT_OK);
}

static void pass_build(pass_t *p, const shape_t *sh, const gspec_t *gs, uint32_t n_groups)
{
    memset(p, 0, sizeof(*p));
    p->sh = *sh;
    p->n_groups = n_groups;
    p->groups = calloc(n_groups, sizeof(*p->groups));
    assert_non_null(p->groups);
    for (uint32_t i = 0; i < n_groups; i++) {
        uint32_t ctx = gs[i].pos0 + gs[i].n;
        p->groups[i] = (kvt_k_group_t){.row0 = (uint32_t)p->rows, .n = gs[i].n,
                                       .pos0 = gs[i].pos0, .table_off = (uint32_t)p->n_table};
        p->rows += gs[i].n;
        p->n_table += (ctx + sh->B - 1) / sh->B;
        p->max_n = gs[i].n > p->max_n ? gs[i].n : p->max_n;
        p->max_ctx = ctx > p->max_ctx ? ctx : p->max_ctx;
    }
    /* Slots: a shuffled permutation of more slots than the tables use. */
    uint32_t n_slots = (uint32_t)p->n_table + 5;
    uint32_t *perm = malloc(n_slots * sizeof(*perm));
    assert_non_null(perm);
    for (uint32_t i = 0; i < n_slots; i++)
        perm[i] = i;
    for (uint32_t i = n_slots - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % (i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    p->tables = malloc(p->n_table * sizeof(*p->tables));
    assert_non_null(p->tables);
    memcpy(p->tables, perm, p->n_table * sizeof(*p->tables));
    free(perm);

    size_t esz = sh->f32 ? 4 : 2, n_layers = 2;
    size_t image = n_layers * 2 * sh->B * sh->n_kv * sh->hd * esz;
    size_t slot_bytes = (image + 63) & ~(size_t)63;
    size_t pool_bytes = n_slots * slot_bytes;
    uint8_t *pool = malloc(pool_bytes);
    assert_non_null(pool);
    for (size_t i = 0; i < pool_bytes / esz; i++) {
        float v = rndf(1.0f);
        if (sh->f32) {
            memcpy(pool + i * 4, &v, 4);
        } else {
            uint16_t b = to_bf16(v);
            memcpy(pool + i * 2, &b, 2);
        }
    }
    p->kv_h = (kvt_k_kv_t){.base = pool, .slot_bytes = slot_bytes, .block_tokens = sh->B,
                           .n_layers = (uint32_t)n_layers, .n_kv_heads = sh->n_kv,
                           .head_dim = sh->hd, .f32 = sh->f32};
    p->kv_d = p->kv_h;
    dev_copy(&p->pool_d, pool, pool_bytes);
    p->kv_d.base = p->pool_d;

    p->q_elems = p->rows * sh->n_heads * sh->hd;
    p->q = malloc(p->q_elems * 2);
    p->ref = malloc(p->q_elems * 2);
    p->got = malloc(p->q_elems * 2);
    assert_true(p->q && p->ref && p->got);
    for (size_t i = 0; i < p->q_elems; i++)
        p->q[i] = to_bf16(rndf(sh->q_amp));
    dev_copy(&p->q_d, p->q, p->q_elems * 2);
    dev_copy(&p->groups_d, p->groups, n_groups * sizeof(*p->groups));
    dev_copy(&p->tables_d, p->tables, p->n_table * sizeof(*p->tables));
    assert_int_equal(kvt_gpu_malloc(&p->out_d, p->q_elems * 2, "test"), KVT_OK);
    kvt_k_attn_ref(&p->kv_h, 1, p->q, sh->n_heads, p->groups, n_groups, p->tables,
                   1.0f / sqrtf((float)sh->hd), p->ref);
}

static void pass_free(pass_t *p)
{
    free((void *)p->kv_h.base);
    free(p->groups);
    free(p->tables);
    free(p->q);
    free(p->ref);
    free(p->got);
    kvt_gpu_free(p->pool_d);
    kvt_gpu_free(p->q_d);
    kvt_gpu_free(p->out_d);
    kvt_gpu_free(p->groups_d);
    kvt_gpu_free(p->tables_d);
}

typedef kvt_status_t (*attn_fn)(const kvt_k_kv_t *, uint32_t, const uint16_t *, uint32_t,
                                const kvt_k_group_t *, uint32_t, const uint32_t *, uint32_t,
                                uint32_t, float, uint16_t *, kvt_gpu_stream_t);

/* Run one launcher, compare every (row, head) vector; returns the worst
 * relative L2 error. */
static double pass_check(pass_t *p, attn_fn fn, const char *name)
{
    const shape_t *sh = &p->sh;
    size_t bytes = p->q_elems * 2, hd = sh->hd;
    assert_int_equal(kvt_gpu_memset(p->out_d, 0xff, bytes, NULL), KVT_OK);
    assert_int_equal(fn(&p->kv_d, 1, p->q_d, sh->n_heads, p->groups_d, p->n_groups, p->tables_d,
                        p->max_n, p->max_ctx, 1.0f / sqrtf((float)hd), p->out_d, NULL),
                     KVT_OK);
    assert_int_equal(kvt_gpu_d2h(p->got, p->out_d, bytes, NULL), KVT_OK);
    assert_int_equal(kvt_gpu_stream_sync(NULL), KVT_OK);
    double worst = 0.0;
    for (size_t v = 0; v < p->q_elems / hd; v++) {
        double num = 0.0, den = 0.0;
        for (size_t i = 0; i < hd; i++) {
            double g = from_bf16(p->got[v * hd + i]), r = from_bf16(p->ref[v * hd + i]);
            if (isnan(g)) {
                print_error("%s: NaN/unwritten at row %zu head %zu dim %zu (hd=%u heads=%u "
                            "kv=%u f32=%d)\n",
                            name, v / sh->n_heads, v % sh->n_heads, i, sh->hd, sh->n_heads,
                            sh->n_kv, sh->f32);
                fail();
            }
            num += (g - r) * (g - r);
            den += r * r;
        }
        double rel = sqrt(num / (den > 1e-30 ? den : 1e-30));
        worst = rel > worst ? rel : worst;
    }
    if (worst > 1e-2)
        print_error("%s: rel err %.3g (hd=%u heads=%u kv=%u B=%u f32=%d)\n", name, worst, sh->hd,
                    sh->n_heads, sh->n_kv, sh->B, sh->f32);
    assert_true(worst <= 1e-2);
    return worst;
}

static void run_case(const shape_t *sh, const gspec_t *gs, uint32_t n_groups)
{
    pass_t p;
    pass_build(&p, sh, gs, n_groups);
    double a = pass_check(&p, kvt_k_attn_prefill, "prefill");
    double b = pass_check(&p, kvt_k_attn_decode, "decode");
    g_worst[0] = a > g_worst[0] ? a : g_worst[0];
    g_worst[1] = b > g_worst[1] ? b : g_worst[1];
    print_message("hd=%3u heads=%2u kv=%u B=%u %s groups=%u rows=%zu max_ctx=%u: "
                  "prefill %.2e decode %.2e\n",
                  sh->hd, sh->n_heads, sh->n_kv, sh->B, sh->f32 ? "f32 " : "bf16", n_groups,
                  p.rows, p.max_ctx, a, b);
    pass_free(&p);
}

/* Prefill-like groups: from 0, after cached prefixes (multiples of B),
 * odd lengths, single rows. */
static uint32_t prefill_groups(uint32_t B, gspec_t *gs)
{
    uint32_t s = g_small ? 3 : 1, n = 0;
    gs[n++] = (gspec_t){300 / s, 0};
    gs[n++] = (gspec_t){77, 3 * B};
    gs[n++] = (gspec_t){1, 0};
    gs[n++] = (gspec_t){513 / s, 5 * B};
    gs[n++] = (gspec_t){64, 0};
    gs[n++] = (gspec_t){129, 2 * B};
    gs[n++] = (gspec_t){1, 7 * B};
    return n;
}

/* Decode groups: one row each, contexts 1 .. 8192. */
static uint32_t decode_groups(gspec_t *gs)
{
    static const uint32_t ctx[] = {1,   2,   3,   15,  16,   17,   31,   64,   65,  127,
                                   128, 129, 500, 1000, 2047, 4096, 4097, 8192, 8191};
    uint32_t n = 0;
    for (size_t i = 0; i < sizeof(ctx) / sizeof(ctx[0]); i++)
        if (!g_small || ctx[i] <= 1100)
            gs[n++] = (gspec_t){1, ctx[i] - 1};
    return n;
}

static void test_shapes(void **state)
{
    (void)state;
    static const uint32_t hds[] = {16, 24, 64, 128}, reps[] = {1, 4, 8};
    gspec_t gs[32];
    for (size_t h = 0; h < 4; h++) {
        for (size_t r = 0; r < 3; r++) {
            for (int f = 0; f < 2; f++) {
                if (g_small && reps[r] != 4)
                    continue;
                shape_t sh = {.hd = hds[h], .n_kv = 2, .n_heads = 2 * reps[r], .B = 16,
                              .f32 = f, .q_amp = 2.0f};
                run_case(&sh, gs, prefill_groups(sh.B, gs));
                run_case(&sh, gs, decode_groups(gs));
            }
        }
    }
    print_message("worst relative L2 error: prefill %.3e decode %.3e\n", g_worst[0], g_worst[1]);
}

/* Other block sizes, a peaked softmax, an odd GQA ratio, head_dim 256. */
static void test_odd(void **state)
{
    (void)state;
    gspec_t gs[32];
    shape_t a = {.hd = 128, .n_kv = 2, .n_heads = 8, .B = 24, .q_amp = 2.0f};
    run_case(&a, gs, prefill_groups(a.B, gs));
    shape_t b = {.hd = 64, .n_kv = 1, .n_heads = 4, .B = 32, .f32 = true, .q_amp = 12.0f};
    run_case(&b, gs, prefill_groups(b.B, gs));
    run_case(&b, gs, decode_groups(gs));
    shape_t b2 = {.hd = 128, .n_kv = 2, .n_heads = 8, .B = 16, .q_amp = 12.0f};
    run_case(&b2, gs, prefill_groups(b2.B, gs));
    shape_t c = {.hd = 64, .n_kv = 2, .n_heads = 14, .B = 16, .q_amp = 3.0f}; /* n_rep 7 */
    run_case(&c, gs, prefill_groups(c.B, gs));
    run_case(&c, gs, decode_groups(gs));
    shape_t d = {.hd = 256, .n_kv = 1, .n_heads = 2, .B = 16, .q_amp = 1.0f};
    run_case(&d, gs, prefill_groups(d.B, gs));
    shape_t e = {.hd = 128, .n_kv = 1, .n_heads = 16, .B = 16, .q_amp = 2.0f}; /* n_rep 16 */
    run_case(&e, gs, decode_groups(gs));
}

static void test_bad_args(void **state)
{
    (void)state;
    uint16_t dummy[8] = {0};
    kvt_k_group_t g = {0, 1, 0, 0};
    uint32_t table = 0;
    kvt_k_kv_t kv = {.base = dummy, .slot_bytes = 16, .block_tokens = 16, .n_layers = 1,
                     .n_kv_heads = 3, .head_dim = 64};
    /* 4 heads over 3 kv heads, slot too small, layer out of range. */
    assert_int_equal(kvt_k_attn_decode(&kv, 0, dummy, 4, &g, 1, &table, 1, 1, 1.0f, dummy, NULL),
                     KVT_ERR_INVALID);
    assert_int_equal(kvt_k_attn_prefill(&kv, 0, dummy, 6, &g, 1, &table, 1, 1, 1.0f, dummy, NULL),
                     KVT_ERR_INVALID);
    kv.slot_bytes = 1 << 20;
    assert_int_equal(kvt_k_attn_prefill(&kv, 1, dummy, 6, &g, 1, &table, 1, 1, 1.0f, dummy, NULL),
                     KVT_ERR_INVALID);
    kv.head_dim = 512;
    assert_int_equal(kvt_k_attn_decode(&kv, 0, dummy, 6, &g, 1, &table, 1, 1, 1.0f, dummy, NULL),
                     KVT_ERR_INVALID);
    /* Nothing to do is fine. */
    kv.head_dim = 64;
    assert_int_equal(kvt_k_attn_decode(&kv, 0, dummy, 6, &g, 0, &table, 1, 1, 1.0f, dummy, NULL),
                     KVT_OK);
}

/* --- timing (printed, not asserted) --- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    kvt_k_kv_t kv;
    uint32_t n_heads;
    void *q, *out, *tables;
} tpool_t;

/* n_seq sequences of ctx positions each, random bf16 data, one layer. */
static void tpool_init(tpool_t *t, uint32_t n_seq, uint32_t ctx, uint32_t rows, bool f32)
{
    uint32_t hd = 128, n_kv = 8, B = 16, bps = ctx / B;
    size_t esz = f32 ? 4 : 2, slot = 2 * B * n_kv * hd * esz, n_slots = (size_t)n_seq * bps;
    t->n_heads = 32;
    t->kv = (kvt_k_kv_t){.slot_bytes = slot, .block_tokens = B, .n_layers = 1, .n_kv_heads = n_kv,
                         .head_dim = hd, .f32 = f32};
    size_t chunk_elems = 1 << 20;
    uint8_t *h = malloc(chunk_elems * esz);
    assert_non_null(h);
    for (size_t i = 0; i < chunk_elems; i++) {
        float v = rndf(1.0f);
        if (f32)
            memcpy(h + i * 4, &v, 4);
        else {
            uint16_t b = to_bf16(v);
            memcpy(h + i * 2, &b, 2);
        }
    }
    size_t pool_bytes = n_slots * slot;
    assert_int_equal(kvt_gpu_malloc(&t->kv.base, pool_bytes, "test pool"), KVT_OK);
    for (size_t off = 0; off < pool_bytes; off += chunk_elems * esz) {
        size_t n = pool_bytes - off < chunk_elems * esz ? pool_bytes - off : chunk_elems * esz;
        assert_int_equal(kvt_gpu_h2d((uint8_t *)t->kv.base + off, h, n, NULL), KVT_OK);
    }
    free(h);
    uint32_t *tab = malloc(n_slots * sizeof(*tab));
    assert_non_null(tab);
    for (size_t i = 0; i < n_slots; i++)
        tab[i] = (uint32_t)i;
    for (size_t i = n_slots - 1; i > 0; i--) {
        size_t j = rnd() % (i + 1);
        uint32_t x = tab[i];
        tab[i] = tab[j];
        tab[j] = x;
    }
    dev_copy(&t->tables, tab, n_slots * sizeof(*tab));
    free(tab);
    size_t qe = (size_t)rows * t->n_heads * hd;
    uint16_t *q = malloc(qe * 2);
    assert_non_null(q);
    for (size_t i = 0; i < qe; i++)
        q[i] = to_bf16(rndf(2.0f));
    dev_copy(&t->q, q, qe * 2);
    free(q);
    assert_int_equal(kvt_gpu_malloc(&t->out, qe * 2, "test out"), KVT_OK);
    assert_int_equal(kvt_gpu_stream_sync(NULL), KVT_OK);
}

static void tpool_free(tpool_t *t)
{
    kvt_gpu_free(t->kv.base);
    kvt_gpu_free(t->q);
    kvt_gpu_free(t->out);
    kvt_gpu_free(t->tables);
}

/* Median milliseconds of `reps` launches; groups_d holds `n_sets` group
 * arrays of n_groups each, used in turn (so a small batch is not timed
 * out of L2). */
static float time_launch(attn_fn fn, tpool_t *t, const kvt_k_group_t *groups_d, uint32_t n_sets,
                         uint32_t n_groups, uint32_t max_n, uint32_t max_ctx, int reps)
{
    kvt_gpu_event_t e0, e1;
    assert_int_equal(kvt_gpu_event_create(&e0), KVT_OK);
    assert_int_equal(kvt_gpu_event_create(&e1), KVT_OK);
    float ms[64];
    float scale = 1.0f / sqrtf(128.0f);
    for (int r = -2; r < reps; r++) {
        const kvt_k_group_t *g = groups_d + (size_t)((r + 2) % n_sets) * n_groups;
        assert_int_equal(kvt_gpu_event_record(e0, NULL), KVT_OK);
        assert_int_equal(fn(&t->kv, 0, t->q, t->n_heads, g, n_groups, t->tables, max_n, max_ctx,
                            scale, t->out, NULL),
                         KVT_OK);
        assert_int_equal(kvt_gpu_event_record(e1, NULL), KVT_OK);
        float x;
        assert_int_equal(kvt_gpu_event_elapsed_ms(e0, e1, &x), KVT_OK);
        if (r >= 0)
            ms[r] = x;
    }
    kvt_gpu_event_destroy(e0);
    kvt_gpu_event_destroy(e1);
    qsort(ms, (size_t)reps, sizeof(float), cmp_float);
    return ms[reps / 2];
}

static void time_prefill(uint32_t n, bool f32)
{
    tpool_t t;
    tpool_init(&t, 1, n, n, f32);
    kvt_k_group_t g = {.row0 = 0, .n = n, .pos0 = 0, .table_off = 0};
    void *gd;
    dev_copy(&gd, &g, sizeof(g));
    float ms = time_launch(kvt_k_attn_prefill, &t, gd, 1, 1, n, n, 10);
    double flops = 4.0 * (double)n * n / 2.0 * 32 * 128;
    print_message("prefill n=%5u heads 32/8 hd 128 %s: %8.3f ms  %6.1f TFLOP/s\n", n,
                  f32 ? "f32 " : "bf16", ms, flops / (ms * 1e-3) / 1e12);
    kvt_gpu_free(gd);
    tpool_free(&t);
}

static void time_decode(tpool_t *t, uint32_t n_seq, uint32_t ctx, uint32_t batch)
{
    uint32_t n_sets = n_seq / batch, bps = ctx / 16;
    kvt_k_group_t *g = malloc((size_t)n_sets * batch * sizeof(*g));
    assert_non_null(g);
    for (uint32_t s = 0; s < n_sets; s++)
        for (uint32_t b = 0; b < batch; b++)
            g[s * batch + b] = (kvt_k_group_t){
                .row0 = b, .n = 1, .pos0 = ctx - 1, .table_off = (s * batch + b) * bps};
    void *gd;
    dev_copy(&gd, g, (size_t)n_sets * batch * sizeof(*g));
    free(g);
    float ms = time_launch(kvt_k_attn_decode, t, gd, n_sets, batch, 1, ctx, 20);
    double bytes = (double)batch * ctx * 8 * 128 * 2 * (t->kv.f32 ? 4 : 2);
    print_message("decode batch=%2u ctx=%u heads 32/8 hd 128 %s: %8.1f us  %7.1f GB/s of KV\n",
                  batch, ctx, t->kv.f32 ? "f32 " : "bf16", ms * 1e3, bytes / (ms * 1e-3) / 1e9);
    kvt_gpu_free(gd);
}

static void test_timing(void **state)
{
    (void)state;
    if (g_small) {
        print_message("timing skipped (KVT_TEST_SMALL)\n");
        return;
    }
    char dev[256];
    kvt_gpu_describe(0, dev, sizeof(dev));
    print_message("device: %s\n", dev);
    time_prefill(2048, false);
    time_prefill(8192, false);
    time_prefill(8192, true);
    tpool_t t;
    tpool_init(&t, 64, 4096, 64, false);
    time_decode(&t, 64, 4096, 1);
    time_decode(&t, 64, 4096, 16);
    time_decode(&t, 64, 4096, 64);
    tpool_free(&t);
}

int main(void)
{
    if (kvt_gpu_device_count() == 0) {
        fprintf(stderr, "no GPU: skipped\n");
        return 77;
    }
    const char *small = getenv("KVT_TEST_SMALL");
    g_small = small && *small && strcmp(small, "0") != 0;
    const char *filter = getenv("KVT_TEST_FILTER"); /* e.g. test_shapes */
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_odd),
        cmocka_unit_test(test_timing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
