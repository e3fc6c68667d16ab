/* GPU references of `kvtier bench engine` (engine/device.h): the cuBLAS
 * bf16 product the engine's projections use, and copy bandwidths.  Timed
 * with CUDA events on one stream after a warm-up; the best of 3 runs.
 * Compiled only when CUDA is built in; device.c routes to it. */
#include "engine/gpu_engineInt.h"

#include "common/alloc.h"
#include "common/log.h"

#include <string.h>

typedef struct {
    kvt_gpu_stream_t s;
    kvt_gpu_event_t a, b;
} timer_t_;

static kvt_status_t timer_open(timer_t_ *t)
{
    memset(t, 0, sizeof(*t));
    kvt_status_t st = kvt_gpu_stream_create(&t->s);
    if (st == KVT_OK)
        st = kvt_gpu_event_create(&t->a);
    if (st == KVT_OK)
        st = kvt_gpu_event_create(&t->b);
    return st;
}

static void timer_close(timer_t_ *t)
{
    if (t->s)
        (void)kvt_gpu_stream_sync(t->s);
    if (t->a)
        kvt_gpu_event_destroy(t->a);
    if (t->b)
        kvt_gpu_event_destroy(t->b);
    if (t->s)
        kvt_gpu_stream_destroy(t->s);
}

/* Small random bf16 values (|x| < 1/8), so products stay finite. */
static kvt_status_t fill_bf16(uint16_t *dev, size_t n, uint64_t seed, kvt_gpu_stream_t s)
{
    size_t chunk = (size_t)1 << 22;
    uint16_t *h = NULL;
    kvt_status_t st = kvt_gpu_host_alloc((void **)&h, chunk * 2, "bench fill");
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n && st == KVT_OK; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        st = kvt_gpu_stream_sync(s);
        for (size_t j = 0; j < k; j++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            /* sign, exponent 2^-4 .. 2^-11, 7 random mantissa bits */
            h[j] = (uint16_t)(((x >> 63) << 15) | ((123u - (x >> 60 & 7)) << 7) | (x & 0x7f));
        }
        if (st == KVT_OK)
            st = kvt_gpu_h2d(dev + i, h, k * 2, s);
    }
    if (h) {
        (void)kvt_gpu_stream_sync(s);
        kvt_gpu_host_free(h);
    }
    return st;
}

static kvt_status_t time_gemm(kvt_gpu_blas_t h, const uint16_t *w, const uint16_t *x, float *y,
                              size_t m, size_t k, size_t n, unsigned reps, timer_t_ *t,
                              float *ms_p)
{
    kvt_status_t st = kvt_gpu_event_record(t->a, t->s);
    for (unsigned r = 0; r < reps && st == KVT_OK; r++)
        st = kvt_gpu_gemm_bf16(h, w, x, y, m, k, n, 0.0f);
    if (st == KVT_OK)
        st = kvt_gpu_event_record(t->b, t->s);
    if (st == KVT_OK)
        st = kvt_gpu_event_elapsed_ms(t->a, t->b, ms_p);
    return st;
}

kvt_status_t kvt_gpu_ref_gemm(int dev, size_t m, size_t k, size_t n, double *tflops_p)
{
    uint16_t *w = NULL, *x = NULL;
    float *y = NULL;
    kvt_gpu_blas_t h = NULL;
    timer_t_ t = {0};
    double best = 0, flop = 2.0 * (double)m * (double)k * (double)n;
    kvt_status_t st = kvt_gpu_use(dev);
    if (st == KVT_OK)
        st = timer_open(&t);
    if (st == KVT_OK)
        st = kvt_gpu_blas_create(t.s, &h);
    if (st == KVT_OK)
        st = kvt_gpu_malloc((void **)&w, n * k * 2, "bench gemm w");
    if (st == KVT_OK)
        st = kvt_gpu_malloc((void **)&x, m * k * 2, "bench gemm x");
    if (st == KVT_OK)
        st = kvt_gpu_malloc((void **)&y, m * n * 4, "bench gemm y");
    if (st == KVT_OK)
        st = fill_bf16(w, n * k, 1, t.s);
    if (st == KVT_OK)
        st = fill_bf16(x, m * k, 2, t.s);
    /* Warm up, size a run to >= ~50 ms, then keep the best of 3. */
    for (int i = 0; i < 3 && st == KVT_OK; i++)
        st = kvt_gpu_gemm_bf16(h, w, x, y, m, k, n, 0.0f);
    unsigned reps = 1;
    float ms = 0;
    while (st == KVT_OK) {
        st = time_gemm(h, w, x, y, m, k, n, reps, &t, &ms);
        if (st != KVT_OK || ms >= 50.0f || reps >= (1u << 16))
            break;
        reps = ms > 1.0f ? (unsigned)((float)reps * 60.0f / ms) + 1 : reps * 16;
    }
    for (int run = 0; run < 3 && st == KVT_OK; run++) {
        st = time_gemm(h, w, x, y, m, k, n, reps, &t, &ms);
        double tf = ms > 0 ? flop * reps / (ms * 1e-3) / 1e12 : 0;
        best = tf > best ? tf : best;
    }
    if (h)
        kvt_gpu_blas_destroy(h);
    timer_close(&t);
    kvt_gpu_free(w);
    kvt_gpu_free(x);
    kvt_gpu_free(y);
    if (st == KVT_OK)
        *tflops_p = best;
    return st;
}

typedef enum { C_D2D, C_H2D, C_D2H } copy_kind_t;

/* GB/s of `bytes` moved in pieces of `piece` (rotating through the
 * buffers), best of 3 after one warm-up run. */
static kvt_status_t copy_rate(copy_kind_t kind, uint8_t *d0, uint8_t *d1, size_t dlen,
                              uint8_t *host, size_t piece, size_t bytes, timer_t_ *t,
                              double *gbs_p)
{
    double best = 0;
    kvt_status_t st = KVT_OK;
    for (int run = 0; run < 4 && st == KVT_OK; run++) {
        float ms = 0;
        st = kvt_gpu_event_record(t->a, t->s);
        for (size_t done = 0, at = 0; done < bytes && st == KVT_OK; done += piece) {
            size_t k = bytes - done < piece ? bytes - done : piece;
            if (at + k > dlen)
                at = 0;
            if (kind == C_D2D)
                st = kvt_gpu_d2d(d1 + at, d0 + at, k, t->s);
            else if (kind == C_H2D)
                st = kvt_gpu_h2d(d0 + at, host, k, t->s);
            else
                st = kvt_gpu_d2h(host, d0 + at, k, t->s);
            at += k;
        }
        if (st == KVT_OK)
            st = kvt_gpu_event_record(t->b, t->s);
        if (st == KVT_OK)
            st = kvt_gpu_event_elapsed_ms(t->a, t->b, &ms);
        double gbs = ms > 0 ? (double)bytes / (ms * 1e-3) / 1e9 : 0;
        if (run > 0 && gbs > best)
            best = gbs;
    }
    *gbs_p = kind == C_D2D ? 2 * best : best;
    return st;
}

kvt_status_t kvt_gpu_ref_copy(int dev, size_t bytes, size_t piece, kvt_device_copy_ref_t *ref_p)
{
    size_t dlen = bytes < (1ull << 30) ? bytes : (1ull << 30);
    piece = piece == 0 || piece > dlen ? dlen : piece;
    uint8_t *d0 = NULL, *d1 = NULL, *host = NULL;
    timer_t_ t = {0};
    kvt_device_copy_ref_t r = {0};
    kvt_status_t st = kvt_gpu_use(dev);
    if (st == KVT_OK)
        st = timer_open(&t);
    if (st == KVT_OK)
        st = kvt_gpu_malloc((void **)&d0, dlen, "bench copy a");
    if (st == KVT_OK)
        st = kvt_gpu_malloc((void **)&d1, dlen, "bench copy b");
    if (st == KVT_OK)
        st = kvt_gpu_host_alloc((void **)&host, piece, "bench copy host");
    if (st == KVT_OK)
        memset(host, 0x5a, piece);
    if (st == KVT_OK)
        st = kvt_gpu_memset(d0, 0x3c, dlen, t.s);
    if (st == KVT_OK)
        st = copy_rate(C_D2D, d0, d1, dlen, host, dlen, bytes, &t, &r.d2d_gbs);
    if (st == KVT_OK)
        st = copy_rate(C_H2D, d0, d1, dlen, host, piece, bytes, &t, &r.h2d_gbs);
    if (st == KVT_OK)
        st = copy_rate(C_D2H, d0, d1, dlen, host, piece, bytes, &t, &r.d2h_gbs);
    timer_close(&t);
    kvt_gpu_free(d0);
    kvt_gpu_free(d1);
    if (host)
        kvt_gpu_host_free(host);
    if (st == KVT_OK)
        *ref_p = r;
    return st;
}
