/* CPU references of the element-wise and sampling kernels (kernels.h's
 * kvt_k_<op>_ref): plain loops, the arithmetic of engine/ops.c and
 * engine/sample.c in the same order.  The attention reference lives in
 * attention_ref.c.
 *
 * The project compiles in ISO C mode, where gcc does not contract a*b+c
 * into an FMA, so each product and sum here is rounded on its own -- the
 * kernels do the same with __fmul_rn and friends. */
#include "kernels/kernels.h"
#include "kernels/kernelsInt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void kvt_k_embed_ref(const uint16_t *embed, const uint32_t *tokens, size_t rows, size_t hidden,
                     float *x)
{
    for (size_t r = 0; r < rows; r++)
        for (size_t i = 0; i < hidden; i++)
            x[r * hidden + i] = kvt_k_bf16_to_f32(embed[(size_t)tokens[r] * hidden + i]);
}

void kvt_k_rmsnorm_ref(const float *x, const float *w, size_t rows, size_t dim, float eps,
                       uint16_t *out)
{
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        /* kvt_ops_rmsnorm: squares summed in double, the scale in f32. */
        double ss = 0.0;
        for (size_t i = 0; i < dim; i++)
            ss += (double)xr[i] * (double)xr[i];
        float var = (float)(ss / (double)dim);
        float s = 1.0f / sqrtf(var + eps);
        for (size_t i = 0; i < dim; i++)
            out[r * dim + i] = kvt_k_f32_to_bf16(w[i] * (xr[i] * s));
    }
}

static void kv_put(const kvt_k_kv_t *kv, uint8_t *blk, size_t e, float v)
{
    if (kv->f32)
        ((float *)blk)[e] = v;
    else
        ((uint16_t *)blk)[e] = kvt_k_f32_to_bf16(v);
}

void kvt_k_qkv_rope_store_ref(const float *qkv, const float *bias, const uint32_t *pos,
                              const float *inv_freq, uint32_t n_heads, const kvt_k_kv_t *kv,
                              uint32_t layer, const uint32_t *slot, const uint32_t *tok,
                              size_t rows, uint16_t *q_out)
{
    size_t hd = kv->head_dim, half = hd / 2, nkv = kv->n_kv_heads;
    size_t q_dim = n_heads * hd, kv_dim = nkv * hd, width = q_dim + 2 * kv_dim;
    float *cs = malloc(half * sizeof(float)), *sn = malloc(half * sizeof(float));
    float *v = malloc(width * sizeof(float));
    if (!cs || !sn || !v)
        abort(); /* a test-only reference: no error path */
    for (size_t r = 0; r < rows; r++) {
        for (size_t i = 0; i < width; i++)
            v[i] = bias ? qkv[r * width + i] + bias[i] : qkv[r * width + i];
        /* kvt_ops_rope_cos_sin + kvt_ops_rope */
        for (size_t i = 0; i < half; i++) {
            float angle = (float)pos[r] * inv_freq[i];
            cs[i] = (float)cos((double)angle);
            sn[i] = (float)sin((double)angle);
        }
        for (size_t h = 0; h < n_heads + nkv; h++) {
            float *a = v + h * hd, *b = a + half;
            for (size_t i = 0; i < half; i++) {
                float x1 = a[i], x2 = b[i];
                a[i] = x1 * cs[i] - x2 * sn[i];
                b[i] = x2 * cs[i] + x1 * sn[i];
            }
        }
        for (size_t i = 0; i < q_dim; i++)
            q_out[r * q_dim + i] = kvt_k_f32_to_bf16(v[i]);
        uint8_t *blk = (uint8_t *)kv->base + (size_t)slot[r] * kv->slot_bytes;
        size_t ko = (((size_t)layer * 2 + 0) * kv->block_tokens + tok[r]) * kv_dim;
        size_t vo = (((size_t)layer * 2 + 1) * kv->block_tokens + tok[r]) * kv_dim;
        for (size_t i = 0; i < kv_dim; i++) {
            kv_put(kv, blk, ko + i, v[q_dim + i]);
            kv_put(kv, blk, vo + i, v[q_dim + kv_dim + i]);
        }
    }
    free(cs);
    free(sn);
    free(v);
}

void kvt_k_swiglu_ref(const float *gu, size_t rows, size_t inter, uint16_t *out)
{
    for (size_t r = 0; r < rows; r++) {
        const float *g = gu + r * 2 * inter, *u = g + inter;
        for (size_t i = 0; i < inter; i++)
            out[r * inter + i] = kvt_k_f32_to_bf16(g[i] / (1.0f + expf(-g[i])) * u[i]);
    }
}

/* --- sampling: engine/sample.c with the draw u given --- */

typedef struct {
    double p;
    float z;
    uint32_t id;
} cand_t;

static int cand_cmp(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->z != y->z)
        return x->z > y->z ? -1 : 1;
    return x->id < y->id ? -1 : 1;
}

static uint32_t argmax(const float *logits, uint32_t n)
{
    uint32_t best = 0;
    float bv = -INFINITY;
    for (uint32_t i = 0; i < n; i++)
        if (logits[i] > bv) {
            bv = logits[i];
            best = i;
        }
    return best;
}

static uint32_t sample_row(const float *logits, uint32_t vocab, float temperature,
                           uint32_t top_k, float top_p, float u, cand_t *c)
{
    uint32_t best = argmax(logits, vocab);
    if (temperature == 0.0f || top_k == 1 || !isfinite(logits[best]))
        return best;
    float zmax = logits[best] / temperature;
    if (!isfinite(zmax))
        return best; /* the top logit overflows: the greedy limit */
    for (uint32_t i = 0; i < vocab; i++) {
        float z = isnan(logits[i]) ? -INFINITY : logits[i] / temperature;
        c[i] = (cand_t){.z = z, .id = i};
    }
    size_t n = vocab;
    if (top_k > 0 || top_p < 1.0f) {
        qsort(c, n, sizeof(*c), cand_cmp);
        if (top_k > 0 && top_k < n)
            n = top_k;
    }
    double total = 0.0;
    for (size_t i = 0; i < n; i++) {
        c[i].p = exp((double)c[i].z - (double)zmax);
        total += c[i].p;
    }
    if (top_p < 1.0f) {
        double want = (double)top_p * total, acc = 0.0;
        size_t keep = 0;
        while (keep < n && (keep == 0 || acc < want))
            acc += c[keep++].p;
        n = keep;
        total = acc;
    }
    double us = (double)u * total, acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        acc += c[i].p;
        if (us < acc)
            return c[i].id;
    }
    for (size_t i = n; i-- > 0;)
        if (c[i].p > 0.0)
            return c[i].id;
    return c[0].id;
}

void kvt_k_sample_ref(const float *logits, size_t rows, uint32_t vocab, float temperature,
                      uint32_t top_k, float top_p, const float *u, uint32_t *tokens)
{
    cand_t *c = malloc((size_t)vocab * sizeof(*c));
    if (!c)
        abort(); /* a test-only reference: no error path */
    for (size_t r = 0; r < rows; r++)
        tokens[r] = sample_row(logits + r * vocab, vocab, temperature, top_k, top_p,
                               u ? u[r] : 0.0f, c);
    free(c);
}
