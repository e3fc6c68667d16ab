/* Numeric kernels of the CPU forward pass; see ops.h.
 *
 * The matmul is the "dot product" form on nn.Linear weights as stored
 * ([out][in], no repacking, so the model's f32 weights are used in place):
 * a tile of up to 4 rows x 6 output features keeps 24 accumulators in
 * registers, so each weight vector loaded serves 4 rows and each input
 * vector 6 outputs (4 x 6 measured ~8% faster than 4 x 4 here).  Every accumulator is one output's dot product in 16
 * lanes -- the tile shape changes which dot products run side by side,
 * never the operations inside one, which is what makes results independent
 * of the row count.  The k tail is a zero-masked load (adding +0 leaves a
 * lane unchanged), so there is no scalar tail with its own rounding.
 *
 * Cache blocking: a work item is a run of output tiles; it walks the rows
 * in blocks of ~256 KiB of input (L2), and for each block keeps one weight
 * tile (6 x in floats, L1) hot while the rows stream past it.
 *
 * The project compiles in ISO C mode (-std=c11), where gcc does not
 * contract a*b+c into FMA, so the portable code rounds every operation; the
 * AVX-512 kernel uses FMA explicitly.  Element-wise ops are plain C. */
#include "engine/ops.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

typedef void (*tile_fn_t)(const float *const *xr, uint32_t R, const float *w, size_t ldw,
                          uint32_t C, size_t n, float *y, size_t ldy);

/* --- portable kernel: 16 lanes, pairwise tree (same shape as AVX-512) --- */

static float dot_generic(const float *x, const float *w, size_t n)
{
    float acc[16] = {0};
    size_t k = 0;
    for (; k + 16 <= n; k += 16)
        for (int l = 0; l < 16; l++)
            acc[l] += x[k + l] * w[k + l];
    for (size_t l = 0; k + l < n; l++)
        acc[l] += x[k + l] * w[k + l];
    for (int s = 8; s >= 1; s >>= 1)
        for (int l = 0; l < s; l++)
            acc[l] += acc[l + s];
    return acc[0];
}

static void tile_generic(const float *const *xr, uint32_t R, const float *w, size_t ldw,
                         uint32_t C, size_t n, float *y, size_t ldy)
{
    for (uint32_t r = 0; r < R; r++)
        for (uint32_t c = 0; c < C; c++)
            y[r * ldy + c] = dot_generic(xr[r], w + c * ldw, n);
}

/* --- portable attention kernels (same operations as ops.h describes) --- */

static inline float row_at(const void *row, bool bf16, size_t d)
{
    return bf16 ? kvt_ops_bf16_to_f32(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

static void keys_generic(float *kt, const void *const *rows, bool bf16, size_t n, size_t hd)
{
    memset(kt, 0, (n + 15) / 16 * hd * 16 * sizeof(float));
    for (size_t j = 0; j < n; j++)
        for (size_t d = 0; d < hd; d++)
            kt[((j / 16) * hd + d) * 16 + j % 16] = row_at(rows[j], bf16, d);
}

static void values_generic(float *v, const void *const *rows, bool bf16, size_t n, size_t hd)
{
    for (size_t j = 0; j < n; j++)
        for (size_t d = 0; d < hd; d++)
            v[j * hd + d] = row_at(rows[j], bf16, d);
}

static void scores_generic(const float *const *qr, uint32_t R, const float *kt, size_t n,
                           size_t hd, float scale, float *s, size_t lds)
{
    for (uint32_t r = 0; r < R; r++)
        for (size_t j = 0; j < n; j++) {
            const float *col = kt + (j / 16) * hd * 16 + j % 16;
            float acc = 0.0f;
            for (size_t d = 0; d < hd; d++)
                acc += qr[r][d] * col[d * 16];
            s[r * lds + j] = acc * scale;
        }
}

static float softmax_generic(float *s, size_t n, float *m, float *l)
{
    float mx = s[0];
    for (size_t j = 1; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    float m_new = *m > mx ? *m : mx;
    float c = expf(*m - m_new);
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - m_new);
        sum += s[j];
    }
    *l = *l * c + sum;
    *m = m_new;
    return c;
}

static void pv_generic(float *const *acc, const float *c, const float *const *p,
                       const uint32_t *n_valid, uint32_t R, const float *v, size_t ldv, size_t hd)
{
    for (uint32_t r = 0; r < R; r++) {
        for (size_t i = 0; i < hd; i++)
            acc[r][i] *= c[r];
        for (size_t j = 0; j < n_valid[r]; j++)
            for (size_t i = 0; i < hd; i++)
                acc[r][i] += p[r][j] * v[j * ldv + i];
    }
}

static void silu_generic(float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void to_f32_generic(float *dst, const uint16_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kvt_ops_bf16_to_f32(src[i]);
}

static void to_bf16_generic(uint16_t *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kvt_ops_f32_to_bf16(src[i]);
}

/* --- AVX-512 kernels --- */

#if HAVE_X86
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

/* The same tree as dot_generic: halves added, 8 -> 4 -> 2 -> 1 lanes. */
AVX512 static inline float reduce512(__m512 v)
{
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

AVX512 static inline __attribute__((always_inline)) void
tile512(const float *const *xr, const int R, const float *w, size_t ldw, const int C, size_t n,
        float *y, size_t ldy)
{
    __m512 acc[KVT_OPS_MM_ROWS][KVT_OPS_MM_COLS], wv[KVT_OPS_MM_COLS];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 6
        for (int c = 0; c < C; c++)
            acc[r][c] = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
#pragma GCC unroll 6
        for (int c = 0; c < C; c++)
            wv[c] = _mm512_loadu_ps(w + c * ldw + k);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m512 xv = _mm512_loadu_ps(xr[r] + k);
#pragma GCC unroll 6
            for (int c = 0; c < C; c++)
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    if (k < n) {
        __mmask16 m = (__mmask16)((1u << (n - k)) - 1u);
#pragma GCC unroll 6
        for (int c = 0; c < C; c++)
            wv[c] = _mm512_maskz_loadu_ps(m, w + c * ldw + k);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, xr[r] + k);
#pragma GCC unroll 6
            for (int c = 0; c < C; c++)
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 6
        for (int c = 0; c < C; c++)
            y[r * ldy + c] = reduce512(acc[r][c]);
}

AVX512 static void tile_avx512(const float *const *xr, uint32_t R, const float *w, size_t ldw,
                               uint32_t C, size_t n, float *y, size_t ldy)
{
    /* One specialisation per shape, so the accumulators live in registers. */
#define T(r, c)                                 \
    case r * 8 + c:                             \
        tile512(xr, r, w, ldw, c, n, y, ldy);   \
        break;
    switch (R * 8 + C) {
        T(1, 1) T(1, 2) T(1, 3) T(1, 4) T(1, 5) T(1, 6)
        T(2, 1) T(2, 2) T(2, 3) T(2, 4) T(2, 5) T(2, 6)
        T(3, 1) T(3, 2) T(3, 3) T(3, 4) T(3, 5) T(3, 6)
        T(4, 1) T(4, 2) T(4, 3) T(4, 4) T(4, 5) T(4, 6)
    default:
        break;
    }
#undef T
}

/* exp(x) for the attention softmax and SiLU: Cephes' expf polynomial,
 * |error| ~1 ulp; x < -87.3 gives 0. */
AVX512 static inline __m512 exp512(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.33654f), hi = _mm512_set1_ps(88.72283f);
    __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
}

static inline __mmask16 mask_n(size_t n) /* the first min(n, 16) lanes */
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* In-register 16 x 16 transpose: unpack pairs, then 64- and 128-bit lane
 * shuffles. */
AVX512 static inline void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 16; i += 8)
        for (int k = 0; k < 4; k++) {
            t[i + k] = _mm512_shuffle_f32x4(u[i + k], u[i + 4 + k], 0x88);
            t[i + 4 + k] = _mm512_shuffle_f32x4(u[i + k], u[i + 4 + k], 0xdd);
        }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    }
}

AVX512 static inline __m512 load_row(const void *row, bool bf16, size_t d0, __mmask16 m)
{
    if (!bf16)
        return _mm512_maskz_loadu_ps(m, (const float *)row + d0);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + d0);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

AVX512 static void keys_avx512(float *kt, const void *const *rows, bool bf16, size_t n,
                               size_t hd)
{
    for (size_t j0 = 0; j0 < n; j0 += 16) {
        float *out = kt + (j0 / 16) * hd * 16;
        for (size_t d0 = 0; d0 < hd; d0 += 16) {
            __m512 r[16];
            __mmask16 m = mask_n(hd - d0);
            for (size_t j = 0; j < 16; j++)
                r[j] = j0 + j < n ? load_row(rows[j0 + j], bf16, d0, m) : _mm512_setzero_ps();
            transpose16(r);
            for (size_t d = 0; d < 16 && d0 + d < hd; d++)
                _mm512_storeu_ps(out + (d0 + d) * 16, r[d]);
        }
    }
}

AVX512 static void values_avx512(float *v, const void *const *rows, bool bf16, size_t n,
                                 size_t hd)
{
    for (size_t j = 0; j < n; j++)
        for (size_t d0 = 0; d0 < hd; d0 += 16) {
            __mmask16 m = mask_n(hd - d0);
            _mm512_mask_storeu_ps(v + j * hd + d0, m, load_row(rows[j], bf16, d0, m));
        }
}

/* R rows x CH chunks of 16 keys: one kt load serves R rows, one q
 * broadcast CH chunks. */
AVX512 static inline __attribute__((always_inline)) void
scores512(const float *const *qr, const int R, const float *kt, const int CH, size_t hd,
          __m512 scale, float *s, size_t lds)
{
    __m512 acc[KVT_OPS_TILE][4], kv[4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < CH; c++)
            acc[r][c] = _mm512_setzero_ps();
    for (size_t d = 0; d < hd; d++) {
#pragma GCC unroll 4
        for (int c = 0; c < CH; c++)
            kv[c] = _mm512_loadu_ps(kt + ((size_t)c * hd + d) * 16);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 qb = _mm512_set1_ps(qr[r][d]);
#pragma GCC unroll 4
            for (int c = 0; c < CH; c++)
                acc[r][c] = _mm512_fmadd_ps(qb, kv[c], acc[r][c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < CH; c++)
            _mm512_storeu_ps(s + r * lds + c * 16, _mm512_mul_ps(acc[r][c], scale));
}

AVX512 static void scores_avx512(const float *const *qr, uint32_t R, const float *kt, size_t n,
                                 size_t hd, float scale, float *s, size_t lds)
{
    __m512 sc = _mm512_set1_ps(scale);
    size_t n_chunks = (n + 15) / 16;
    for (size_t c0 = 0; c0 < n_chunks; c0 += 4) {
        const float *k = kt + c0 * hd * 16;
        float *out = s + c0 * 16;
        uint32_t CH = (uint32_t)(n_chunks - c0 < 4 ? n_chunks - c0 : 4);
#define S(r, c)                                          \
    case r * 8 + c:                                      \
        scores512(qr, r, k, c, hd, sc, out, lds);        \
        break;
        switch (R * 8 + CH) {
            S(1, 1) S(1, 2) S(1, 3) S(1, 4)
            S(2, 1) S(2, 2) S(2, 3) S(2, 4)
            S(3, 1) S(3, 2) S(3, 3) S(3, 4)
            S(4, 1) S(4, 2) S(4, 3) S(4, 4)
        default:
            break;
        }
#undef S
    }
}

AVX512 static float softmax_avx512(float *s, size_t n, float *m, float *l)
{
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (size_t j = 0; j < n; j += 16)
        mx = _mm512_mask_max_ps(mx, mask_n(n - j), mx, _mm512_loadu_ps(s + j));
    float bmax = _mm512_reduce_max_ps(mx);
    float m_new = *m > bmax ? *m : bmax;
    float c = expf(*m - m_new);
    __m512 mv = _mm512_set1_ps(m_new), sum = _mm512_setzero_ps();
    for (size_t j = 0; j < n; j += 16) {
        __mmask16 k = mask_n(n - j);
        __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv)));
        _mm512_mask_storeu_ps(s + j, k, e);
        sum = _mm512_add_ps(sum, e);
    }
    *l = *l * c + reduce512(sum);
    *m = m_new;
    return c;
}

/* R rows x CH chunks (<= 64 values of d from d0): the accumulators stay in
 * registers over all keys; one V load serves R rows. */
AVX512 static inline __attribute__((always_inline)) void
pv512(float *const *acc, const float *c, const float *const *p, const uint32_t *nv, const int R,
      const float *v, size_t ldv, size_t d0, const int CH, __mmask16 last)
{
    __m512 a[KVT_OPS_TILE][4], vk[4];
    __mmask16 dm[4];
    uint32_t n_min = UINT32_MAX, n_max = 0;
#pragma GCC unroll 4
    for (int k = 0; k < CH; k++)
        dm[k] = k == CH - 1 ? last : (__mmask16)0xffff;
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        n_min = nv[r] < n_min ? nv[r] : n_min;
        n_max = nv[r] > n_max ? nv[r] : n_max;
        __m512 cr = _mm512_set1_ps(c[r]);
#pragma GCC unroll 4
        for (int k = 0; k < CH; k++)
            a[r][k] = _mm512_mul_ps(_mm512_maskz_loadu_ps(dm[k], acc[r] + d0 + 16 * k), cr);
    }
    for (uint32_t j = 0; j < n_max; j++) {
#pragma GCC unroll 4
        for (int k = 0; k < CH; k++)
            vk[k] = _mm512_maskz_loadu_ps(dm[k], v + j * ldv + d0 + 16 * k);
        if (j < n_min) {
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512 pb = _mm512_set1_ps(p[r][j]);
#pragma GCC unroll 4
                for (int k = 0; k < CH; k++)
                    a[r][k] = _mm512_fmadd_ps(pb, vk[k], a[r][k]);
            }
        } else {
            /* Merge-masked: a row past its n_valid keeps its lanes exactly. */
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __mmask16 on = j < nv[r] ? 0xffff : 0;
                __m512 pb = _mm512_set1_ps(j < nv[r] ? p[r][j] : 0.0f);
#pragma GCC unroll 4
                for (int k = 0; k < CH; k++)
                    a[r][k] = _mm512_mask3_fmadd_ps(pb, vk[k], a[r][k], on);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int k = 0; k < CH; k++)
            _mm512_mask_storeu_ps(acc[r] + d0 + 16 * k, dm[k], a[r][k]);
}

AVX512 static void pv_avx512(float *const *acc, const float *c, const float *const *p,
                             const uint32_t *n_valid, uint32_t R, const float *v, size_t ldv,
                             size_t hd)
{
    for (size_t d0 = 0; d0 < hd; d0 += 64) {
        size_t w = hd - d0 < 64 ? hd - d0 : 64;
        uint32_t CH = (uint32_t)((w + 15) / 16);
        __mmask16 last = mask_n(w - 16 * (CH - 1));
#define P(r, k)                                              \
    case r * 8 + k:                                          \
        pv512(acc, c, p, n_valid, r, v, ldv, d0, k, last);   \
        break;
        switch (R * 8 + CH) {
            P(1, 1) P(1, 2) P(1, 3) P(1, 4)
            P(2, 1) P(2, 2) P(2, 3) P(2, 4)
            P(3, 1) P(3, 2) P(3, 3) P(3, 4)
            P(4, 1) P(4, 2) P(4, 3) P(4, 4)
        default:
            break;
        }
#undef P
    }
}

AVX512 static void silu_avx512(float *g, const float *u, size_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = mask_n(n - i);
        __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        __m512 y = _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)),
                                 _mm512_maskz_loadu_ps(m, u + i));
        _mm512_mask_storeu_ps(g + i, m, y);
    }
}

AVX512 static void to_f32_avx512(float *dst, const uint16_t *src, size_t n)
{
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = mask_n(n - i);
        __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i));
        _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
    }
}

/* Round to nearest even in integer arithmetic, as kvt_ops_f32_to_bf16. */
AVX512 static void to_bf16_avx512(uint16_t *dst, const float *src, size_t n)
{
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
    const __m512i quiet = _mm512_set1_epi32(0x400000);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = mask_n(n - i);
        __m512i u = _mm512_castps_si512(_mm512_maskz_loadu_ps(m, src + i));
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
        __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(half, lsb));
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, quiet));
        _mm256_mask_storeu_epi16(dst + i, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
}
#endif

/* --- dispatch: chosen once per process --- */

typedef struct {
    const char *isa;
    tile_fn_t tile;
    void (*keys)(float *, const void *const *, bool, size_t, size_t);
    void (*values)(float *, const void *const *, bool, size_t, size_t);
    void (*scores)(const float *const *, uint32_t, const float *, size_t, size_t, float, float *,
                   size_t);
    float (*softmax)(float *, size_t, float *, float *);
    void (*pv)(float *const *, const float *, const float *const *, const uint32_t *, uint32_t,
               const float *, size_t, size_t);
    void (*silu)(float *, const float *, size_t);
    void (*to_f32)(float *, const uint16_t *, size_t);
    void (*to_bf16)(uint16_t *, const float *, size_t);
} kernels_t;

static const kernels_t g_generic = {"generic",      tile_generic,   keys_generic,
                                    values_generic, scores_generic, softmax_generic,
                                    pv_generic,     silu_generic,   to_f32_generic,
                                    to_bf16_generic};
static kernels_t g_k;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void pick_kernels(void)
{
    g_k = g_generic;
#if HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
        g_k = (kernels_t){"avx512", tile_avx512, keys_avx512, values_avx512, scores_avx512,
                          softmax_avx512,
                          pv_avx512, silu_avx512, to_f32_avx512, to_bf16_avx512};
#endif
}

static const kernels_t *kernels(void)
{
    pthread_once(&g_once, pick_kernels);
    return &g_k;
}

static tile_fn_t tile_kernel(void) { return kernels()->tile; }

const char *kvt_ops_isa(void) { return kernels()->isa; }

void kvt_ops_force_generic(bool on)
{
    pthread_once(&g_once, pick_kernels);
    if (on)
        g_k = g_generic;
    else
        pick_kernels();
}

void kvt_ops_dot_tile(const float *const *xr, uint32_t R, const float *w, size_t ldw, uint32_t C,
                      size_t n, float *y, size_t ldy)
{
    kernels()->tile(xr, R, w, ldw, C, n, y, ldy);
}

void kvt_ops_attn_keys(float *kt, const void *const *rows, bool bf16, size_t n, size_t hd)
{
    kernels()->keys(kt, rows, bf16, n, hd);
}

void kvt_ops_attn_values(float *v, const void *const *rows, bool bf16, size_t n, size_t hd)
{
    kernels()->values(v, rows, bf16, n, hd);
}

void kvt_ops_attn_scores(const float *const *qr, uint32_t R, const float *kt, size_t n,
                         size_t hd, float scale, float *s, size_t lds)
{
    kernels()->scores(qr, R, kt, n, hd, scale, s, lds);
}

float kvt_ops_attn_softmax(float *s, size_t n, float *m, float *l)
{
    return kernels()->softmax(s, n, m, l);
}

void kvt_ops_attn_pv(float *const *acc, const float *c, const float *const *p,
                     const uint32_t *n_valid, uint32_t R, const float *v, size_t ldv, size_t hd)
{
    kernels()->pv(acc, c, p, n_valid, R, v, ldv, hd);
}

/* --- matmul --- */

#define MM_MAX_MATS 4

typedef struct {
    tile_fn_t tile;
    const float *x;
    size_t rows, in;
    kvt_ops_mat_t mats[MM_MAX_MATS];
    size_t first_tile[MM_MAX_MATS + 1]; /* tile index where each matrix starts */
    size_t n_mats;
    size_t row_block;
} mm_job_t;

static void mm_tile_rows(const mm_job_t *j, const kvt_ops_mat_t *m, size_t o, size_t r0,
                         size_t r1)
{
    const size_t T = KVT_OPS_MM_ROWS, TC = KVT_OPS_MM_COLS;
    uint32_t C = (uint32_t)(m->out - o < TC ? m->out - o : TC);
    for (size_t r = r0; r < r1; r += T) {
        uint32_t R = (uint32_t)(r1 - r < T ? r1 - r : T);
        const float *xr[KVT_OPS_MM_ROWS];
        for (uint32_t i = 0; i < R; i++)
            xr[i] = j->x + (r + i) * j->in;
        float *y = m->y + r * m->out + o;
        j->tile(xr, R, m->w + o * j->in, j->in, C, j->in, y, m->out);
        if (m->bias)
            for (uint32_t i = 0; i < R; i++)
                for (uint32_t c = 0; c < C; c++)
                    y[i * m->out + c] += m->bias[o + c];
    }
}

static void mm_run(void *arg, size_t t_begin, size_t t_end, uint32_t tid)
{
    const mm_job_t *j = arg;
    for (size_t r0 = 0; r0 < j->rows; r0 += j->row_block) {
        size_t r1 = r0 + j->row_block < j->rows ? r0 + j->row_block : j->rows;
        size_t mi = 0;
        for (size_t t = t_begin; t < t_end; t++) {
            while (t >= j->first_tile[mi + 1])
                mi++;
            size_t o = (t - j->first_tile[mi]) * KVT_OPS_MM_COLS;
            mm_tile_rows(j, &j->mats[mi], o, r0, r1);
        }
    }
}

void kvt_ops_matmul_multi(kvt_threads_t *threads, const float *x, size_t rows, size_t in,
                          const kvt_ops_mat_t *mats, size_t n_mats)
{
    mm_job_t job = {.tile = tile_kernel(), .x = x, .rows = rows, .in = in};
    /* ~256 KiB of input rows per block: they stay in L2 while every weight
     * tile of the work item passes over them. */
    size_t rb = ((size_t)65536 / (in ? in : 1)) & ~(size_t)(KVT_OPS_MM_ROWS - 1);
    job.row_block = rb < KVT_OPS_MM_ROWS ? KVT_OPS_MM_ROWS : rb;
    for (size_t done = 0; done < n_mats; done += MM_MAX_MATS) {
        job.n_mats = n_mats - done < MM_MAX_MATS ? n_mats - done : MM_MAX_MATS;
        size_t n_tiles = 0;
        for (size_t i = 0; i < job.n_mats; i++) {
            job.mats[i] = mats[done + i];
            job.first_tile[i] = n_tiles;
            n_tiles += (mats[done + i].out + KVT_OPS_MM_COLS - 1) / KVT_OPS_MM_COLS;
        }
        job.first_tile[job.n_mats] = n_tiles;
        kvt_threads_for(threads, n_tiles, 0, mm_run, &job);
    }
}

void kvt_ops_matmul(kvt_threads_t *threads, const float *x, size_t rows, size_t in,
                    const float *w, size_t out, const float *bias, float *y)
{
    kvt_ops_mat_t m = {.w = w, .out = out, .bias = bias, .y = y};
    kvt_ops_matmul_multi(threads, x, rows, in, &m, 1);
}

/* --- element-wise --- */

void kvt_ops_rmsnorm(float *y, const float *x, const float *w, size_t n, float eps)
{
    double ss = 0.0;
    for (size_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float var = (float)(ss / (double)n);
    float s = 1.0f / sqrtf(var + eps);
    for (size_t i = 0; i < n; i++)
        y[i] = w[i] * (x[i] * s);
}

static float llama3_inv_freq(const kvt_model_config_t *cfg, float inv)
{
    double orig = (double)cfg->rope_orig_max_pos;
    double low = (double)cfg->rope_low_freq_factor, high = (double)cfg->rope_high_freq_factor;
    double factor = (double)cfg->rope_factor;
    double low_wavelen = orig / low, high_wavelen = orig / high;
    double wavelen = 2.0 * M_PI / (double)inv;
    if (wavelen > low_wavelen)
        return (float)((double)inv / factor);
    if (wavelen < high_wavelen)
        return inv;
    double smooth = (orig / wavelen - low) / (high - low);
    return (float)((1.0 - smooth) * (double)inv / factor + smooth * (double)inv);
}

void kvt_ops_rope_inv_freq(const kvt_model_config_t *cfg, float *inv_freq)
{
    size_t half = cfg->head_dim / 2;
    for (size_t i = 0; i < half; i++) {
        /* Hugging Face: 1 / theta ** (arange(0, dim, 2).float() / dim), in f32. */
        float e = (float)(2 * i) / (float)cfg->head_dim;
        float inv = 1.0f / (float)pow((double)cfg->rope_theta, (double)e);
        if (cfg->rope_scaling == KVT_ROPE_LINEAR)
            inv = inv / cfg->rope_factor;
        else if (cfg->rope_scaling == KVT_ROPE_LLAMA3)
            inv = llama3_inv_freq(cfg, inv);
        inv_freq[i] = inv;
    }
}

void kvt_ops_rope_cos_sin(const float *inv_freq, size_t half, uint32_t pos, float *cos_out,
                          float *sin_out)
{
    for (size_t i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i];
        cos_out[i] = (float)cos((double)angle);
        sin_out[i] = (float)sin((double)angle);
    }
}

void kvt_ops_rope(float *v, size_t n_heads, size_t head_dim, const float *cos_t,
                  const float *sin_t)
{
    size_t half = head_dim / 2;
    for (size_t h = 0; h < n_heads; h++) {
        float *a = v + h * head_dim, *b = a + half;
        for (size_t i = 0; i < half; i++) {
            float x1 = a[i], x2 = b[i];
            a[i] = x1 * cos_t[i] - x2 * sin_t[i];
            b[i] = x2 * cos_t[i] + x1 * sin_t[i];
        }
    }
}

void kvt_ops_silu_mul(float *g, const float *u, size_t n) { kernels()->silu(g, u, n); }

void kvt_ops_softmax(float *x, size_t n)
{
    if (n == 0)
        return;
    float m = x[0];
    for (size_t i = 1; i < n; i++)
        m = x[i] > m ? x[i] : m;
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    for (size_t i = 0; i < n; i++)
        x[i] /= sum;
}

void kvt_ops_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n)
{
    kernels()->to_bf16(dst, src, n);
}

void kvt_ops_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n)
{
    kernels()->to_f32(dst, src, n);
}
