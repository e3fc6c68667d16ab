/* Weight upload of the GPU engine (layout: engine/gpu_engineInt.h).
 *
 * The model holds f32 arrays (the CPU reference path).  They go to the
 * device once, at create: matrices rounded to bf16 (nearest even, the
 * rounding of engine/ops), norms, biases and inv_freq as f32.  q/k/v are
 * concatenated into one [q_dim + 2 kv_dim][hidden] matrix and gate/up into
 * one [2 inter][hidden] matrix, so each takes one product per pass.
 *
 * Conversion runs on the host in chunks of UP_CHUNK bytes through two
 * pinned buffers: while one chunk is copied the next is converted (on the
 * engine's host threads, so an 8B model converts in a few seconds), and
 * the device gets each tensor straight into its place in one allocation. */
#include "engine/gpu_engineInt.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"
#include "engine/ops.h"
#include "engine/threads.h"

#include <string.h>

#define UP_CHUNK (32u << 20)
#define CONV_GRAIN (1u << 16) /* elements per conversion work item */

typedef struct {
    kvt_gpu_stream_t s;
    kvt_threads_t *threads;
    uint8_t *buf[2];
    int cur;
    bool plan;      /* first walk: only add up the sizes */
    uint8_t *base;  /* device allocation */
    size_t off;
} uploader_t;

typedef struct {
    const float *src;
    uint16_t *dst;
    size_t n;
} conv_t;

static void conv_items(void *arg, size_t b, size_t end, uint32_t tid)
{
    const conv_t *c = arg;
    (void)tid;
    for (size_t i = b; i < end; i++) {
        size_t at = i * CONV_GRAIN, k = c->n - at < CONV_GRAIN ? c->n - at : CONV_GRAIN;
        kvt_ops_f32_to_bf16_n(c->dst + at, c->src + at, k);
    }
}

/* Copy n elements of src to dst (device), as bf16 or f32. */
static kvt_status_t put(uploader_t *u, void *dst, const float *src, size_t n, bool bf16)
{
    size_t es = bf16 ? 2 : 4, per = UP_CHUNK / es;
    for (size_t i = 0; i < n; i += per) {
        size_t k = n - i < per ? n - i : per;
        uint8_t *buf = u->buf[u->cur];
        if (bf16) {
            conv_t c = {.src = src + i, .dst = (uint16_t *)buf, .n = k};
            kvt_threads_for(u->threads, (k + CONV_GRAIN - 1) / CONV_GRAIN, 1, conv_items, &c);
        } else {
            memcpy(buf, src + i, k * es);
        }
        /* The copy in flight reads the other buffer; wait for it, then send
         * this one (so conversion overlaps the previous copy). */
        kvt_status_t st = kvt_gpu_stream_sync(u->s);
        if (st == KVT_OK)
            st = kvt_gpu_h2d((uint8_t *)dst + i * es, buf, k * es, u->s);
        if (st != KVT_OK)
            return st;
        u->cur ^= 1;
    }
    return KVT_OK;
}

/* Reserve room for `parts` tensors laid end to end (n[i] elements each) and
 * upload them there; returns the device address (NULL while planning). */
static void *tensor(uploader_t *u, kvt_status_t *st, bool bf16, size_t parts,
                    const float *const *src, const size_t *n)
{
    size_t es = bf16 ? 2 : 4, total = 0;
    for (size_t i = 0; i < parts; i++)
        total += n[i];
    size_t at = (u->off + 255) & ~(size_t)255;
    u->off = at + total * es;
    if (u->plan || *st != KVT_OK)
        return u->plan ? NULL : u->base + at;
    size_t done = 0;
    for (size_t i = 0; i < parts && *st == KVT_OK; i++) {
        *st = put(u, u->base + at + done * es, src[i], n[i], bf16);
        done += n[i];
    }
    return u->base + at;
}

static void *one(uploader_t *u, kvt_status_t *st, bool bf16, const float *src, size_t n)
{
    return tensor(u, st, bf16, 1, &src, &n);
}

/* Walk the model: plan (sizes only) or upload. */
static kvt_status_t walk(kvt_engine_t *e, kvt_gpu_engine_t *g, uploader_t *u)
{
    const kvt_model_t *m = e->model;
    const kvt_model_config_t *c = &e->cfg;
    size_t H = c->hidden, I = c->intermediate, Q = e->q_dim, KV = e->kv_row;
    size_t V = c->vocab_size;
    kvt_status_t st = KVT_OK;
    g->embed = one(u, &st, true, m->embed, V * H);
    g->lm_head = m->lm_head == m->embed ? g->embed : one(u, &st, true, m->lm_head, V * H);
    g->final_norm = one(u, &st, false, m->final_norm, H);
    g->inv_freq = one(u, &st, false, e->inv_freq, c->head_dim / 2);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const kvt_layer_weights_t *w = &m->layers[l];
        kvt_gpu_layer_t *L = &g->layers[l];
        const float *qkv[3] = {w->wq, w->wk, w->wv};
        const size_t qkv_n[3] = {Q * H, KV * H, KV * H};
        const float *gu[2] = {w->w_gate, w->w_up};
        const size_t gu_n[2] = {I * H, I * H};
        L->attn_norm = one(u, &st, false, w->attn_norm, H);
        L->mlp_norm = one(u, &st, false, w->mlp_norm, H);
        L->w_qkv = tensor(u, &st, true, 3, qkv, qkv_n);
        L->b_qkv = NULL;
        if (w->bq && w->bk && w->bv) {
            const float *b[3] = {w->bq, w->bk, w->bv};
            const size_t b_n[3] = {Q, KV, KV};
            L->b_qkv = tensor(u, &st, false, 3, b, b_n);
        }
        L->wo = one(u, &st, true, w->wo, H * Q);
        L->w_gu = tensor(u, &st, true, 2, gu, gu_n);
        L->w_down = one(u, &st, true, w->w_down, H * I);
    }
    if (st == KVT_OK && !u->plan)
        st = kvt_gpu_stream_sync(u->s);
    return st;
}

kvt_status_t kvt_gpu_weights_upload(kvt_engine_t *e, kvt_gpu_engine_t *g)
{
    uint64_t t0 = kvt_time_ns();
    g->layers = kvt_calloc("engine.gpu_layers", e->cfg.n_layers, sizeof(*g->layers));
    if (!g->layers)
        return KVT_ERR_NOMEM;
    uploader_t u = {.plan = true};
    kvt_status_t st = walk(e, g, &u);
    if (st == KVT_OK)
        st = kvt_gpu_malloc((void **)&g->wmem, u.off, "engine weights");
    if (st != KVT_OK)
        return st;
    g->wbytes = u.off;
    u = (uploader_t){.base = g->wmem};
    st = kvt_gpu_stream_create(&u.s);
    if (st == KVT_OK)
        st = kvt_gpu_host_alloc((void **)&u.buf[0], 2 * (size_t)UP_CHUNK, "engine upload buffer");
    if (st == KVT_OK) {
        u.buf[1] = u.buf[0] + UP_CHUNK;
        u.threads = g->threads;
    }
    if (st == KVT_OK)
        st = walk(e, g, &u);
    if (u.s)
        (void)kvt_gpu_stream_sync(u.s);
    kvt_gpu_host_free(u.buf[0]);
    if (u.s)
        kvt_gpu_stream_destroy(u.s);
    if (st == KVT_OK)
        kvt_log_info("engine: weights uploaded mb=%zu ms=%.0f", g->wbytes >> 20,
                     (double)(kvt_time_ns() - t0) / 1e6);
    return st;
}

void kvt_gpu_weights_free(kvt_gpu_engine_t *g)
{
    kvt_gpu_free(g->wmem);
    g->wmem = NULL;
    kvt_free(g->layers);
    g->layers = NULL;
}
