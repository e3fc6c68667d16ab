/* The transformer pass over a set of rows (Hugging Face Llama / Qwen2
 * semantics): embeddings, per layer RMSNorm -> q/k/v (+bias) -> RoPE ->
 * K/V into the pool -> causal GQA attention through the block table ->
 * o-projection + residual -> RMSNorm -> SwiGLU MLP + residual; then the
 * final norm and the LM head for the rows whose logits are wanted.
 *
 * One pass serves one prefill chunk (one group of consecutive positions)
 * or one decode step (one group per sequence).  Rows are independent
 * except through the pool: a row's K and V are written to its slot in the
 * KV dtype before attention runs, and attention reads every key -- cached
 * or computed in this very pass -- back from the pool.  So with bf16 KV the
 * rounded values are used everywhere, and a position sees the same bytes
 * however the work was split.
 *
 * Attention for one query row walks the row's blocks in order, block 0
 * first, keys of a block in order, with an online softmax (running max m,
 * sum l, accumulator acc; rescaled once per block).  The walk depends only
 * on the row's position, so decode, chunked and resumed prefill compute
 * each row with the same operations.  A work item is n_q positions x the
 * query heads of one kv head: they share each block's K and V (converted
 * to f32 once per item and block when the KV dtype is bf16). */
#include "engine/engineInt.h"

#include "engine/ops.h"

#include <math.h>
#include <string.h>

typedef struct {
    kvt_engine_t *e;
    const kvt_fwd_group_t *groups;
    size_t n_groups;
    size_t n_rows;
    uint32_t layer;
    const float *norm; /* add_norm: the norm weight, or NULL for add only */
    bool add;          /* add_norm: x += o first */
} pass_t;

/* Element offset of (layer, K|V, token) inside a block image. */
static inline size_t kv_off(const kvt_engine_t *e, uint32_t layer, int kv, size_t t)
{
    return (((size_t)layer * 2 + (size_t)kv) * e->B + t) * e->kv_row;
}

/* --- row-wise steps --- */

static void rows_embed(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t hidden = e->cfg.hidden, half = e->cfg.head_dim / 2;
    for (size_t r = b; r < end; r++) {
        memcpy(e->x + r * hidden, e->model->embed + (size_t)e->row_tok[r] * hidden,
               hidden * sizeof(float));
        kvt_ops_rope_cos_sin(e->inv_freq, half, e->row_pos[r], e->cos_t + r * half,
                             e->sin_t + r * half);
    }
}

static void rows_add_norm(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t hidden = e->cfg.hidden;
    for (size_t r = b; r < end; r++) {
        float *x = e->x + r * hidden;
        if (p->add) {
            const float *o = e->o + r * hidden;
            for (size_t i = 0; i < hidden; i++)
                x[i] += o[i];
        }
        if (p->norm)
            kvt_ops_rmsnorm(e->h + r * hidden, x, p->norm, hidden, e->cfg.rms_eps);
    }
}

/* RoPE on q and k, then K and V into the row's slot in the KV dtype. */
static void rows_rope_store(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t hd = e->cfg.head_dim, half = hd / 2;
    for (size_t r = b; r < end; r++) {
        const float *c = e->cos_t + r * half, *s = e->sin_t + r * half;
        float *k = e->k + r * e->kv_row, *v = e->v + r * e->kv_row;
        kvt_ops_rope(e->q + r * e->q_dim, e->cfg.n_heads, hd, c, s);
        kvt_ops_rope(k, e->cfg.n_kv_heads, hd, c, s);
        uint32_t pos = e->row_pos[r];
        uint8_t *blk = kvt_kv_pool_data(&e->pool, e->row_seq[r]->slots[pos / e->B]);
        size_t t = pos % e->B;
        size_t ko = kv_off(e, p->layer, 0, t), vo = kv_off(e, p->layer, 1, t);
        if (e->kv_dtype == KVT_DTYPE_F32) {
            memcpy((float *)blk + ko, k, e->kv_row * sizeof(float));
            memcpy((float *)blk + vo, v, e->kv_row * sizeof(float));
        } else {
            kvt_ops_f32_to_bf16_n((uint16_t *)blk + ko, k, e->kv_row);
            kvt_ops_f32_to_bf16_n((uint16_t *)blk + vo, v, e->kv_row);
        }
    }
}

static void rows_silu_mul(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t inter = e->cfg.intermediate;
    for (size_t r = b; r < end; r++)
        kvt_ops_silu_mul(e->gate + r * inter, e->up + r * inter, inter);
}

/* --- attention --- */

/* Keys per span rounded up to the score kernel's 16 lanes. */
static inline size_t span_pad(const kvt_engine_t *e) { return (e->att_span + 15) & ~(size_t)15; }

size_t kvt_fwd_att_scratch_floats(const kvt_engine_t *e)
{
    size_t hd = e->cfg.head_dim, rows = e->att_rows, Sp = span_pad(e);
    /* kt [Sp][hd]; vbuf [span][hd]; scores [rows][Sp]; m, l, c [rows]; acc [rows][hd] */
    return Sp * hd + e->att_span * hd + rows * Sp + 3 * rows + rows * hd;
}

size_t kvt_fwd_att_scratch_ptrs(const kvt_engine_t *e) { return e->att_rows + 2 * e->att_span; }

typedef struct {
    float *kt, *vbuf, *scores, *m, *l, *c, *acc;
    const float **qr;
    const void **krow, **vrow;
} att_scratch_t;

/* Rows [r0, R) of the item see keys [k0, k0 + nk): scores, one softmax
 * step, P.V. */
static void att_span(const kvt_engine_t *e, const att_scratch_t *sc, size_t R, size_t r0,
                     size_t first, size_t k0, size_t nk)
{
    size_t hd = e->cfg.head_dim, Sp = span_pad(e), T = KVT_OPS_TILE;
    float scale = 1.0f / sqrtf((float)hd);
    for (size_t ri = r0; ri < R; ri += T)
        kvt_ops_attn_scores(sc->qr + ri, (uint32_t)(R - ri < T ? R - ri : T), sc->kt, nk, hd,
                            scale, sc->scores + ri * Sp, Sp);
    for (size_t ri = r0; ri < R; ri += T) {
        uint32_t n = (uint32_t)(R - ri < T ? R - ri : T), nv[KVT_OPS_TILE];
        float *acc[KVT_OPS_TILE];
        const float *p[KVT_OPS_TILE];
        for (uint32_t i = 0; i < n; i++) {
            size_t pos = first + (ri + i) / e->n_rep, r = ri + i;
            nv[i] = (uint32_t)(pos - k0 + 1 < nk ? pos - k0 + 1 : nk);
            sc->c[r] = kvt_ops_attn_softmax(sc->scores + r * Sp, nv[i], &sc->m[r], &sc->l[r]);
            acc[i] = sc->acc + r * hd;
            p[i] = sc->scores + r * Sp;
        }
        kvt_ops_attn_pv(acc, sc->c + ri, p, nv, n, sc->vbuf, hd, hd);
    }
}

/* Point krow/vrow at the K and V of kv head g for positions [k0, k0 + n). */
static void span_rows(const pass_t *p, const kvt_seq_t *seq, uint32_t g, size_t k0, size_t n,
                      const att_scratch_t *sc)
{
    const kvt_engine_t *e = p->e;
    size_t go = (size_t)g * e->cfg.head_dim;
    for (size_t j = 0; j < n; j++) {
        size_t pos = k0 + j;
        const uint8_t *blk = kvt_kv_pool_data(&e->pool, seq->slots[pos / e->B]);
        size_t t = pos % e->B;
        sc->krow[j] = blk + (kv_off(e, p->layer, 0, t) + go) * e->kv_size;
        sc->vrow[j] = blk + (kv_off(e, p->layer, 1, t) + go) * e->kv_size;
    }
}

static void att_item(const pass_t *p, const kvt_att_item_t *it, const att_scratch_t *sc)
{
    const kvt_engine_t *e = p->e;
    const kvt_fwd_group_t *g = &p->groups[it->group];
    size_t hd = e->cfg.head_dim, S = e->att_span, R = (size_t)it->n_q * e->n_rep;
    for (size_t ri = 0; ri < R; ri++) {
        size_t row = g->row0 + it->q0 + ri / e->n_rep;
        size_t head = (size_t)it->kv_head * e->n_rep + ri % e->n_rep;
        sc->qr[ri] = e->q + row * e->q_dim + head * hd;
        sc->m[ri] = -INFINITY;
        sc->l[ri] = 0.0f;
    }
    memset(sc->acc, 0, R * hd * sizeof(float));
    size_t first = g->pos0 + it->q0, last = first + it->n_q - 1;
    bool bf16 = e->kv_dtype == KVT_DTYPE_BF16;
    /* Spans sit at multiples of S in absolute positions, whatever the item:
     * a row meets the same spans in every kind of pass. */
    for (size_t k0 = 0; k0 <= last; k0 += S) {
        size_t nk = last + 1 - k0 < S ? last + 1 - k0 : S;
        span_rows(p, g->seq, it->kv_head, k0, nk, sc);
        kvt_ops_attn_keys(sc->kt, sc->krow, bf16, nk, hd);
        kvt_ops_attn_values(sc->vbuf, sc->vrow, bf16, nk, hd);
        /* Rows are in position order: those before this span are a prefix. */
        size_t r0 = k0 > first ? (k0 - first) * e->n_rep : 0;
        att_span(e, sc, R, r0, first, k0, nk);
    }
    for (size_t ri = 0; ri < R; ri++) {
        size_t row = g->row0 + it->q0 + ri / e->n_rep;
        size_t head = (size_t)it->kv_head * e->n_rep + ri % e->n_rep;
        float *out = e->att + row * e->q_dim + head * hd;
        for (size_t i = 0; i < hd; i++)
            out[i] = sc->acc[ri * hd + i] / sc->l[ri];
    }
}

static void att_run(void *arg, size_t b, size_t end, uint32_t tid)
{
    pass_t *p = arg;
    kvt_engine_t *e = p->e;
    size_t hd = e->cfg.head_dim, rows = e->att_rows, Sp = span_pad(e);
    float *base = e->att_scratch + (size_t)tid * e->att_scratch_floats;
    const void **ptrs = e->att_ptrs + (size_t)tid * kvt_fwd_att_scratch_ptrs(e);
    att_scratch_t sc = {.kt = base, .qr = (const float **)ptrs};
    sc.krow = ptrs + rows;
    sc.vrow = sc.krow + e->att_span;
    sc.vbuf = sc.kt + Sp * hd;
    sc.scores = sc.vbuf + e->att_span * hd;
    sc.m = sc.scores + rows * Sp;
    sc.l = sc.m + rows;
    sc.c = sc.l + rows;
    sc.acc = sc.c + rows;
    for (size_t i = b; i < end; i++)
        att_item(p, &e->items[i], &sc);
}

/* Work items, latest positions first: they have the most keys, and
 * starting them early evens out the causal triangle across threads. */
static size_t att_items(kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups)
{
    size_t n = 0;
    for (size_t gi = 0; gi < n_groups; gi++) {
        size_t n_tiles = (groups[gi].n + e->att_q - 1) / e->att_q;
        for (size_t t = n_tiles; t-- > 0;) {
            size_t q0 = t * e->att_q;
            size_t nq = groups[gi].n - q0 < e->att_q ? groups[gi].n - q0 : e->att_q;
            for (uint32_t kh = 0; kh < e->cfg.n_kv_heads; kh++)
                e->items[n++] = (kvt_att_item_t){
                    .group = (uint32_t)gi, .q0 = (uint32_t)q0, .n_q = (uint32_t)nq, .kv_head = kh};
        }
    }
    return n;
}

/* --- the pass --- */

static void run_rows(pass_t *p, kvt_threads_fn fn)
{
    /* Element-wise steps are cheap per row: a few rows per chunk, and
     * inline (no wake-ups) for a small decode batch. */
    kvt_threads_for(p->e->threads, p->n_rows, 4, fn, p);
}

static void layer_pass(pass_t *p, size_t n_items)
{
    kvt_engine_t *e = p->e;
    const kvt_layer_weights_t *lw = &e->model->layers[p->layer];
    size_t n = p->n_rows, hidden = e->cfg.hidden;
    kvt_ops_mat_t qkv[3] = {
        {.w = lw->wq, .out = e->q_dim, .bias = lw->bq, .y = e->q},
        {.w = lw->wk, .out = e->kv_row, .bias = lw->bk, .y = e->k},
        {.w = lw->wv, .out = e->kv_row, .bias = lw->bv, .y = e->v},
    };
    kvt_ops_matmul_multi(e->threads, e->h, n, hidden, qkv, 3);
    run_rows(p, rows_rope_store);
    kvt_threads_for(e->threads, n_items, 1, att_run, p);
    kvt_ops_matmul(e->threads, e->att, n, e->q_dim, lw->wo, hidden, NULL, e->o);
    p->add = true;
    p->norm = lw->mlp_norm;
    run_rows(p, rows_add_norm);
    kvt_ops_mat_t mlp[2] = {
        {.w = lw->w_gate, .out = e->cfg.intermediate, .y = e->gate},
        {.w = lw->w_up, .out = e->cfg.intermediate, .y = e->up},
    };
    kvt_ops_matmul_multi(e->threads, e->h, n, hidden, mlp, 2);
    run_rows(p, rows_silu_mul);
    kvt_ops_matmul(e->threads, e->gate, n, e->cfg.intermediate, lw->w_down, hidden, NULL, e->o);
    /* The residual add, fused with the next layer's input norm. */
    p->norm = p->layer + 1 < e->cfg.n_layers ? e->model->layers[p->layer + 1].attn_norm : NULL;
    run_rows(p, rows_add_norm);
}

void kvt_fwd_pass(kvt_engine_t *e, const kvt_fwd_group_t *groups, size_t n_groups,
                  size_t n_rows, float *logits, size_t logits_row0, size_t n_logits)
{
    for (size_t gi = 0; gi < n_groups; gi++)
        for (size_t i = 0; i < groups[gi].n; i++) {
            e->row_pos[groups[gi].row0 + i] = (uint32_t)(groups[gi].pos0 + i);
            e->row_seq[groups[gi].row0 + i] = groups[gi].seq;
        }
    pass_t p = {.e = e, .groups = groups, .n_groups = n_groups, .n_rows = n_rows};
    run_rows(&p, rows_embed);
    p.norm = e->model->layers[0].attn_norm;
    run_rows(&p, rows_add_norm);
    size_t n_items = att_items(e, groups, n_groups);
    for (uint32_t l = 0; l < e->cfg.n_layers; l++) {
        p.layer = l;
        layer_pass(&p, n_items);
    }
    if (n_logits == 0)
        return;
    size_t hidden = e->cfg.hidden;
    for (size_t r = logits_row0; r < logits_row0 + n_logits; r++)
        kvt_ops_rmsnorm(e->h + r * hidden, e->x + r * hidden, e->model->final_norm, hidden,
                        e->cfg.rms_eps);
    kvt_ops_matmul(e->threads, e->h + logits_row0 * hidden, n_logits, hidden, e->model->lm_head,
                   e->cfg.vocab_size, NULL, logits);
}
