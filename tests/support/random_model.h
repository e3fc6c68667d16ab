/* Random-weight models built in memory for engine tests (CPU and GPU):
 * every weight uniform from a seeded splitmix64 stream, scaled so that
 * activations and attention scores stay in a realistic range.  The same
 * config and seed give the same model everywhere.  Header-only; include
 * after cmocka.h. */
#ifndef KVT_TESTS_RANDOM_MODEL_H
#define KVT_TESTS_RANDOM_MODEL_H

#include "engine/model.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

static uint64_t tu_rng;

static inline double tu_urand(void) /* [-1, 1) */
{
    uint64_t z = (tu_rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-52 - 1.0;
}

static inline void tu_fill(float *p, size_t n, double scale, double offset)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(offset + scale * tu_urand());
}

/* A model of config c with weights from `seed`; digest[i] = digest_base + i
 * (so models made for different cases have different fingerprints). */
static inline kvt_model_t *tu_random_model(const kvt_model_config_t *c, uint64_t seed,
                                           uint8_t digest_base)
{
    kvt_model_t *m = NULL;
    assert_int_equal(kvt_model_alloc(c, &m), KVT_OK);
    tu_rng = seed;
    size_t H = c->hidden, Q = (size_t)c->n_heads * c->head_dim;
    size_t KV = (size_t)c->n_kv_heads * c->head_dim, I = c->intermediate;
    tu_fill(m->embed, (size_t)c->vocab_size * H, 1.0, 0.0);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        kvt_layer_weights_t *w = &m->layers[l];
        tu_fill(w->attn_norm, H, 0.2, 1.0);
        tu_fill(w->mlp_norm, H, 0.2, 1.0);
        /* Uniform(-a, a) with a = sqrt(3 / in): unit-variance outputs. */
        tu_fill(w->wq, Q * H, 1.5 * sqrt(3.0 / H), 0.0);
        tu_fill(w->wk, KV * H, 1.5 * sqrt(3.0 / H), 0.0);
        tu_fill(w->wv, KV * H, sqrt(3.0 / H), 0.0);
        tu_fill(w->wo, H * Q, sqrt(3.0 / Q), 0.0);
        tu_fill(w->w_gate, I * H, sqrt(3.0 / H), 0.0);
        tu_fill(w->w_up, I * H, sqrt(3.0 / H), 0.0);
        tu_fill(w->w_down, H * I, sqrt(3.0 / I), 0.0);
        if (c->qkv_bias) {
            tu_fill(w->bq, Q, 0.5, 0.0);
            tu_fill(w->bk, KV, 0.5, 0.0);
            tu_fill(w->bv, KV, 0.5, 0.0);
        }
    }
    tu_fill(m->final_norm, H, 0.2, 1.0);
    if (!c->tie_embeddings)
        tu_fill(m->lm_head, (size_t)c->vocab_size * H, sqrt(3.0 / H), 0.0);
    for (int i = 0; i < 32; i++)
        m->digest[i] = (uint8_t)(digest_base + i);
    return m;
}

#endif
