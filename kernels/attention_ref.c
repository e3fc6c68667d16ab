/* CPU reference for kvt_k_attn_prefill / kvt_k_attn_decode (kernels.h):
 * the same causal GQA attention over the paged pool, plain loops, scores,
 * softmax and P.V accumulated in double, each output rounded once to f32
 * and then to bf16 (nearest even).  Slow on purpose: tests only. */
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>

static float bf16_to_f32(uint16_t v)
{
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The K (which = 0) or V (1) row of position p, kv head g. */
static const uint8_t *kv_row(const kvt_k_kv_t *kv, uint32_t layer, const uint32_t *table,
                             uint32_t p, int which, uint32_t g)
{
    size_t B = kv->block_tokens, hd = kv->head_dim, nkv = kv->n_kv_heads;
    size_t idx = (((size_t)layer * 2 + (size_t)which) * B + p % B) * nkv * hd + g * hd;
    const uint8_t *slot = (const uint8_t *)kv->base + (size_t)table[p / B] * kv->slot_bytes;
    return slot + idx * (kv->f32 ? 4 : 2);
}

static double kv_elem(const uint8_t *row, bool f32, size_t i)
{
    if (f32) {
        float f;
        memcpy(&f, row + i * 4, sizeof(f));
        return f;
    }
    uint16_t v;
    memcpy(&v, row + i * 2, sizeof(v));
    return bf16_to_f32(v);
}

/* One query head of one row: out[0..hd) over positions [0, pos]. */
static void ref_row(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q, const uint32_t *table,
                    uint32_t pos, uint32_t g, float scale, uint16_t *out)
{
    size_t hd = kv->head_dim;
    double qd[256], acc[256], m = -INFINITY, l = 0.0;
    for (size_t i = 0; i < hd; i++) {
        qd[i] = bf16_to_f32(q[i]);
        acc[i] = 0.0;
    }
    for (uint32_t t = 0; t <= pos; t++) {
        const uint8_t *kr = kv_row(kv, layer, table, t, 0, g), *vr = kv_row(kv, layer, table, t, 1, g);
        double s = 0.0;
        for (size_t i = 0; i < hd; i++)
            s += qd[i] * kv_elem(kr, kv->f32, i);
        s *= (double)scale;
        if (s > m) { /* rescale what was summed under the old max */
            double c = exp(m - s);
            l *= c;
            for (size_t i = 0; i < hd; i++)
                acc[i] *= c;
            m = s;
        }
        double w = exp(s - m);
        l += w;
        for (size_t i = 0; i < hd; i++)
            acc[i] += w * kv_elem(vr, kv->f32, i);
    }
    for (size_t i = 0; i < hd; i++)
        out[i] = f32_to_bf16((float)(acc[i] / l));
}

void kvt_k_attn_ref(const kvt_k_kv_t *kv, uint32_t layer, const uint16_t *q, uint32_t n_heads,
                    const kvt_k_group_t *groups, uint32_t n_groups, const uint32_t *tables,
                    float scale, uint16_t *out)
{
    size_t hd = kv->head_dim;
    uint32_t n_rep = n_heads / kv->n_kv_heads;
    if (hd == 0 || hd > 256 || n_rep == 0)
        return;
    for (uint32_t gi = 0; gi < n_groups; gi++) {
        const kvt_k_group_t *gr = &groups[gi];
        for (uint32_t i = 0; i < gr->n; i++) {
            size_t row = (size_t)gr->row0 + i;
            for (uint32_t h = 0; h < n_heads; h++) {
                size_t off = (row * n_heads + h) * hd;
                ref_row(kv, layer, q + off, tables + gr->table_off, gr->pos0 + i, h / n_rep,
                        scale, out + off);
            }
        }
    }
}
