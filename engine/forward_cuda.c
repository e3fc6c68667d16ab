/* The GPU engine: create/destroy, the transformer pass with the kernels of
 * kernels/, and block moves between the device pool and the host.
 * Compiled only when CUDA is built in (engine/CMakeLists.txt); device.c
 * routes GPU engines here.  Memory layout: engine/gpu_engineInt.h.
 *
 * A pass (one prefill chunk or one decode step) runs on one stream:
 *   upload   row tokens, positions, slots and token offsets, the attention
 *            groups and the block tables, packed into one pinned buffer
 *            and sent with one async copy;
 *   embed    x = embed[token] (f32 residual);
 *   layers   rmsnorm -> hn (bf16) -> one fused QKV product (f32) ->
 *            bias + RoPE, q to bf16, K/V into the pool slots in the KV
 *            dtype -> attention (prefill kernel for groups of n > 1 rows,
 *            decode kernel for groups of one row; both read every key from
 *            the pool, so cached, imported and fresh keys are the same
 *            bytes) -> O product added into x (beta 1) -> rmsnorm -> fused
 *            gate|up product -> SwiGLU (bf16) -> down product added into x;
 *   logits   the wanted rows are consecutive (the last row of a prefill
 *            chunk, every row of a decode step or of a LOGITS_ALL chunk),
 *            so no gather is needed: final rmsnorm of those rows, lm_head
 *            product, copy to pinned memory, then to the caller's array.
 * The pass ends with a stream synchronize, so between engine calls the
 * device is idle: the host may reuse the upload staging and hand slots to
 * block moves on the copy stream without further ordering.
 *
 * Determinism: every kernel and the cuBLAS products run the same launch
 * shapes for the same inputs, but a row's arithmetic in a product may
 * depend on how many rows the product has (cuBLAS picks its algorithm by
 * shape), so resumed and one-shot prefill agree within bf16 rounding, not
 * necessarily bitwise (test_gpu_engine reports which). */
#include "engine/gpu_engineInt.h"

#include "common/alloc.h"
#include "common/log.h"
#include "common/time.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))

/* --- scratch --- */

typedef struct {
    size_t off;
    bool plan;
    uint8_t *base;
} bump_t;

static void *bump(bump_t *b, size_t bytes)
{
    size_t at = ALIGN_UP(b->off, 256);
    b->off = at + bytes;
    return b->plan ? NULL : b->base + at;
}

static void carve_scratch(kvt_engine_t *e, kvt_gpu_engine_t *g, bump_t *b)
{
    const kvt_model_config_t *c = &e->cfg;
    size_t R = e->rows_cap, H = c->hidden, I = c->intermediate;
    size_t qkv = e->q_dim + 2 * e->kv_row;
    g->x = bump(b, R * H * sizeof(float));
    g->hn = bump(b, R * H * sizeof(uint16_t));
    g->qkv = bump(b, R * qkv * sizeof(float));
    g->q = bump(b, R * e->q_dim * sizeof(uint16_t));
    g->att = bump(b, R * e->q_dim * sizeof(uint16_t));
    g->gu = bump(b, R * 2 * I * sizeof(float));
    g->act = bump(b, R * I * sizeof(uint16_t));
    g->logits = bump(b, g->logit_rows * c->vocab_size * sizeof(float));
    g->d_up = bump(b, g->up_cap * sizeof(uint32_t));
}

/* Rows per decode pass and the upload's size: every group's block table
 * fits (a table is at most ceil(max_pos / B) entries). */
static void size_pass(kvt_engine_t *e, kvt_gpu_engine_t *g)
{
    size_t per_seq = ((size_t)e->cfg.max_pos + e->B - 1) / e->B;
    size_t rows = e->rows_cap < KVT_GPU_DECODE_ROWS ? e->rows_cap : KVT_GPU_DECODE_ROWS;
    if (rows * per_seq > KVT_GPU_MAX_TABLE)
        rows = KVT_GPU_MAX_TABLE / per_seq ? KVT_GPU_MAX_TABLE / per_seq : 1;
    e->decode_rows = rows;
    g->max_table = rows * per_seq;
    /* tok, pos, slot, offset per row; the decode plan (4 words); two
     * group arrays of 4 words each */
    g->up_cap = 4 * e->rows_cap + 4 + 8 * rows + g->max_table;
    g->logit_rows = e->rows_cap < KVT_GPU_LOGIT_ROWS ? e->rows_cap : KVT_GPU_LOGIT_ROWS;
}

static kvt_status_t alloc_scratch(kvt_engine_t *e, kvt_gpu_engine_t *g)
{
    size_pass(e, g);
    bump_t b = {.plan = true};
    carve_scratch(e, g, &b);
    kvt_status_t st = kvt_gpu_malloc((void **)&g->smem, b.off, "engine scratch");
    if (st != KVT_OK)
        return st;
    b = (bump_t){.base = g->smem};
    carve_scratch(e, g, &b);
    st = kvt_gpu_host_alloc((void **)&g->h_up, g->up_cap * sizeof(uint32_t), "engine upload");
    if (st == KVT_OK)
        st = kvt_gpu_host_alloc((void **)&g->h_logits,
                                g->logit_rows * e->cfg.vocab_size * sizeof(float),
                                "engine logits");
    return st;
}

/* --- the pool and the staging --- */

static kvt_status_t alloc_pool(kvt_engine_t *e, kvt_gpu_engine_t *g, uint32_t n_blocks)
{
    const kvt_block_layout_t *lay = &e->identity.layout;
    uint64_t payload = kvt_block_layout_payload_bytes(lay);
    uint64_t stride = (payload + 63) & ~(uint64_t)63;
    uint64_t n = n_blocks;
    if (n == 0) {
        n = (8ull * e->cfg.max_pos + e->B - 1) / e->B;
        uint64_t cap = KVT_GPU_POOL_DEFAULT_BYTES / stride;
        n = n < cap ? n : cap;
        n = n ? n : 1;
    }
    for (;;) {
        kvt_status_t st = kvt_kv_pool_init_meta(&e->pool, lay, (uint32_t)n);
        if (st != KVT_OK)
            return st;
        st = kvt_gpu_malloc((void **)&e->pool.region, e->pool.region_len, "kv pool");
        if (st == KVT_OK)
            break;
        kvt_kv_pool_cleanup(&e->pool);
        /* The default shrinks until it fits; an explicit size does not. */
        if (st != KVT_ERR_NOMEM || n_blocks != 0 || n / 2 < KVT_GPU_POOL_MIN_BLOCKS)
            return st;
        n /= 2;
        kvt_log_info("engine: gpu pool does not fit, trying fewer blocks blocks=%llu",
                     (unsigned long long)n);
    }
    g->kv = (kvt_k_kv_t){
        .base = e->pool.region,
        .slot_bytes = e->pool.stride,
        .block_tokens = e->B,
        .n_layers = e->cfg.n_layers,
        .n_kv_heads = e->cfg.n_kv_heads,
        .head_dim = e->cfg.head_dim,
        .f32 = e->kv_dtype == KVT_DTYPE_F32,
    };
    return KVT_OK;
}

/* --- create / destroy --- */

static void graphs_clear(kvt_gpu_engine_t *g);

void kvt_gpu_engine_destroy(kvt_engine_t *e)
{
    kvt_gpu_engine_t *g = e->gpu;
    if (!g)
        return;
    (void)kvt_gpu_use(g->device);
    if (g->stream)
        (void)kvt_gpu_stream_sync(g->stream);
    if (g->copy)
        (void)kvt_gpu_stream_sync(g->copy);
    if (g->mv_out_bytes || g->mv_in_bytes)
        kvt_log_info("engine: block moves out_mb=%llu out_ms=%.1f out_wait_ms=%.1f "
                     "out_host_ms=%.1f in_mb=%llu in_ms=%.1f in_wait_ms=%.1f in_host_ms=%.1f",
                     (unsigned long long)(g->mv_out_bytes >> 20), g->mv_out_ns / 1e6,
                     g->mv_out_wait_ns / 1e6, g->mv_out_host_ns / 1e6,
                     (unsigned long long)(g->mv_in_bytes >> 20), g->mv_in_ns / 1e6,
                     g->mv_in_wait_ns / 1e6, g->mv_in_host_ns / 1e6);
    if (g->graph_launches)
        kvt_log_info("engine: decode graphs captures=%llu launches=%llu",
                     (unsigned long long)g->graph_captures,
                     (unsigned long long)g->graph_launches);
    graphs_clear(g);
    kvt_gpu_free(g->dec_scratch);
    kvt_gpu_free(e->pool.region);
    kvt_kv_pool_cleanup(&e->pool);
    kvt_gpu_moves_free(g);
    kvt_threads_destroy(g->threads);
    for (int i = 0; i <= KVT_GPU_MOVE_PARTS; i++)
        if (g->ev[i])
            kvt_gpu_event_destroy(g->ev[i]);
    kvt_gpu_host_free(g->h_up);
    kvt_gpu_host_free(g->h_logits);
    kvt_gpu_free(g->smem);
    kvt_gpu_weights_free(g);
    if (g->blas)
        kvt_gpu_blas_destroy(g->blas);
    if (g->copy)
        kvt_gpu_stream_destroy(g->copy);
    if (g->stream)
        kvt_gpu_stream_destroy(g->stream);
    kvt_free(g);
    e->gpu = NULL;
}

kvt_status_t kvt_gpu_engine_create(kvt_engine_t *e, uint32_t n_blocks)
{
    int dev = KVT_DEVICE_CUDA_INDEX(e->device);
    kvt_status_t st = kvt_gpu_use(dev);
    if (st != KVT_OK) {
        kvt_log_error("engine: no such cuda device device=cuda:%d", dev);
        return st;
    }
    kvt_gpu_engine_t *g = kvt_calloc("engine.gpu", 1, sizeof(*g));
    if (!g)
        return KVT_ERR_NOMEM;
    g->device = dev;
    const char *gv = getenv("KVT_GPU_GRAPHS");
    g->graphs_on = !gv || strcmp(gv, "0") != 0;
    e->gpu = g;
    st = kvt_gpu_stream_create(&g->stream);
    if (st == KVT_OK)
        st = kvt_gpu_stream_create(&g->copy);
    if (st == KVT_OK)
        st = kvt_gpu_blas_create(g->stream, &g->blas);
    if (st == KVT_OK)
        st = kvt_threads_create(0, &g->threads);
    for (int i = 0; i <= KVT_GPU_MOVE_PARTS && st == KVT_OK; i++)
        st = kvt_gpu_event_create(&g->ev[i]);
    if (st == KVT_OK)
        st = kvt_gpu_weights_upload(e, g);
    if (st == KVT_OK)
        st = alloc_scratch(e, g);
    if (st == KVT_OK)
        st = alloc_pool(e, g, n_blocks);
    if (st == KVT_OK)
        st = kvt_gpu_moves_alloc(e, g);
    if (st != KVT_OK) {
        kvt_log_error("engine: gpu setup failed device=cuda:%d status=%s", dev,
                      kvt_status_str(st));
        kvt_gpu_engine_destroy(e);
        return st;
    }
    kvt_log_info("engine created device=cuda:%d blocks=%u block_tokens=%u kv_dtype=%s "
                 "chunk=%zu decode_rows=%zu weights_mb=%zu pool_mb=%zu stage_blocks=%zu "
                 "decode_graphs=%s",
                 dev, e->pool.n_slots, e->B, kvt_dtype_name(e->kv_dtype), e->chunk,
                 e->decode_rows, g->wbytes >> 20, e->pool.region_len >> 20, g->stage_blocks,
                 g->graphs_on ? "on" : "off");
    return KVT_OK;
}

/* --- the pass --- */

typedef struct {
    const kvt_k_group_t *groups; /* device */
    uint32_t n, max_n, max_ctx;
} att_set_t;

typedef struct {
    const uint32_t *tok, *pos, *slot, *off, *tables; /* device */
    att_set_t pre, dec;
    /* Graph decode: the attention reads its chunking from plan (device);
     * NULL for plain launches. */
    const uint32_t *plan;
    uint32_t plan_host[2]; /* what the upload sent: chunk, n_chunks */
    uint32_t chunk_cap;
    void *scratch;
} pass_dev_t;

/* Pack the pass's host arrays into the pinned upload and send them: per
 * row tok, pos, slot, offset; 4 words of decode plan (with `plan`, the
 * decode attention's chunking for this step, which a graph reads); the
 * prefill then the decode groups; the block tables.  For a given row
 * count every array but the tables' contents sits at the same place. */
static kvt_status_t upload(kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups,
                           size_t R, bool plan, pass_dev_t *d)
{
    kvt_gpu_engine_t *g = e->gpu;
    uint32_t *h = g->h_up, *pos = h + R, *slot = h + 2 * R, *off = h + 3 * R;
    uint32_t *hplan = h + 4 * R;
    memcpy(h, e->row_tok, R * sizeof(uint32_t));
    size_t np = 0, nd = 0;
    for (size_t gi = 0; gi < n_groups; gi++)
        np += groups[gi].n > 1;
    nd = n_groups - np;
    kvt_k_group_t *gp = (kvt_k_group_t *)(h + 4 * R + 4), *gd = gp + np;
    uint32_t *tables = (uint32_t *)(gd + nd);
    size_t t = 0;
    *d = (pass_dev_t){0};
    for (size_t gi = 0; gi < n_groups; gi++) {
        const kvt_fwd_group_t *fg = &groups[gi];
        size_t end = fg->pos0 + fg->n, nb = (end + e->B - 1) / e->B;
        if (t + nb > g->max_table) {
            kvt_log_error("engine: block tables exceed the pass's upload entries=%zu max=%zu",
                          t + nb, g->max_table);
            return KVT_ERR_TOO_LARGE; /* unreachable: decode_rows is sized for it */
        }
        memcpy(tables + t, fg->seq->slots, nb * sizeof(uint32_t));
        for (size_t i = 0; i < fg->n; i++) {
            size_t r = fg->row0 + i, p = fg->pos0 + i;
            pos[r] = (uint32_t)p;
            slot[r] = fg->seq->slots[p / e->B];
            off[r] = (uint32_t)(p % e->B);
        }
        kvt_k_group_t kg = {(uint32_t)fg->row0, (uint32_t)fg->n, (uint32_t)fg->pos0,
                            (uint32_t)t};
        att_set_t *set = fg->n > 1 ? &d->pre : &d->dec;
        (fg->n > 1 ? gp : gd)[set->n++] = kg;
        set->max_n = fg->n > set->max_n ? (uint32_t)fg->n : set->max_n;
        set->max_ctx = end > set->max_ctx ? (uint32_t)end : set->max_ctx;
        t += nb;
    }
    size_t words = 4 * R + 4 + 4 * n_groups + t;
    uint32_t *u = g->d_up;
    memset(hplan, 0, 4 * sizeof(uint32_t));
    if (plan && d->dec.n) {
        kvt_status_t st = kvt_k_attn_decode_plan(&g->kv, g->q, g->att, e->cfg.n_heads, d->dec.n,
                                                 d->dec.max_n, d->dec.max_ctx, hplan);
        if (st != KVT_OK)
            return st;
        d->plan_host[0] = hplan[0];
        d->plan_host[1] = hplan[1];
    }
    d->tok = u;
    d->pos = u + R;
    d->slot = u + 2 * R;
    d->off = u + 3 * R;
    d->pre.groups = (const kvt_k_group_t *)(u + 4 * R + 4);
    d->dec.groups = d->pre.groups + np;
    d->tables = u + 4 * R + 4 + 4 * n_groups;
    return kvt_gpu_h2d(u, h, words * sizeof(uint32_t), g->stream);
}

static kvt_status_t layer(kvt_engine_t *e, uint32_t l, size_t R, const pass_dev_t *d)
{
    kvt_gpu_engine_t *g = e->gpu;
    const kvt_model_config_t *c = &e->cfg;
    const kvt_gpu_layer_t *L = &g->layers[l];
    size_t H = c->hidden, I = c->intermediate, qkv = e->q_dim + 2 * e->kv_row;
    float scale = 1.0f / sqrtf((float)c->head_dim);
    kvt_status_t st = kvt_k_rmsnorm(g->x, L->attn_norm, R, H, c->rms_eps, g->hn, g->stream);
    if (st == KVT_OK)
        st = kvt_gpu_gemm_bf16(g->blas, L->w_qkv, g->hn, g->qkv, R, H, qkv, 0.0f);
    if (st == KVT_OK)
        st = kvt_k_qkv_rope_store(g->qkv, L->b_qkv, d->pos, g->inv_freq, c->n_heads, &g->kv, l,
                                  d->slot, d->off, R, g->q, g->stream);
    if (st == KVT_OK && d->pre.n)
        st = kvt_k_attn_prefill(&g->kv, l, g->q, c->n_heads, d->pre.groups, d->pre.n,
                                d->tables, d->pre.max_n, d->pre.max_ctx, scale, g->att,
                                g->stream);
    if (st == KVT_OK && d->dec.n && d->plan)
        st = kvt_k_attn_decode_graph(&g->kv, l, g->q, c->n_heads, d->dec.groups, d->dec.n,
                                     d->tables, d->dec.max_n, d->plan, d->chunk_cap, d->scratch,
                                     scale, g->att, g->stream);
    else if (st == KVT_OK && d->dec.n)
        st = kvt_k_attn_decode(&g->kv, l, g->q, c->n_heads, d->dec.groups, d->dec.n, d->tables,
                               d->dec.max_n, d->dec.max_ctx, scale, g->att, g->stream);
    if (st == KVT_OK)
        st = kvt_gpu_gemm_bf16(g->blas, L->wo, g->att, g->x, R, e->q_dim, H, 1.0f);
    if (st == KVT_OK)
        st = kvt_k_rmsnorm(g->x, L->mlp_norm, R, H, c->rms_eps, g->hn, g->stream);
    if (st == KVT_OK)
        st = kvt_gpu_gemm_bf16(g->blas, L->w_gu, g->hn, g->gu, R, H, 2 * I, 0.0f);
    if (st == KVT_OK)
        st = kvt_k_swiglu(g->gu, R, I, g->act, g->stream);
    if (st == KVT_OK)
        st = kvt_gpu_gemm_bf16(g->blas, L->w_down, g->act, g->x, R, I, H, 1.0f);
    return st;
}

typedef struct {
    float *dst;
    const float *src;
    size_t row; /* floats per row */
} rows_copy_t;

static void rows_copy_run(void *arg, size_t b0, size_t b1, uint32_t tid)
{
    const rows_copy_t *c = arg;
    (void)tid;
    memcpy(c->dst + b0 * c->row, c->src + b0 * c->row, (b1 - b0) * c->row * sizeof(float));
}

/* Final norm and lm_head of rows [r0, r0 + cn) (cn <= logit_rows) into
 * the pinned logits staging (queued, no wait). */
static kvt_status_t logits_launch(kvt_engine_t *e, size_t r0, size_t cn)
{
    kvt_gpu_engine_t *g = e->gpu;
    const kvt_model_config_t *c = &e->cfg;
    size_t H = c->hidden, V = c->vocab_size;
    kvt_status_t st = kvt_k_rmsnorm(g->x + r0 * H, g->final_norm, cn, H, c->rms_eps, g->hn,
                                    g->stream);
    if (st == KVT_OK)
        st = kvt_gpu_gemm_bf16(g->blas, g->lm_head, g->hn, g->logits, cn, H, V, 0.0f);
    if (st == KVT_OK)
        st = kvt_gpu_d2h(g->h_logits, g->logits, cn * V * sizeof(float), g->stream);
    return st;
}

/* Wait for the stream, then cn rows of the staging into out on every core
 * (a decode step of 64 rows of a 128k vocabulary is 33 MB). */
static kvt_status_t logits_copy(kvt_engine_t *e, size_t cn, float *out)
{
    kvt_gpu_engine_t *g = e->gpu;
    kvt_status_t st = kvt_gpu_stream_sync(g->stream);
    if (st == KVT_OK) {
        rows_copy_t rc = {.dst = out, .src = g->h_logits, .row = e->cfg.vocab_size};
        kvt_threads_for(g->threads, cn, 1, rows_copy_run, &rc);
    }
    return st;
}

/* Logits of rows [r0, r0 + n) into out[n][vocab], logit_rows at a time. */
static kvt_status_t logits_out(kvt_engine_t *e, size_t r0, size_t n, float *out)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t V = e->cfg.vocab_size;
    kvt_status_t st = KVT_OK;
    for (size_t c0 = 0; c0 < n && st == KVT_OK; c0 += g->logit_rows) {
        size_t cn = n - c0 < g->logit_rows ? n - c0 : g->logit_rows;
        st = logits_launch(e, r0 + c0, cn);
        if (st == KVT_OK)
            st = logits_copy(e, cn, out + c0 * V);
    }
    return st;
}

/* The device work of a pass after the upload: embedding, the layers and,
 * with `logit_rows` (one staging's worth at most), the logits of rows
 * [0, logit_rows) into the staging.  Queued only: a graph capture records
 * exactly this. */
static kvt_status_t pass_body(kvt_engine_t *e, size_t R, const pass_dev_t *d,
                              size_t logit_rows)
{
    kvt_gpu_engine_t *g = e->gpu;
    kvt_status_t st = kvt_k_embed(g->embed, d->tok, R, e->cfg.hidden, g->x, g->stream);
    for (uint32_t l = 0; l < e->cfg.n_layers && st == KVT_OK; l++)
        st = layer(e, l, R, d);
    if (st == KVT_OK && logit_rows)
        st = logits_launch(e, 0, logit_rows);
    return st;
}

/* --- decode graphs ---
 *
 * A decode step (every group one row, all rows' logits, at most one
 * logits staging) replays a CUDA graph of pass_body instead of some 12
 * launches a layer.  Everything that changes between steps is in the
 * upload (tokens, positions, slots, groups, block tables, the attention's
 * chunking), at the same device addresses for a given row count, so a
 * graph is keyed by (rows, chunk rows of the attention grid: the step's
 * chunk count rounded up to a power of two) and captured the second time
 * in a row that a row count is seen (a steady batch), kept LRU.  The
 * graph runs the same kernels with the same arguments as the plain pass,
 * so its results are bitwise the plain pass's. */

static uint32_t pow2_at_least(uint32_t v)
{
    uint32_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

static void graphs_clear(kvt_gpu_engine_t *g)
{
    for (int i = 0; i < KVT_GPU_GRAPHS; i++) {
        kvt_gpu_graph_destroy(g->graphs[i].exec);
        g->graphs[i] = (kvt_gpu_graph_slot_t){0};
    }
}

/* Attention scratch for graphs of (R, cap): one buffer, grown on demand
 * (the graphs that point at the old one go first; the stream is idle
 * between passes but for this pass's upload, which does not touch it). */
static kvt_status_t graph_scratch(kvt_engine_t *e, size_t R, uint32_t cap)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t need = cap > 1 ? kvt_k_attn_decode_scratch(&g->kv, e->cfg.n_heads, (uint32_t)R, 1,
                                                      cap)
                          : 0;
    if (need <= g->dec_scratch_bytes)
        return KVT_OK;
    graphs_clear(g);
    kvt_status_t st = kvt_gpu_stream_sync(g->stream);
    if (st != KVT_OK)
        return st;
    kvt_gpu_free(g->dec_scratch);
    g->dec_scratch = NULL;
    g->dec_scratch_bytes = 0;
    size_t want = need > 2 * g->dec_scratch_bytes ? need : 2 * g->dec_scratch_bytes;
    st = kvt_gpu_malloc(&g->dec_scratch, want, "decode graph scratch");
    if (st == KVT_OK)
        g->dec_scratch_bytes = want;
    return st;
}

/* Capture pass_body for (R, cap) into a free or the least recently used
 * slot; NULL when the capture failed (graphs are then turned off). */
static kvt_gpu_graph_slot_t *graph_capture(kvt_engine_t *e, size_t R, uint32_t cap,
                                           pass_dev_t *d)
{
    kvt_gpu_engine_t *g = e->gpu;
    kvt_gpu_graph_slot_t *slot = &g->graphs[0];
    for (int i = 1; i < KVT_GPU_GRAPHS && slot->exec; i++)
        if (!g->graphs[i].exec || g->graphs[i].used < slot->used)
            slot = &g->graphs[i];
    kvt_gpu_graph_destroy(slot->exec);
    *slot = (kvt_gpu_graph_slot_t){0};
    kvt_gpu_graph_t exec = NULL;
    kvt_status_t st = kvt_gpu_capture_begin(g->stream);
    if (st == KVT_OK) {
        kvt_status_t bs = pass_body(e, R, d, R);
        st = kvt_gpu_capture_end(g->stream, bs != KVT_OK, &exec);
    }
    if (st != KVT_OK) {
        kvt_log_warn("engine: decode graph capture failed, graphs off rows=%zu status=%s", R,
                     kvt_status_str(st));
        g->graphs_on = false;
        return NULL;
    }
    *slot = (kvt_gpu_graph_slot_t){.exec = exec, .rows = (uint32_t)R, .chunk_cap = cap};
    g->graph_captures++;
    kvt_log_debug("engine: decode graph captured rows=%zu chunk_cap=%u", R, cap);
    return slot;
}

/* Run the decode step as a graph if one fits or may be captured now;
 * *ran_p false: the caller runs the plain pass. */
static kvt_status_t graph_step(kvt_engine_t *e, size_t R, pass_dev_t *d, bool *ran_p)
{
    kvt_gpu_engine_t *g = e->gpu;
    size_t last = g->graph_last_rows;
    g->graph_last_rows = R;
    *ran_p = false;
    uint32_t cap = pow2_at_least(d->plan_host[1] ? d->plan_host[1] : 1);
    kvt_gpu_graph_slot_t *slot = NULL;
    for (int i = 0; i < KVT_GPU_GRAPHS && !slot; i++)
        if (g->graphs[i].exec && g->graphs[i].rows == R && g->graphs[i].chunk_cap == cap)
            slot = &g->graphs[i];
    if (!slot && last != R)
        return KVT_OK;
    kvt_status_t st = KVT_OK;
    if (!slot) {
        st = graph_scratch(e, R, cap);
        if (st != KVT_OK)
            return st;
        d->plan = g->d_up + 4 * R;
        d->chunk_cap = cap;
        d->scratch = g->dec_scratch;
        slot = graph_capture(e, R, cap, d);
        d->plan = NULL;
        if (!slot)
            return KVT_OK;
    }
    slot->used = ++g->graph_tick;
    st = kvt_gpu_graph_launch(slot->exec, g->stream);
    *ran_p = st == KVT_OK;
    if (st == KVT_OK)
        g->graph_launches++;
    return st;
}

/* A decode step that a graph can run: single-row groups, one per row, the
 * logits of every row, within one staging. */
static bool graph_fits(const kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups,
                       size_t n_rows, size_t logits_row0, size_t n_logits)
{
    const kvt_gpu_engine_t *g = e->gpu;
    if (!g->graphs_on || n_groups != n_rows || n_logits != n_rows || logits_row0 != 0 ||
        n_rows > g->logit_rows || n_rows == 0)
        return false;
    for (size_t i = 0; i < n_groups; i++)
        if (groups[i].n != 1 || groups[i].row0 != i)
            return false;
    return true;
}

kvt_status_t kvt_gpu_engine_pass(kvt_engine_t *e, const kvt_fwd_group_t *groups,
                                 size_t n_groups, size_t n_rows, float *logits,
                                 size_t logits_row0, size_t n_logits)
{
    kvt_gpu_engine_t *g = e->gpu;
    pass_dev_t d;
    bool graph = graph_fits(e, groups, n_groups, n_rows, logits_row0, n_logits), ran = false;
    kvt_status_t st = kvt_gpu_use(g->device);
    if (st == KVT_OK)
        st = upload(e, groups, n_groups, n_rows, graph, &d);
    if (st == KVT_OK && graph)
        st = graph_step(e, n_rows, &d, &ran);
    else if (!graph)
        g->graph_last_rows = 0;
    if (st == KVT_OK && ran)
        st = logits_copy(e, n_rows, logits);
    else if (st == KVT_OK) {
        st = pass_body(e, n_rows, &d, 0);
        if (st == KVT_OK && n_logits)
            st = logits_out(e, logits_row0, n_logits, logits);
        else if (st == KVT_OK)
            st = kvt_gpu_stream_sync(g->stream);
    }
    if (st != KVT_OK) {
        /* Wait for what was queued before reporting: the upload staging
         * and the slots must be idle when the call returns. */
        (void)kvt_gpu_stream_sync(g->stream);
        kvt_log_error("engine: gpu pass failed rows=%zu groups=%zu status=%s", n_rows, n_groups,
                      kvt_status_str(st));
        return KVT_ERR_IO;
    }
    return KVT_OK;
}
