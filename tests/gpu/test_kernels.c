/* GPU runtime (kernels/gpu.h) and the element-wise and sampling kernels
 * (kernels/kernels.h) against their CPU references.
 *
 * Every kernel runs on fresh random inputs of several shapes (odd sizes,
 * the vector and the scalar paths, head_dim 64 and 128, GQA, KV f32 and
 * bf16, with and without bias, llama3-scaled RoPE) and is compared with
 * its kvt_k_<op>_ref: f32 KV stores bitwise, bf16 outputs within 1e-2
 * relative (and counted: nearly all are bitwise equal), sampled tokens
 * equal.  The references themselves are checked against engine/ops.c and
 * engine/sample.c (and a hand-computed sampling case).  Skipped (exit 77)
 * without a GPU.  Prints a few kernel timings on the way (informative). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "engine/model.h"
#include "engine/ops.h"
#include "engine/sample.h"
#include "kernels/gpu.h"
#include "kernels/kernels.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- helpers --- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static bool g_quick; /* KVT_TEST_QUICK: fewer cases, no timings (for compute-sanitizer) */

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float frand(float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(rnd() >> 11) * 0x1.0p-53);
}

static void fill(float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand(lo, hi);
}

static void *hmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

static void *dmalloc(size_t bytes)
{
    void *p = NULL;
    assert_int_equal(kvt_gpu_malloc(&p, bytes ? bytes : 16, "test"), KVT_OK);
    return p;
}

static void *to_dev(const void *h, size_t bytes)
{
    void *d = dmalloc(bytes);
    assert_int_equal(kvt_gpu_h2d(d, h, bytes, NULL), KVT_OK);
    assert_int_equal(kvt_gpu_stream_sync(NULL), KVT_OK);
    return d;
}

static void from_dev(void *h, const void *d, size_t bytes)
{
    assert_int_equal(kvt_gpu_d2h(h, d, bytes, NULL), KVT_OK);
    assert_int_equal(kvt_gpu_stream_sync(NULL), KVT_OK);
}

static float bf(uint16_t h) { return kvt_ops_bf16_to_f32(h); }

/* bf16 arrays: all within 1e-2 relative (or 1e-6 absolute near zero);
 * returns how many differ in any bit. */
static size_t cmp_bf16(const uint16_t *got, const uint16_t *want, size_t n, const char *what)
{
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] == want[i])
            continue;
        diff++;
        float a = bf(got[i]), b = bf(want[i]);
        if (!(fabsf(a - b) <= 1e-2f * fabsf(b) + 1e-6f)) {
            fprintf(stderr, "%s: element %zu got %g (0x%04x) want %g (0x%04x)\n", what, i,
                    (double)a, got[i], (double)b, want[i]);
            fail();
        }
    }
    return diff;
}

/* --- runtime --- */

static void test_device(void **state)
{
    (void)state;
    int n = kvt_gpu_device_count();
    assert_true(n >= 1);
    assert_int_equal(kvt_gpu_use(0), KVT_OK);
    assert_int_equal(kvt_gpu_use(n), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_gpu_use(-1), KVT_ERR_NOT_FOUND);
    char text[256];
    kvt_gpu_describe(0, text, sizeof(text));
    printf("device 0: %s\n", text);
    assert_non_null(strstr(text, "SMs"));
    kvt_gpu_describe(n + 3, text, sizeof(text));
    assert_non_null(strstr(text, "no gpu"));
    char tiny[4];
    kvt_gpu_describe(0, tiny, sizeof(tiny));
    assert_int_equal(strlen(tiny), 3);
}

static void test_copies(void **state)
{
    (void)state;
    enum { N = 7 };
    const size_t sizes[N] = {1, 0, 4096, 3, 65537, 1 << 20, 17};
    size_t total = 0;
    for (int i = 0; i < N; i++)
        total += sizes[i];
    uint8_t *src = NULL, *back = NULL;
    assert_int_equal(kvt_gpu_host_alloc((void **)&src, total, "test src"), KVT_OK);
    back = hmalloc(total);
    assert_int_equal(kvt_gpu_host_register(back, total), KVT_OK);
    for (size_t i = 0; i < total; i++)
        src[i] = (uint8_t)rnd();
    memset(back, 0xee, total);
    uint8_t *d1 = dmalloc(total), *d2 = dmalloc(total);
    void *hd[N], *dd1[N], *dd2[N], *hb[N];
    const void *chd[N], *cdd1[N], *cdd2[N];
    size_t off = 0;
    for (int i = 0; i < N; i++) {
        hd[i] = src + off;
        dd1[i] = d1 + off;
        dd2[i] = d2 + off;
        hb[i] = back + off;
        chd[i] = hd[i];
        cdd1[i] = dd1[i];
        cdd2[i] = dd2[i];
        off += sizes[i];
    }
    kvt_gpu_stream_t s;
    kvt_gpu_event_t e0, e1;
    assert_int_equal(kvt_gpu_stream_create(&s), KVT_OK);
    assert_int_equal(kvt_gpu_event_create(&e0), KVT_OK);
    assert_int_equal(kvt_gpu_event_create(&e1), KVT_OK);
    assert_int_equal(kvt_gpu_memset(d2, 0x5a, total, s), KVT_OK);
    assert_int_equal(kvt_gpu_event_record(e0, s), KVT_OK);
    assert_int_equal(kvt_gpu_copy_batch(dd1, chd, sizes, N, 0, s), KVT_OK);
    assert_int_equal(kvt_gpu_copy_batch(dd2, cdd1, sizes, N, 2, s), KVT_OK);
    assert_int_equal(kvt_gpu_copy_batch(hb, cdd2, sizes, N, 1, s), KVT_OK);
    assert_int_equal(kvt_gpu_event_record(e1, s), KVT_OK);
    float ms = -1.0f;
    assert_int_equal(kvt_gpu_event_elapsed_ms(e0, e1, &ms), KVT_OK);
    assert_true(ms >= 0.0f);
    assert_int_equal(kvt_gpu_stream_sync(s), KVT_OK);
    assert_memory_equal(src, back, total);
    printf("copy batch: %zu bytes in 7 copies x 3 directions, %.3f ms\n", total, (double)ms);
    /* memset + single copies */
    assert_int_equal(kvt_gpu_memset(d1, 0x11, 100, s), KVT_OK);
    assert_int_equal(kvt_gpu_d2d(d2, d1, 100, s), KVT_OK);
    assert_int_equal(kvt_gpu_d2h(back, d2, 100, s), KVT_OK);
    assert_int_equal(kvt_gpu_stream_sync(s), KVT_OK);
    for (int i = 0; i < 100; i++)
        assert_int_equal(back[i], 0x11);
    /* bad arguments */
    assert_int_equal(kvt_gpu_copy_batch(dd1, chd, sizes, N, 3, s), KVT_ERR_INVALID);
    assert_int_equal(kvt_gpu_copy_batch(NULL, chd, sizes, N, 0, s), KVT_ERR_INVALID);
    assert_int_equal(kvt_gpu_copy_batch(NULL, NULL, NULL, 0, 0, s), KVT_OK);
    /* out of memory is NOMEM, not a crash (compute-sanitizer reports the
     * failed call as an error: not under KVT_TEST_QUICK) */
    void *huge = NULL;
    if (!g_quick)
        assert_int_equal(kvt_gpu_malloc(&huge, (size_t)1 << 50, "test huge"), KVT_ERR_NOMEM);
    assert_null(huge);
    kvt_gpu_event_destroy(e0);
    kvt_gpu_event_destroy(e1);
    kvt_gpu_stream_destroy(s);
    kvt_gpu_free(d1);
    kvt_gpu_free(d2);
    kvt_gpu_host_unregister(back);
    free(back);
    kvt_gpu_host_free(src);
}

/* --- GEMM --- */

static void gemm_case(kvt_gpu_blas_t h, kvt_gpu_stream_t s, size_t rows, size_t in, size_t out, float beta)
{
    uint16_t *w = hmalloc(in * out * 2), *x = hmalloc(rows * in * 2);
    float *y0 = hmalloc(rows * out * 4), *y = hmalloc(rows * out * 4);
    for (size_t i = 0; i < in * out; i++)
        w[i] = kvt_ops_f32_to_bf16(frand(-1, 1));
    for (size_t i = 0; i < rows * in; i++)
        x[i] = kvt_ops_f32_to_bf16(frand(-2, 2));
    fill(y0, rows * out, -5, 5);
    uint16_t *dw = to_dev(w, in * out * 2), *dx = to_dev(x, rows * in * 2);
    float *dy = to_dev(y0, rows * out * 4);
    assert_int_equal(kvt_gpu_gemm_bf16(h, dw, dx, dy, rows, in, out, beta), KVT_OK);
    /* s is non-blocking: the legacy stream's copy does not wait for it */
    assert_int_equal(kvt_gpu_stream_sync(s), KVT_OK);
    from_dev(y, dy, rows * out * 4);
    double worst = 0.0;
    for (size_t r = 0; r < rows; r++)
        for (size_t o = 0; o < out; o++) {
            double acc = 0.0, mag = 0.0;
            for (size_t k = 0; k < in; k++) {
                double p = (double)bf(x[r * in + k]) * (double)bf(w[o * in + k]);
                acc += p;
                mag += fabs(p);
            }
            acc += (double)beta * (double)y0[r * out + o];
            mag += fabs((double)beta * (double)y0[r * out + o]);
            double err = fabs((double)y[r * out + o] - acc) / (mag + 1e-30);
            worst = err > worst ? err : worst;
            if (err > 1e-5) {
                fprintf(stderr, "gemm %zux%zux%zu: [%zu][%zu] got %g want %g\n", rows, in, out, r,
                        o, (double)y[r * out + o], acc);
                fail();
            }
        }
    printf("gemm rows=%zu in=%zu out=%zu beta=%g: worst error %.2e of sum |x w|\n", rows, in, out,
           (double)beta, worst);
    kvt_gpu_free(dw);
    kvt_gpu_free(dx);
    kvt_gpu_free(dy);
    free(w);
    free(x);
    free(y0);
    free(y);
}

static void test_gemm(void **state)
{
    (void)state;
    kvt_gpu_stream_t s;
    kvt_gpu_blas_t h;
    assert_int_equal(kvt_gpu_stream_create(&s), KVT_OK);
    assert_int_equal(kvt_gpu_blas_create(s, &h), KVT_OK);
    gemm_case(h, s, 1, 64, 96, 0.0f);
    gemm_case(h, s, 7, 129, 33, 1.0f);
    gemm_case(h, s, 33, 256, 520, 0.0f);
    gemm_case(h, s, 64, 2048, 256, 1.0f);
    assert_int_equal(kvt_gpu_gemm_bf16(h, NULL, NULL, NULL, 4, 8, 8, 0.5f), KVT_ERR_INVALID);
    assert_int_equal(kvt_gpu_gemm_bf16(h, NULL, NULL, NULL, 0, 8, 8, 0.0f), KVT_OK);
    kvt_gpu_blas_destroy(h);
    kvt_gpu_stream_destroy(s);
}

/* --- embed --- */

static void test_embed(void **state)
{
    (void)state;
    const size_t hiddens[] = {64, 100, 2048, 7};
    const size_t rowss[] = {1, 5, 17};
    const size_t vocab = 50;
    for (size_t a = 0; a < sizeof(hiddens) / sizeof(*hiddens); a++)
        for (size_t b = 0; b < sizeof(rowss) / sizeof(*rowss); b++) {
            size_t hidden = hiddens[a], rows = rowss[b];
            uint16_t *e = hmalloc(vocab * hidden * 2);
            uint32_t *tok = hmalloc(rows * 4);
            float *x = hmalloc(rows * hidden * 4), *xr = hmalloc(rows * hidden * 4);
            for (size_t i = 0; i < vocab * hidden; i++)
                e[i] = (uint16_t)rnd();
            for (size_t r = 0; r < rows; r++)
                tok[r] = (uint32_t)(rnd() % vocab);
            void *de = to_dev(e, vocab * hidden * 2), *dt = to_dev(tok, rows * 4);
            float *dx = dmalloc(rows * hidden * 4);
            assert_int_equal(kvt_k_embed(de, dt, rows, hidden, dx, NULL), KVT_OK);
            from_dev(x, dx, rows * hidden * 4);
            kvt_k_embed_ref(e, tok, rows, hidden, xr);
            assert_memory_equal(x, xr, rows * hidden * 4);
            kvt_gpu_free(de);
            kvt_gpu_free(dt);
            kvt_gpu_free(dx);
            free(e);
            free(tok);
            free(x);
            free(xr);
        }
}

/* --- rmsnorm --- */

static void test_rmsnorm(void **state)
{
    (void)state;
    const size_t dims[] = {64, 100, 1023, 4096, 3};
    const size_t rowss[] = {1, 3, 33};
    size_t total = 0, diff = 0;
    for (size_t a = 0; a < sizeof(dims) / sizeof(*dims); a++)
        for (size_t b = 0; b < sizeof(rowss) / sizeof(*rowss); b++) {
            size_t dim = dims[a], rows = rowss[b];
            float *x = hmalloc(rows * dim * 4), *w = hmalloc(dim * 4);
            uint16_t *o = hmalloc(rows * dim * 2), *orf = hmalloc(rows * dim * 2);
            fill(x, rows * dim, -3, 3);
            fill(w, dim, 0.5f, 1.5f);
            float *dxp = to_dev(x, rows * dim * 4), *dw = to_dev(w, dim * 4);
            uint16_t *dout = dmalloc(rows * dim * 2);
            assert_int_equal(kvt_k_rmsnorm(dxp, dw, rows, dim, 1e-5f, dout, NULL), KVT_OK);
            from_dev(o, dout, rows * dim * 2);
            kvt_k_rmsnorm_ref(x, w, rows, dim, 1e-5f, orf);
            diff += cmp_bf16(o, orf, rows * dim, "rmsnorm");
            total += rows * dim;
            /* the reference is engine/ops.c's rmsnorm, rounded to bf16 */
            float *y = hmalloc(dim * 4);
            kvt_ops_rmsnorm(y, x, w, dim, 1e-5f);
            for (size_t i = 0; i < dim; i++)
                assert_int_equal(kvt_ops_f32_to_bf16(y[i]), orf[i]);
            free(y);
            kvt_gpu_free(dxp);
            kvt_gpu_free(dw);
            kvt_gpu_free(dout);
            free(x);
            free(w);
            free(o);
            free(orf);
        }
    printf("rmsnorm: %zu of %zu bf16 outputs differ from the reference\n", diff, total);
    assert_true(diff * 1000 <= total);
    assert_int_equal(kvt_k_rmsnorm(NULL, NULL, 1, 0, 1e-5f, NULL, NULL), KVT_ERR_INVALID);
}

/* --- qkv + RoPE + KV store --- */

typedef struct {
    uint32_t n_heads, n_kv, hd;
    bool f32, bias, llama3;
    size_t rows;
} rope_case_t;

static void inv_freq_for(const rope_case_t *c, float *inv)
{
    kvt_model_config_t cfg = {.head_dim = c->hd, .rope_theta = c->llama3 ? 500000.0f : 10000.0f};
    if (c->llama3) {
        cfg.rope_scaling = KVT_ROPE_LLAMA3;
        cfg.rope_factor = 32.0f;
        cfg.rope_low_freq_factor = 1.0f;
        cfg.rope_high_freq_factor = 4.0f;
        cfg.rope_orig_max_pos = 8192;
    }
    kvt_ops_rope_inv_freq(&cfg, inv);
}

static void rope_case(const rope_case_t *c)
{
    const uint32_t B = 16, n_layers = 3, n_slots = 9, layer = 1 + (uint32_t)(rnd() % 2);
    size_t hd = c->hd, half = hd / 2, q_dim = c->n_heads * hd, kv_dim = c->n_kv * hd;
    size_t width = q_dim + 2 * kv_dim, rows = c->rows, esz = c->f32 ? 4 : 2;
    size_t slot_bytes = (size_t)n_layers * 2 * B * kv_dim * esz;
    float *qkv = hmalloc(rows * width * 4), *bias = hmalloc(width * 4), *inv = hmalloc(half * 4);
    uint32_t *pos = hmalloc(rows * 4), *slot = hmalloc(rows * 4), *tok = hmalloc(rows * 4);
    uint16_t *q = hmalloc(rows * q_dim * 2), *qr = hmalloc(rows * q_dim * 2);
    uint8_t *pool = hmalloc(n_slots * slot_bytes), *poolr = hmalloc(n_slots * slot_bytes);
    fill(qkv, rows * width, -4, 4);
    fill(bias, width, -1, 1);
    inv_freq_for(c, inv);
    /* distinct (slot, token) per row: a permutation of the pool's cells */
    uint32_t cells = n_slots * B;
    uint32_t *perm = hmalloc(cells * 4);
    for (uint32_t i = 0; i < cells; i++)
        perm[i] = i;
    for (uint32_t i = cells - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % (i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    assert_true(rows <= cells);
    for (size_t r = 0; r < rows; r++) {
        slot[r] = perm[r] / B;
        tok[r] = perm[r] % B;
        pos[r] = r % 3 == 0 ? (uint32_t)(rnd() % 131072) : tok[r] + B * (uint32_t)(rnd() % 64);
    }
    for (size_t i = 0; i < n_slots * slot_bytes; i++)
        pool[i] = (uint8_t)rnd();
    memcpy(poolr, pool, n_slots * slot_bytes);
    float *dqkv = to_dev(qkv, rows * width * 4), *db = to_dev(bias, width * 4);
    float *dinv = to_dev(inv, half * 4);
    uint32_t *dpos = to_dev(pos, rows * 4), *dslot = to_dev(slot, rows * 4);
    uint32_t *dtok = to_dev(tok, rows * 4);
    uint16_t *dq = dmalloc(rows * q_dim * 2);
    void *dpool = to_dev(pool, n_slots * slot_bytes);
    kvt_k_kv_t kv = {.base = dpool, .slot_bytes = slot_bytes, .block_tokens = B,
                     .n_layers = n_layers, .n_kv_heads = c->n_kv, .head_dim = c->hd,
                     .f32 = c->f32};
    assert_int_equal(kvt_k_qkv_rope_store(dqkv, c->bias ? db : NULL, dpos, dinv, c->n_heads, &kv,
                                          layer, dslot, dtok, rows, dq, NULL),
                     KVT_OK);
    from_dev(q, dq, rows * q_dim * 2);
    from_dev(pool, dpool, n_slots * slot_bytes);
    kvt_k_kv_t kvr = kv;
    kvr.base = poolr;
    kvt_k_qkv_rope_store_ref(qkv, c->bias ? bias : NULL, pos, inv, c->n_heads, &kvr, layer, slot,
                             tok, rows, qr);
    size_t dq_n = cmp_bf16(q, qr, rows * q_dim, "rope q");
    if (c->f32) {
        assert_memory_equal(pool, poolr, n_slots * slot_bytes);
    } else {
        size_t dk = cmp_bf16((uint16_t *)pool, (uint16_t *)poolr, n_slots * slot_bytes / 2,
                             "rope kv bf16");
        assert_int_equal(dk, 0); /* the same f32 values, the same rounding */
    }
    assert_true(dq_n * 1000 <= rows * q_dim);
    /* the reference is engine/ops.c's RoPE: row 0's q heads, bitwise */
    float *cs = hmalloc(half * 4), *sn = hmalloc(half * 4), *v = hmalloc(width * 4);
    for (size_t i = 0; i < width; i++)
        v[i] = qkv[i] + (c->bias ? bias[i] : 0.0f);
    if (!c->bias)
        memcpy(v, qkv, width * 4);
    kvt_ops_rope_cos_sin(inv, half, pos[0], cs, sn);
    kvt_ops_rope(v, c->n_heads, hd, cs, sn);
    for (size_t i = 0; i < q_dim; i++)
        assert_int_equal(kvt_ops_f32_to_bf16(v[i]), qr[i]);
    free(cs);
    free(sn);
    free(v);
    kvt_gpu_free(dqkv);
    kvt_gpu_free(db);
    kvt_gpu_free(dinv);
    kvt_gpu_free(dpos);
    kvt_gpu_free(dslot);
    kvt_gpu_free(dtok);
    kvt_gpu_free(dq);
    kvt_gpu_free(dpool);
    free(qkv);
    free(bias);
    free(inv);
    free(pos);
    free(slot);
    free(tok);
    free(q);
    free(qr);
    free(pool);
    free(poolr);
    free(perm);
}

static void test_qkv_rope_store(void **state)
{
    (void)state;
    const rope_case_t cases[] = {
        {4, 4, 64, true, false, false, 1},   {4, 4, 64, false, true, false, 7},
        {8, 2, 128, true, true, true, 33},   {8, 2, 128, false, false, true, 100},
        {6, 2, 64, true, true, false, 13},   {12, 4, 64, false, true, true, 5},
        {3, 1, 36, true, true, false, 9},    {3, 1, 36, false, false, true, 11},
        {32, 8, 128, true, false, true, 64}, {28, 4, 128, false, true, false, 17},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++)
        rope_case(&cases[i]);
    kvt_k_kv_t kv = {.base = (void *)16, .slot_bytes = 64, .block_tokens = 16, .n_layers = 1,
                     .n_kv_heads = 3, .head_dim = 64};
    uint32_t one = 0;
    float f = 0;
    uint16_t h = 0;
    /* 4 query heads over 3 kv heads: rejected before any launch */
    assert_int_equal(kvt_k_qkv_rope_store(&f, NULL, &one, &f, 4, &kv, 0, &one, &one, 1, &h, NULL),
                     KVT_ERR_INVALID);
}

/* --- swiglu --- */

static void test_swiglu(void **state)
{
    (void)state;
    const size_t inters[] = {64, 100, 11008, 37};
    const size_t rowss[] = {1, 4, 9};
    size_t total = 0, diff = 0;
    kvt_ops_force_generic(true); /* engine/ops.c's portable expf path */
    for (size_t a = 0; a < sizeof(inters) / sizeof(*inters); a++)
        for (size_t b = 0; b < sizeof(rowss) / sizeof(*rowss); b++) {
            size_t inter = inters[a], rows = rowss[b];
            float *gu = hmalloc(rows * 2 * inter * 4);
            uint16_t *o = hmalloc(rows * inter * 2), *orf = hmalloc(rows * inter * 2);
            fill(gu, rows * 2 * inter, -20, 20);
            float *dgu = to_dev(gu, rows * 2 * inter * 4);
            uint16_t *dout = dmalloc(rows * inter * 2);
            assert_int_equal(kvt_k_swiglu(dgu, rows, inter, dout, NULL), KVT_OK);
            from_dev(o, dout, rows * inter * 2);
            kvt_k_swiglu_ref(gu, rows, inter, orf);
            diff += cmp_bf16(o, orf, rows * inter, "swiglu");
            total += rows * inter;
            float *g = hmalloc(inter * 4);
            memcpy(g, gu, inter * 4);
            kvt_ops_silu_mul(g, gu + inter, inter);
            for (size_t i = 0; i < inter; i++)
                assert_int_equal(kvt_ops_f32_to_bf16(g[i]), orf[i]);
            free(g);
            kvt_gpu_free(dgu);
            kvt_gpu_free(dout);
            free(gu);
            free(o);
            free(orf);
        }
    kvt_ops_force_generic(false);
    printf("swiglu: %zu of %zu bf16 outputs differ from the reference\n", diff, total);
    assert_true(diff * 100 <= total);
}

/* --- gather, to_bf16 --- */

static void test_gather_to_bf16(void **state)
{
    (void)state;
    const size_t dims[] = {64, 4097, 3};
    for (size_t a = 0; a < 3; a++) {
        size_t dim = dims[a], src_rows = 40, n = 23;
        float *src = hmalloc(src_rows * dim * 4), *dst = hmalloc(n * dim * 4);
        uint32_t *idx = hmalloc(n * 4);
        fill(src, src_rows * dim, -1, 1);
        for (size_t i = 0; i < n; i++)
            idx[i] = (uint32_t)(rnd() % src_rows);
        float *ds = to_dev(src, src_rows * dim * 4), *dd = dmalloc(n * dim * 4);
        uint32_t *di = to_dev(idx, n * 4);
        assert_int_equal(kvt_k_gather_rows(ds, di, n, dim, dd, NULL), KVT_OK);
        from_dev(dst, dd, n * dim * 4);
        for (size_t i = 0; i < n; i++)
            assert_memory_equal(dst + i * dim, src + (size_t)idx[i] * dim, dim * 4);
        kvt_gpu_free(ds);
        kvt_gpu_free(dd);
        kvt_gpu_free(di);
        free(src);
        free(dst);
        free(idx);
    }
    /* to_bf16: special values, odd n, an unaligned start (scalar path) */
    const size_t ns[] = {1, 5, 1000, 65539};
    for (size_t a = 0; a < 4; a++) {
        size_t n = ns[a];
        float *x = hmalloc((n + 1) * 4);
        uint16_t *o = hmalloc((n + 1) * 2);
        fill(x, n + 1, -1e3f, 1e3f);
        const float special[] = {NAN, -NAN, INFINITY, -INFINITY, -0.0f, 0.0f, 1e-40f,
                                 3.3895314e38f, 1.00390625f, 1.01171875f};
        for (size_t i = 0; i < sizeof(special) / sizeof(*special) && i < n + 1; i++)
            x[(i * 7919) % (n + 1)] = special[i];
        float *dx = to_dev(x, (n + 1) * 4);
        uint16_t *dout = dmalloc((n + 1) * 2);
        for (int shift = 0; shift < 2; shift++) {
            assert_int_equal(kvt_k_to_bf16(dx + shift, n, dout + shift, NULL), KVT_OK);
            from_dev(o, dout, (n + 1) * 2);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(o[i + shift], kvt_ops_f32_to_bf16(x[i + shift]));
        }
        kvt_gpu_free(dx);
        kvt_gpu_free(dout);
        free(x);
        free(o);
    }
}

/* --- sampling --- */

static uint32_t ref1(const float *l, uint32_t vocab, float t, uint32_t k, float p, float u)
{
    uint32_t tok;
    kvt_k_sample_ref(l, 1, vocab, t, k, p, &u, &tok);
    return tok;
}

/* The reference on cases worked out by hand, and against engine/sample.c
 * where no draw is involved. */
static void test_sample_ref(void **state)
{
    (void)state;
    /* p = exp(l - 3) = {e^-2, 1, 1, e^-1}, total ~2.503 */
    const float l[4] = {1.0f, 3.0f, 3.0f, 2.0f};
    assert_int_equal(ref1(l, 4, 0.0f, 0, 1.0f, 0.5f), 1);  /* greedy: lowest id of the tie */
    assert_int_equal(ref1(l, 4, 1.0f, 1, 1.0f, 0.99f), 1); /* top_k 1 */
    assert_int_equal(ref1(l, 4, 1.0f, 0, 1.0f, 0.0f), 0);  /* id order: 0 first */
    assert_int_equal(ref1(l, 4, 1.0f, 0, 1.0f, 0.5f), 2);  /* 1.2516: 0.135, 1.135, 2.135 */
    assert_int_equal(ref1(l, 4, 1.0f, 0, 1.0f, 0.96f), 3); /* 2.403 > 2.135 */
    /* top_k 2: sorted (3,1), (3,2); mass 2 */
    assert_int_equal(ref1(l, 4, 1.0f, 2, 1.0f, 0.4f), 1);
    assert_int_equal(ref1(l, 4, 1.0f, 2, 1.0f, 0.6f), 2);
    /* top_k 3 sorted: 1, 2, 3; u = 0.9 of 2.368 = 2.131 -> id 3 */
    assert_int_equal(ref1(l, 4, 1.0f, 3, 1.0f, 0.9f), 3);
    /* top_p 0.5: want 1.2516; kept 1, 2 (mass 2); u 0.9 -> 1.8 -> id 2 */
    assert_int_equal(ref1(l, 4, 1.0f, 0, 0.5f, 0.9f), 2);
    /* top_p 0.3: want 0.75; kept only id 1 */
    assert_int_equal(ref1(l, 4, 1.0f, 0, 0.3f, 0.99f), 1);
    /* sorted order with top_k >= vocab: 1, 2, 3, 0 */
    assert_int_equal(ref1(l, 4, 1.0f, 10, 1.0f, 0.0f), 1);
    assert_int_equal(ref1(l, 4, 1.0f, 10, 1.0f, 0.99f), 0);
    /* temperature 2: p = exp((l - 3) / 2) = {e^-1, 1, 1, e^-0.5}, total 2.974 */
    assert_int_equal(ref1(l, 4, 2.0f, 0, 1.0f, 0.1f), 0); /* 0.297 < 0.368 */
    assert_int_equal(ref1(l, 4, 2.0f, 0, 1.0f, 0.2f), 1); /* 0.595 */
    /* NaN never wins; a NaN is a -inf candidate */
    const float m[4] = {NAN, -INFINITY, 5.0f, NAN};
    assert_int_equal(ref1(m, 4, 0.0f, 0, 1.0f, 0.0f), 2);
    assert_int_equal(ref1(m, 4, 1.0f, 0, 1.0f, 0.999f), 2);
    assert_int_equal(ref1(m, 4, 1.0f, 3, 0.9f, 0.999f), 2);
    const float all_bad[3] = {NAN, -INFINITY, NAN};
    assert_int_equal(ref1(all_bad, 3, 1.0f, 0, 1.0f, 0.5f), 0);
    const float inf[3] = {1.0f, INFINITY, INFINITY};
    assert_int_equal(ref1(inf, 3, 1.0f, 0, 1.0f, 0.5f), 1);
    /* logit / temperature overflows: greedy, as engine/sample.c */
    const float huge[3] = {3e38f, 3e38f, 5.0f};
    assert_int_equal(ref1(huge, 3, 0.5f, 0, 1.0f, 0.99f), 0);
    assert_int_equal(ref1(huge, 3, 0.5f, 2, 0.5f, 0.99f), 0);
    {
        kvt_sample_params_t hp = {.temperature = 0.5f, .top_p = 1.0f, .seed = 9};
        kvt_sampler_t s;
        assert_int_equal(kvt_sampler_init(&s, &hp, 3), KVT_OK);
        assert_int_equal(kvt_sampler_next(&s, huge), 0);
        kvt_sampler_cleanup(&s);
    }
    /* against engine/sample.c: greedy, top_k 1, tiny top_p all = argmax */
    float big[1000];
    for (int i = 0; i < 1000; i++)
        big[i] = (float)((i * 37) % 1000) * 0.01f - 3.0f;
    big[500] = 7.0f;
    big[501] = 7.0f;
    const kvt_sample_params_t ps[3] = {{.temperature = 0.0f, .top_p = 1.0f},
                                       {.temperature = 0.8f, .top_k = 1, .top_p = 1.0f},
                                       {.temperature = 0.8f, .top_p = 1e-7f}};
    for (int i = 0; i < 3; i++) {
        kvt_sampler_t s;
        assert_int_equal(kvt_sampler_init(&s, &ps[i], 1000), KVT_OK);
        uint32_t t = kvt_sampler_next(&s, big);
        kvt_sampler_cleanup(&s);
        assert_int_equal(t, 500);
        assert_int_equal(ref1(big, 1000, ps[i].temperature, ps[i].top_k, ps[i].top_p, 0.7f), 500);
    }
}

typedef struct {
    float t;
    uint32_t k;
    float p;
} sparams_t;

/* Random logits for `rows` rows: peaked (scale), sometimes quantised into
 * ties, with NaN / -inf / +inf sprinkled in, and one all -inf row. */
static void make_logits(float *l, size_t rows, uint32_t vocab, int flavour)
{
    for (size_t r = 0; r < rows; r++) {
        float *row = l + r * vocab;
        float scale = flavour == 0 ? 2.0f : flavour == 1 ? 8.0f : 0.5f;
        for (uint32_t i = 0; i < vocab; i++) {
            float x = frand(-scale, scale) + frand(-scale, scale);
            if (flavour == 1)
                x = roundf(x * 2.0f) / 2.0f; /* many exact ties */
            row[i] = x;
        }
        if (vocab > 10 && r % 3 == 1) {
            row[rnd() % vocab] = NAN;
            row[rnd() % vocab] = -INFINITY;
        }
        if (vocab > 10 && r % 7 == 5)
            row[rnd() % vocab] = -0.0f;
    }
    if (rows > 4) {
        for (uint32_t i = 0; i < vocab; i++)
            l[3 * vocab + i] = -INFINITY; /* all -inf: token 0 */
        l[4 * vocab + vocab / 2] = INFINITY; /* +inf max: greedy */
    }
    if (rows > 5)
        l[5 * vocab + vocab / 3] = 3e38f; /* overflows below temperature ~1.13 */
}

static void sample_case(uint32_t vocab, size_t rows, const sparams_t *sp, int flavour,
                        bool timing)
{
    float *l = hmalloc(rows * vocab * 4), *u = hmalloc(rows * 4);
    uint32_t *tok = hmalloc(rows * 4), *tref = hmalloc(rows * 4);
    make_logits(l, rows, vocab, flavour);
    for (size_t r = 0; r < rows; r++)
        u[r] = frand(0.0f, 1.0f);
    if (rows > 2)
        u[1] = 0.0f, u[2] = 0.99999994f;
    float *dl = to_dev(l, rows * vocab * 4), *du = to_dev(u, rows * 4);
    uint32_t *dt = dmalloc(rows * 4);
    assert_int_equal(kvt_k_sample(dl, rows, vocab, sp->t, sp->k, sp->p, du, dt, NULL), KVT_OK);
    from_dev(tok, dt, rows * 4);
    kvt_k_sample_ref(l, rows, vocab, sp->t, sp->k, sp->p, u, tref);
    for (size_t r = 0; r < rows; r++)
        if (tok[r] != tref[r]) {
            fprintf(stderr, "sample vocab=%u t=%g k=%u p=%g flavour=%d row %zu: gpu %u ref %u\n",
                    vocab, (double)sp->t, sp->k, (double)sp->p, flavour, r, tok[r], tref[r]);
            fail();
        }
    if (timing) {
        kvt_gpu_event_t e0, e1;
        assert_int_equal(kvt_gpu_event_create(&e0), KVT_OK);
        assert_int_equal(kvt_gpu_event_create(&e1), KVT_OK);
        assert_int_equal(kvt_gpu_event_record(e0, NULL), KVT_OK);
        for (int i = 0; i < 10; i++)
            assert_int_equal(kvt_k_sample(dl, rows, vocab, sp->t, sp->k, sp->p, du, dt, NULL),
                             KVT_OK);
        assert_int_equal(kvt_gpu_event_record(e1, NULL), KVT_OK);
        float ms = 0;
        assert_int_equal(kvt_gpu_event_elapsed_ms(e0, e1, &ms), KVT_OK);
        printf("sample rows=%zu vocab=%u t=%g top_k=%u top_p=%g: %.1f us/call\n", rows, vocab,
               (double)sp->t, sp->k, (double)sp->p, (double)ms * 100.0);
        kvt_gpu_event_destroy(e0);
        kvt_gpu_event_destroy(e1);
    }
    kvt_gpu_free(dl);
    kvt_gpu_free(du);
    kvt_gpu_free(dt);
    free(l);
    free(u);
    free(tok);
    free(tref);
}

static void test_sample(void **state)
{
    (void)state;
    const sparams_t sps[] = {
        {0.0f, 0, 1.0f},  {0.7f, 0, 1.0f},   {1.0f, 1, 1.0f},   {1.0f, 40, 1.0f},
        {0.8f, 50, 0.9f}, {1.0f, 0, 0.95f},  {1.3f, 0, 0.3f},   {0.6f, 100000, 1.0f},
        {1.0f, 0, 0.01f}, {2.0f, 7, 0.999f},  {0.9f, 2, 1.0f},   {1.0f, 2048, 0.9f},
        {1.0f, 2049, 1.0f}, {1.0f, 999, 1.0f},
    };
    const uint32_t vocabs[] = {1, 7, 1000, 4099, 50257, 151936};
    for (size_t v = 0; v < sizeof(vocabs) / sizeof(*vocabs); v++)
        for (size_t i = 0; i < sizeof(sps) / sizeof(*sps); i++)
            for (int flavour = 0; flavour < (g_quick ? 1 : 3); flavour++) {
                size_t rows = vocabs[v] > 50000 ? 6 : 9;
                sample_case(vocabs[v], rows, &sps[i], flavour, false);
            }
    /* more rows than one grid dimension holds (65535) */
    const sparams_t many[] = {{0.0f, 0, 1.0f}, {1.0f, 0, 1.0f}, {1.0f, 3, 1.0f}, {1.0f, 0, 0.7f}};
    for (size_t i = 0; i < sizeof(many) / sizeof(*many); i++)
        sample_case(7, 70000, &many[i], 0, false);
    /* decode-sized batches, with timings */
    for (size_t i = 0; g_quick && i < 4; i++) {
        const sparams_t q = {i == 0 ? 0.0f : 0.8f, i == 2 ? 50 : 0, i == 3 ? 0.95f : 1.0f};
        sample_case(128256, 3, &q, 0, false);
    }
    const sparams_t timed[] = {{0.0f, 0, 1.0f}, {0.8f, 0, 1.0f}, {0.8f, 50, 1.0f},
                               {0.8f, 0, 0.95f}};
    for (size_t i = 0; !g_quick && i < sizeof(timed) / sizeof(*timed); i++) {
        sample_case(128256, 1, &timed[i], 0, true);
        sample_case(128256, 64, &timed[i], 0, true);
    }
    uint32_t t;
    float u = 0.5f, x = 0.0f;
    assert_int_equal(kvt_k_sample(&x, 1, 1, 1.0f, 0, 0.0f, &u, &t, NULL), KVT_ERR_INVALID);
    assert_int_equal(kvt_k_sample(&x, 1, 1, -1.0f, 0, 1.0f, &u, &t, NULL), KVT_ERR_INVALID);
    assert_int_equal(kvt_k_sample(&x, 1, 0, 1.0f, 0, 1.0f, &u, &t, NULL), KVT_ERR_INVALID);
    assert_int_equal(kvt_k_sample(&x, 1, 4, 1.0f, 0, 1.0f, NULL, &t, NULL), KVT_ERR_INVALID);
}

/* --- timings of the element-wise kernels (informative) --- */

static void test_timings(void **state)
{
    (void)state;
    if (g_quick)
        return;
    const size_t rows = 4096, hidden = 4096, inter = 14336;
    float *dx = dmalloc(rows * 2 * inter * 4), *dw = dmalloc(hidden * 4);
    uint16_t *dout = dmalloc(rows * inter * 2);
    assert_int_equal(kvt_gpu_memset(dx, 0x3c, rows * 2 * inter * 4, NULL), KVT_OK);
    assert_int_equal(kvt_gpu_memset(dw, 0x3c, hidden * 4, NULL), KVT_OK);
    kvt_gpu_event_t e0, e1;
    assert_int_equal(kvt_gpu_event_create(&e0), KVT_OK);
    assert_int_equal(kvt_gpu_event_create(&e1), KVT_OK);
    float ms;
    for (int k = 0; k < 2; k++) {
        assert_int_equal(kvt_gpu_event_record(e0, NULL), KVT_OK);
        for (int i = 0; i < 10; i++) {
            if (k == 0)
                assert_int_equal(kvt_k_rmsnorm(dx, dw, rows, hidden, 1e-5f, dout, NULL), KVT_OK);
            else
                assert_int_equal(kvt_k_swiglu(dx, rows, inter, dout, NULL), KVT_OK);
        }
        assert_int_equal(kvt_gpu_event_record(e1, NULL), KVT_OK);
        assert_int_equal(kvt_gpu_event_elapsed_ms(e0, e1, &ms), KVT_OK);
        double bytes = k == 0 ? (double)rows * hidden * 6 : (double)rows * inter * 10;
        printf("%s rows=%zu: %.1f us, %.0f GB/s\n", k == 0 ? "rmsnorm hidden=4096" :
               "swiglu inter=14336", rows, (double)ms * 100.0, bytes / ((double)ms * 1e-4) / 1e9);
    }
    kvt_gpu_event_destroy(e0);
    kvt_gpu_event_destroy(e1);
    kvt_gpu_free(dx);
    kvt_gpu_free(dw);
    kvt_gpu_free(dout);
}

int main(void)
{
    if (kvt_gpu_device_count() == 0) {
        printf("test_kernels: no GPU, skipped\n");
        return 77;
    }
    g_quick = getenv("KVT_TEST_QUICK") != NULL;
    const char *seed = getenv("KVT_TEST_SEED");
    if (seed)
        g_rng = strtoull(seed, NULL, 0);
    printf("seed 0x%llx\n", (unsigned long long)g_rng);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device),     cmocka_unit_test(test_copies),
        cmocka_unit_test(test_gemm),       cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm),    cmocka_unit_test(test_qkv_rope_store),
        cmocka_unit_test(test_swiglu),     cmocka_unit_test(test_gather_to_bf16),
        cmocka_unit_test(test_sample_ref), cmocka_unit_test(test_sample),
        cmocka_unit_test(test_timings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
