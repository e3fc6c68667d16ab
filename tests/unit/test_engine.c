/* Engine: the forward pass over the paged pool, on models built in memory
 * with random weights (small Llama with GQA, Qwen2-style with q/k/v bias
 * and tied embeddings, llama3 and linear RoPE scaling, head_dim !=
 * hidden / heads).
 *
 *   (a) prefill resumed from cached (or imported) blocks == one-shot;
 *   (b) chunked prefill == one-shot;
 *   (c) batched decode with sequences joining and leaving == each alone
 *       == prefilling the tokens (logits of every position, bitwise);
 *   (d) 1, 2, 3 threads give the same bits;
 *   (e) a plain double-precision reference (no pool, written from the
 *       Hugging Face formulas) agrees within 1e-4 relative;
 *   (f) a full pool and max_pos give their errors and leave the sequence
 *       as it was;
 *   (g) a prompt adopted from the pool's full blocks and a tail image
 *       (seq_tail, seq_adopt), in the same engine or in a second one that
 *       imported the blocks, decodes bitwise like the prefilled one; the
 *       tail image is the first t rows of each section of the block it
 *       becomes; every adopt error leaves the sequence empty and the pool
 *       as it was;
 * and the portable kernels keep the same promises.  Sequences are long
 * enough to cross several blocks and 64-key attention spans. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/alloc.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/ops.h"
#include "kvstore/tail.h"
#include "tests/support/random_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TOK 128
#define GREEDY_STEPS 8

/* --- models --- */

typedef enum { M_LLAMA_GQA, M_QWEN2, M_LLAMA3, M_LINEAR, M_ODD_HEAD, M_COUNT } model_kind_t;

static const char *const g_kind_name[M_COUNT] = {"llama-gqa", "qwen2", "llama3-rope",
                                                 "linear-rope", "odd-head-dim"};

static kvt_model_config_t config_of(model_kind_t kind)
{
    kvt_model_config_t c = {
        .arch = KVT_ARCH_LLAMA, .vocab_size = 97, .hidden = 64, .intermediate = 96,
        .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16, .max_pos = 128,
        .rms_eps = 1e-5f, .rope_theta = 10000.0f,
    };
    switch (kind) {
    case M_QWEN2:
        c.arch = KVT_ARCH_QWEN2;
        c.qkv_bias = true;
        c.tie_embeddings = true;
        c.hidden = 48, c.n_heads = 4, c.n_kv_heads = 1, c.head_dim = 12;
        c.rope_theta = 1000000.0f, c.rms_eps = 1e-6f;
        break;
    case M_LLAMA3:
        c.rope_scaling = KVT_ROPE_LLAMA3, c.rope_theta = 500000.0f;
        c.rope_factor = 8.0f, c.rope_low_freq_factor = 1.0f, c.rope_high_freq_factor = 4.0f;
        c.rope_orig_max_pos = 64;
        break;
    case M_LINEAR:
        c.rope_scaling = KVT_ROPE_LINEAR, c.rope_factor = 4.0f;
        c.n_layers = 3;
        break;
    case M_ODD_HEAD:
        c.hidden = 40, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 24, c.intermediate = 72;
        break;
    default:
        break;
    }
    return c;
}

static kvt_model_t *make_model(model_kind_t kind)
{
    kvt_model_config_t c = config_of(kind);
    return tu_random_model(&c, 0x5eed0000u + (uint64_t)kind, (uint8_t)(kind * 31));
}

static void make_tokens(uint32_t *t, size_t n, uint32_t seed, uint32_t vocab)
{
    for (size_t i = 0; i < n; i++)
        t[i] = (uint32_t)((seed * 2654435761u + i * 40503u + (i * i) % 17) % vocab);
}

/* --- engine helpers --- */

typedef struct {
    kvt_model_t *model;
    kvt_engine_t *eng;
    kvt_block_key_t root;
    uint32_t V;
} fx_t;

static void fx_open(fx_t *fx, kvt_model_t *m, kvt_dtype_t dt, uint32_t B, uint32_t chunk,
                    uint32_t threads, uint32_t n_blocks)
{
    fx->model = m;
    fx->V = m->cfg.vocab_size;
    kvt_engine_opts_t o = {.block_tokens = B, .kv_dtype = dt, .prefill_chunk = chunk,
                           .n_threads = threads, .n_blocks = n_blocks};
    assert_int_equal(kvt_engine_create(m, &o, &fx->eng), KVT_OK);
    assert_int_equal(kvt_block_key_root(kvt_engine_identity(fx->eng)->fingerprint, "t", 1,
                                        &fx->root), KVT_OK);
}

static void fx_close(fx_t *fx) { kvt_engine_destroy(fx->eng); }

static kvt_seq_t *seq_new(fx_t *fx)
{
    kvt_seq_t *s = NULL;
    assert_int_equal(kvt_engine_seq_create(fx->eng, &fx->root, &s), KVT_OK);
    return s;
}

static uint32_t argmax(const float *l, uint32_t n)
{
    uint32_t b = 0;
    for (uint32_t i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

/* Greedy-decode `steps` tokens after a prefill whose last logits are `l`. */
static void greedy(fx_t *fx, kvt_seq_t *s, const float *l, uint32_t *out, int steps)
{
    float *cur = malloc(fx->V * sizeof(float));
    memcpy(cur, l, fx->V * sizeof(float));
    for (int i = 0; i < steps; i++) {
        out[i] = argmax(cur, fx->V);
        assert_int_equal(kvt_engine_decode(fx->eng, &s, &out[i], 1, cur), KVT_OK);
    }
    free(cur);
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)a[i] - (double)b[i]));
        den = fmax(den, fabs((double)b[i]));
    }
    return den > 0 ? num / den : num;
}

static void blocks_equal(const fx_t *fa, const kvt_seq_t *a, const fx_t *fb, const kvt_seq_t *b)
{
    size_t n = kvt_engine_seq_n_full_blocks(a);
    assert_int_equal(n, kvt_engine_seq_n_full_blocks(b));
    for (size_t i = 0; i < n; i++) {
        kvt_block_header_t ha, hb;
        const void *pa, *pb;
        assert_int_equal(kvt_engine_seq_block(fa->eng, a, i, &ha, &pa), KVT_OK);
        assert_int_equal(kvt_engine_seq_block(fb->eng, b, i, &hb, &pb), KVT_OK);
        assert_true(kvt_block_key_eq(&ha.key, &hb.key));
        assert_int_equal(ha.payload_len, hb.payload_len);
        assert_memory_equal(pa, pb, ha.payload_len);
        assert_int_equal(ha.checksum, hb.checksum);
    }
}

/* --- (e) the reference: plain loops, double everywhere, no pool --- */

static void ref_inv_freq(const kvt_model_config_t *c, double *inv)
{
    size_t d = c->head_dim;
    for (size_t i = 0; i < d / 2; i++) {
        double f = 1.0 / pow((double)c->rope_theta, (double)(2 * i) / (double)d);
        if (c->rope_scaling == KVT_ROPE_LINEAR) {
            f /= c->rope_factor;
        } else if (c->rope_scaling == KVT_ROPE_LLAMA3) {
            double low_wl = c->rope_orig_max_pos / (double)c->rope_low_freq_factor;
            double high_wl = c->rope_orig_max_pos / (double)c->rope_high_freq_factor;
            double wl = 2 * M_PI / f;
            if (wl > low_wl) {
                f /= c->rope_factor;
            } else if (wl >= high_wl) {
                double sm = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
                            (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1 - sm) * f / c->rope_factor + sm * f;
            }
        }
        inv[i] = f;
    }
}

static void ref_norm(double *y, const double *x, const float *w, size_t n, double eps)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] * s * w[i];
}

static void ref_linear(double *y, const double *x, const float *w, const float *b, size_t in,
                       size_t out)
{
    for (size_t o = 0; o < out; o++) {
        double s = b ? b[o] : 0.0;
        for (size_t i = 0; i < in; i++)
            s += (double)w[o * in + i] * x[i];
        y[o] = s;
    }
}

static void ref_rope(double *v, size_t heads, size_t d, const double *inv, size_t pos)
{
    for (size_t h = 0; h < heads; h++)
        for (size_t i = 0; i < d / 2; i++) {
            double c = cos(pos * inv[i]), s = sin(pos * inv[i]);
            double a = v[h * d + i], b = v[h * d + i + d / 2];
            v[h * d + i] = a * c - b * s;
            v[h * d + i + d / 2] = b * c + a * s;
        }
}

/* Causal GQA attention of position t over K/V rows [0, t]. */
static void ref_attend(const kvt_model_config_t *c, const double *q, const double *K,
                       const double *V, size_t t, double *out, double *sc)
{
    size_t d = c->head_dim, kvr = (size_t)c->n_kv_heads * d, rep = c->n_heads / c->n_kv_heads;
    for (size_t h = 0; h < c->n_heads; h++) {
        size_t g = h / rep;
        double mx = -INFINITY, sum = 0;
        for (size_t j = 0; j <= t; j++) {
            double s = 0;
            for (size_t i = 0; i < d; i++)
                s += q[h * d + i] * K[j * kvr + g * d + i];
            sc[j] = s / sqrt((double)d);
            mx = fmax(mx, sc[j]);
        }
        for (size_t j = 0; j <= t; j++)
            sum += (sc[j] = exp(sc[j] - mx));
        for (size_t i = 0; i < d; i++) {
            double a = 0;
            for (size_t j = 0; j <= t; j++)
                a += sc[j] * V[j * kvr + g * d + i];
            out[h * d + i] = a / sum;
        }
    }
}

typedef struct {
    double *x, *h, *q, *K, *V, *att, *o, *g, *u, *sc, *inv;
} ref_buf_t;

static void ref_layer(const kvt_model_t *m, uint32_t l, size_t n, ref_buf_t *b)
{
    const kvt_model_config_t *c = &m->cfg;
    const kvt_layer_weights_t *w = &m->layers[l];
    size_t H = c->hidden, Q = (size_t)c->n_heads * c->head_dim;
    size_t KV = (size_t)c->n_kv_heads * c->head_dim, I = c->intermediate;
    for (size_t t = 0; t < n; t++) {
        ref_norm(b->h, b->x + t * H, w->attn_norm, H, c->rms_eps);
        ref_linear(b->q + t * Q, b->h, w->wq, w->bq, H, Q);
        ref_linear(b->K + t * KV, b->h, w->wk, w->bk, H, KV);
        ref_linear(b->V + t * KV, b->h, w->wv, w->bv, H, KV);
        ref_rope(b->q + t * Q, c->n_heads, c->head_dim, b->inv, t);
        ref_rope(b->K + t * KV, c->n_kv_heads, c->head_dim, b->inv, t);
    }
    for (size_t t = 0; t < n; t++) {
        ref_attend(c, b->q + t * Q, b->K, b->V, t, b->att, b->sc);
        ref_linear(b->o, b->att, w->wo, NULL, Q, H);
        double *x = b->x + t * H;
        for (size_t i = 0; i < H; i++)
            x[i] += b->o[i];
        ref_norm(b->h, x, w->mlp_norm, H, c->rms_eps);
        ref_linear(b->g, b->h, w->w_gate, NULL, H, I);
        ref_linear(b->u, b->h, w->w_up, NULL, H, I);
        for (size_t i = 0; i < I; i++)
            b->g[i] = b->g[i] / (1 + exp(-b->g[i])) * b->u[i];
        ref_linear(b->o, b->g, w->w_down, NULL, I, H);
        for (size_t i = 0; i < H; i++)
            x[i] += b->o[i];
    }
}

/* Logits [n][vocab] of every position. */
static void ref_forward(const kvt_model_t *m, const uint32_t *tok, size_t n, float *logits)
{
    const kvt_model_config_t *c = &m->cfg;
    size_t H = c->hidden, Q = (size_t)c->n_heads * c->head_dim;
    size_t KV = (size_t)c->n_kv_heads * c->head_dim;
    ref_buf_t b = {
        .x = calloc(n * H, 8), .h = calloc(H, 8), .q = calloc(n * Q, 8), .K = calloc(n * KV, 8),
        .V = calloc(n * KV, 8), .att = calloc(Q, 8), .o = calloc(H, 8),
        .g = calloc(c->intermediate, 8), .u = calloc(c->intermediate, 8), .sc = calloc(n, 8),
        .inv = calloc(c->head_dim / 2, 8),
    };
    ref_inv_freq(c, b.inv);
    for (size_t t = 0; t < n; t++)
        for (size_t i = 0; i < H; i++)
            b.x[t * H + i] = m->embed[(size_t)tok[t] * H + i];
    for (uint32_t l = 0; l < c->n_layers; l++)
        ref_layer(m, l, n, &b);
    double *lg = calloc(c->vocab_size, 8);
    for (size_t t = 0; t < n; t++) {
        ref_norm(b.h, b.x + t * H, m->final_norm, H, c->rms_eps);
        ref_linear(lg, b.h, m->lm_head, NULL, H, c->vocab_size);
        for (uint32_t v = 0; v < c->vocab_size; v++)
            logits[t * c->vocab_size + v] = (float)lg[v];
    }
    free(lg);
    double *all[] = {b.x, b.h, b.q, b.K, b.V, b.att, b.o, b.g, b.u, b.sc, b.inv};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        free(all[i]);
}

static void test_reference(void **state)
{
    (void)state;
    const size_t n = 70;
    for (int k = 0; k < M_COUNT; k++) {
        kvt_model_t *m = make_model((model_kind_t)k);
        uint32_t tok[MAX_TOK];
        make_tokens(tok, n, 7 + k, m->cfg.vocab_size);
        float *want = malloc(n * m->cfg.vocab_size * sizeof(float));
        float *got = malloc(n * m->cfg.vocab_size * sizeof(float));
        ref_forward(m, tok, n, want);
        fx_t fx;
        /* B = 16 and 32 (spans of 4 and 2 blocks); chunks of 32 tokens. */
        fx_open(&fx, m, KVT_DTYPE_F32, 16 << (k % 2), 32, 2, 0);
        kvt_seq_t *s = seq_new(&fx);
        assert_int_equal(kvt_engine_prefill(fx.eng, s, tok, n, got, KVT_ENGINE_LOGITS_ALL),
                         KVT_OK);
        for (size_t t = 0; t < n; t++) {
            double e = rel_err(got + t * fx.V, want + t * fx.V, fx.V);
            if (e > 1e-4)
                fail_msg("model %s position %zu: relative error %g", g_kind_name[k], t, e);
        }
        kvt_engine_seq_destroy(fx.eng, s);
        fx_close(&fx);
        free(want);
        free(got);
        kvt_model_destroy(m);
    }
}

/* --- (a) resume == one-shot --- */

typedef struct {
    kvt_model_t *m;
    kvt_dtype_t dt;
    uint32_t tok[MAX_TOK];
    size_t n;
    fx_t one;        /* one-shot engine */
    kvt_seq_t *seq;  /* its sequence, after prefill */
    float *logits;   /* its last logits */
    uint32_t greedy[GREEDY_STEPS];
} oneshot_t;

#define RES_B 8

static void oneshot_open(oneshot_t *o, model_kind_t kind, kvt_dtype_t dt, size_t n)
{
    o->m = make_model(kind);
    o->dt = dt;
    o->n = n;
    make_tokens(o->tok, n, 3 + kind, o->m->cfg.vocab_size);
    fx_open(&o->one, o->m, dt, RES_B, 0, 2, 0);
    o->seq = seq_new(&o->one);
    o->logits = malloc(o->one.V * sizeof(float));
    assert_int_equal(kvt_engine_prefill(o->one.eng, o->seq, o->tok, n, o->logits, 0), KVT_OK);
}

static void oneshot_close(oneshot_t *o)
{
    kvt_engine_seq_destroy(o->one.eng, o->seq);
    fx_close(&o->one);
    free(o->logits);
    kvt_model_destroy(o->m);
}

/* Reuse what fx's pool holds of o's tokens (want_reused tokens), prefill
 * the rest and compare with the one-shot run. */
static void resume_check(oneshot_t *o, fx_t *fx, size_t want_reused)
{
    kvt_seq_t *r = seq_new(fx);
    size_t reused = 99999;
    assert_int_equal(kvt_engine_seq_reuse(fx->eng, r, o->tok, o->n, &reused), KVT_OK);
    assert_int_equal(reused, want_reused);
    float *l = malloc(fx->V * sizeof(float));
    assert_int_equal(kvt_engine_prefill(fx->eng, r, o->tok + reused, o->n - reused, l, 0), KVT_OK);
    if (o->dt == KVT_DTYPE_F32)
        assert_true(rel_err(l, o->logits, fx->V) <= 1e-5);
    blocks_equal(&o->one, o->seq, fx, r);
    uint32_t g[GREEDY_STEPS];
    greedy(fx, r, l, g, GREEDY_STEPS);
    assert_memory_equal(g, o->greedy, sizeof(g));
    kvt_engine_seq_destroy(fx->eng, r);
    free(l);
}

static void resume_case(model_kind_t kind, kvt_dtype_t dt)
{
    oneshot_t o;
    /* 13 blocks: past one 64-key attention span; a multiple of B, so the
     * last block is never reused. */
    oneshot_open(&o, kind, dt, 13 * RES_B);
    /* Greedy tokens on a second one-shot sequence, so o.seq keeps its blocks. */
    kvt_seq_t *g = seq_new(&o.one);
    float *l = malloc(o.one.V * sizeof(float));
    assert_int_equal(kvt_engine_prefill(o.one.eng, g, o.tok, o.n, l, 0), KVT_OK);
    greedy(&o.one, g, l, o.greedy, GREEDY_STEPS);
    kvt_engine_seq_destroy(o.one.eng, g);
    free(l);
    for (size_t split = 0; split < o.n; split += RES_B) {
        fx_t fx;
        fx_open(&fx, o.m, dt, RES_B, 0, 2, 0);
        if (split > 0) { /* a first sequence stores the blocks, then goes away */
            kvt_seq_t *w = seq_new(&fx);
            assert_int_equal(kvt_engine_prefill(fx.eng, w, o.tok, split, NULL, 0), KVT_OK);
            kvt_engine_seq_destroy(fx.eng, w);
        }
        resume_check(&o, &fx, split);
        fx_close(&fx);
    }
    oneshot_close(&o);
}

static void test_resume_f32(void **state)
{
    (void)state;
    for (int k = 0; k < M_COUNT; k++)
        resume_case((model_kind_t)k, KVT_DTYPE_F32);
}

static void test_resume_bf16(void **state)
{
    (void)state;
    for (int k = 0; k < M_COUNT; k++)
        resume_case((model_kind_t)k, KVT_DTYPE_BF16);
}

/* Blocks exported from one engine (seq_block) and imported into another
 * (pool_put) resume like locally computed ones. */
static void test_resume_imported(void **state)
{
    (void)state;
    kvt_dtype_t dts[2] = {KVT_DTYPE_F32, KVT_DTYPE_BF16};
    for (int d = 0; d < 2; d++) {
        oneshot_t o;
        oneshot_open(&o, M_QWEN2, dts[d], 5 * RES_B + 3);
        kvt_seq_t *g = seq_new(&o.one);
        float *l = malloc(o.one.V * sizeof(float));
        assert_int_equal(kvt_engine_prefill(o.one.eng, g, o.tok, o.n, l, 0), KVT_OK);
        greedy(&o.one, g, l, o.greedy, GREEDY_STEPS);
        kvt_engine_seq_destroy(o.one.eng, g);
        free(l);
        fx_t fx;
        fx_open(&fx, o.m, dts[d], RES_B, 0, 1, 0);
        for (size_t i = 0; i < 3; i++) {
            kvt_block_header_t h;
            const void *p;
            assert_int_equal(kvt_engine_seq_block(o.one.eng, o.seq, i, &h, &p), KVT_OK);
            assert_int_equal(kvt_engine_pool_put(fx.eng, &h, p, h.payload_len), KVT_OK);
            assert_int_equal(kvt_engine_pool_put(fx.eng, &h, p, h.payload_len), KVT_ERR_EXISTS);
        }
        resume_check(&o, &fx, 3 * RES_B);
        fx_close(&fx);
        oneshot_close(&o);
    }
}

/* --- (b) chunked prefill == one-shot --- */

static void test_chunked(void **state)
{
    (void)state;
    const size_t n = 90;
    const uint32_t chunks[] = {7, 16, 100};
    kvt_dtype_t dts[2] = {KVT_DTYPE_F32, KVT_DTYPE_BF16};
    model_kind_t kinds[2] = {M_LLAMA_GQA, M_QWEN2};
    for (int k = 0; k < 2; k++) {
        kvt_model_t *m = make_model(kinds[k]);
        uint32_t tok[MAX_TOK];
        make_tokens(tok, n, 11, m->cfg.vocab_size);
        uint32_t B = k ? 24 : RES_B; /* 24: spans of 72 keys, not a multiple of 16 */
        for (int d = 0; d < 2; d++) {
            fx_t one;
            fx_open(&one, m, dts[d], B, 0, 2, 0);
            kvt_seq_t *a = seq_new(&one);
            float *la = malloc(n * one.V * sizeof(float)), *lb = malloc(n * one.V * sizeof(float));
            assert_int_equal(kvt_engine_prefill(one.eng, a, tok, n, la, KVT_ENGINE_LOGITS_ALL),
                             KVT_OK);
            for (int c = 0; c < 3; c++) {
                fx_t fx;
                fx_open(&fx, m, dts[d], B, chunks[c], 2, 0);
                kvt_seq_t *b = seq_new(&fx);
                assert_int_equal(kvt_engine_prefill(fx.eng, b, tok, n, lb, KVT_ENGINE_LOGITS_ALL),
                                 KVT_OK);
                assert_memory_equal(la, lb, n * one.V * sizeof(float));
                blocks_equal(&one, a, &fx, b);
                kvt_engine_seq_destroy(fx.eng, b);
                fx_close(&fx);
            }
            kvt_engine_seq_destroy(one.eng, a);
            fx_close(&one);
            free(la);
            free(lb);
        }
        kvt_model_destroy(m);
    }
}

/* --- (c) batched decode == each sequence alone --- */

#define DEC_SEQS 4
#define DEC_STEPS 14

static const size_t g_prompt_len[DEC_SEQS] = {5, 17, 70, 60}; /* some cross 64 keys */
static const int g_join[DEC_SEQS] = {0, 0, 3, 5};
static const int g_leave[DEC_SEQS] = {DEC_STEPS, 7, DEC_STEPS, 11};

static uint32_t dec_token(int seq, int step, uint32_t vocab)
{
    return (uint32_t)((seq * 7919 + step * 104729 + 13) % vocab);
}

/* Decoding a token gives the bits that prefilling it with its prefix
 * gives (engine.h: decode == prefill of each token alone). */
static void prefill_matches_decode(kvt_model_t *m, kvt_dtype_t dt, uint32_t prompt[][MAX_TOK],
                                   const float *alone)
{
    fx_t c;
    fx_open(&c, m, dt, RES_B, 16, 2, 0);
    float *all = malloc(MAX_TOK * c.V * sizeof(float));
    for (int i = 0; i < DEC_SEQS; i++) {
        uint32_t tok[MAX_TOK];
        size_t n = g_prompt_len[i];
        memcpy(tok, prompt[i], n * sizeof(uint32_t));
        for (int t = g_join[i]; t < g_leave[i]; t++)
            tok[n++] = dec_token(i, t, c.V);
        kvt_seq_t *s = seq_new(&c);
        assert_int_equal(kvt_engine_prefill(c.eng, s, tok, n, all, KVT_ENGINE_LOGITS_ALL), KVT_OK);
        for (int t = g_join[i]; t < g_leave[i]; t++)
            assert_memory_equal(all + (g_prompt_len[i] + (size_t)(t - g_join[i])) * c.V,
                                alone + ((size_t)i * DEC_STEPS + t) * c.V, c.V * sizeof(float));
        kvt_engine_seq_destroy(c.eng, s);
    }
    free(all);
    fx_close(&c);
}

static void decode_case(model_kind_t kind, kvt_dtype_t dt)
{
    kvt_model_t *m = make_model(kind);
    uint32_t prompt[DEC_SEQS][MAX_TOK];
    float *alone = malloc((size_t)DEC_SEQS * DEC_STEPS * m->cfg.vocab_size * sizeof(float));
    fx_t a, b;
    fx_open(&a, m, dt, RES_B, 0, 2, 0);
    fx_open(&b, m, dt, RES_B, 0, 2, 0);
    kvt_seq_t *seqs[DEC_SEQS];
    for (int i = 0; i < DEC_SEQS; i++) {
        make_tokens(prompt[i], g_prompt_len[i], 100 + i, m->cfg.vocab_size);
        kvt_seq_t *s = seq_new(&a);
        assert_int_equal(kvt_engine_prefill(a.eng, s, prompt[i], g_prompt_len[i], NULL, 0), KVT_OK);
        for (int t = g_join[i]; t < g_leave[i]; t++) {
            uint32_t tk = dec_token(i, t, a.V);
            float *out = alone + ((size_t)i * DEC_STEPS + t) * a.V;
            assert_int_equal(kvt_engine_decode(a.eng, &s, &tk, 1, out), KVT_OK);
        }
        kvt_engine_seq_destroy(a.eng, s);
        seqs[i] = seq_new(&b);
        assert_int_equal(kvt_engine_prefill(b.eng, seqs[i], prompt[i], g_prompt_len[i], NULL, 0),
                         KVT_OK);
    }
    prefill_matches_decode(m, dt, prompt, alone);
    float *out = malloc(DEC_SEQS * b.V * sizeof(float));
    for (int t = 0; t < DEC_STEPS; t++) {
        kvt_seq_t *batch[DEC_SEQS];
        uint32_t tk[DEC_SEQS];
        int who[DEC_SEQS], n = 0;
        for (int i = DEC_SEQS; i-- > 0;) /* reversed: batch order differs from seq order */
            if (t >= g_join[i] && t < g_leave[i]) {
                batch[n] = seqs[i], tk[n] = dec_token(i, t, b.V), who[n++] = i;
            }
        assert_int_equal(kvt_engine_decode(b.eng, batch, tk, (size_t)n, out), KVT_OK);
        for (int j = 0; j < n; j++)
            assert_memory_equal(out + (size_t)j * b.V,
                                alone + ((size_t)who[j] * DEC_STEPS + t) * b.V, b.V * sizeof(float));
    }
    for (int i = 0; i < DEC_SEQS; i++)
        kvt_engine_seq_destroy(b.eng, seqs[i]);
    fx_close(&a);
    fx_close(&b);
    free(out);
    free(alone);
    kvt_model_destroy(m);
}

static void test_batched_decode(void **state)
{
    (void)state;
    decode_case(M_LLAMA_GQA, KVT_DTYPE_F32);
    decode_case(M_LLAMA_GQA, KVT_DTYPE_BF16);
    decode_case(M_ODD_HEAD, KVT_DTYPE_BF16);
    decode_case(M_QWEN2, KVT_DTYPE_F32);
}

/* --- (d) thread counts --- */

static void run_threads(kvt_model_t *m, uint32_t threads, float *logits, float *dec)
{
    const size_t n = 100;
    uint32_t tok[MAX_TOK];
    make_tokens(tok, n, 5, m->cfg.vocab_size);
    fx_t fx;
    fx_open(&fx, m, KVT_DTYPE_BF16, 16, 16, threads, 0);
    kvt_seq_t *s[2] = {seq_new(&fx), seq_new(&fx)};
    assert_int_equal(kvt_engine_prefill(fx.eng, s[0], tok, n, logits, KVT_ENGINE_LOGITS_ALL),
                     KVT_OK);
    assert_int_equal(kvt_engine_prefill(fx.eng, s[1], tok + 10, 33, NULL, 0), KVT_OK);
    for (int step = 0; step < 5; step++) {
        uint32_t t2[2] = {(uint32_t)step, (uint32_t)(step * 3 + 1)};
        assert_int_equal(kvt_engine_decode(fx.eng, s, t2, 2, dec + (size_t)step * 2 * fx.V),
                         KVT_OK);
    }
    kvt_engine_seq_destroy(fx.eng, s[0]);
    kvt_engine_seq_destroy(fx.eng, s[1]);
    fx_close(&fx);
}

static void test_thread_counts(void **state)
{
    (void)state;
    kvt_model_t *m = make_model(M_LLAMA_GQA);
    size_t nl = 100 * (size_t)m->cfg.vocab_size, nd = 10 * (size_t)m->cfg.vocab_size;
    float *l1 = malloc(nl * 4), *d1 = malloc(nd * 4), *lx = malloc(nl * 4), *dx = malloc(nd * 4);
    run_threads(m, 1, l1, d1);
    for (uint32_t t = 2; t <= 3; t++) {
        run_threads(m, t, lx, dx);
        assert_memory_equal(l1, lx, nl * 4);
        assert_memory_equal(d1, dx, nd * 4);
    }
    free(l1), free(d1), free(lx), free(dx);
    kvt_model_destroy(m);
}

/* --- (f) errors leave the sequence as it was --- */

static void test_pool_full(void **state)
{
    (void)state;
    kvt_model_t *m = make_model(M_LLAMA_GQA);
    uint32_t tok[MAX_TOK];
    make_tokens(tok, 60, 21, m->cfg.vocab_size);
    fx_t small, big;
    fx_open(&small, m, KVT_DTYPE_F32, RES_B, 0, 2, 4); /* 4 blocks = 32 tokens */
    fx_open(&big, m, KVT_DTYPE_F32, RES_B, 0, 2, 0);
    kvt_seq_t *s = seq_new(&small), *ref = seq_new(&big);
    assert_int_equal(kvt_engine_prefill(small.eng, s, tok, 40, NULL, 0), KVT_ERR_FULL);
    assert_int_equal(kvt_engine_seq_len(s), 0);
    uint32_t used;
    kvt_engine_pool_stats(small.eng, &used, NULL, NULL);
    assert_int_equal(used, 0);
    assert_int_equal(kvt_engine_prefill(small.eng, s, tok, 20, NULL, 0), KVT_OK);
    assert_int_equal(kvt_engine_prefill(big.eng, ref, tok, 20, NULL, 0), KVT_OK);
    /* 20 more need blocks 3 and 4; only one slot is free. */
    assert_int_equal(kvt_engine_prefill(small.eng, s, tok + 20, 20, NULL, 0), KVT_ERR_FULL);
    assert_int_equal(kvt_engine_seq_len(s), 20);
    assert_memory_equal(kvt_engine_seq_tokens(s), tok, 20 * sizeof(uint32_t));
    kvt_engine_pool_stats(small.eng, &used, NULL, NULL);
    assert_int_equal(used, 3);
    /* The sequence goes on as if the failed call never happened. */
    float *la = malloc(small.V * 4), *lb = malloc(small.V * 4);
    assert_int_equal(kvt_engine_prefill(small.eng, s, tok + 20, 10, la, 0), KVT_OK);
    assert_int_equal(kvt_engine_prefill(big.eng, ref, tok + 20, 10, lb, 0), KVT_OK);
    assert_memory_equal(la, lb, small.V * 4);
    /* 30 tokens fill all 4 blocks at 32: the decode that needs a fifth
     * block fails the same way. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(kvt_engine_decode(small.eng, &s, tok, 1, la), KVT_OK);
    assert_int_equal(kvt_engine_decode(small.eng, &s, tok, 1, la), KVT_ERR_FULL);
    assert_int_equal(kvt_engine_seq_len(s), 32);
    kvt_engine_seq_destroy(small.eng, s);
    kvt_engine_seq_destroy(big.eng, ref);
    fx_close(&small);
    fx_close(&big);
    free(la), free(lb);
    kvt_model_destroy(m);
}

static void test_limits(void **state)
{
    (void)state;
    kvt_model_t *m = make_model(M_QWEN2); /* max_pos 128 */
    uint32_t tok[130];
    make_tokens(tok, 130, 9, m->cfg.vocab_size);
    fx_t fx;
    fx_open(&fx, m, KVT_DTYPE_BF16, RES_B, 0, 2, 0);
    kvt_seq_t *s = seq_new(&fx), *s2 = seq_new(&fx);
    assert_int_equal(kvt_engine_prefill(fx.eng, s, tok, 129, NULL, 0), KVT_ERR_TOO_LARGE);
    assert_int_equal(kvt_engine_prefill(fx.eng, s, tok, 100, NULL, 0), KVT_OK);
    assert_int_equal(kvt_engine_prefill(fx.eng, s, tok, 29, NULL, 0), KVT_ERR_TOO_LARGE);
    assert_int_equal(kvt_engine_seq_len(s), 100);
    assert_int_equal(kvt_engine_prefill(fx.eng, s, tok, 28, NULL, 0), KVT_OK);
    float *l = malloc(fx.V * 4);
    assert_int_equal(kvt_engine_decode(fx.eng, &s, tok, 1, l), KVT_ERR_TOO_LARGE);
    assert_int_equal(kvt_engine_seq_len(s), 128);
    uint32_t bad = fx.V;
    assert_int_equal(kvt_engine_prefill(fx.eng, s2, &bad, 1, NULL, 0), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_prefill(fx.eng, s2, tok, 0, NULL, 0), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_prefill(fx.eng, s2, tok, 3, NULL, 0), KVT_OK);
    kvt_seq_t *twice[2] = {s2, s2};
    uint32_t t2[2] = {1, 2};
    assert_int_equal(kvt_engine_decode(fx.eng, twice, t2, 2, NULL), KVT_ERR_INVALID);
    size_t reused;
    assert_int_equal(kvt_engine_seq_reuse(fx.eng, s2, tok, 20, &reused), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_len(s2), 3);
    kvt_engine_seq_destroy(fx.eng, s);
    kvt_engine_seq_destroy(fx.eng, s2);
    fx_close(&fx);
    free(l);
    kvt_model_destroy(m);
}

/* Two sequences that compute the same blocks end up sharing them; the
 * blocks stay cached after both are gone and serve a third. */
static void test_shared_blocks(void **state)
{
    (void)state;
    kvt_model_t *m = make_model(M_LLAMA_GQA);
    uint32_t tok[MAX_TOK];
    make_tokens(tok, 20, 4, m->cfg.vocab_size);
    fx_t fx;
    fx_open(&fx, m, KVT_DTYPE_BF16, RES_B, 0, 2, 0);
    kvt_seq_t *a = seq_new(&fx), *b = seq_new(&fx);
    assert_int_equal(kvt_engine_prefill(fx.eng, a, tok, 20, NULL, 0), KVT_OK);
    assert_int_equal(kvt_engine_prefill(fx.eng, b, tok, 20, NULL, 0), KVT_OK);
    uint32_t used, indexed;
    kvt_engine_pool_stats(fx.eng, &used, NULL, &indexed);
    assert_int_equal(indexed, 2);
    assert_int_equal(used, 4); /* 2 shared full blocks + 2 private tails */
    for (size_t i = 0; i < 2; i++) {
        kvt_block_header_t h;
        const void *pa, *pb;
        assert_int_equal(kvt_engine_seq_block(fx.eng, a, i, &h, &pa), KVT_OK);
        assert_int_equal(kvt_engine_seq_block(fx.eng, b, i, &h, &pb), KVT_OK);
        assert_ptr_equal(pa, pb);
    }
    kvt_block_header_t h;
    const void *p;
    assert_int_equal(kvt_engine_seq_block(fx.eng, a, 2, &h, &p), KVT_ERR_NOT_FOUND);
    kvt_engine_seq_destroy(fx.eng, a);
    kvt_engine_seq_destroy(fx.eng, b);
    kvt_engine_pool_stats(fx.eng, &used, NULL, &indexed);
    assert_int_equal(used, 2);
    assert_int_equal(indexed, 2);
    kvt_block_key_t keys[2];
    size_t nk;
    assert_int_equal(kvt_block_key_chain(&fx.root, RES_B, tok, 20, keys, 2, &nk), KVT_OK);
    assert_int_equal(kvt_engine_pool_match(fx.eng, keys, nk), 2);
    kvt_seq_t *c = seq_new(&fx);
    size_t reused;
    /* At most n - 1 tokens: 16 tokens reuse one block, 17 reuse two. */
    assert_int_equal(kvt_engine_seq_reuse(fx.eng, c, tok, 16, &reused), KVT_OK);
    assert_int_equal(reused, 8);
    kvt_engine_seq_destroy(fx.eng, c);
    c = seq_new(&fx);
    assert_int_equal(kvt_engine_seq_reuse(fx.eng, c, tok, 17, &reused), KVT_OK);
    assert_int_equal(reused, 16);
    assert_int_equal(kvt_engine_seq_n_full_blocks(c), 2);
    kvt_engine_seq_destroy(fx.eng, c);
    fx_close(&fx);
    kvt_model_destroy(m);
}

/* --- (g) adopting a prompt: full blocks from the pool plus a tail image --- */

#define ADOPT_STEPS 12 /* > RES_B: every tail fills up and becomes a block */

static uint64_t tail_cap(const fx_t *fx, size_t n)
{
    return kvt_tail_bytes(&kvt_engine_identity(fx->eng)->layout, (uint32_t)(n % RES_B));
}

/* The tail image of s (which must have one), malloc'ed; *len_p its size. */
static uint8_t *tail_read(const fx_t *fx, const kvt_seq_t *s, size_t *len_p)
{
    uint64_t cap = tail_cap(fx, kvt_engine_seq_len(s));
    assert_true(cap > 0);
    uint8_t *img = malloc(cap);
    size_t len = 0;
    assert_int_equal(kvt_engine_seq_tail(fx->eng, s, img, cap, &len), KVT_OK);
    assert_int_equal(len, cap);
    *len_p = len;
    return img;
}

static void tails_equal(const fx_t *fa, const kvt_seq_t *a, const fx_t *fb, const kvt_seq_t *b)
{
    assert_int_equal(kvt_engine_seq_len(a), kvt_engine_seq_len(b));
    if (kvt_engine_seq_len(a) % RES_B == 0)
        return;
    size_t la, lb;
    uint8_t *ta = tail_read(fa, a, &la), *tb = tail_read(fb, b, &lb);
    assert_int_equal(la, lb);
    assert_memory_equal(ta, tb, la);
    free(ta);
    free(tb);
}

/* Block images of fa's sequence a into fb's pool (an importing node);
 * blocks fb holds already are skipped. */
static void blocks_import(const fx_t *fa, const kvt_seq_t *a, fx_t *fb)
{
    for (size_t i = 0; i < kvt_engine_seq_n_full_blocks(a); i++) {
        kvt_block_header_t h;
        const void *p;
        assert_int_equal(kvt_engine_seq_block(fa->eng, a, i, &h, &p), KVT_OK);
        kvt_status_t st = kvt_engine_pool_put(fb->eng, &h, p, h.payload_len);
        assert_true(st == KVT_OK || st == KVT_ERR_EXISTS);
    }
}

/* The compact tail image (t rows) is the first t token rows of each
 * (layer, K/V) section of a block image (kvstore/tail.h). */
static void tail_in_block(const kvt_model_config_t *c, const uint8_t *tail, uint32_t t,
                          const uint8_t *block)
{
    size_t row = (size_t)c->n_kv_heads * c->head_dim * sizeof(float); /* f32 KV */
    for (size_t i = 0; i < 2 * (size_t)c->n_layers; i++)
        assert_memory_equal(tail + i * t * row, block + i * RES_B * row, t * row);
}

/* Prefill A (n tokens); adopt its prompt as C in the same engine and as D
 * in a second engine that imported A's full blocks; then ADOPT_STEPS
 * greedy decode steps on all three: bitwise A's logits every step. */
static void adopt_case(model_kind_t kind, size_t n)
{
    kvt_model_t *m = make_model(kind);
    uint32_t tok[MAX_TOK], t = (uint32_t)(n % RES_B);
    make_tokens(tok, n, 50 + (uint32_t)n, m->cfg.vocab_size);
    fx_t fa, fd;
    fx_open(&fa, m, KVT_DTYPE_F32, RES_B, 0, 2, 0);
    fx_open(&fd, m, KVT_DTYPE_F32, RES_B, 0, 2, 0);
    uint32_t V = fa.V;
    kvt_seq_t *a = seq_new(&fa), *c = seq_new(&fa), *d = seq_new(&fd);
    float *la = malloc(V * 4), *lc = malloc(V * 4), *ld = malloc(V * 4);
    assert_int_equal(kvt_engine_prefill(fa.eng, a, tok, n, la, 0), KVT_OK);
    uint8_t *tail = NULL;
    size_t len = 0;
    if (t) {
        tail = tail_read(&fa, a, &len);
        assert_int_equal(len, 2 * m->cfg.n_layers * t * m->cfg.n_kv_heads * m->cfg.head_dim * 4);
    } else { /* no tail: NULL is fine, and seq_tail has nothing to give */
        uint8_t dummy[64];
        size_t l = 777;
        assert_int_equal(kvt_engine_seq_tail(fa.eng, a, dummy, sizeof(dummy), &l),
                         KVT_ERR_NOT_FOUND);
        assert_int_equal(l, 777);
    }
    uint32_t used0, idx0, used, idx;
    kvt_engine_pool_stats(fa.eng, &used0, NULL, &idx0);
    assert_int_equal(kvt_engine_seq_adopt(fa.eng, c, tok, n, tail, len), KVT_OK);
    kvt_engine_pool_stats(fa.eng, &used, NULL, &idx);
    assert_int_equal(used, used0 + (t ? 1 : 0)); /* the full blocks are shared */
    assert_int_equal(idx, idx0);
    blocks_import(&fa, a, &fd);
    assert_int_equal(kvt_engine_seq_adopt(fd.eng, d, tok, n, tail, len), KVT_OK);
    assert_int_equal(kvt_engine_seq_len(c), n);
    assert_int_equal(kvt_engine_seq_len(d), n);
    assert_memory_equal(kvt_engine_seq_tokens(c), tok, n * sizeof(uint32_t));
    assert_memory_equal(kvt_engine_seq_tokens(d), tok, n * sizeof(uint32_t));
    blocks_equal(&fa, a, &fa, c);
    blocks_equal(&fa, a, &fd, d);
    tails_equal(&fa, a, &fa, c);
    tails_equal(&fa, a, &fd, d);
    for (int step = 0; step < ADOPT_STEPS; step++) {
        uint32_t next = argmax(la, V);
        assert_int_equal(kvt_engine_decode(fa.eng, &a, &next, 1, la), KVT_OK);
        assert_int_equal(kvt_engine_decode(fa.eng, &c, &next, 1, lc), KVT_OK);
        assert_int_equal(kvt_engine_decode(fd.eng, &d, &next, 1, ld), KVT_OK);
        assert_memory_equal(lc, la, V * 4);
        assert_memory_equal(ld, la, V * 4);
    }
    /* The tails filled up into blocks: the same blocks everywhere, and the
     * image read before is the head of A's block n / B. */
    blocks_equal(&fa, a, &fa, c);
    blocks_equal(&fa, a, &fd, d);
    tails_equal(&fa, a, &fd, d);
    if (t) {
        kvt_block_header_t h;
        const void *p;
        assert_int_equal(kvt_engine_seq_block(fa.eng, a, n / RES_B, &h, &p), KVT_OK);
        tail_in_block(&m->cfg, tail, t, p);
    }
    kvt_engine_seq_destroy(fa.eng, a);
    kvt_engine_seq_destroy(fa.eng, c);
    kvt_engine_seq_destroy(fd.eng, d);
    fx_close(&fa);
    fx_close(&fd);
    free(tail);
    free(la), free(lc), free(ld);
    kvt_model_destroy(m);
}

static void test_adopt(void **state)
{
    (void)state;
    /* n < B (no full block), a tail after one or many blocks, t = B - 1 */
    static const size_t ns[] = {3, 13, 29, 63};
    model_kind_t kinds[3] = {M_LLAMA_GQA, M_QWEN2, M_LINEAR};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
            adopt_case(kinds[k], ns[i]);
}

static void test_adopt_no_tail(void **state)
{
    (void)state;
    adopt_case(M_LLAMA_GQA, RES_B);
    adopt_case(M_QWEN2, 5 * RES_B);
}

static void stats_equal(const fx_t *fx, uint32_t used, uint32_t indexed)
{
    uint32_t u, i;
    kvt_engine_pool_stats(fx->eng, &u, NULL, &i);
    assert_int_equal(u, used);
    assert_int_equal(i, indexed);
}

/* Every error: the sequence stays empty, the pool as it was, and the
 * sequence is usable after. */
static void test_adopt_errors(void **state)
{
    (void)state;
    kvt_model_t *m = make_model(M_LLAMA_GQA); /* max_pos 128 */
    uint32_t tok[130], V = m->cfg.vocab_size;
    make_tokens(tok, 130, 11, V);
    fx_t fa, fb;
    fx_open(&fa, m, KVT_DTYPE_F32, RES_B, 0, 2, 0);
    fx_open(&fb, m, KVT_DTYPE_F32, RES_B, 0, 2, 0);
    kvt_seq_t *a = seq_new(&fa), *full = seq_new(&fa), *s = seq_new(&fb);
    assert_int_equal(kvt_engine_prefill(fa.eng, a, tok, 29, NULL, 0), KVT_OK); /* 3 blocks + 5 */
    assert_int_equal(kvt_engine_prefill(fa.eng, full, tok, 16, NULL, 0), KVT_OK);
    size_t len, l = 777;
    uint8_t *tail = tail_read(&fa, a, &len);
    /* seq_tail: no tail, a short buffer, no buffer; *len_p untouched */
    assert_int_equal(kvt_engine_seq_tail(fa.eng, full, tail, len, &l), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_engine_seq_tail(fa.eng, a, tail, len - 1, &l), KVT_ERR_TOO_LARGE);
    assert_int_equal(kvt_engine_seq_tail(fa.eng, a, NULL, len, &l), KVT_ERR_INVALID);
    assert_int_equal(l, 777);
    /* fb holds blocks 0 and 1 of 3 (imported from a sequence of 16) */
    blocks_import(&fa, full, &fb);
    uint32_t used0, idx0;
    kvt_engine_pool_stats(fb.eng, &used0, NULL, &idx0);
    assert_int_equal(idx0, 2);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 29, tail, len), KVT_ERR_NOT_FOUND);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 24, NULL, 0), KVT_ERR_NOT_FOUND);
    stats_equal(&fb, used0, idx0);
    assert_int_equal(kvt_engine_seq_len(s), 0);
    blocks_import(&fa, a, &fb); /* now all three (0 and 1 again: they exist) */
    kvt_engine_pool_stats(fb.eng, &used0, NULL, &idx0);
    assert_int_equal(idx0, 3);
    /* a wrong tail length, no tail, bad tokens, 0 tokens, past max_pos */
    uint32_t bad[29];
    memcpy(bad, tok, sizeof(bad));
    bad[20] = V;
    uint8_t *big = calloc(1, len * 2);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 29, tail, len - 1), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 29, tail, len + 1), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 29, tail, 0), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 29, NULL, len), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 30, tail, len), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, bad, 29, tail, len), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 0, NULL, 0), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, NULL, 29, tail, len), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 129, big, tail_cap(&fb, 129)),
                     KVT_ERR_TOO_LARGE);
    stats_equal(&fb, used0, idx0);
    assert_int_equal(kvt_engine_seq_len(s), 0);
    /* The k-th allocation of a new sequence's arrays fails: NOMEM,
     * nothing taken, the sequence empty and usable. */
    long k = 0;
    for (;; k++) {
        kvt_seq_t *s2 = seq_new(&fb);
        kvt_alloc_fail_after(k);
        kvt_status_t st = kvt_engine_seq_adopt(fb.eng, s2, tok, 29, tail, len);
        kvt_alloc_fail_after(-1);
        if (st == KVT_OK) {
            stats_equal(&fb, used0 + 1, idx0);
            kvt_engine_seq_destroy(fb.eng, s2);
            break;
        }
        assert_int_equal(st, KVT_ERR_NOMEM);
        stats_equal(&fb, used0, idx0);
        assert_int_equal(kvt_engine_seq_len(s2), 0);
        assert_int_equal(kvt_engine_seq_adopt(fb.eng, s2, tok, 29, tail, len), KVT_OK);
        kvt_engine_seq_destroy(fb.eng, s2);
    }
    assert_true(k >= 3); /* tokens, slots, keys */
    stats_equal(&fb, used0, idx0);
    /* The sequence that saw every error works. */
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 29, tail, len), KVT_OK);
    stats_equal(&fb, used0 + 1, idx0);
    assert_int_equal(kvt_engine_seq_len(s), 29);
    /* not empty any more */
    assert_int_equal(kvt_engine_seq_adopt(fb.eng, s, tok, 29, tail, len), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_adopt(fa.eng, a, tok, 29, tail, len), KVT_ERR_INVALID);
    assert_int_equal(kvt_engine_seq_len(s), 29);
    stats_equal(&fb, used0 + 1, idx0);
    float *la = malloc(V * 4), *ls = malloc(V * 4);
    assert_int_equal(kvt_engine_decode(fa.eng, &a, &tok[29], 1, la), KVT_OK);
    assert_int_equal(kvt_engine_decode(fb.eng, &s, &tok[29], 1, ls), KVT_OK);
    assert_memory_equal(la, ls, V * 4);
    kvt_engine_seq_destroy(fa.eng, a);
    kvt_engine_seq_destroy(fa.eng, full);
    kvt_engine_seq_destroy(fb.eng, s);
    fx_close(&fa);
    fx_close(&fb);
    free(tail), free(big), free(la), free(ls);
    kvt_model_destroy(m);
}

/* No slot for the tail (every slot referenced): KVT_ERR_FULL, and the
 * references taken on the full blocks are all given back. */
static void test_adopt_full(void **state)
{
    (void)state;
    kvt_model_t *m = make_model(M_LLAMA_GQA);
    uint32_t tok[64], other[32];
    make_tokens(tok, 64, 31, m->cfg.vocab_size);
    make_tokens(other, 32, 32, m->cfg.vocab_size);
    fx_t small, big;
    fx_open(&small, m, KVT_DTYPE_F32, RES_B, 0, 2, 4); /* 4 blocks = 32 tokens */
    fx_open(&big, m, KVT_DTYPE_F32, RES_B, 0, 2, 0);
    kvt_seq_t *x = seq_new(&small), *c = seq_new(&small), *ref = seq_new(&big);
    assert_int_equal(kvt_engine_prefill(small.eng, x, tok, 32, NULL, 0), KVT_OK);
    assert_int_equal(kvt_engine_prefill(big.eng, ref, tok, 20, NULL, 0), KVT_OK);
    size_t len;
    uint8_t *tail = tail_read(&big, ref, &len);
    stats_equal(&small, 4, 4);
    assert_int_equal(kvt_engine_seq_adopt(small.eng, c, tok, 20, tail, len), KVT_ERR_FULL);
    stats_equal(&small, 4, 4);
    assert_int_equal(kvt_engine_seq_len(c), 0);
    /* With x gone the tail's slot evicts x's last block (a leaf). */
    kvt_engine_seq_destroy(small.eng, x);
    assert_int_equal(kvt_engine_seq_adopt(small.eng, c, tok, 20, tail, len), KVT_OK);
    stats_equal(&small, 4, 3);
    float *lc = malloc(small.V * 4), *lr = malloc(small.V * 4);
    assert_int_equal(kvt_engine_decode(small.eng, &c, &tok[20], 1, lc), KVT_OK);
    assert_int_equal(kvt_engine_decode(big.eng, &ref, &tok[20], 1, lr), KVT_OK);
    assert_memory_equal(lc, lr, small.V * 4);
    /* Nothing stayed referenced: 32 new tokens get all four slots. */
    kvt_engine_seq_destroy(small.eng, c);
    kvt_seq_t *y = seq_new(&small);
    assert_int_equal(kvt_engine_prefill(small.eng, y, other, 32, NULL, 0), KVT_OK);
    stats_equal(&small, 4, 4);
    kvt_engine_seq_destroy(small.eng, y);
    kvt_engine_seq_destroy(big.eng, ref);
    fx_close(&small);
    fx_close(&big);
    free(tail), free(lc), free(lr);
    kvt_model_destroy(m);
}

/* Allocation failures (injected) in create and in a prefill give
 * KVT_ERR_NOMEM, leak nothing (ASan) and leave the sequence unchanged. */
static void test_alloc_failures(void **state)
{
    (void)state;
    kvt_model_t *m = make_model(M_LLAMA_GQA);
    kvt_engine_opts_t o = {.block_tokens = RES_B, .n_threads = 2};
    kvt_engine_t *eng = NULL;
    long n = 0;
    for (;; n++) {
        kvt_alloc_fail_after(n);
        kvt_status_t st = kvt_engine_create(m, &o, &eng);
        kvt_alloc_fail_after(-1);
        if (st == KVT_OK)
            break;
        assert_int_equal(st, KVT_ERR_NOMEM);
    }
    assert_true(n > 5);
    kvt_block_key_t root = {{7}};
    kvt_seq_t *s = NULL;
    assert_int_equal(kvt_engine_seq_create(eng, &root, &s), KVT_OK);
    uint32_t tok[100];
    make_tokens(tok, 100, 1, m->cfg.vocab_size);
    assert_int_equal(kvt_engine_prefill(eng, s, tok, 10, NULL, 0), KVT_OK);
    kvt_alloc_fail_after(0); /* growing the token array (64 -> 100) fails */
    kvt_status_t st = kvt_engine_prefill(eng, s, tok + 10, 90, NULL, 0);
    kvt_alloc_fail_after(-1);
    assert_int_equal(st, KVT_ERR_NOMEM);
    assert_int_equal(kvt_engine_seq_len(s), 10);
    uint32_t used;
    kvt_engine_pool_stats(eng, &used, NULL, NULL);
    assert_int_equal(used, 2);
    assert_int_equal(kvt_engine_prefill(eng, s, tok + 10, 90, NULL, 0), KVT_OK);
    kvt_engine_seq_destroy(eng, s);
    kvt_engine_destroy(eng);
    kvt_model_destroy(m);
}

/* The portable kernels (used where the CPU lacks AVX-512) keep the same
 * promises: the reference agrees, resumed and batched runs are bitwise. */
static void test_generic_kernels(void **state)
{
    kvt_ops_force_generic(true);
    assert_string_equal(kvt_ops_isa(), "generic");
    test_reference(state);
    resume_case(M_LLAMA_GQA, KVT_DTYPE_BF16);
    resume_case(M_ODD_HEAD, KVT_DTYPE_F32);
    decode_case(M_QWEN2, KVT_DTYPE_BF16);
    kvt_ops_force_generic(false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference),
        cmocka_unit_test(test_resume_f32),
        cmocka_unit_test(test_resume_bf16),
        cmocka_unit_test(test_resume_imported),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_batched_decode),
        cmocka_unit_test(test_thread_counts),
        cmocka_unit_test(test_pool_full),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_shared_blocks),
        cmocka_unit_test(test_adopt),
        cmocka_unit_test(test_adopt_no_tail),
        cmocka_unit_test(test_adopt_errors),
        cmocka_unit_test(test_adopt_full),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_generic_kernels),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
