/* Numeric kernels of the CPU forward pass; see ops.h.
 *
 * The matmul is the "dot product" form on nn.Linear weights as stored
 * ([out][in], no repacking, so the model's f32 weights are used in place):
 * a tile of up to 4 rows x 4 output features keeps 16 accumulators in
 * registers, so each weight vector loaded serves 4 rows and each input
 * vector 4 outputs.  Every accumulator is one output's dot product in 16
 * lanes -- the tile shape changes which dot products run side by side,
 * never the operations inside one, which is what makes results independent
 * of the row count.  The k tail is a zero-masked load (adding +0 leaves a
 * lane unchanged), so there is no scalar tail with its own rounding.
 *
 * Cache blocking: a work item is a run of output tiles; it walks the rows
 * in blocks of ~256 KiB of input (L2), and for each block keeps one weight
 * tile (4 x in floats, L1) hot while the rows stream past it.
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

/* --- AVX-512 kernel --- */

#if HAVE_X86
#define AVX512 __attribute__((target("avx512f,fma")))

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
    __m512 acc[KVT_OPS_TILE][KVT_OPS_TILE], wv[KVT_OPS_TILE];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++)
            acc[r][c] = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
#pragma GCC unroll 4
        for (int c = 0; c < C; c++)
            wv[c] = _mm512_loadu_ps(w + c * ldw + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 xv = _mm512_loadu_ps(xr[r] + k);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++)
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    if (k < n) {
        __mmask16 m = (__mmask16)((1u << (n - k)) - 1u);
#pragma GCC unroll 4
        for (int c = 0; c < C; c++)
            wv[c] = _mm512_maskz_loadu_ps(m, w + c * ldw + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, xr[r] + k);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++)
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
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
        T(1, 1) T(1, 2) T(1, 3) T(1, 4)
        T(2, 1) T(2, 2) T(2, 3) T(2, 4)
        T(3, 1) T(3, 2) T(3, 3) T(3, 4)
        T(4, 1) T(4, 2) T(4, 3) T(4, 4)
    default:
        break;
    }
#undef T
}
#endif

/* --- dispatch: chosen once per process --- */

static tile_fn_t g_tile = tile_generic;
static const char *g_isa = "generic";
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void pick_kernels(void)
{
#if HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
        g_tile = tile_avx512;
        g_isa = "avx512";
    }
#endif
}

static tile_fn_t tile_kernel(void)
{
    pthread_once(&g_once, pick_kernels);
    return g_tile;
}

const char *kvt_ops_isa(void)
{
    pthread_once(&g_once, pick_kernels);
    return g_isa;
}

void kvt_ops_dot_tile(const float *const *xr, uint32_t R, const float *w, size_t ldw, uint32_t C,
                      size_t n, float *y, size_t ldy)
{
    tile_kernel()(xr, R, w, ldw, C, n, y, ldy);
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
    const size_t T = KVT_OPS_TILE;
    uint32_t C = (uint32_t)(m->out - o < T ? m->out - o : T);
    for (size_t r = r0; r < r1; r += T) {
        uint32_t R = (uint32_t)(r1 - r < T ? r1 - r : T);
        const float *xr[KVT_OPS_TILE];
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
            size_t o = (t - j->first_tile[mi]) * KVT_OPS_TILE;
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
    size_t rb = ((size_t)65536 / (in ? in : 1)) & ~(size_t)(KVT_OPS_TILE - 1);
    job.row_block = rb < KVT_OPS_TILE ? KVT_OPS_TILE : rb;
    for (size_t done = 0; done < n_mats; done += MM_MAX_MATS) {
        job.n_mats = n_mats - done < MM_MAX_MATS ? n_mats - done : MM_MAX_MATS;
        size_t n_tiles = 0;
        for (size_t i = 0; i < job.n_mats; i++) {
            job.mats[i] = mats[done + i];
            job.first_tile[i] = n_tiles;
            n_tiles += (mats[done + i].out + KVT_OPS_TILE - 1) / KVT_OPS_TILE;
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

/* --- attention P.V --- */

static void pv_generic(float *acc, float c, const float *p, const float *v, size_t ldv,
                       size_t n_keys, size_t d)
{
    for (size_t i = 0; i < d; i++)
        acc[i] *= c;
    for (size_t j = 0; j < n_keys; j++)
        for (size_t i = 0; i < d; i++)
            acc[i] += p[j] * v[j * ldv + i];
}

#if HAVE_X86
AVX512 static void pv_avx512(float *acc, float c, const float *p, const float *v, size_t ldv,
                             size_t n_keys, size_t d)
{
    __m512 cv = _mm512_set1_ps(c);
    for (size_t i = 0; i < d; i += 16) {
        __mmask16 m = d - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (d - i)) - 1u);
        __m512 a = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, acc + i), cv);
        for (size_t j = 0; j < n_keys; j++)
            a = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(m, v + j * ldv + i),
                                a);
        _mm512_mask_storeu_ps(acc + i, m, a);
    }
}
#endif

void kvt_ops_attn_pv(float *acc, float c, const float *p, const float *v, size_t ldv,
                     size_t n_keys, size_t d)
{
    pthread_once(&g_once, pick_kernels);
#if HAVE_X86
    if (g_tile == tile_avx512) {
        pv_avx512(acc, c, p, v, ldv, n_keys, d);
        return;
    }
#endif
    pv_generic(acc, c, p, v, ldv, n_keys, d);
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

void kvt_ops_silu_mul(float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

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
    for (size_t i = 0; i < n; i++)
        dst[i] = kvt_ops_f32_to_bf16(src[i]);
}

void kvt_ops_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kvt_ops_bf16_to_f32(src[i]);
}
