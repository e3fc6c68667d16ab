/* Numeric kernels of the CPU forward pass (engine-internal).
 *
 * Determinism contract: every output element is computed by one fixed
 * sequence of floating-point operations that depends only on its own
 * inputs -- never on how many rows are in the call, where a tile boundary
 * falls, or which thread runs it.  A dot product of length n is always
 * accumulated in 16 lanes over k = 0, 16, 32, ... (the last chunk
 * zero-padded), then reduced by one fixed tree.  So a position's logits and
 * KV are bitwise the same in one-shot prefill, chunked prefill and batched
 * decode.  The kernel set (AVX-512 + FMA where the CPU has it, portable C
 * otherwise) is chosen once per process, so results are deterministic on a
 * given machine; two machines with different kernel sets may differ in the
 * last bits.
 *
 * Nothing here allocates or fails. */
#ifndef KVT_ENGINE_OPS_H
#define KVT_ENGINE_OPS_H

#include "engine/model.h"
#include "engine/threads.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Query rows grouped per attention kernel call. */
#define KVT_OPS_TILE 4
/* Rows and output features of one matmul tile. */
#define KVT_OPS_MM_ROWS 4
#define KVT_OPS_MM_COLS 6

/* Name of the kernel set in use ("avx512" or "generic"). */
const char *kvt_ops_isa(void);
/* Tests: use the portable kernels (true) or the CPU's best again (false).
 * Only while no engine is computing. */
void kvt_ops_force_generic(bool on);

/* y[r*ldy + c] = dot(xr[r][0..n), w[c*ldw + 0..n)) for r < R, c < C
 * (R <= KVT_OPS_MM_ROWS, C <= KVT_OPS_MM_COLS).  Exactly the value
 * kvt_ops_matmul computes for the same row and weight vector. */
void kvt_ops_dot_tile(const float *const *xr, uint32_t R, const float *w, size_t ldw, uint32_t C,
                      size_t n, float *y, size_t ldy);

/* One weight matrix of a matmul: y [rows][out] = x w^T (+ bias). */
typedef struct {
    const float *w;    /* [out][in] (nn.Linear) */
    size_t out;
    const float *bias; /* [out] or NULL */
    float *y;          /* [rows][out] */
} kvt_ops_mat_t;

/* y[r][o] = dot(x[r], w[o]) (+ bias[o]) for x [rows][in], for each of
 * n_mats matrices sharing the input (q/k/v, gate/up) in one parallel pass
 * over their output features. */
void kvt_ops_matmul_multi(kvt_threads_t *threads, const float *x, size_t rows, size_t in,
                          const kvt_ops_mat_t *mats, size_t n_mats);
/* The same for one matrix. */
void kvt_ops_matmul(kvt_threads_t *threads, const float *x, size_t rows, size_t in,
                    const float *w, size_t out, const float *bias, float *y);

/* --- attention over one block (forward.c walks the blocks) ---
 *
 * Per query row the operations are fixed: a score is
 * scale * (q[0]*k[0] + q[1]*k[1] + ...) accumulated in d order; the
 * softmax step and P.V touch keys j < n_valid of the row only, in j order.
 * Grouping rows (R <= KVT_OPS_TILE) shares loads, never changes a row. */

/* Keys j < n as f32, transposed for the score kernel: rows[j] points at
 * key j's hd values (bf16 when `bf16`, else f32); out kt[ceil(n/16)][hd][16],
 * zero-padded. */
void kvt_ops_attn_keys(float *kt, const void *const *rows, bool bf16, size_t n, size_t hd);
/* Values j < n as f32 rows: v[j*hd + i]. */
void kvt_ops_attn_values(float *v, const void *const *rows, bool bf16, size_t n, size_t hd);
/* s[r*lds + j] = scale * dot(q_r, key j) for r < R, j < n (lds >= n
 * rounded up to 16; lanes past n are written with garbage). */
void kvt_ops_attn_scores(const float *const *qr, uint32_t R, const float *kt, size_t n,
                         size_t hd, float scale, float *s, size_t lds);
/* Online-softmax step of one row over s[0..n), n >= 1: m_new = max(*m,
 * max s); s[j] = exp(s[j] - m_new); *l = *l * c + sum s; *m = m_new;
 * returns c = exp(m_old - m_new), the factor for the row's accumulator. */
float kvt_ops_attn_softmax(float *s, size_t n, float *m, float *l);
/* acc_r[i] = acc_r[i] * c[r] + sum_{j < n_valid[r]} p_r[j] * v[j*ldv + i],
 * i < hd, for r < R (n_valid 0 and c 1 leave a row untouched). */
void kvt_ops_attn_pv(float *const *acc, const float *c, const float *const *p,
                     const uint32_t *n_valid, uint32_t R, const float *v, size_t ldv, size_t hd);

/* y = x / sqrt(mean(x^2) + eps) * w, n elements (y may alias x). */
void kvt_ops_rmsnorm(float *y, const float *x, const float *w, size_t n, float eps);

/* inv_freq[head_dim/2] with the config's rope scaling applied (Hugging
 * Face _compute_default / linear / llama3 parameters). */
void kvt_ops_rope_inv_freq(const kvt_model_config_t *cfg, float *inv_freq);
/* cos/sin of pos * inv_freq[i], i < half: the product rounded to f32 as
 * Hugging Face does, the cosine and sine computed in double. */
void kvt_ops_rope_cos_sin(const float *inv_freq, size_t half, uint32_t pos, float *cos_out,
                          float *sin_out);
/* Rotate n_heads vectors of head_dim in place, "rotate_half" pairing
 * (i, i + head_dim/2). */
void kvt_ops_rope(float *v, size_t n_heads, size_t head_dim, const float *cos_t,
                  const float *sin_t);

/* g[i] = silu(g[i]) * u[i]. */
void kvt_ops_silu_mul(float *g, const float *u, size_t n);
/* In-place softmax of x[n] (max-subtracted, f32). */
void kvt_ops_softmax(float *x, size_t n);

/* bf16 <-> f32: round to nearest even; NaN stays NaN. */
static inline uint16_t kvt_ops_f32_to_bf16(float f)
{
    union {
        float f;
        uint32_t u;
    } v = {.f = f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((v.u >> 16) | 0x40u);
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}

static inline float kvt_ops_bf16_to_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)h << 16};
    return v.f;
}

void kvt_ops_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);
void kvt_ops_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n);

#endif
